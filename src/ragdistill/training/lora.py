"""LoRA SFT of a student: TRL's ``SFTTrainer`` and peft on a pre-tokenised dataset.

The dataset (``stages.datasets`` writes it) is parquet with one row per example: ``input_ids`` (the
conversation through the model's chat template) and ``assistant_masks`` (1 on the tokens the loss
covers), plus metadata columns. TRL 1.16 treats a dataset with ``input_ids`` as pre-tokenised and turns
``assistant_masks`` into ``labels`` (-100 where the mask is 0) before the collator pads them
(``SFTTrainer._prepare_dataset``); its ``assistant_only_loss`` option stays off, since it only applies
to conversational datasets, which it would re-render. Examples longer than ``max_seq_len`` are cut here
(kept from the start) and counted, and examples left without a loss token are dropped and counted.

Speed on a CPU (``benchmarks/train.py``): TRL's defaults turn on gradient checkpointing (a second
forward pass) and bf16 autocast over fp32 weights, and its fused LM head scores every position there
and recomputes the head in the backward pass. Here a CPU run keeps the base weights in bf16 where the
CPU has native bf16 (fp32 otherwise) without autocast, checkpoints only micro-batches that can pass
2048 tokens (for memory), and scores only the assistant tokens (``loss_head: compact``); LoRA weights
stay fp32 throughout.

Output folder: ``adapter/`` (``adapter_model.safetensors`` + ``adapter_config.json``), ``loss.csv``,
``loss.png``, ``tensorboard/``, ``checkpoints/`` (every ``save_steps``; a new call resumes from the
newest complete one and reaches the same total number of steps).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.config import TrainingConfig
from ragdistill.errors import UserFacingError
from ragdistill.training.curves import loss_points, plot_loss, write_loss_csv

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedModel, TrainerCallback

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
REQUIRED_COLUMNS = ("input_ids", "assistant_masks")
STEADY_AFTER_STEPS = 2
CPU_CHECKPOINTING_ABOVE_TOKENS = 2048
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"
"""The Trainer writes this last into a checkpoint folder: without it the save was interrupted."""


class TrainingError(UserFacingError, RuntimeError):
    """Training cannot start or did not finish; the message says what to change."""


@dataclass(frozen=True)
class TrainSpec:
    """Everything one training run needs; JSON-able, so a launched process can read it."""

    dataset: str
    """A parquet file, or a folder of them, with the columns of the module docstring."""
    base_model: str
    """A local Hugging Face checkpoint folder (``models.resolve_model``) or a hub id."""
    output_dir: str
    training: TrainingConfig = field(default_factory=TrainingConfig)
    seed: int = 42

    @classmethod
    def from_config(
        cls, training: TrainingConfig, *, dataset: str, base_model: str, output_dir: str, seed: int = 42
    ) -> TrainSpec:
        return cls(str(dataset), str(base_model), str(output_dir), training, seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "base_model": self.base_model,
            "output_dir": self.output_dir,
            "training": self.training.model_dump(mode="json"),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        return cls(
            dataset=data["dataset"],
            base_model=data["base_model"],
            output_dir=data["output_dir"],
            training=TrainingConfig.model_validate(data.get("training", {})),
            seed=int(data.get("seed", 42)),
        )

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        return cls.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train_lora` did. ``steps`` counts from the run's first step, across
    resumes; ``steps_run``, ``tokens``, ``seconds`` and ``tokens_per_second`` cover this call only."""

    output_dir: str
    adapter_dir: str
    loss_csv: str
    loss_png: str | None
    tensorboard_dir: str | None
    steps: int
    steps_run: int
    resumed_from: str | None
    epochs: float
    examples: int
    truncated_examples: int
    dropped_examples: int
    tokens: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    tokens_per_second: float
    steady_tokens_per_second: float | None
    """Tokens/s after this call's first STEADY_AFTER_STEPS steps (None for shorter calls)."""
    processes: int
    device: str
    precision: str
    loss_head: str
    gradient_checkpointing: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        return cls(**data)


@dataclass(frozen=True)
class DatasetCounts:
    examples: int
    truncated: int
    dropped: int
    tokens: int
    loss_tokens: int
    longest: int


def parquet_files(dataset: str | Path) -> list[str]:
    path = Path(dataset)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        raise TrainingError(f"no training data at {path}: expected a parquet file or a folder of them")
    return [str(file) for file in files]


def load_examples(dataset: str | Path, max_seq_len: int) -> tuple[datasets.Dataset, DatasetCounts]:
    """The loss columns of a training set, cut to ``max_seq_len``, in memory (no datasets cache)."""
    import datasets
    import pyarrow.parquet as pq

    input_ids: list[list[int]] = []
    masks: list[list[int]] = []
    truncated = dropped = 0
    for file in parquet_files(dataset):
        names = pq.read_schema(file).names
        missing = [name for name in REQUIRED_COLUMNS if name not in names]
        if missing:
            raise TrainingError(
                f"{file} lacks the column(s) {', '.join(missing)}; rebuild it with the datasets stage"
            )
        table = pq.read_table(file, columns=list(REQUIRED_COLUMNS))
        columns = (table.column(name).to_pylist() for name in REQUIRED_COLUMNS)
        for row, (ids, mask) in enumerate(zip(*columns, strict=True)):
            if len(ids) != len(mask):
                raise TrainingError(f"{file} row {row}: input_ids and assistant_masks differ in length")
            if len(ids) > max_seq_len:
                truncated += 1
                ids, mask = ids[:max_seq_len], mask[:max_seq_len]
            if not any(mask[1:]):
                dropped += 1
                continue
            input_ids.append(ids)
            masks.append([1 if bit else 0 for bit in mask])
    if not input_ids:
        raise TrainingError(f"{dataset} holds no example with an assistant token to learn from")
    counts = DatasetCounts(
        examples=len(input_ids),
        truncated=truncated,
        dropped=dropped,
        tokens=sum(map(len, input_ids)),
        loss_tokens=sum(map(sum, masks)),
        longest=max(map(len, input_ids)),
    )
    return datasets.Dataset.from_dict({"input_ids": input_ids, "assistant_masks": masks}), counts


def uses_cuda() -> bool:
    """Whether this process trains on a GPU (accelerate's ``use_cpu`` configs say no)."""
    import torch

    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in {"1", "true", "yes"}
    return torch.cuda.is_available() and not forced_cpu


@dataclass(frozen=True)
class Precision:
    weights: str
    """The dtype the base weights are loaded in (also the 4-bit compute dtype)."""
    autocast: str
    """"bf16", "fp16" or "no": the Trainer's mixed precision."""

    @property
    def label(self) -> str:
        return f"{self.weights} weights" + ("" if self.autocast == "no" else f", {self.autocast} autocast")


def cpu_has_native_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def plan_precision(setting: str, on_cuda: bool) -> Precision:
    """See ``TrainingConfig.precision``. On a CPU, autocast costs a cast of every weight per step and
    bf16 weights run faster than fp32 where the CPU has bf16 instructions."""
    import torch

    if on_cuda:
        if setting == "auto":
            setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if setting == "fp32":
            return Precision("float32", "no")
        return Precision("bfloat16" if setting == "bf16" else "float16", setting)
    if setting == "fp16":
        raise TrainingError("training.precision fp16 needs a CUDA GPU; use auto, bf16 or fp32 on a CPU")
    if setting == "bf16" or (setting == "auto" and cpu_has_native_bf16()):
        return Precision("bfloat16", "no")
    return Precision("float32", "no")


def load_base_model(spec: TrainSpec, precision: Precision, on_cuda: bool) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    weights = getattr(torch, precision.weights)
    kwargs: dict[str, Any] = {"dtype": weights}
    if spec.training.load_in_4bit:
        if not on_cuda:
            raise TrainingError(
                "training.load_in_4bit needs a CUDA GPU (bitsandbytes); set it to false to train on a CPU"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainingError(
                "training.load_in_4bit needs bitsandbytes: pip install bitsandbytes"
            ) from None
        from accelerate import PartialState
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=weights,
            bnb_4bit_quant_storage=weights,
        )
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() not in {"1", "true"}:
            kwargs["device_map"] = {"": PartialState().local_process_index}
    try:
        return AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
    except OSError as error:
        raise TrainingError(f"cannot load the base model {spec.base_model!r}: {error}") from None


def add_compact_loss_head(model: PreTrainedModel) -> None:
    """Let ``model(..., loss_labels=labels)`` return only ``loss``: the LM head and cross-entropy run on
    the positions whose next token is a loss token, never materialising the other positions' logits.

    It lives in the model's forward, as TRL's fused head does, so DDP and peft wrap it unchanged."""
    import torch.nn.functional as functional
    from transformers.modeling_outputs import CausalLMOutputWithPast

    previous_forward = model.forward

    def forward(
        self: PreTrainedModel,
        *args: Any,
        loss_labels: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Any:
        if loss_labels is None:
            if labels is not None:
                kwargs["labels"] = labels
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return previous_forward(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = loss_labels[:, 1:].to(hidden.device)
        selected = targets != -100
        logits = self.get_output_embeddings()(hidden[selected]).float()
        loss = functional.cross_entropy(logits, targets[selected], reduction="sum")
        denominator = num_items_in_batch if num_items_in_batch is not None else selected.sum().clamp(min=1)
        return CausalLMOutputWithPast(loss=loss / denominator)

    model.forward = types.MethodType(forward, model)


def last_complete_checkpoint(folder: Path, remove_incomplete: bool) -> Path | None:
    """The newest ``checkpoint-N`` holding its trainer state; interrupted saves are removed when asked."""
    if not folder.is_dir():
        return None
    numbered = sorted(
        (int(path.name.split("-", 1)[1]), path)
        for path in folder.glob("checkpoint-*")
        if path.is_dir() and path.name.split("-", 1)[1].isdigit()
    )
    complete = [path for _, path in numbered if (path / CHECKPOINT_COMPLETE_FILE).is_file()]
    if remove_incomplete:
        for _, path in numbered:
            if not (path / CHECKPOINT_COMPLETE_FILE).is_file():
                shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


def wants_checkpointing(config: TrainingConfig, on_cuda: bool, longest_example: int) -> bool:
    """``TrainingConfig.gradient_checkpointing``: explicit, else on for CUDA and for large CPU batches."""
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    return on_cuda or config.per_device_batch_size * longest_example > CPU_CHECKPOINTING_ABOVE_TOKENS


def sft_config(
    spec: TrainSpec, checkpoints: Path, precision: Precision, on_cuda: bool, checkpointing: bool
) -> Any:
    from trl import SFTConfig

    config = spec.training
    return SFTConfig(
        output_dir=str(checkpoints),
        seed=spec.seed,
        data_seed=spec.seed,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # below 1: a fraction of the total steps
        max_length=config.max_seq_len,
        use_cpu=not on_cuda,
        bf16=precision.autocast == "bf16",
        fp16=precision.autocast == "fp16",
        gradient_checkpointing=checkpointing,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        dataloader_num_workers=config.dataloader_workers,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        report_to="none",
        disable_tqdm=True,
    )


@functools.cache
def trainer_classes() -> tuple[type, type]:
    """(StudentTrainer, StepClock), defined on first use so that importing this module stays light."""
    from transformers import TrainerCallback
    from trl import SFTTrainer

    class StepClock(TrainerCallback):
        """Wall time and non-padding tokens seen at the end of each optimizer step of this call."""

        def __init__(self) -> None:
            self.start_step = 0
            self.start_tokens = 0
            self.started = time.perf_counter()
            self.marks: list[tuple[int, float, int]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start_step = state.global_step
            self.start_tokens = state.num_input_tokens_seen
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.marks.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen))

        @property
        def tokens(self) -> int:
            return (self.marks[-1][2] if self.marks else self.start_tokens) - self.start_tokens

        def steady_rate(self, warmup_steps: int) -> tuple[int, float]:
            """(tokens, seconds) of the steps after the first ``warmup_steps`` of this call."""
            marks = [(self.start_step, self.started, self.start_tokens), *self.marks]
            if len(marks) <= warmup_steps + 1:
                raise ValueError(f"only {len(self.marks)} steps ran; cannot skip {warmup_steps}")
            _, begin, tokens_before = marks[warmup_steps]
            _, end, tokens_after = marks[-1]
            return tokens_after - tokens_before, end - begin

    class StudentTrainer(SFTTrainer):
        """SFTTrainer with an optional compact loss head (``TrainingConfig.loss_head``)."""

        def __init__(self, *args: Any, compact_loss: bool, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.compact_loss = compact_loss
            if compact_loss:
                add_compact_loss_head(self.model.get_base_model())

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if not self.compact_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            forward_inputs = {key: value for key, value in inputs.items() if key != "labels"}
            outputs = model(
                **forward_inputs, loss_labels=inputs["labels"], num_items_in_batch=num_items_in_batch
            )
            loss = outputs.loss
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return StudentTrainer, StepClock


def _tensorboard_callback(enabled: bool, folder: Path) -> TrainerCallback | None:
    if not enabled:
        return None
    from transformers.integrations import TensorBoardCallback
    from transformers.integrations.integration_utils import is_tensorboard_available

    if not is_tensorboard_available():
        raise TrainingError(
            "training.tensorboard is on but neither tensorboard nor tensorboardX is installed: "
            "pip install tensorboard, or set training.tensorboard: false"
        )
    callback = TensorBoardCallback()
    callback.logging_dir = str(folder)
    return callback


@dataclass
class PreparedTraining:
    """A trainer ready to train, and what :func:`train_lora` reports about it."""

    trainer: Any
    clock: Any
    counts: DatasetCounts
    precision: Precision
    loss_head: str
    tensorboard: bool
    gradient_checkpointing: bool


def prepare_training(spec: TrainSpec) -> PreparedTraining:
    """Load the data and the base model, and build the trainer with every ``training.*`` setting."""
    import torch
    from peft import LoraConfig
    from transformers import AutoTokenizer

    config = spec.training
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    output = Path(spec.output_dir)
    on_cuda = uses_cuda()
    precision = plan_precision(config.precision, on_cuda)
    loss_head = config.loss_head if config.loss_head != "auto" else "trl-fused" if on_cuda else "compact"
    tensorboard = _tensorboard_callback(config.tensorboard, output / TENSORBOARD_DIR)
    dataset, counts = load_examples(spec.dataset, config.max_seq_len)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    model = load_base_model(spec, precision, on_cuda)
    checkpointing = wants_checkpointing(config, on_cuda, counts.longest)
    student_trainer, step_clock = trainer_classes()
    clock = step_clock()
    trainer = student_trainer(
        model=model,
        args=sft_config(spec, output / CHECKPOINTS_DIR, precision, on_cuda, checkpointing),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        ),
        callbacks=[callback for callback in (clock, tensorboard) if callback is not None],
        compact_loss=loss_head == "compact",
    )
    return PreparedTraining(
        trainer, clock, counts, precision, loss_head, tensorboard is not None, checkpointing
    )


def train_lora(spec: TrainSpec) -> TrainResult:
    """Train a LoRA adapter on ``spec.dataset``; under ``accelerate launch`` every process calls this
    and only the main process writes the adapter, the curve and the logs."""
    prepared = prepare_training(spec)
    trainer, clock, config = prepared.trainer, prepared.clock, spec.training
    output = Path(spec.output_dir)
    main = trainer.is_world_process_zero()
    checkpoints = output / CHECKPOINTS_DIR
    if not config.resume and main:
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    resume = last_complete_checkpoint(checkpoints, remove_incomplete=main) if config.resume else None
    trainer.accelerator.wait_for_everyone()
    if main:
        logger.info("training %s: %s", output, f"resuming from {resume}" if resume else "from step 0")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    adapter = output / ADAPTER_DIR
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter))
    points = loss_points(trainer.state.log_history)
    png: Path | None = output / LOSS_PNG
    if main:
        write_loss_csv(points, output / LOSS_CSV)
        title = f"{output.name}: LoRA r={config.lora_r}, {trainer.state.global_step} steps"
        png = plot_loss(points, output / LOSS_PNG, title=title)
    trainer.accelerator.wait_for_everyone()
    steady = clock.steady_rate(STEADY_AFTER_STEPS) if len(clock.marks) > STEADY_AFTER_STEPS else None
    return TrainResult(
        output_dir=str(output),
        adapter_dir=str(adapter),
        loss_csv=str(output / LOSS_CSV),
        loss_png=str(png) if png else None,
        tensorboard_dir=str(output / TENSORBOARD_DIR) if prepared.tensorboard else None,
        steps=trainer.state.global_step,
        steps_run=trainer.state.global_step - clock.start_step,
        resumed_from=resume.name if resume else None,
        epochs=round(float(trainer.state.epoch or 0.0), 4),
        examples=prepared.counts.examples,
        truncated_examples=prepared.counts.truncated,
        dropped_examples=prepared.counts.dropped,
        tokens=clock.tokens,
        first_loss=points[0].loss if points else None,
        last_loss=points[-1].loss if points else None,
        seconds=round(seconds, 3),
        tokens_per_second=round(clock.tokens / seconds, 2) if seconds > 0 else 0.0,
        steady_tokens_per_second=round(steady[0] / steady[1], 2) if steady and steady[1] > 0 else None,
        processes=trainer.accelerator.num_processes,
        device=str(trainer.args.device),
        precision=prepared.precision.label,
        loss_head=prepared.loss_head,
        gradient_checkpointing=prepared.gradient_checkpointing,
    )
