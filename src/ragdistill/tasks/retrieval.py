"""Prefect tasks for stages B and C: thin wrappers over the mining, indexing and teaching stages.

Each takes ``(ctx, settings, inputs)``: ``inputs`` are the content digests of the upstream folders it
reads, handed from the upstream tasks' results (``tasks.common`` has the one cache key of them all).
"""

from __future__ import annotations

from typing import Any

from prefect import task

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import IndexingSettings, Inputs, MiningSettings, TeacherSettings
from ragdistill.stages.indexing import run_indexing
from ragdistill.stages.mining import run_mining
from ragdistill.stages.teaching import run_teacher
from ragdistill.tasks.common import STAGE_CACHE, TASK_RUN_SUFFIX, publish_manifest
from ragdistill.tasks.rollout import progress_reporter, shard_runner_for


@task(
    name="mine", task_run_name="mine-" + TASK_RUN_SUFFIX, cache_policy=STAGE_CACHE, result_serializer="json"
)
def mine_task(ctx: RunContext, settings: MiningSettings, inputs: Inputs) -> dict[str, Any]:
    manifest = run_mining(ctx, settings, inputs)
    return publish_manifest(manifest, key="hints", description=f"{ctx.run_name}: hint bank")


@task(
    name="index", task_run_name="index-" + TASK_RUN_SUFFIX, cache_policy=STAGE_CACHE, result_serializer="json"
)
def index_task(ctx: RunContext, settings: IndexingSettings, inputs: Inputs) -> dict[str, Any]:
    manifest = run_indexing(ctx, settings, inputs)
    return publish_manifest(manifest, key="index", description=f"{ctx.run_name}: FAISS index")


@task(
    name="teach", task_run_name="teach-" + TASK_RUN_SUFFIX, cache_policy=STAGE_CACHE, result_serializer="json"
)
def teach_task(ctx: RunContext, settings: TeacherSettings, inputs: Inputs) -> dict[str, Any]:
    with shard_runner_for(ctx):
        manifest = run_teacher(ctx, settings, inputs, progress=progress_reporter(settings.stage))
    return publish_manifest(
        manifest, key=f"rollout-{settings.stage}", description=f"{ctx.run_name}: {settings.stage_dir()}"
    )
