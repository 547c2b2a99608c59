"""The report's metrics as a pandas DataFrame (``evaluation.frame``): one frame per run root, its rows and
types, ``metrics.json`` built from it with its keys kept, ``metrics.parquet`` read back into the same
frame, the tables rendered from it, and ``ragdistill report A B`` concatenating two run roots' frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ragdistill.cli import app
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.evaluation import (
    MethodMetrics,
    MethodResult,
    ReportInputs,
    RunColumns,
    combined,
    compute_metrics,
    metrics_document,
    metrics_frame,
    parquet_bytes,
    read_metrics,
    render_report,
    seed_summary,
)
from ragdistill.stages.report import run_metrics_frame, write_run_file
from ragdistill.store import ArtifactStore
from test_evaluation import INVALID, metrics_with, mixed_records
from test_evaluation_seeds import write_evaluation

RUN = RunColumns(run_name="demo", config_name="demo-alfworld", env="alfworld", eval_split="valid_unseen")


def seeded_results() -> list[MethodResult]:
    """Base under two seeds (1/4 and 3/4 won), the distilled student under one of them only."""
    return [
        MethodResult("base", "react", compute_metrics(mixed_records(), INVALID), seed=42),
        MethodResult("base", "react", metrics_with(3, 4, 1000), seed=43),
        MethodResult("distill", "react", metrics_with(4, 4, 800), seed=42),
        MethodResult(
            "distill", "react", None, "not evaluated (rollouts/eval-distill-seed43 has none)", seed=43
        ),
    ]


def test_a_run_roots_frame_has_one_row_per_evaluation_and_task_type() -> None:
    frame = metrics_frame(seeded_results(), RUN)
    keys = frame[["method", "seed", "task_type"]].astype(object).values.tolist()
    assert keys == [
        ["base", 42, "all"], ["base", 42, "clean"], ["base", 42, "put"],
        ["base", 43, "all"], ["base", 43, "put"],
        ["distill", 42, "all"], ["distill", 42, "put"],
        ["distill", 43, "all"],
    ]  # fmt: skip
    assert set(frame["run_name"]) == {"demo"} and set(frame["eval_split"]) == {"valid_unseen"}
    assert frame["seed"].dtype == "Int64" and frame["episodes"].dtype == "Int64"
    assert frame["success_percent"].dtype == "float64"
    put = frame[(frame.seed == 42) & (frame.method == "base") & (frame.task_type == "put")].iloc[0]
    assert (put.episodes, put.successes, put.invalid_actions) == (2, 1, 3)
    assert put.stop_reasons == {"done": 1, "max_calls": 1}
    missing = frame.iloc[-1]
    assert missing.not_run_reason.startswith("not evaluated") and pd.isna(missing.episodes)
    assert missing.stop_reasons is None

    summary = seed_summary(frame).set_index("method")
    assert summary.loc["base", "seeds"] == [42, 43] and summary.loc["base", "runs"] == 2
    assert summary.loc["base", "success_percent_mean"] == pytest.approx(62.5)
    assert summary.loc["base", "success_percent_sd"] == pytest.approx(17.6777, abs=1e-4)
    assert summary.loc["distill", "runs"] == 1 and pd.isna(summary.loc["distill", "success_percent_sd"])
    with pytest.raises(ValueError, match="task type named 'all'"):
        metrics_frame([MethodResult("base", "react", metrics_with(1, 2, 10, task_type="all"))])


def test_metrics_json_keeps_its_keys_and_its_metrics() -> None:
    results = seeded_results()
    document = metrics_document(metrics_frame(results, RUN))
    text = json.dumps(document, allow_nan=False)
    restored = json.loads(text)["results"]
    assert [set(entry) for entry in restored] == [
        {"method", "agent", "seed", "metrics", "not_run_reason", "run_name"}
    ] * 4
    for entry, result in zip(restored, results, strict=True):
        assert (entry["method"], entry["agent"], entry["seed"]) == (result.method, result.agent, result.seed)
        expected = result.metrics.to_dict() if result.metrics else None
        assert entry["metrics"] == expected
        if result.metrics is not None:
            assert MethodMetrics.from_dict(entry["metrics"]) == result.metrics
    assert restored[0]["metrics"]["by_task_type"]["put"]["successes"] == 1
    across = {row["method"]: row for row in document["across_seeds"]}
    assert across["distill"]["success_percent_sd"] is None and across["distill"]["runs"] == 1


def test_metrics_parquet_reads_back_into_the_same_frame(tmp_path: Path) -> None:
    frame = metrics_frame(seeded_results(), RUN)
    path = tmp_path / "metrics.parquet"
    path.write_bytes(parquet_bytes(frame))
    pd.testing.assert_frame_equal(read_metrics(path), frame)
    pd.testing.assert_frame_equal(read_metrics(path.read_bytes()), frame)
    plain = pd.read_parquet(path)  # a notebook without ragdistill: the count mappings are JSON text
    assert list(plain.columns) == list(frame.columns)
    assert json.loads(plain.loc[0, "stop_reasons"]) == {"done": 2, "error": 1, "max_calls": 1}
    assert plain[plain.task_type == "all"].groupby("method").success_percent.mean().to_dict() == {
        "base": pytest.approx(62.5),
        "distill": 100.0,
    }


def report_of(results: list[MethodResult]) -> list[str]:
    inputs = ReportInputs(
        run_name="demo",
        config_name="demo-alfworld",
        env="alfworld",
        eval_split="valid_unseen",
        eval_task_count=4,
        metrics=metrics_frame(results, RUN),
    )
    return render_report(inputs).splitlines()


def test_the_tables_come_from_the_frame_with_the_spread_over_seeds() -> None:
    lines = report_of(seeded_results())
    (paper,) = [line for line in lines if line.startswith("| ReAct |")]
    assert paper == "| ReAct | 62.50 ± 17.68 (1.0k) | — [1] | — [1] | 100.00 (800) [2] |"
    assert "- [2] Distilled · ReAct: over 1 of 2 seeds; seed 43: not evaluated (rollouts/eval-distill-seed43 has none)" in lines  # fmt: skip
    assert "| Method | Agent | Seed | Episodes | Success % [95% CI] | Score | Env steps | Model calls | Invalid actions % | Episodes with invalid % | Policy tok/ep | Retrieval tok/ep | Total tok/ep | Tokens per success | Errors | Stop reasons |" in lines  # fmt: skip
    assert any(line.startswith("| Base | ReAct | 42 | 4 | 50.0 [15.0, 85.0] |") for line in lines)
    assert any(line.startswith("| Base | ReAct | 43 | 4 | 75.0 [30.1, 95.4] |") for line in lines)
    per_run = "42: 50.0 [15.0, 85.0]; 43: 75.0 [30.1, 95.4]"
    assert f"| Base | ReAct | 2 of 2 | 62.5 ± 17.7 | {per_run} | 71.88 ± 13.26 | 1008 ± 11 |" in lines
    assert "| Distilled | ReAct | 1 of 2 | 100.0 | 42: 100.0 [51.0, 100.0] | 100.00 | 800 |" in lines
    # Task types pool the seeds: put is 1/2 (seed 42) + 3/4 (seed 43).
    assert "| put | 67% (4/6) | 100% (4/4) |" in lines and "| clean | 50% (1/2) | — |" in lines


def test_one_seed_renders_no_seed_columns() -> None:
    lines = report_of([MethodResult("base", "react", metrics_with(1, 4, 1200), seed=42)])
    assert "| ReAct | 25.00 (1.2k) | — [1] | — [1] | — [1] |" in lines
    assert not any("Seed" in line or "±" in line for line in lines)
    assert "## Across sampling seeds" not in lines


def write_run_root(root: Path, agent: str, seeds: list[int] | None, wins: dict[int, int]) -> ArtifactStore:
    """A run root of ``agent`` whose base agent finished under each seed of ``wins`` (of ten tasks)."""
    overrides: dict[str, object] = {
        "run.run_root": f"file://{root}",
        "run.name": f"run-{agent}",
        "agent.format": agent,
        "agent.fewshot_source": "expert",
        "evaluation.methods": ["base", "distill"],
        "evaluation.seeds": seeds,
    }
    config = with_overrides(ExperimentConfig(), overrides)
    store = ArtifactStore(config.run.run_root)
    write_run_file(store, f"demo-{agent}", config.model_dump(mode="json"))
    for seed, won in wins.items():
        folder = "rollouts/eval-base" if seed == 42 else f"rollouts/eval-base-seed{seed}"
        write_evaluation(store, folder, won, {})
    return store


def test_report_of_two_run_roots_concatenates_their_frames(tmp_path: Path) -> None:
    react = write_run_root(tmp_path / "react", "react", [42, 43], {42: 3, 43: 5})
    stateact = write_run_root(tmp_path / "stateact", "stateact", None, {42: 7})
    out = tmp_path / "combined"
    result = CliRunner().invoke(app, ["report", react.root_url, stateact.root_url, "--out", f"file://{out}"])
    assert result.exit_code == 0, result.output

    frames = [run_metrics_frame(react), run_metrics_frame(stateact)]
    frame = read_metrics(out / "metrics.parquet")
    pd.testing.assert_frame_equal(frame, combined(frames))
    whole = frame[frame.task_type == "all"]
    assert whole[["run_name", "agent", "method", "seed"]].astype(object).values.tolist() == [
        ["run-react", "react", "base", 42], ["run-react", "react", "base", 43],
        ["run-react", "react", "distill", 42], ["run-react", "react", "distill", 43],
        ["run-stateact", "stateact", "base", 42], ["run-stateact", "stateact", "distill", 42],
    ]  # fmt: skip
    assert whole.success_percent.dropna().tolist() == [30.0, 50.0, 70.0]

    report = (out / "report.md").read_text().splitlines()
    assert any(line.startswith("| ReAct | 40.00 ± 14.14 (") for line in report)
    assert any(line.startswith("| StateAct | 70.00 (") for line in report)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["run_name"], r["method"], r["seed"]) for r in metrics["results"]] == [
        ("run-react", "base", 42), ("run-react", "base", 43), ("run-react", "distill", 42),
        ("run-react", "distill", 43), ("run-stateact", "base", 42), ("run-stateact", "distill", 42),
    ]  # fmt: skip
    assert metrics["results"][1]["metrics"]["successes"] == 5
