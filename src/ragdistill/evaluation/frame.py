"""Evaluation metrics as a pandas DataFrame: what the report's tables, ``metrics.json`` and
``metrics.parquet`` are built from.

A run root's frame (:func:`metrics_frame`) has one row per evaluated method × agent × sampling seed ×
scope: ``task_type`` is ``"all"`` (:data:`ALL_TASKS`) for the whole evaluation, else one task type's
episodes alone. A method not evaluated under a seed has its ``"all"`` row only, with ``not_run_reason``
and no figures. Several run roots' frames concatenate (:func:`combined`) into a combined report's.
Columns, in order:

- the run (the same on every row of one run root): ``run_name``, ``config_name``, ``env``, ``eval_split``;
- the keys: ``method``, ``agent``, ``seed``, ``task_type``;
- ``not_run_reason``, then every figure of :class:`~ragdistill.evaluation.metrics.MethodMetrics`
  (``empty`` included). Its count mappings (``stop_reasons``, ``agents``, ``sources``) are dicts in the
  frame and JSON text in ``metrics.parquet`` (:func:`read_metrics` decodes them).

Across seeds (:func:`seed_summary`): one row per run × agent × method with the seeds, the mean and the
sample standard deviation (n − 1) of the headline figures over the seeds that have episodes, and the
lowest and highest bound of their per-run 95% Wilson intervals.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from ragdistill.evaluation.metrics import MethodMetrics

ALL_TASKS = "all"
"""``task_type`` of the row that holds a whole evaluation's figures."""
RUN_COLUMNS = ("run_name", "config_name", "env", "eval_split")
KEY_COLUMNS = ("method", "agent", "seed", "task_type")
EVALUATION_KEYS = ("run_name", "method", "agent", "seed")
"""What names one evaluation (one rollout folder) in a frame of several run roots."""
MAPPING_COLUMNS = ("stop_reasons", "agents", "sources")
_NESTED = {"by_task_type", *MAPPING_COLUMNS}
METRIC_COLUMNS = (*(item.name for item in fields(MethodMetrics) if item.name not in _NESTED), "empty")
COLUMNS = (*RUN_COLUMNS, *KEY_COLUMNS, "not_run_reason", *METRIC_COLUMNS, *MAPPING_COLUMNS)
_INTEGER_METRICS = tuple(item.name for item in fields(MethodMetrics) if item.type == "int")
_TEXT_METRICS = ("invalid_observation",)
SUMMARY_FIGURES = (
    "success_percent",
    "score_percent",
    "policy_tokens_per_episode",
    "total_tokens_per_episode",
)
"""The figures :func:`seed_summary` averages over seeds (``<figure>_mean``, ``<figure>_sd``)."""
SUMMARY_GROUP = ("run_name", "agent", "method")


@dataclass
class MethodResult:
    """One evaluated method × agent under one sampling seed: its metrics, or why it was not run
    (``metrics`` None). ``seed`` is None where no seed is known (a result built by hand)."""

    method: str
    agent: str
    metrics: MethodMetrics | None = None
    not_run_reason: str | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "agent": self.agent,
            "seed": self.seed,
            "metrics": self.metrics.to_dict() if self.metrics is not None else None,
            "not_run_reason": self.not_run_reason,
        }


@dataclass(frozen=True)
class RunColumns:
    """The columns a run root gives each of its rows."""

    run_name: str = ""
    config_name: str = ""
    env: str = ""
    eval_split: str = ""


def _dtypes() -> dict[str, Any]:
    dtypes: dict[str, Any] = dict.fromkeys(METRIC_COLUMNS, "float64")
    dtypes.update(dict.fromkeys((*RUN_COLUMNS, "method", "agent", "task_type"), "str"))
    dtypes.update(dict.fromkeys(("not_run_reason", *_TEXT_METRICS), "str"))
    dtypes.update(dict.fromkeys((*_INTEGER_METRICS, "seed"), "Int64"))
    dtypes.update(dict.fromkeys(MAPPING_COLUMNS, "object"))
    dtypes["empty"] = "boolean"
    return dtypes


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the column types of :data:`COLUMNS` (a missing mapping is None, not NaN)."""
    typed = frame.astype(_dtypes())
    for column in MAPPING_COLUMNS:
        typed[column] = typed[column].map(lambda value: value if isinstance(value, dict) else None)
    return typed


def _figures(metrics: MethodMetrics) -> dict[str, Any]:
    data = metrics.to_dict()
    return {column: data[column] for column in (*METRIC_COLUMNS, *MAPPING_COLUMNS)}


def metrics_frame(results: Iterable[MethodResult], run: RunColumns | None = None) -> pd.DataFrame:
    """The frame of one run root's evaluations (see the module docstring)."""
    run_values = vars(run or RunColumns())
    rows: list[dict[str, Any]] = []
    for result in results:
        keys = {**run_values, "method": result.method, "agent": result.agent, "seed": result.seed}
        if result.metrics is None:
            rows.append({**keys, "task_type": ALL_TASKS, "not_run_reason": result.not_run_reason})
            continue
        if ALL_TASKS in result.metrics.by_task_type:
            raise ValueError(
                f"{result.method} · {result.agent} has a task type named {ALL_TASKS!r}, the name the metrics "
                "frame gives a whole evaluation: rename that task type in its environment"
            )
        rows.append({**keys, "task_type": ALL_TASKS, **_figures(result.metrics)})
        for task_type, split in result.metrics.by_task_type.items():
            rows.append({**keys, "task_type": task_type, **_figures(split)})
    return _typed(pd.DataFrame.from_records(rows, columns=list(COLUMNS)))


def combined(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Several run roots' frames as one (``ragdistill report A B …``)."""
    if not frames:
        return metrics_frame([])
    return _typed(pd.concat(frames, ignore_index=True))


def whole_evaluations(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of whole evaluations (``task_type`` "all"), evaluated or not."""
    return frame[frame["task_type"] == ALL_TASKS]


def with_episodes(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that were evaluated and recorded at least one episode."""
    return frame[frame["not_run_reason"].isna() & (frame["episodes"].fillna(0) > 0)]


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run × agent × method over its seeds (see the module docstring): ``seeds`` (every
    seed it has a row for), ``runs`` (the seeds with episodes), ``<figure>_mean`` and ``<figure>_sd`` of
    :data:`SUMMARY_FIGURES`, ``ci_low_min`` and ``ci_high_max``. A method with no episodes under any seed
    has ``runs`` 0 and no figures; one seed has no sd."""
    whole = whole_evaluations(frame)
    group = list(SUMMARY_GROUP)
    seeds = whole.groupby(group, sort=False, dropna=False)["seed"].agg(_seed_list).rename("seeds")
    ran = with_episodes(whole).groupby(group, sort=False, dropna=False)
    figures: dict[str, Any] = {"runs": ("episodes", "size")}
    for name in SUMMARY_FIGURES:
        figures[f"{name}_mean"] = (name, "mean")
        figures[f"{name}_sd"] = (name, "std")
    figures["ci_low_min"] = ("success_ci_low", "min")
    figures["ci_high_max"] = ("success_ci_high", "max")
    summary = seeds.to_frame().join(ran.agg(**figures), how="left")
    summary["runs"] = summary["runs"].fillna(0).astype("Int64")
    return summary.reset_index()


def _seed_list(seeds: pd.Series) -> list[int | None]:
    return [None if pd.isna(seed) else int(seed) for seed in seeds]


def plain(value: Any) -> Any:
    """A frame cell as JSON has it: missing values (NaN, NA) as None, numpy scalars as Python's."""
    if isinstance(value, dict | list):
        return value
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _metrics_of(row: pd.Series, by_task_type: dict[str, MethodMetrics] | None = None) -> MethodMetrics:
    data = {column: plain(row[column]) for column in METRIC_COLUMNS if column != "empty"}
    data.update({column: row[column] for column in MAPPING_COLUMNS})
    metrics = MethodMetrics.from_dict(data)
    metrics.by_task_type = dict(by_task_type or {})
    return metrics


def method_results(frame: pd.DataFrame) -> list[tuple[str, MethodResult]]:
    """Each evaluation of the frame as (run name, :class:`MethodResult`), in the frame's order."""
    results: list[tuple[str, MethodResult]] = []
    keys = list(EVALUATION_KEYS)
    for _, rows in frame.groupby(keys, sort=False, dropna=False):
        whole = rows[rows["task_type"] == ALL_TASKS].iloc[0]
        reason = plain(whole["not_run_reason"])
        metrics = None
        if reason is None:
            by_type = rows[rows["task_type"] != ALL_TASKS]
            metrics = _metrics_of(
                whole, {task["task_type"]: _metrics_of(task) for _, task in by_type.iterrows()}
            )
        seed = plain(whole["seed"])
        result = MethodResult(str(whole["method"]), str(whole["agent"]), metrics, reason, seed)
        results.append((str(whole["run_name"]), result))
    return results


def metrics_document(frame: pd.DataFrame) -> dict[str, Any]:
    """``metrics.json``: ``results``, one entry per evaluation (method, agent, seed, run name, its
    :class:`MethodMetrics` as a dict with ``by_task_type``, or the reason it was not run), and
    ``across_seeds``, the rows of :func:`seed_summary`."""
    results = [{**result.to_dict(), "run_name": run_name} for run_name, result in method_results(frame)]
    summary = seed_summary(frame)
    across = [{key: plain(value) for key, value in row.items()} for row in summary.to_dict("records")]
    return {"results": results, "across_seeds": across}


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``metrics.parquet``: the frame, its count mappings as JSON text."""
    stored = frame.copy()
    for column in MAPPING_COLUMNS:
        stored[column] = stored[column].map(
            lambda value: json.dumps(value) if isinstance(value, dict) else None
        )
    buffer = io.BytesIO()
    stored.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()


def read_metrics(source: str | Path | bytes) -> pd.DataFrame:
    """A ``metrics.parquet`` (a path, a URL pandas reads, or its bytes) as the frame it was written from.

    >>> frame = read_metrics("runs/demo-alfworld/reports/metrics.parquet")  # doctest: +SKIP
    >>> frame[frame.task_type == "all"].groupby(["agent", "method"]).success_percent.agg(["mean", "std"])
    """
    frame = pd.read_parquet(io.BytesIO(source) if isinstance(source, bytes) else source, engine="pyarrow")
    for column in MAPPING_COLUMNS:
        frame[column] = frame[column].map(lambda text: json.loads(text) if isinstance(text, str) else None)
    return _typed(frame)
