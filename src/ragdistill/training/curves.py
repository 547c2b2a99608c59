"""The training loss curve: one CSV row per logged optimizer step, and a PNG of it.

The points come from the Trainer's ``state.log_history``, which a checkpoint carries, so a training that
resumed still writes the whole curve from step 1.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossPoint:
    step: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_seen: int


CSV_COLUMNS = tuple(field.name for field in fields(LossPoint))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def loss_points(log_history: Iterable[Mapping[str, Any]]) -> list[LossPoint]:
    """The training-loss entries of a Trainer log history (not the final summary, not evaluations)."""
    points: dict[int, LossPoint] = {}
    for entry in log_history:
        if "loss" not in entry or "step" not in entry:
            continue
        step = int(entry["step"])
        points[step] = LossPoint(
            step=step,
            epoch=_number(entry.get("epoch")),
            loss=_number(entry["loss"]),
            learning_rate=_number(entry.get("learning_rate")),
            grad_norm=_number(entry.get("grad_norm")),
            tokens_seen=int(entry.get("num_input_tokens_seen", 0)),
        )
    return [points[step] for step in sorted(points)]


def write_loss_csv(points: Sequence[LossPoint], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(astuple(point) for point in points)
    partial.replace(path)
    return path


def read_loss_csv(path: Path) -> list[LossPoint]:
    with path.open(newline="") as handle:
        return [
            LossPoint(
                step=int(row["step"]),
                epoch=float(row["epoch"]),
                loss=float(row["loss"]),
                learning_rate=float(row["learning_rate"]),
                grad_norm=float(row["grad_norm"]),
                tokens_seen=int(row["tokens_seen"]),
            )
            for row in csv.DictReader(handle)
        ]


def plot_loss(points: Sequence[LossPoint], path: Path, title: str = "LoRA training loss") -> Path | None:
    """The curve as a PNG (loss, and the learning rate on a second axis); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib)", path)
        return None
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        steps = [point.step for point in points]
        loss_axis.plot(steps, [point.loss for point in points], marker="." if len(points) < 60 else None)
        loss_axis.set_xlabel("optimizer step")
        loss_axis.set_ylabel("training loss (assistant tokens)")
        loss_axis.grid(alpha=0.3)
        rate_axis = loss_axis.twinx()
        rate_axis.plot(steps, [point.learning_rate for point in points], color="grey", linestyle="--")
        rate_axis.set_ylabel("learning rate", color="grey")
        loss_axis.set_title(title)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial.png")
        figure.savefig(partial)
        partial.replace(path)
    finally:
        plt.close(figure)
    return path
