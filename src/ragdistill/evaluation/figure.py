"""The accuracy–tokens figure: one point per method × agent, success % against tokens per episode.

Under several sampling seeds a point is the mean over the seeds (success and tokens), its label adds the
sd, and its bar spans the lowest to the highest bound of the seeds' 95% Wilson intervals.

Labels are placed by a small search: each label tries offsets on rings around its point, nearest first,
and a cost counts what it would hide or cross (other labels and points most, error bars and other
leader lines less, the axes edge, and distance). A greedy pass places every label, then refinement passes
move each one to its cheapest spot given the others. The drawn boxes are returned so tests can check them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation
from matplotlib.ticker import FuncFormatter
from matplotlib.transforms import Bbox

from ragdistill.evaluation.frame import plain, seed_summary
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
_MARKER_HALF_PX = 6.0
_RADII_PT = (7.0, 16.0, 28.0, 42.0, 58.0, 76.0, 100.0, 130.0, 165.0, 200.0)
_ANGLES = (30, 150, 330, 210, 0, 180, 60, 120, 300, 240, 90, 270)
_LABEL_FONT_SIZE = 8
_HARD_PENALTY = 1000.0
_LABEL_PAD_FRACTION = 0.15
_LABEL_MARGIN_PX = _LABEL_PAD_FRACTION * _LABEL_FONT_SIZE * DPI / 72.0 + 1.0
_DISTANCE_PENALTY_PER_PX = 0.15
_REFINEMENT_PASSES = 3


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


def _overlap_area(box: Bbox, others: Sequence[Bbox]) -> float:
    total = 0.0
    for other in others:
        width = min(box.x1, other.x1) - max(box.x0, other.x0)
        height = min(box.y1, other.y1) - max(box.y0, other.y0)
        if width > 0 and height > 0:
            total += width * height
    return total


def _outside_area(box: Bbox, frame: Bbox) -> float:
    inside_width = max(0.0, min(box.x1, frame.x1) - max(box.x0, frame.x0))
    inside_height = max(0.0, min(box.y1, frame.y1) - max(box.y0, frame.y0))
    return box.width * box.height - inside_width * inside_height


Segment = tuple[float, float, float, float]


def _segment_hits_box(segment: Segment, box: Bbox) -> bool:
    """Liang–Barsky clipping: does the segment pass through the box's interior?"""
    x0, y0, x1, y1 = segment
    dx, dy = x1 - x0, y1 - y0
    low, high = 0.0, 1.0
    for p, q in ((-dx, x0 - box.x0), (dx, box.x1 - x0), (-dy, y0 - box.y0), (dy, box.y1 - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low > high:
            return False
    return high - low > 1e-6


def _segments_cross(first: Segment, second: Segment) -> bool:
    def orientation(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> float:
        return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)

    ax, ay, bx, by = first
    cx, cy, dx, dy = second
    return (
        orientation(ax, ay, bx, by, cx, cy) * orientation(ax, ay, bx, by, dx, dy) < 0
        and orientation(cx, cy, dx, dy, ax, ay) * orientation(cx, cy, dx, dy, bx, by) < 0
    )


def _alignment(offset_x: float, offset_y: float) -> tuple[str, str]:
    horizontal = "left" if offset_x > 0.1 else "right" if offset_x < -0.1 else "center"
    vertical = "bottom" if offset_y > 0.1 else "top" if offset_y < -0.1 else "center"
    return horizontal, vertical


def _candidate_box(x: float, y: float, offset: tuple[float, float], size: tuple[float, float]) -> Bbox:
    (offset_x, offset_y), (width, height) = offset, size
    horizontal, vertical = _alignment(offset_x, offset_y)
    left = x + offset_x - {"left": 0.0, "right": width, "center": width / 2}[horizontal]
    bottom = y + offset_y - {"bottom": 0.0, "top": height, "center": height / 2}[vertical]
    margin = _LABEL_MARGIN_PX
    return Bbox.from_extents(left - margin, bottom - margin, left + width + margin, bottom + height + margin)


def _leader(x: float, y: float, box: Bbox) -> Segment:
    return (x, y, min(max(x, box.x0), box.x1), min(max(y, box.y0), box.y1))


@dataclass
class _Placement:
    offset: tuple[float, float]
    box: Bbox
    leader: Segment | None


@dataclass
class _Layout:
    """Every point's marker and error bar, and the labels placed so far, in pixels."""

    markers: list[Bbox]
    error_bars: list[Bbox]
    placements: dict[int, _Placement]

    def _nearer_to_another_point(self, own: int, box: Bbox) -> bool:
        """A label that sits closer to someone else's point reads as that point's label."""

        def distance(marker: Bbox) -> float:
            x, y = (marker.x0 + marker.x1) / 2, (marker.y0 + marker.y1) / 2
            return math.hypot(x - min(max(x, box.x0), box.x1), y - min(max(y, box.y0), box.y1))

        own_distance = distance(self.markers[own])
        return any(
            distance(marker) < own_distance for index, marker in enumerate(self.markers) if index != own
        )

    def cost(self, own: int, box: Bbox, leader: Segment | None, frame: Bbox) -> float:
        """0 for a label that touches nothing; collisions that hide text or points cost the most."""
        labels = [placed.box for index, placed in self.placements.items() if index != own]
        leaders = [
            placed.leader
            for index, placed in self.placements.items()
            if index != own and placed.leader is not None
        ]
        blocking = sum(_overlap_area(box, [other]) > 0 for other in labels + self.markers)
        total = _HARD_PENALTY * blocking + _overlap_area(box, labels + self.markers)
        outside = _outside_area(box, frame)
        total += _HARD_PENALTY + outside if outside > 0 else 0.0
        total += 120.0 * sum(_overlap_area(box, [bar]) > 0 for bar in self.error_bars)
        total += 300.0 * sum(_segment_hits_box(other, box) for other in leaders)
        if self._nearer_to_another_point(own, box):
            total += 40.0 if leader is not None else 250.0
        if leader is not None:
            other_markers = [m for index, m in enumerate(self.markers) if index != own]
            other_bars = [bar for index, bar in enumerate(self.error_bars) if index != own]
            total += 300.0 * sum(_segment_hits_box(leader, label) for label in labels)
            total += 150.0 * sum(_segment_hits_box(leader, marker) for marker in other_markers)
            total += 100.0 * sum(_segments_cross(leader, other) for other in leaders)
            total += 30.0 * sum(_segment_hits_box(leader, bar) for bar in other_bars)
        return total


def _candidate_offsets(pixels_per_point: float) -> list[tuple[float, float]]:
    """Offsets in pixels, nearest ring first; beyond the first ring no straight up/down (the leader
    would run along the point's own error bar)."""
    offsets = []
    for ring, radius in enumerate(_RADII_PT):
        for angle in _ANGLES:
            if ring > 0 and angle in (90, 270):
                continue
            radians = math.radians(angle)
            offsets.append(
                (radius * pixels_per_point * math.cos(radians), radius * pixels_per_point * math.sin(radians))
            )
    return offsets


def _best_placement(
    layout: _Layout,
    index: int,
    anchor: tuple[float, float],
    size: tuple[float, float],
    offsets: Sequence[tuple[float, float]],
    near_limit: float,
    frame: Bbox,
) -> tuple[float, _Placement]:
    x, y = anchor
    best: tuple[float, _Placement] | None = None
    for offset in offsets:
        box = _candidate_box(x, y, offset, size)
        leader = _leader(x, y, box) if math.hypot(*offset) > near_limit else None
        cost = layout.cost(index, box, leader, frame)
        if cost == 0.0:
            return 0.0, _Placement(offset, box, leader)
        cost += _DISTANCE_PENALTY_PER_PX * math.hypot(*offset)
        if best is None or cost < best[0]:
            best = (cost, _Placement(offset, box, leader))
    assert best is not None
    return best


def _place_labels(
    axes: Axes, renderer: RendererBase, points: Sequence[FigurePoint], pixels: Sequence[tuple[float, float]]
) -> list[Annotation]:
    """Annotate every point where its label collides least; return the annotations.

    A greedy pass places labels in order; refinement passes then move each label to its best spot
    given all the others, which undoes most crossings the greedy order caused.
    """
    frame = axes.get_window_extent(renderer)
    pixels_per_point = axes.figure.dpi / 72.0
    near_limit = _RADII_PT[0] * pixels_per_point + 0.5
    layout = _Layout(markers=[], error_bars=[], placements={})
    sizes: list[tuple[float, float]] = []
    for point, (x, y) in zip(points, pixels, strict=True):
        _, low = axes.transData.transform((point.tokens_per_episode, point.ci_low))
        _, high = axes.transData.transform((point.tokens_per_episode, point.ci_high))
        half = _MARKER_HALF_PX
        layout.markers.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
        layout.error_bars.append(Bbox.from_extents(x - 3.0, low, x + 3.0, high))
        probe = axes.text(0, 0, point.label, fontsize=_LABEL_FONT_SIZE, transform=None)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((extent.width, extent.height))

    offsets = _candidate_offsets(pixels_per_point)
    for index, anchor in enumerate(pixels):
        _, layout.placements[index] = _best_placement(
            layout, index, anchor, sizes[index], offsets, near_limit, frame
        )
    for _ in range(_REFINEMENT_PASSES):
        moved = False
        for index, anchor in enumerate(pixels):
            current = layout.placements[index]
            current_cost = layout.cost(index, current.box, current.leader, frame)
            current_cost += _DISTANCE_PENALTY_PER_PX * math.hypot(*current.offset) if current_cost else 0.0
            cost, candidate = _best_placement(layout, index, anchor, sizes[index], offsets, near_limit, frame)
            if cost < current_cost - 1e-6:
                layout.placements[index], moved = candidate, True
        if not moved:
            break

    drawn: list[Annotation] = []
    for index, point in enumerate(points):
        placement = layout.placements[index]
        offset_x, offset_y = placement.offset
        horizontal, vertical = _alignment(offset_x, offset_y)
        annotation = axes.annotate(
            point.label,
            (point.tokens_per_episode, point.success_percent),
            xytext=(offset_x / pixels_per_point, offset_y / pixels_per_point),
            textcoords="offset points",
            ha=horizontal,
            va=vertical,
            fontsize=_LABEL_FONT_SIZE,
            zorder=4,
            bbox={
                "boxstyle": f"round,pad={_LABEL_PAD_FRACTION}",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.8,
            },
            arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6, "shrinkA": 1, "shrinkB": 5}
            if placement.leader is not None
            else None,
        )
        drawn.append(annotation)
    return drawn


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
    annotations = _place_labels(axes, renderer, points, pixel_positions)
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
