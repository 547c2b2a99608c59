"""The accuracy–tokens figure: one point per method × agent, success % against tokens per episode.

Under several sampling seeds a point is the mean over the seeds (success and tokens), its label adds the
sd, and its bar spans the lowest to the highest bound of the seeds' 95% Wilson intervals.

Labels are placed by a small search (``evaluation.label_placement``); the drawn boxes are returned so
tests can check them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from ragdistill.evaluation.frame import plain, seed_summary
from ragdistill.evaluation.label_placement import PointLabel, place_labels
from ragdistill.evaluation.metrics import MethodMetrics
from ragdistill.evaluation.paper_results import (
    AGENTS,
    METHODS,
    agent_label,
    in_paper_order,
    method_label,
)

METHOD_COLOURS: dict[str, str] = {"base": "#4d4d4d", "rag": "#1f77b4", "sft": "#ff7f0e", "distill": "#2ca02c"}
AGENT_MARKERS: dict[str, str] = {"react": "o", "act": "s", "stateact": "^"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#d62728")
EXTRA_MARKERS = ("D", "v", "P", "X", "*", "h")
DPI = 150


@dataclass(frozen=True)
class FigurePoint:
    method: str
    agent: str
    tokens_per_episode: float
    success_percent: float
    ci_low: float
    ci_high: float
    seeds: int = 1
    success_sd: float | None = None

    @property
    def label(self) -> str:
        spread = f" ± {self.success_sd:.1f}" if self.seeds > 1 and self.success_sd is not None else ""
        return (
            f"{method_label(self.method)} · {agent_label(self.agent)} ({self.success_percent:.1f}%{spread})"
        )

    @classmethod
    def from_metrics(cls, method: str, agent: str, metrics: MethodMetrics) -> FigurePoint | None:
        """None for a method with no episodes: it has nothing to plot."""
        values = (
            metrics.total_tokens_per_episode,
            metrics.success_percent,
            metrics.success_ci_low,
            metrics.success_ci_high,
        )
        if any(value is None for value in values):
            return None
        return cls(method, agent, *values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FigureLayout:
    """Where things ended up, in pixels of the saved PNG (origin bottom-left)."""

    path: Path
    width_px: int
    height_px: int
    label_boxes: list[tuple[float, float, float, float]]
    point_positions: list[tuple[float, float]]


def _styles(values: Sequence[str], known: dict[str, str], extras: Sequence[str]) -> dict[str, str]:
    styles: dict[str, str] = {}
    unknown = [value for value in dict.fromkeys(values) if value not in known]
    for value in dict.fromkeys(values):
        styles[value] = known.get(value) or extras[unknown.index(value) % len(extras)]
    return styles


def _format_tokens(value: float, _position: float | None = None) -> str:
    return f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"


def _success_limits(points: Sequence[FigurePoint]) -> tuple[float, float]:
    """A y range that fits every interval with room for labels, at least 40 points tall, within -5..105."""
    low = min(point.ci_low for point in points)
    high = max(point.ci_high for point in points)
    bottom = max(-5.0, math.floor(low / 10.0) * 10.0 - 8.0)
    top = min(105.0, math.ceil(high / 10.0) * 10.0 + 8.0)
    if top - bottom < 40.0:
        top = min(105.0, bottom + 40.0)
        bottom = max(-5.0, top - 40.0)
    return bottom, top


def accuracy_tokens_figure(points: Sequence[FigurePoint], path: str | Path, title: str) -> FigureLayout:
    """Draw success % (95% Wilson CI as error bars) against tokens per episode, save a PNG at ``path``."""
    if not points:
        raise ValueError("the accuracy-tokens figure needs at least one evaluated method with episodes")
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    colours = _styles([p.method for p in points], METHOD_COLOURS, EXTRA_COLOURS)
    markers = _styles([p.agent for p in points], AGENT_MARKERS, EXTRA_MARKERS)

    figure = Figure(figsize=(9.0, 5.6), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((0.09, 0.11, 0.66, 0.8))
    for point in points:
        axes.errorbar(
            point.tokens_per_episode,
            point.success_percent,
            yerr=[
                [max(0.0, point.success_percent - point.ci_low)],
                [max(0.0, point.ci_high - point.success_percent)],
            ],
            fmt="none",
            ecolor=colours[point.method],
            elinewidth=1.0,
            capsize=3,
            alpha=0.8,
            zorder=2,
        )
        axes.plot(
            point.tokens_per_episode,
            point.success_percent,
            marker=markers[point.agent],
            color=colours[point.method],
            markersize=7,
            markeredgecolor="white",
            markeredgewidth=0.6,
            linestyle="",
            zorder=5,
        )
    tokens = [point.tokens_per_episode for point in points]
    low, high = min(tokens), max(tokens)
    spread = high - low if high > low else max(high, 1000.0) * 0.5
    axes.set_xlim(max(0.0, low - 0.15 * spread), high + 0.15 * spread)
    axes.set_ylim(*_success_limits(points))
    axes.xaxis.set_major_formatter(FuncFormatter(_format_tokens))
    axes.set_xlabel("Tokens per episode (policy + retrieval, mean)")
    several = any(point.seeds > 1 for point in points)
    axes.set_ylabel(
        "Success rate (%), mean over seeds; bars: 95% Wilson CIs of the seeds"
        if several
        else "Success rate (%), 95% Wilson CI"
    )
    axes.set_title(title)
    axes.grid(True, alpha=0.3)

    method_handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[method], label=method_label(method))
        for method in in_paper_order([point.method for point in points], METHODS)
    ]
    agent_handles = [
        Line2D([], [], marker=markers[agent], linestyle="", color="0.35", label=agent_label(agent))
        for agent in in_paper_order([point.agent for point in points], AGENTS)
    ]
    figure.legend(
        handles=method_handles, title="Method (colour)", loc="upper left", bbox_to_anchor=(0.77, 0.91)
    )
    figure.legend(
        handles=agent_handles, title="Agent (marker)", loc="lower left", bbox_to_anchor=(0.77, 0.11)
    )

    canvas.draw()
    renderer = canvas.get_renderer()
    pixel_positions = [
        (float(x), float(y))
        for x, y in (axes.transData.transform((p.tokens_per_episode, p.success_percent)) for p in points)
    ]
    labels = [
        PointLabel(p.label, p.tokens_per_episode, p.success_percent, p.ci_low, p.ci_high) for p in points
    ]
    annotations = place_labels(axes, renderer, labels, pixel_positions)
    figure.savefig(output, dpi=DPI)
    # The label's background patch is its visible box; the annotation's own extent includes the leader.
    boxes = [annotation.get_bbox_patch().get_window_extent(renderer) for annotation in annotations]
    width, height = canvas.get_width_height()
    return FigureLayout(
        path=output,
        width_px=width,
        height_px=height,
        label_boxes=[(float(box.x0), float(box.y0), float(box.x1), float(box.y1)) for box in boxes],
        point_positions=pixel_positions,
    )


def figure_points(frame: pd.DataFrame) -> list[FigurePoint]:
    """One point per evaluated method × agent with episodes (of the metrics frame, ``evaluation.frame``),
    in paper order: over several seeds, the means, the sd and the widest span of their intervals."""
    points = []
    for _, row in seed_summary(frame).iterrows():
        values = [
            plain(row[name])
            for name in ("total_tokens_per_episode_mean", "success_percent_mean", "ci_low_min", "ci_high_max")
        ]
        if int(row["runs"]) == 0 or any(value is None for value in values):
            continue
        tokens, success, low, high = values
        seeds = int(row["runs"])
        sd = plain(row["success_percent_sd"]) if seeds > 1 else None
        points.append(FigurePoint(row["method"], row["agent"], tokens, success, low, high, seeds, sd))
    method_rank = {m: i for i, m in enumerate(in_paper_order([p.method for p in points], METHODS))}
    agent_rank = {a: i for i, a in enumerate(in_paper_order([p.agent for p in points], AGENTS))}
    return sorted(points, key=lambda p: (agent_rank[p.agent], method_rank[p.method]))
