"""Training progress for whoever launched the training: one line per logged optimizer step.

Training runs under ``accelerate launch``, in processes of its own, so a listener in the launching
process (the Prefect task's progress artifact) cannot be called from the Trainer. Instead the main
training process prints one :data:`PROGRESS_PREFIX` line per logging step (:func:`progress_callback`),
:func:`~ragdistill.training.launch.launch_training` reads every output line anyway, and hands each
parsed :class:`TrainingProgress` to the listener set with :func:`use_training_progress`. A training that
resumed from a checkpoint reports from the checkpoint's step on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any

PROGRESS_PREFIX = "ragdistill-training-progress "

ProgressListener = Callable[["TrainingProgress"], None]

_listener: ContextVar[ProgressListener | None] = ContextVar("training_progress_listener", default=None)


@dataclass(frozen=True)
class TrainingProgress:
    step: int
    max_steps: int
    epoch: float
    loss: float

    @property
    def percent(self) -> float:
        return 100.0 * min(self.step, self.max_steps) / max(self.max_steps, 1)

    def line(self) -> str:
        return PROGRESS_PREFIX + json.dumps(asdict(self), sort_keys=True)


def parse_progress_line(line: str) -> TrainingProgress | None:
    """The progress a training output line reports, or None for any other line."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        values = json.loads(line[len(PROGRESS_PREFIX) :])
        return TrainingProgress(
            step=int(values["step"]),
            max_steps=int(values["max_steps"]),
            epoch=float(values["epoch"]),
            loss=float(values["loss"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


@contextmanager
def use_training_progress(listener: ProgressListener) -> Iterator[None]:
    """Trainings launched inside the block report their progress to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def current_progress_listener() -> ProgressListener | None:
    return _listener.get()


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def progress_callback() -> Any:
    """A ``TrainerCallback`` printing a progress line at each training-loss log of the main process."""
    from transformers import TrainerCallback

    class ProgressLines(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            progress = TrainingProgress(
                step=int(state.global_step),
                max_steps=int(state.max_steps),
                epoch=_number(state.epoch),
                loss=_number(logs["loss"]),
            )
            print(progress.line(), flush=True)

    return ProgressLines()
