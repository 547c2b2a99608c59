"""Prefect task for stage A: a thin wrapper over ``stages.rollout.run_rollout``."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ragdistill.config import ExperimentConfig
from ragdistill.episodes import EpisodeRecord
from ragdistill.orchestration.runners import prefect_shard_runner
from ragdistill.rollout import ProgressCallback
from ragdistill.stages.layout import rollout_prefix
from ragdistill.stages.lifecycle import StageIdentity
from ragdistill.stages.rollout import base_plan, plan_identity, run_rollout
from ragdistill.stages.shards import use_shard_runner
from ragdistill.tasks.common import TASK_RUN_SUFFIX, publish_manifest, send_progress, stage_cache_policy


def progress_reporter(stage: str) -> ProgressCallback:
    """A progress artifact in the Prefect UI, moved after every finished episode (best effort:
    :func:`send_progress`)."""
    progress_id = create_progress_artifact(progress=0.0, description=f"episodes finished in rollouts/{stage}")

    def on_episode(_: EpisodeRecord, finished: int, total: int) -> None:
        percent = 100.0 * finished / max(total, 1)
        send_progress(f"rollouts/{stage}", lambda: update_progress_artifact(progress_id, progress=percent))

    return on_episode


def _identify(config: ExperimentConfig, parameters: dict[str, Any]) -> tuple[str, StageIdentity]:
    stage = parameters.get("stage", "base")
    return rollout_prefix(stage), plan_identity(config, base_plan(config, stage))


@task(
    name="rollout",
    task_run_name="rollout-{stage}-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_identify, __name__),
    result_serializer="json",
)
def rollout_task(config: ExperimentConfig, stage: str = "base") -> dict[str, Any]:
    with use_shard_runner(prefect_shard_runner(config.orchestration)):
        manifest = run_rollout(config, stage, progress=progress_reporter(stage))
    return publish_manifest(
        manifest, key=f"rollout-{stage}", description=f"{config.run.name}: rollouts/{stage}"
    )
