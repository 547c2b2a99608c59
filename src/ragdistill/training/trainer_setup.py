"""The parts a LoRA trainer is built from, on a CPU or CUDA: numeric precision, the base model, the
compact loss head, gradient checkpointing, TRL's ``SFTConfig`` and the trainer classes.

``training.lora`` assembles them (see its docstring for the speed measurements behind the choices).
"""

from __future__ import annotations

import functools
import logging
import os
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.config import TrainingRecipe
from ragdistill.errors import UserFacingError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from ragdistill.training.spec import TrainSpec

logger = logging.getLogger("ragdistill.training.lora")

CPU_CHECKPOINTING_ABOVE_TOKENS = 2048


class TrainingError(UserFacingError, RuntimeError):
    """Training cannot start or did not finish; the message says what to change."""


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
        return AutoModelForCausalLM.from_pretrained(
            spec.base_model, trust_remote_code=spec.trust_remote_code, **kwargs
        )
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


def wants_checkpointing(config: TrainingRecipe, on_cuda: bool, longest_example: int) -> bool:
    """``TrainingConfig.gradient_checkpointing``: explicit, else on for CUDA and for large CPU batches."""
    if config.gradient_checkpointing is not None:
        return config.gradient_checkpointing
    return on_cuda or config.per_device_batch_size * longest_example > CPU_CHECKPOINTING_ABOVE_TOKENS


def per_process_accumulation(config: TrainingRecipe, world_size: int) -> int:
    """The gradient accumulation steps of each of ``world_size`` data-parallel processes that keep the
    configured effective batch, ``per_device_batch_size x gradient_accumulation_steps``: each process
    accumulates its share, so per-device batch x accumulation x world size is that batch at any size."""
    steps = config.gradient_accumulation_steps
    if steps % world_size:
        effective = config.per_device_batch_size * steps
        raise TrainingError(
            f"training.gradient_accumulation_steps ({steps}) does not divide among the {world_size} training "
            f"processes: each process accumulates its share of the effective batch (per_device_batch_size x "
            f"gradient_accumulation_steps = {effective} examples per optimizer step). Set "
            f"gradient_accumulation_steps to a multiple of {world_size} (lower per_device_batch_size to keep "
            "the effective batch), or train in a number of processes that divides it"
        )
    return steps // world_size


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
