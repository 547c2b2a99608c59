"""Training progress: the main training process prints one line per logged step, the launcher parses
them, and the Prefect train task shows them as a progress artifact (read back through the API).

The launch through ``accelerate launch`` with a real model is checked in test_training.py
(``test_launch_training_with_the_cpu_config_writes_adapter_and_curve``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config.stages import PipelineSettings
from ragdistill.stages.datasets import run_dataset
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore
from ragdistill.training.progress import (
    PROGRESS_PREFIX,
    TrainingProgress,
    current_progress_listener,
    parse_progress_line,
    progress_callback,
    use_training_progress,
)
from test_stages import PolicyDouble, counter_config


def test_a_progress_line_round_trips_and_other_lines_are_not_progress() -> None:
    progress = TrainingProgress(step=3, max_steps=12, epoch=0.75, loss=1.25)
    assert parse_progress_line(progress.line() + "\n") == progress
    assert progress.percent == 25.0
    assert parse_progress_line("{'loss': 1.25, 'epoch': 0.75}") is None
    assert parse_progress_line(PROGRESS_PREFIX + '{"step": 1}') is None, "a cut line is skipped"
    assert parse_progress_line(PROGRESS_PREFIX + "not json") is None


def test_the_callback_prints_a_line_per_loss_log_of_the_main_process_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    callback = progress_callback()
    main = SimpleNamespace(is_world_process_zero=True, global_step=4, max_steps=8, epoch=0.5)
    callback.on_log(None, main, None, logs={"loss": 0.5, "learning_rate": 1e-3})
    callback.on_log(None, main, None, logs={"train_runtime": 3.0})  # the final summary: no loss
    callback.on_log(
        None, SimpleNamespace(**{**vars(main), "is_world_process_zero": False}), None, logs={"loss": 1}
    )
    lines = capsys.readouterr().out.splitlines()
    assert [parse_progress_line(line) for line in lines] == [TrainingProgress(4, 8, 0.5, 0.5)]


def test_a_listener_is_set_only_inside_its_block() -> None:
    received: list[TrainingProgress] = []
    assert current_progress_listener() is None
    with use_training_progress(received.append):
        listener = current_progress_listener()
        assert listener is not None
        listener(TrainingProgress(1, 2, math.nan, 2.0))
    assert current_progress_listener() is None and len(received) == 1


def test_the_train_tasks_reporter_moves_one_progress_artifact(prefect_server: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    from ragdistill.tasks.students import training_progress_reporter

    @flow(name="training-progress-probe")
    def probe() -> None:
        report = training_progress_reporter("sft")
        report(TrainingProgress(step=1, max_steps=4, epoch=0.25, loss=2.0))
        report(TrainingProgress(step=3, max_steps=4, epoch=0.75, loss=1.5))

    state = probe(return_state=True)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    (artifact,) = artifacts
    assert json.loads(str(artifact.data)) == 75.0
    assert artifact.description == "adapters/sft: step 3 of 4, epoch 0.75, loss 1.5000"


def progress_artifacts_of(flow_run_id: UUID) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )


def test_a_skipped_training_creates_no_progress_artifact(prefect_server: None, tmp_path: Path) -> None:
    """The real train task, in a flow, on an empty training set (no base episode won): the training is
    skipped and no progress artifact exists, since the reporter makes it at the first logged step."""
    from prefect import flow

    from ragdistill.tasks.students import train_task

    stages = PipelineSettings.from_experiment(counter_config(tmp_path, **{"env.limit": 2}))
    ctx, store = stages.ctx, ArtifactStore(stages.ctx.run_root)
    run_rollout(ctx, stages.rollout(), {}, backend=PolicyDouble("wait"))
    dataset = stages.dataset("sft")
    assert run_dataset(ctx, dataset, upstream_inputs(store, dataset)).counts["examples"] == 0
    training = stages.training("sft")

    @flow(name="skipped-training-probe")
    def probe() -> dict[str, Any]:
        return train_task(ctx, training, upstream_inputs(store, training))

    state = probe(return_state=True)
    summary = state.result()
    assert summary["counts"] == {"trained": 0} and "training set is empty" in summary["extra"]["skipped"]
    assert progress_artifacts_of(state.state_details.flow_run_id) == []
