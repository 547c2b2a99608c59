"""Where the figure's point labels go: a small search that keeps labels off each other and the data.

Each label tries offsets on rings around its point, nearest first, and a cost counts what it would hide
or cross (other labels and points most, error bars and other leader lines less, the axes edge, and
distance). A greedy pass places every label, then refinement passes move each one to its cheapest spot
given the others. Everything is measured in pixels of the drawn figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.text import Annotation
from matplotlib.transforms import Bbox

_MARKER_HALF_PX = 6.0
_RADII_PT = (7.0, 16.0, 28.0, 42.0, 58.0, 76.0, 100.0, 130.0, 165.0, 200.0)
_ANGLES = (30, 150, 330, 210, 0, 180, 60, 120, 300, 240, 90, 270)
_LABEL_FONT_SIZE = 8
_HARD_PENALTY = 1000.0
_LABEL_PAD_FRACTION = 0.15
_DISTANCE_PENALTY_PER_PX = 0.15
_REFINEMENT_PASSES = 3


@dataclass(frozen=True)
class PointLabel:
    """A point's label text, and the point with its error bar, in data coordinates."""

    text: str
    x: float
    y: float
    y_low: float
    y_high: float


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


def _candidate_box(
    x: float, y: float, offset: tuple[float, float], size: tuple[float, float], margin: float
) -> Bbox:
    (offset_x, offset_y), (width, height) = offset, size
    horizontal, vertical = _alignment(offset_x, offset_y)
    left = x + offset_x - {"left": 0.0, "right": width, "center": width / 2}[horizontal]
    bottom = y + offset_y - {"bottom": 0.0, "top": height, "center": height / 2}[vertical]
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


@dataclass(frozen=True)
class _Search:
    """What every label's search shares: the offsets to try, the distance beyond which a label gets a
    leader line, the axes frame and the margin around a label's text, in pixels."""

    offsets: list[tuple[float, float]]
    near_limit: float
    frame: Bbox
    margin: float


def _best_placement(
    layout: _Layout, index: int, anchor: tuple[float, float], size: tuple[float, float], search: _Search
) -> tuple[float, _Placement]:
    x, y = anchor
    best: tuple[float, _Placement] | None = None
    frame, near_limit = search.frame, search.near_limit
    for offset in search.offsets:
        box = _candidate_box(x, y, offset, size, search.margin)
        leader = _leader(x, y, box) if math.hypot(*offset) > near_limit else None
        cost = layout.cost(index, box, leader, frame)
        if cost == 0.0:
            return 0.0, _Placement(offset, box, leader)
        cost += _DISTANCE_PENALTY_PER_PX * math.hypot(*offset)
        if best is None or cost < best[0]:
            best = (cost, _Placement(offset, box, leader))
    assert best is not None
    return best


def place_labels(
    axes: Axes, renderer: RendererBase, labels: Sequence[PointLabel], pixels: Sequence[tuple[float, float]]
) -> list[Annotation]:
    """Annotate every point (drawn at ``pixels``) where its label collides least; return the annotations.

    A greedy pass places labels in order; refinement passes then move each label to its best spot
    given all the others, which undoes most crossings the greedy order caused.
    """
    pixels_per_point = axes.figure.dpi / 72.0
    layout = _Layout(markers=[], error_bars=[], placements={})
    sizes: list[tuple[float, float]] = []
    for label, (x, y) in zip(labels, pixels, strict=True):
        _, low = axes.transData.transform((label.x, label.y_low))
        _, high = axes.transData.transform((label.x, label.y_high))
        half = _MARKER_HALF_PX
        layout.markers.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
        layout.error_bars.append(Bbox.from_extents(x - 3.0, low, x + 3.0, high))
        probe = axes.text(0, 0, label.text, fontsize=_LABEL_FONT_SIZE, transform=None)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((extent.width, extent.height))

    search = _Search(
        offsets=_candidate_offsets(pixels_per_point),
        near_limit=_RADII_PT[0] * pixels_per_point + 0.5,
        frame=axes.get_window_extent(renderer),
        margin=_LABEL_PAD_FRACTION * _LABEL_FONT_SIZE * axes.figure.dpi / 72.0 + 1.0,
    )
    for index, anchor in enumerate(pixels):
        _, layout.placements[index] = _best_placement(layout, index, anchor, sizes[index], search)
    for _ in range(_REFINEMENT_PASSES):
        moved = False
        for index, anchor in enumerate(pixels):
            current = layout.placements[index]
            current_cost = layout.cost(index, current.box, current.leader, search.frame)
            current_cost += _DISTANCE_PENALTY_PER_PX * math.hypot(*current.offset) if current_cost else 0.0
            cost, candidate = _best_placement(layout, index, anchor, sizes[index], search)
            if cost < current_cost - 1e-6:
                layout.placements[index], moved = candidate, True
        if not moved:
            break

    drawn: list[Annotation] = []
    for index, label in enumerate(labels):
        placement = layout.placements[index]
        offset_x, offset_y = placement.offset
        horizontal, vertical = _alignment(offset_x, offset_y)
        annotation = axes.annotate(
            label.text,
            (label.x, label.y),
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
