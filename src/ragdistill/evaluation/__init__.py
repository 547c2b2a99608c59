"""Stage E: metrics per evaluated method × agent, the markdown report and the accuracy–tokens figure.

The figure's names load matplotlib on first use only, so metrics and reports stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragdistill.evaluation.metrics import MethodMetrics, compute_metrics, wilson_interval
from ragdistill.evaluation.paper_results import (
    PAPER_ROWS,
    PaperCell,
    PaperRow,
    paper_rows,
    paper_rows_for_config,
)
from ragdistill.evaluation.report import MethodResult, ReportInputs, TrainingSummary, render_report

if TYPE_CHECKING:
    from ragdistill.evaluation.figure import (
        FigureLayout,
        FigurePoint,
        accuracy_tokens_figure,
        figure_points,
    )

_FIGURE_NAMES = {"FigureLayout", "FigurePoint", "accuracy_tokens_figure", "figure_points"}

__all__ = [
    "PAPER_ROWS",
    "FigureLayout",
    "FigurePoint",
    "MethodMetrics",
    "MethodResult",
    "PaperCell",
    "PaperRow",
    "ReportInputs",
    "TrainingSummary",
    "accuracy_tokens_figure",
    "compute_metrics",
    "figure_points",
    "paper_rows",
    "paper_rows_for_config",
    "render_report",
    "wilson_interval",
]


def __getattr__(name: str) -> Any:
    if name in _FIGURE_NAMES:
        from ragdistill.evaluation import figure

        return getattr(figure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
