"""What the processes of one data-parallel training agree on: the checkpoint they resume from and the
LoRA weights they end with.

Every process loads the checkpoint it resumes from (weights, optimizer, scheduler, trainer state), so
the world's main process chooses it and every process checks that its machine holds it; and after
training each process digests its own LoRA weights, so that replicas that drifted apart (gradients not
synced) stop the training instead of writing one replica's adapter.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragdistill.training.trainer_setup import TrainingError

CHECKPOINT_COMPLETE_FILE = "trainer_state.json"
"""The Trainer writes this last into a checkpoint folder: without it the save was interrupted."""


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


def lora_weights_digest(state: Mapping[str, Any]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a LoRA state dict (peft's
    ``get_peft_model_state_dict``, the tensors ``adapter_model.safetensors`` holds), in name order."""
    import torch

    hasher = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        hasher.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        hasher.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def replica_digests(trainer: Any) -> list[str] | None:
    """Every process's digest of its own LoRA weights, gathered in process order; a data-parallel
    training whose replicas differ raises on every process (their gradients were not synced)."""
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return None
    from accelerate.utils import gather_object
    from peft import get_peft_model_state_dict

    own = lora_weights_digest(get_peft_model_state_dict(trainer.accelerator.unwrap_model(trainer.model)))
    digests = [str(digest) for digest in gather_object([own])]
    if len(set(digests)) > 1:
        raise TrainingError(
            "the training processes ended with different LoRA weights (digests "
            f"{', '.join(digest[:12] for digest in digests)}): their gradients were not kept in sync; "
            "no adapter was written"
        )
    return digests


def agreed_checkpoint(trainer: Any, checkpoints: Path, resume: bool) -> Path | None:
    """The checkpoint every process resumes from: the newest complete one of the world's main process
    (which removes interrupted saves), checked present on every process, since each loads it."""
    from accelerate.utils import broadcast_object_list, gather_object

    main = trainer.is_world_process_zero()
    found = last_complete_checkpoint(checkpoints, remove_incomplete=True) if resume and main else None
    chosen = [found.name if found else None]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(chosen)
    if chosen[0] is None:
        return None
    checkpoint = checkpoints / chosen[0]
    present = (checkpoint / CHECKPOINT_COMPLETE_FILE).is_file()
    everywhere = gather_object([present]) if trainer.accelerator.num_processes > 1 else [present]
    lacking = [index for index, has in enumerate(everywhere) if not has]
    if lacking:
        raise TrainingError(
            f"process(es) {', '.join(map(str, lacking))} cannot resume from {chosen[0]}, the newest checkpoint "
            f"of machine 0, which their machine lacks in {checkpoints}: every machine loads it. Keep the output "
            "folder on storage every machine shares, or train on an s3:// run root (the train stage copies "
            "the newest checkpoint to each machine)"
        )
    return checkpoint
