"""The one-stage commands' shared runner: a stage on its upstream digests, with a progress bar when asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragdistill import cli_stages
from ragdistill.cli_stages import run_stage
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.layout import HINTS_DIR


def stages_at(tmp_path: Path) -> PipelineSettings:
    return PipelineSettings.from_experiment(
        with_overrides(ExperimentConfig(), {"run.run_root": f"file://{tmp_path}/run"})
    )


def test_a_stage_without_progress_gets_its_upstream_inputs_and_nothing_else(tmp_path: Path) -> None:
    stages = stages_at(tmp_path)
    calls: list[tuple[Any, ...]] = []

    def stage(ctx: RunContext, settings: StageSettings, inputs: Inputs, **options: Any) -> str:
        calls.append((ctx, settings, inputs, options))
        return "manifest"

    assert run_stage(stage, stages.ctx, stages.rollout()) == "manifest"
    assert calls == [(stages.ctx, stages.rollout(), {}, {})]


def test_a_rollout_family_stage_gets_a_progress_callback_and_the_bar_closes_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = stages_at(tmp_path)
    bars: list[str] = []
    closed: list[str] = []

    def progress_bar(description: str) -> Any:
        def update(record: Any, finished: int, total: int) -> None: ...

        bars.append(description)
        update.close = lambda: closed.append(description)  # type: ignore[attr-defined]
        return update

    def stage(ctx: RunContext, settings: StageSettings, inputs: Inputs, *, progress: Any) -> None:
        progress(None, 0, 1)
        raise RuntimeError("the stage failed")

    monkeypatch.setattr(cli_stages, "progress_bar", progress_bar)
    with pytest.raises(RuntimeError, match="the stage failed"):
        run_stage(stage, stages.ctx, stages.rollout(), progress="rollout base")
    assert bars == closed == ["rollout base"]


def test_a_missing_upstream_folder_stops_before_the_stage_runs(tmp_path: Path) -> None:
    stages = stages_at(tmp_path)

    def stage(*_args: Any, **_options: Any) -> None:
        pytest.fail("the stage ran without its inputs")

    with pytest.raises(Exception, match=HINTS_DIR):
        run_stage(stage, stages.ctx, stages.indexing)
