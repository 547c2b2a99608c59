"""Stage E: metrics per evaluated method × agent × seed, the metrics frame, the markdown report and the
accuracy–tokens figure.

The frame's, the report's and the figure's names load pandas and matplotlib on first use only, so the
metrics (which the adapter registry reads) stay cheap to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ragdistill.evaluation.metrics import MethodMetrics, compute_metrics, wilson_interval
from ragdistill.evaluation.paper_results import (
    PAPER_ROWS,
    PaperCell,
    PaperRow,
    paper_rows,
    paper_rows_for_config,
)

if TYPE_CHECKING:
    from ragdistill.evaluation.figure import (
        FigureLayout,
        FigurePoint,
        accuracy_tokens_figure,
        figure_points,
    )
    from ragdistill.evaluation.frame import (
        MethodResult,
        RunColumns,
        combined,
        metrics_document,
        metrics_frame,
        parquet_bytes,
        read_metrics,
        seed_summary,
    )
    from ragdistill.evaluation.report import ReportInputs, TrainingSummary, render_report

_LAZY_NAMES = {
    "figure": ("FigureLayout", "FigurePoint", "accuracy_tokens_figure", "figure_points"),
    "frame": (
        "MethodResult",
        "RunColumns",
        "combined",
        "metrics_document",
        "metrics_frame",
        "parquet_bytes",
        "read_metrics",
        "seed_summary",
    ),
    "report": ("ReportInputs", "TrainingSummary", "render_report"),
}
_LAZY = {name: module for module, names in _LAZY_NAMES.items() for name in names}

__all__ = [
    "PAPER_ROWS",
    "FigureLayout",
    "FigurePoint",
    "MethodMetrics",
    "MethodResult",
    "PaperCell",
    "PaperRow",
    "ReportInputs",
    "RunColumns",
    "TrainingSummary",
    "accuracy_tokens_figure",
    "combined",
    "compute_metrics",
    "figure_points",
    "metrics_document",
    "metrics_frame",
    "paper_rows",
    "paper_rows_for_config",
    "parquet_bytes",
    "read_metrics",
    "render_report",
    "seed_summary",
    "wilson_interval",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"ragdistill.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
