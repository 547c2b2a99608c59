"""The stage-E report: one markdown page with the paper-shaped table, every metric, datasets, training
and, for a ``paper-*`` config, the paper's own numbers beside ours."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ragdistill.evaluation.metrics import MethodMetrics
from ragdistill.evaluation.paper_results import (
    AGENTS,
    METHODS,
    PAPER_SOURCE,
    PaperRow,
    agent_label,
    in_paper_order,
    method_label,
    paper_rows_for_config,
)

MISSING = "—"
Headline = Literal["success", "score"]
TokenKind = Literal["policy", "total"]


@dataclass
class MethodResult:
    """One evaluated method × agent: its metrics, or why it was not run (``metrics`` None)."""

    method: str
    agent: str
    metrics: MethodMetrics | None = None
    not_run_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "agent": self.agent,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "not_run_reason": self.not_run_reason,
        }


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
    its WebShop counts include the retriever LLM's). ``datasets`` maps a dataset name to a plain dict of
    counts (nested dicts such as per-source counts are rendered inline)."""

    run_name: str
    config_name: str
    env: str
    eval_split: str
    eval_task_count: int
    results: list[MethodResult]
    model: str = ""
    headline: Headline = "success"
    table_tokens: TokenKind = "total"
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: list[TrainingSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure_path: str | None = None


def format_tokens(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _number(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _headline_value(metrics: MethodMetrics, headline: Headline) -> float | None:
    return metrics.success_percent if headline == "success" else metrics.score_percent


def _table_tokens(metrics: MethodMetrics, kind: TokenKind) -> float | None:
    return metrics.policy_tokens_per_episode if kind == "policy" else metrics.total_tokens_per_episode


def _token_kind_label(kind: TokenKind) -> str:
    return "policy tokens" if kind == "policy" else "policy + retrieval tokens"


class _Footnotes:
    """Numbered reasons for "—" cells; the same reason shares one number."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self.cells: dict[int, list[str]] = {}

    def mark(self, reason: str, where: str) -> str:
        number = self.reasons.setdefault(reason, len(self.reasons) + 1)
        self.cells.setdefault(number, []).append(where)
        return f"{MISSING} [{number}]"

    def lines(self) -> list[str]:
        return [
            f"- [{number}] {', '.join(self.cells[number])}: {reason}"
            for reason, number in self.reasons.items()
        ]


class _Results:
    def __init__(self, results: Sequence[MethodResult]) -> None:
        self.by_key = {(result.method, result.agent): result for result in results}
        self.agents = in_paper_order((result.agent for result in results), AGENTS)
        self.methods = in_paper_order(list(METHODS) + [result.method for result in results], METHODS)

    def cell(self, method: str, agent: str, notes: _Footnotes, render: Any) -> str:
        """``render(metrics)`` for a method that ran with episodes, else "—" with a footnote why not."""
        where = f"{method_label(method)} · {agent_label(agent)}"
        result = self.by_key.get((method, agent))
        if result is None:
            return notes.mark(
                "not evaluated in this run (not in `evaluation.methods`, or its evaluation has not run yet)",
                where,
            )
        if result.metrics is None:
            return notes.mark(result.not_run_reason or "not run (no reason recorded)", where)
        if result.metrics.empty:
            return notes.mark("evaluated, but no episode was recorded", where)
        return render(result.metrics)

    def ran(self) -> list[MethodResult]:
        keys = [(m, a) for a in self.agents for m in self.methods if (m, a) in self.by_key]
        return [self.by_key[key] for key in keys if self.by_key[key].metrics is not None]


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


def _paper_layout(inputs: ReportInputs, results: _Results) -> list[str]:
    metric = "success %" if inputs.headline == "success" else "score (mean reward × 100)"
    tokens = _token_kind_label(inputs.table_tokens)
    notes = _Footnotes()

    def render(metrics: MethodMetrics) -> str:
        value = _headline_value(metrics, inputs.headline)
        return f"{_number(value)} ({format_tokens(_table_tokens(metrics, inputs.table_tokens))})"

    rows = [
        [agent_label(agent)] + [results.cell(method, agent, notes, render) for method in results.methods]
        for agent in results.agents
    ]
    lines = [
        "## Results (paper layout)",
        "",
        f"Cells: {metric} ({tokens} per episode).",
        "",
        *_table(["Agent"] + [method_label(m) for m in results.methods], rows),
    ]
    if notes.reasons:
        lines += ["", *notes.lines()]
    return [*lines, ""]


def _paper_comparison(inputs: ReportInputs, results: _Results, paper: Sequence[PaperRow]) -> list[str]:
    agent = paper[0].agent
    metric = paper[0].metric
    ours_label = f"ours ({inputs.model})" if inputs.model else "ours"
    notes = _Footnotes()

    def render(metrics: MethodMetrics) -> str:
        value = _headline_value(metrics, metric)
        return f"{_number(value)} ({format_tokens(_table_tokens(metrics, inputs.table_tokens))})"

    rows = []
    for method in METHODS:
        paper_cells = []
        for row in paper:
            cell = row.cells[method]
            tokens = f" ({format_tokens(cell.tokens_per_episode)})" if cell.tokens_per_episode else ""
            paper_cells.append(f"{cell.value:.2f}{tokens}")
        rows.append([method_label(method), *paper_cells, results.cell(method, agent, notes, render)])
    header = ["Method"] + [f"paper {row.model}" for row in paper] + [ours_label]
    lines = [
        f"## The paper's numbers beside ours ({paper[0].env}, {agent_label(agent)})",
        "",
        f"Cells: {paper[0].metric_label} (tokens per episode; ours: {_token_kind_label(inputs.table_tokens)}). "
        f"Paper: {PAPER_SOURCE}; it reports tokens for the 14B model only, its ALFWorld counts without the "
        "retriever's tokens and its WebShop counts with them. RAG runs vary by several points between reruns.",
        "",
        *_table(header, rows),
    ]
    if notes.reasons:
        lines += ["", *notes.lines()]
    return [*lines, ""]


def _metrics_table(inputs: ReportInputs, results: _Results) -> list[str]:
    header = [
        "Method",
        "Agent",
        "Episodes",
        "Success % [95% CI]",
        "Score",
        "Env steps",
        "Model calls",
        "Invalid actions %",
        "Episodes with invalid %",
        "Policy tok/ep",
        "Retrieval tok/ep",
        "Total tok/ep",
        "Tokens per success",
        "Errors",
        "Stop reasons",
    ]
    rows, warnings, invalid_texts = [], [], set()
    for result in results.ran():
        metrics = result.metrics
        assert metrics is not None
        invalid_texts.add(metrics.invalid_observation)
        interval = (
            f" [{metrics.success_ci_low:.1f}, {metrics.success_ci_high:.1f}]"
            if metrics.success_ci_low is not None and metrics.success_ci_high is not None
            else ""
        )
        stops = ", ".join(f"{reason} {count}" for reason, count in metrics.stop_reasons.items()) or MISSING
        rows.append(
            [
                method_label(result.method),
                agent_label(result.agent),
                metrics.episodes,
                f"{_number(metrics.success_percent, 1)}{interval}",
                _number(metrics.score_percent),
                _number(metrics.mean_env_steps, 1),
                _number(metrics.mean_model_calls, 1),
                _number(metrics.invalid_action_percent, 1),
                _number(metrics.episodes_with_invalid_action_percent, 1),
                format_tokens(metrics.policy_tokens_per_episode),
                format_tokens(metrics.retrieval_tokens_per_episode),
                format_tokens(metrics.total_tokens_per_episode),
                format_tokens(metrics.tokens_per_success),
                metrics.error_episodes,
                stops,
            ]
        )
        if metrics.episodes != inputs.eval_task_count:
            warnings.append(
                f"- {method_label(result.method)} · {agent_label(result.agent)}: {metrics.episodes} episodes "
                f"for {inputs.eval_task_count} pinned tasks."
            )
    if not rows:
        return ["## All metrics", "", "No method was evaluated.", ""]
    invalid = " / ".join(f'"{text}"' for text in sorted(invalid_texts))
    lines = [
        "## All metrics",
        "",
        f"Score = mean reward × 100. Invalid action = a non-think call answered {invalid}; the rate is per "
        "non-think model call. Tokens are means per episode; tokens per success = all tokens / successes.",
        "",
        *_table(header, rows),
    ]
    if warnings:
        lines += ["", "Episode counts that differ from the pinned task count:", *warnings]
    return [*lines, ""]


def _task_type_table(results: _Results) -> list[str]:
    ran = [result for result in results.ran() if result.metrics and not result.metrics.empty]
    task_types = sorted({name for result in ran if result.metrics for name in result.metrics.by_task_type})
    if not task_types:
        return []
    rows = []
    for task_type in task_types:
        row: list[Any] = [task_type]
        for result in ran:
            assert result.metrics is not None
            split = result.metrics.by_task_type.get(task_type)
            row.append(
                f"{split.success_percent:.0f}% ({split.successes}/{split.episodes})"
                if split is not None and split.success_percent is not None
                else MISSING
            )
        rows.append(row)
    header = ["Task type"] + [f"{method_label(r.method)} · {agent_label(r.agent)}" for r in ran]
    return ["## Success by task type", "", *_table(header, rows), ""]


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
    return ["## Datasets", "", *_table(["Dataset", *columns], rows), ""]


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
                _number(summary.first_loss, 4),
                _number(summary.final_loss, 4),
                seconds,
                f"skipped: {summary.skipped_reason}" if summary.skipped_reason else "",
            ]
        )
    header = ["Student", "Examples", "Steps", "Epochs", "First loss", "Final loss", "Time", "Note"]
    return ["## Training", "", *_table(header, rows), ""]


def render_report(inputs: ReportInputs) -> str:
    """The whole report as markdown."""
    results = _Results(inputs.results)
    lines = _header(inputs)
    lines += _paper_layout(inputs, results)
    paper = paper_rows_for_config(inputs.config_name)
    if paper:
        lines += _paper_comparison(inputs, results, paper)
    if inputs.figure_path:
        lines += [
            "## Accuracy and tokens",
            "",
            f"![Success rate against tokens per episode]({inputs.figure_path})",
            "",
        ]
    lines += _metrics_table(inputs, results)
    lines += _task_type_table(results)
    lines += _datasets(inputs.datasets)
    lines += _training(inputs.training)
    if inputs.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in inputs.notes), ""]
    return "\n".join(lines).rstrip() + "\n"
