"""The report's metrics tables, built from the metrics frame (``evaluation.frame``): the cells of the
paper layout, every metric per evaluation, the spread across sampling seeds and success by task type.

Under several seeds a summary cell is the mean ± sd across the seeds that recorded episodes, and each
run's 95% Wilson interval stands beside it in the seeds table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from ragdistill.evaluation.frame import ALL_TASKS, plain, seed_summary, whole_evaluations, with_episodes
from ragdistill.evaluation.paper_results import AGENTS, METHODS, agent_label, in_paper_order, method_label

MISSING = "—"


def format_tokens(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def number(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def over_seeds(summary: pd.Series, figure: str, digits: int = 2) -> str:
    """A figure of :func:`~ragdistill.evaluation.frame.seed_summary`'s row: its value (one seed) or its
    mean ± sd (several)."""
    mean, sd = plain(summary[f"{figure}_mean"]), plain(summary[f"{figure}_sd"])
    if mean is None:
        return MISSING
    if int(summary["runs"]) > 1 and sd is not None:
        return f"{mean:.{digits}f} ± {sd:.{digits}f}"
    return f"{mean:.{digits}f}"


class Footnotes:
    """Numbered reasons for "—" cells; the same reason shares one number."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}
        self.cells: dict[int, list[str]] = {}

    def number(self, reason: str, where: str) -> str:
        number = self.reasons.setdefault(reason, len(self.reasons) + 1)
        self.cells.setdefault(number, []).append(where)
        return f"[{number}]"

    def mark(self, reason: str, where: str) -> str:
        return f"{MISSING} {self.number(reason, where)}"

    def lines(self) -> list[str]:
        return [
            f"- [{number}] {', '.join(self.cells[number])}: {reason}"
            for reason, number in self.reasons.items()
        ]


class Evaluations:
    """The frame's whole evaluations by method × agent, in paper order, with their spread over seeds."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.whole = whole_evaluations(frame)
        self.summary = seed_summary(frame)
        self.agents = in_paper_order(self.whole["agent"], AGENTS)
        self.methods = in_paper_order([*METHODS, *self.whole["method"]], METHODS)
        per_method = self.whole.groupby(["run_name", "agent", "method"]).size()
        self.several_seeds = bool(len(per_method)) and int(per_method.max()) > 1

    def rows(self, method: str, agent: str) -> pd.DataFrame:
        return self.whole[(self.whole["method"] == method) & (self.whole["agent"] == agent)]

    def summary_of(self, method: str, agent: str) -> pd.Series:
        rows = self.summary[(self.summary["method"] == method) & (self.summary["agent"] == agent)]
        return rows.sort_values("runs", ascending=False, kind="stable").iloc[0]

    def cell(self, method: str, agent: str, notes: Footnotes, render: Callable[[pd.Series], str]) -> str:
        """``render(summary)`` of a method that ran with episodes (a footnote names any seed it lacks),
        else "—" with a footnote why not."""
        where = f"{method_label(method)} · {agent_label(agent)}"
        rows = self.rows(method, agent)
        if rows.empty:
            return notes.mark(
                "not evaluated in this run (not in `evaluation.methods`, or its evaluation has not run yet)",
                where,
            )
        evaluated = rows[rows["not_run_reason"].isna()]
        if evaluated.empty:
            return notes.mark(plain(rows["not_run_reason"].iloc[0]) or "not run (no reason recorded)", where)
        ran = with_episodes(rows)
        if ran.empty:
            return notes.mark("evaluated, but no episode was recorded", where)
        text = render(self.summary_of(method, agent))
        missing = rows[~rows.index.isin(ran.index)]
        if not missing.empty:
            seeds = ", ".join(str(plain(seed)) for seed in missing["seed"])
            reason = plain(missing["not_run_reason"].iloc[0]) or "evaluated, but no episode was recorded"
            shown = f"over {len(ran)} of {len(rows)} seeds; seed {seeds}: {reason}"
            text = f"{text} {notes.number(shown, where)}"
        return text

    def evaluated(self) -> pd.DataFrame:
        """The whole evaluations that ran (episodes or not), agent, method and seed in paper order."""
        ran = self.whole[self.whole["not_run_reason"].isna()]
        agent_rank = {agent: rank for rank, agent in enumerate(self.agents)}
        method_rank = {method: rank for rank, method in enumerate(self.methods)}
        order = ran.assign(
            _agent=ran["agent"].map(agent_rank), _method=ran["method"].map(method_rank)
        ).sort_values(["_agent", "_method"], kind="stable")
        return order.drop(columns=["_agent", "_method"])

    def label(self, row: pd.Series) -> str:
        where = f"{method_label(row['method'])} · {agent_label(row['agent'])}"
        return f"{where} · seed {plain(row['seed'])}" if self.several_seeds else where


def _interval(row: pd.Series) -> str:
    low, high = plain(row["success_ci_low"]), plain(row["success_ci_high"])
    return f" [{low:.1f}, {high:.1f}]" if low is not None and high is not None else ""


def metrics_table(evaluations: Evaluations, eval_task_count: int) -> list[str]:
    """Every metric of each evaluation that ran: one row per method × agent (× seed)."""
    seed_column = ["Seed"] if evaluations.several_seeds else []
    header = [
        "Method",
        "Agent",
        *seed_column,
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
    rows, warnings = [], []
    evaluated = evaluations.evaluated()
    for _, row in evaluated.iterrows():
        value = {column: plain(row[column]) for column in row.index}
        stops = ", ".join(f"{reason} {count}" for reason, count in (value["stop_reasons"] or {}).items())
        rows.append(
            [
                method_label(value["method"]),
                agent_label(value["agent"]),
                *([value["seed"]] if seed_column else []),
                value["episodes"],
                f"{number(value['success_percent'], 1)}{_interval(row)}",
                number(value["score_percent"]),
                number(value["mean_env_steps"], 1),
                number(value["mean_model_calls"], 1),
                number(value["invalid_action_percent"], 1),
                number(value["episodes_with_invalid_action_percent"], 1),
                format_tokens(value["policy_tokens_per_episode"]),
                format_tokens(value["retrieval_tokens_per_episode"]),
                format_tokens(value["total_tokens_per_episode"]),
                format_tokens(value["tokens_per_success"]),
                value["error_episodes"],
                stops or MISSING,
            ]
        )
        if value["episodes"] != eval_task_count:
            warnings.append(
                f"- {evaluations.label(row)}: {value['episodes']} episodes for {eval_task_count} pinned tasks."
            )
    if not rows:
        return ["## All metrics", "", "No method was evaluated.", ""]
    invalid = " / ".join(f'"{text}"' for text in sorted(set(evaluated["invalid_observation"].dropna())))
    lines = [
        "## All metrics",
        "",
        f"Score = mean reward × 100. Invalid action = a non-think call answered {invalid}; the rate is per "
        "non-think model call. Tokens are means per episode; tokens per success = all tokens / successes.",
        "",
        *markdown_table(header, rows),
    ]
    if warnings:
        lines += ["", "Episode counts that differ from the pinned task count:", *warnings]
    return [*lines, ""]


def seeds_table(evaluations: Evaluations) -> list[str]:
    """Mean ± sd across seeds beside each run's own 95% Wilson interval (only with several seeds)."""
    if not evaluations.several_seeds:
        return []
    ran = with_episodes(evaluations.whole)
    rows = []
    for agent in evaluations.agents:
        for method in evaluations.methods:
            if evaluations.rows(method, agent).empty:
                continue
            summary = evaluations.summary_of(method, agent)
            runs = ran[(ran["method"] == method) & (ran["agent"] == agent)]
            per_run = "; ".join(
                f"{plain(row['seed'])}: {row['success_percent']:.1f}{_interval(row)}"
                for _, row in runs.iterrows()
            )
            rows.append(
                [
                    method_label(method),
                    agent_label(agent),
                    f"{int(summary['runs'])} of {len(summary['seeds'])}",
                    over_seeds(summary, "success_percent", 1),
                    per_run or MISSING,
                    over_seeds(summary, "score_percent"),
                    over_seeds(summary, "total_tokens_per_episode", 0),
                ]
            )
    header = [
        "Method",
        "Agent",
        "Seeds run",
        "Success % mean ± sd",
        "Per run: success % [95% CI]",
        "Score mean ± sd",
        "Total tok/ep mean ± sd",
    ]
    return [
        "## Across sampling seeds",
        "",
        "Mean ± sample standard deviation (n − 1) over the seeds that recorded episodes. Each run's 95% "
        "Wilson interval covers the sampling of tasks; the sd covers the variation between runs.",
        "",
        *markdown_table(header, rows),
        "",
    ]


def task_type_table(evaluations: Evaluations) -> list[str]:
    by_type = with_episodes(evaluations.frame[evaluations.frame["task_type"] != ALL_TASKS])
    if by_type.empty:
        return []
    columns = with_episodes(evaluations.evaluated())[["method", "agent"]].drop_duplicates()
    sums = by_type.groupby(["method", "agent", "task_type"])[["successes", "episodes"]].sum()
    rows = []
    for task_type in sorted(by_type["task_type"].unique()):
        row: list[Any] = [task_type]
        for method, agent in columns.itertuples(index=False):
            key = (method, agent, task_type)
            if key in sums.index:
                successes, episodes = (int(value) for value in sums.loc[key])
                row.append(f"{100 * successes / episodes:.0f}% ({successes}/{episodes})")
            else:
                row.append(MISSING)
        rows.append(row)
    header = ["Task type"] + [
        f"{method_label(m)} · {agent_label(a)}" for m, a in columns.itertuples(index=False)
    ]
    pooled = ["Successes and episodes summed over the seeds.", ""] if evaluations.several_seeds else []
    return ["## Success by task type", "", *pooled, *markdown_table(header, rows), ""]
