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

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.training.curves import loss_points, plot_loss, write_loss_csv
from ragdistill.training.progress import progress_callback
from ragdistill.training.replicas import agreed_checkpoint, replica_digests
from ragdistill.training.spec import TrainSpec
from ragdistill.training.trainer_setup import (
    Precision,
    TrainingError,
    load_base_model,
    per_process_accumulation,
    plan_precision,
    sft_config,
    trainer_classes,
    uses_cuda,
    wants_checkpointing,
)

if TYPE_CHECKING:
    import datasets
    from transformers import TrainerCallback

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
TRAINING_ARGS_PICKLE = "training_args.bin"
REQUIRED_COLUMNS = ("input_ids", "assistant_masks")
STEADY_AFTER_STEPS = 2


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
    peak_memory_bytes: int | None = None
    """The most memory the main process held: on CUDA what torch allocated on its GPU, on a CPU its peak
    resident set (None in results written before this field)."""
    gradient_accumulation_steps: int | None = None
    """Each process's accumulation steps: the configured ones divided by the number of processes."""
    effective_batch_size: int | None = None
    """Examples per optimizer step over all processes: per-device batch x accumulation x processes."""
    weight_digests: list[str] | None = None
    """``training.replicas.lora_weights_digest`` of each process's LoRA weights after training, in process order, each
    computed by that process (None where the weights are sharded over the processes: FSDP, DeepSpeed)."""

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


def peak_memory_bytes(on_cuda: bool) -> int:
    """See :attr:`TrainResult.peak_memory_bytes`."""
    if on_cuda:
        import torch

        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


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
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model, trust_remote_code=spec.trust_remote_code)
    model = load_base_model(spec, precision, on_cuda)
    checkpointing = wants_checkpointing(config, on_cuda, counts.longest)
    student_trainer, step_clock = trainer_classes()
    clock = step_clock()
    arguments = sft_config(spec, output / CHECKPOINTS_DIR, precision, on_cuda, checkpointing)
    arguments.gradient_accumulation_steps = per_process_accumulation(config, arguments.world_size)
    trainer = student_trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        ),
        callbacks=[
            callback for callback in (clock, tensorboard, progress_callback()) if callback is not None
        ],
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
    resume = agreed_checkpoint(trainer, checkpoints, config.resume)
    if main:
        logger.info("training %s: %s", output, f"resuming from {resume}" if resume else "from step 0")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    digests = replica_digests(trainer)
    adapter = output / ADAPTER_DIR
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter))
    if trainer.args.should_save:  # the Trainer also pickles its arguments there: an adapter holds no pickles
        (adapter / TRAINING_ARGS_PICKLE).unlink(missing_ok=True)
        logger.info("process %d wrote the adapter to %s", trainer.args.process_index, adapter)
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
        peak_memory_bytes=peak_memory_bytes(uses_cuda()),
        gradient_accumulation_steps=trainer.args.gradient_accumulation_steps,
        effective_batch_size=trainer.args.per_device_train_batch_size
        * trainer.args.gradient_accumulation_steps
        * trainer.accelerator.num_processes,
        weight_digests=digests,
    )
