"""The retrieval ablation's comparison table: one row per grid point (retriever, k), each evaluated method's
headline figure and tokens per episode, beside the base agent on the same tasks.

The headline follows the report (``EnvProfile.headline``): ALFWorld's success % with its Wilson 95%
interval, WebShop's score (mean reward × 100) with its success %. Tokens per episode are policy plus
retrieval tokens, the retrieval share in brackets (the paper counts the re-ranker's tokens in WebShop's
totals and not in ALFWorld's: both are here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ragdistill.evaluation.metrics import MethodMetrics
from ragdistill.evaluation.paper_results import method_label

MISSING = "—"
Headline = Literal["success", "score"]


@dataclass
class MethodCell:
    """One evaluated method at one point: its metrics, or why there are none."""

    metrics: MethodMetrics | None = None
    not_run_reason: str | None = None


@dataclass
class AblationRow:
    """One grid point. ``teacher_wins``: (successes, episodes) of the teacher stages on the training
    tasks, the episodes a distilled student learns from (None when no teacher played)."""

    retriever: str
    k: int
    pipeline: bool
    cells: dict[str, MethodCell] = field(default_factory=dict)
    teacher_wins: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "retriever": self.retriever,
            "k": self.k,
            "pipeline": self.pipeline,
            "teacher_wins": list(self.teacher_wins) if self.teacher_wins else None,
            "methods": {
                method: {
                    "metrics": cell.metrics.to_dict() if cell.metrics else None,
                    "not_run_reason": cell.not_run_reason,
                }
                for method, cell in self.cells.items()
            },
        }


def headline_text(metrics: MethodMetrics, headline: Headline) -> str:
    """``12.5 [3.5, 36.0]`` (success % and its interval) or, for a score headline, ``61.5 (success 40.0)``."""
    if metrics.empty:
        return f"{MISSING} (no episodes)"
    if headline == "score":
        return f"{_fixed(metrics.score_percent)} (success {_fixed(metrics.success_percent)})"
    interval = f" [{_fixed(metrics.success_ci_low)}, {_fixed(metrics.success_ci_high)}]"
    return _fixed(metrics.success_percent) + (interval if metrics.success_ci_low is not None else "")


def tokens_text(metrics: MethodMetrics) -> str:
    """Total tokens per episode and, in brackets, the retrieval share: ``27.4k (1.2k)``."""
    if metrics.total_tokens_per_episode is None:
        return MISSING
    return (
        f"{_thousands(metrics.total_tokens_per_episode)} ({_thousands(metrics.retrieval_tokens_per_episode)})"
    )


def render_ablation_table(
    rows: Sequence[AblationRow],
    methods: Sequence[str],
    *,
    run_name: str,
    env: str,
    eval_split: str,
    headline: Headline,
    base: MethodCell,
    grid: str = "",
) -> str:
    """The ablation as markdown: a title, the grid (``grid``, as configured), what each column holds, the
    table and the base agent's line."""
    figure = "score (success %)" if headline == "score" else "success % [95% CI]"
    header = ["retriever", "k"]
    for method in methods:
        header += [f"{method_label(method)} {figure}", f"{method_label(method)} tokens/episode (retrieval)"]
    with_teacher = any(row.teacher_wins is not None for row in rows)
    if with_teacher:
        header.append("teacher wins on training tasks")
    lines = [
        f"# Retrieval ablation: {run_name}",
        "",
        f"{env}, {eval_split}; every point's hint bank is the pipeline's. The row marked * is the config's "
        "own setting (the pipeline's own folders).",
        "",
        *([f"Grid: {grid}.", ""] if grid else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [row.retriever + (" *" if row.pipeline else ""), str(row.k)]
        for method in methods:
            cell = row.cells.get(method, MethodCell(not_run_reason="not asked for"))
            if cell.metrics is None:
                cells += [f"{MISSING} ({cell.not_run_reason or 'not run'})", MISSING]
            else:
                cells += [headline_text(cell.metrics, headline), tokens_text(cell.metrics)]
        if with_teacher:
            wins = row.teacher_wins
            cells.append(f"{wins[0]}/{wins[1]}" if wins else MISSING)
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    lines.append("")
    if base.metrics is not None:
        lines.append(
            f"Base agent (no hints), same tasks: {headline_text(base.metrics, headline)}, "
            f"{tokens_text(base.metrics)} tokens/episode."
        )
    else:
        lines.append(f"Base agent (no hints): {MISSING} ({base.not_run_reason or 'not run'}).")
    return "\n".join(lines) + "\n"


def _fixed(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _thousands(value: float | None) -> str:
    return MISSING if value is None else f"{value / 1000:.1f}k"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
