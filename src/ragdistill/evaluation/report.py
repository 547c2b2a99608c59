"""The stage-E report: one markdown page with the paper-shaped table, every metric, the spread across
sampling seeds, datasets, training and, for a ``paper-*`` config, the paper's own numbers beside ours.

Every metrics table is built from the metrics frame (``evaluation.frame``): one run root's, or several
concatenated. Under several seeds a cell shows the mean ± sd across them, and each run's 95% Wilson
interval stands beside it in the seeds table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from ragdistill.evaluation.frame import MethodResult, plain
from ragdistill.evaluation.paper_results import (
    METHODS,
    PAPER_SOURCE,
    PaperRow,
    agent_label,
    method_label,
    paper_rows_for_config,
)
from ragdistill.evaluation.tables import (
    MISSING,
    Evaluations,
    Footnotes,
    format_tokens,
    markdown_table,
    metrics_table,
    number,
    over_seeds,
    seeds_table,
    task_type_table,
)

__all__ = ["MISSING", "MethodResult", "ReportInputs", "TrainingSummary", "format_tokens", "render_report"]

Headline = Literal["success", "score"]
TokenKind = Literal["policy", "total"]


@dataclass
class TrainingSummary:
    """One student's training run, or the reason it was skipped."""

    student: str
    examples: int | None = None
    steps: int | None = None
    epochs: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    seconds: float | None = None
    skipped_reason: str | None = None


@dataclass
class ReportInputs:
    """Everything the report shows. ``headline`` picks the paper table's figure (ALFWorld: success %,
    WebShop: score); ``table_tokens`` its token count (the paper's ALFWorld counts are policy tokens only,
    its WebShop counts include the retriever LLM's). ``metrics`` is the metrics frame
    (``evaluation.frame.metrics_frame``: one run root's, or several concatenated). ``datasets`` maps a
    dataset name to a plain dict of counts (nested dicts such as per-source counts are rendered inline)."""

    run_name: str
    config_name: str
    env: str
    eval_split: str
    eval_task_count: int
    metrics: pd.DataFrame
    model: str = ""
    headline: Headline = "success"
    table_tokens: TokenKind = "total"
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: list[TrainingSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure_path: str | None = None


def _headline_column(headline: Headline) -> str:
    return "success_percent" if headline == "success" else "score_percent"


def _token_column(kind: TokenKind) -> str:
    return "policy_tokens_per_episode" if kind == "policy" else "total_tokens_per_episode"


def _token_kind_label(kind: TokenKind) -> str:
    return "policy tokens" if kind == "policy" else "policy + retrieval tokens"


def _header(inputs: ReportInputs) -> list[str]:
    lines = [
        f"# Evaluation report: {inputs.run_name}",
        "",
        f"- config: `{inputs.config_name}`",
        f"- environment: {inputs.env}; eval split: {inputs.eval_split} ({inputs.eval_task_count} tasks, pinned)",
    ]
    if inputs.model:
        lines.append(f"- model: {inputs.model}")
    return [*lines, ""]


def _paper_layout(inputs: ReportInputs, evaluations: Evaluations) -> list[str]:
    metric = "success %" if inputs.headline == "success" else "score (mean reward × 100)"
    tokens = _token_kind_label(inputs.table_tokens)
    notes = Footnotes()

    def render(summary: pd.Series) -> str:
        tokens_mean = plain(summary[f"{_token_column(inputs.table_tokens)}_mean"])
        return f"{over_seeds(summary, _headline_column(inputs.headline))} ({format_tokens(tokens_mean)})"

    rows = [
        [agent_label(agent)]
        + [evaluations.cell(method, agent, notes, render) for method in evaluations.methods]
        for agent in evaluations.agents
    ]
    spread = " Several seeds: mean ± sd across them." if evaluations.several_seeds else ""
    lines = [
        "## Results (paper layout)",
        "",
        f"Cells: {metric} ({tokens} per episode).{spread}",
        "",
        *markdown_table(["Agent"] + [method_label(m) for m in evaluations.methods], rows),
    ]
    if notes.reasons:
        lines += ["", *notes.lines()]
    return [*lines, ""]


def _paper_comparison(inputs: ReportInputs, evaluations: Evaluations, paper: Sequence[PaperRow]) -> list[str]:
    agent = paper[0].agent
    metric = paper[0].metric
    ours_label = f"ours ({inputs.model})" if inputs.model else "ours"
    notes = Footnotes()

    def render(summary: pd.Series) -> str:
        tokens_mean = plain(summary[f"{_token_column(inputs.table_tokens)}_mean"])
        return f"{over_seeds(summary, _headline_column(metric))} ({format_tokens(tokens_mean)})"

    rows = []
    for method in METHODS:
        paper_cells = []
        for row in paper:
            cell = row.cells[method]
            tokens = f" ({format_tokens(cell.tokens_per_episode)})" if cell.tokens_per_episode else ""
            paper_cells.append(f"{cell.value:.2f}{tokens}")
        rows.append([method_label(method), *paper_cells, evaluations.cell(method, agent, notes, render)])
    header = ["Method"] + [f"paper {row.model}" for row in paper] + [ours_label]
    lines = [
        f"## The paper's numbers beside ours ({paper[0].env}, {agent_label(agent)})",
        "",
        f"Cells: {paper[0].metric_label} (tokens per episode; ours: {_token_kind_label(inputs.table_tokens)}). "
        f"Paper: {PAPER_SOURCE}; it reports tokens for the 14B model only, its ALFWorld counts without the "
        "retriever's tokens and its WebShop counts with them. RAG runs vary by several points between reruns.",
        "",
        *markdown_table(header, rows),
    ]
    if notes.reasons:
        lines += ["", *notes.lines()]
    return [*lines, ""]


def _inline(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_inline(item)}" for key, item in value.items()) or MISSING
    if isinstance(value, list | tuple):
        return ", ".join(_inline(item) for item in value) or MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _datasets(datasets: dict[str, dict[str, Any]]) -> list[str]:
    if not datasets:
        return ["## Datasets", "", "No dataset was built.", ""]
    columns = list(dict.fromkeys(key for counts in datasets.values() for key in counts))
    rows = [[name] + [_inline(counts.get(key)) for key in columns] for name, counts in datasets.items()]
    return ["## Datasets", "", *markdown_table(["Dataset", *columns], rows), ""]


def _training(training: Sequence[TrainingSummary]) -> list[str]:
    if not training:
        return ["## Training", "", "No student was trained.", ""]
    rows = []
    for summary in training:
        seconds = f"{summary.seconds:.0f} s" if summary.seconds is not None else MISSING
        epochs = f"{summary.epochs:g}" if summary.epochs is not None else MISSING
        rows.append(
            [
                summary.student,
                _inline(summary.examples),
                _inline(summary.steps),
                epochs,
                number(summary.first_loss, 4),
                number(summary.final_loss, 4),
                seconds,
                f"skipped: {summary.skipped_reason}" if summary.skipped_reason else "",
            ]
        )
    header = ["Student", "Examples", "Steps", "Epochs", "First loss", "Final loss", "Time", "Note"]
    return ["## Training", "", *markdown_table(header, rows), ""]


def render_report(inputs: ReportInputs) -> str:
    """The whole report as markdown."""
    evaluations = Evaluations(inputs.metrics)
    lines = _header(inputs)
    lines += _paper_layout(inputs, evaluations)
    paper = paper_rows_for_config(inputs.config_name)
    if paper:
        lines += _paper_comparison(inputs, evaluations, paper)
    if inputs.figure_path:
        lines += [
            "## Accuracy and tokens",
            "",
            f"![Success rate against tokens per episode]({inputs.figure_path})",
            "",
        ]
    lines += metrics_table(evaluations, inputs.eval_task_count)
    lines += seeds_table(evaluations)
    lines += task_type_table(evaluations)
    lines += _datasets(inputs.datasets)
    lines += _training(inputs.training)
    if inputs.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in inputs.notes), ""]
    return "\n".join(lines).rstrip() + "\n"
