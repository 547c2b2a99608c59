"""Prefect task for stage A (and any other plain rollout stage): a thin wrapper over
``stages.rollout.run_rollout``, cached on the stage's identity (``tasks.common.STAGE_CACHE``).

``progress_reporter`` (``tasks.progress``) and ``shard_runner_for`` (``tasks.shards``) are importable
from here too: every rollout-family task reports its episodes and plays its shards as Prefect tasks."""

from __future__ import annotations

from typing import Any

from prefect import task

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, RolloutSettings
from ragdistill.stages.rollout import run_rollout
from ragdistill.tasks.common import STAGE_CACHE, TASK_RUN_SUFFIX, publish_manifest
from ragdistill.tasks.progress import progress_reporter
from ragdistill.tasks.shards import shard_runner_for

__all__ = ["progress_reporter", "rollout_task", "shard_runner_for"]


@task(
    name="rollout",
    task_run_name="rollout-{settings.stage}-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def rollout_task(ctx: RunContext, settings: RolloutSettings, inputs: Inputs | None = None) -> dict[str, Any]:
    with shard_runner_for(ctx):
        manifest = run_rollout(ctx, settings, inputs, progress=progress_reporter(settings.stage))
    return publish_manifest(
        manifest, key=f"rollout-{settings.stage}", description=f"{ctx.run_name}: rollouts/{settings.stage}"
    )
