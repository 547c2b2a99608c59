"""Prefect tasks for stages B and C: thin wrappers over the mining, indexing and teaching stages.

Each task also takes the upstream stage's content digest: it makes the dependency visible in the UI;
the cache key itself comes from the stage's identity (``tasks.common``).
"""

from __future__ import annotations

from typing import Any

from prefect import task

from ragdistill.config import ExperimentConfig
from ragdistill.orchestration.runners import prefect_shard_runner
from ragdistill.stages.indexing import indexing_identity, run_indexing
from ragdistill.stages.layout import HINTS_DIR, INDEX_DIR, TEACHER_STAGE, rollout_prefix
from ragdistill.stages.lifecycle import StageIdentity
from ragdistill.stages.mining import mining_identity, run_mining
from ragdistill.stages.rollout import plan_identity
from ragdistill.stages.shards import use_shard_runner
from ragdistill.stages.teaching import run_teacher, teacher_plan
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import TASK_RUN_SUFFIX, publish_manifest, stage_cache_policy
from ragdistill.tasks.rollout import progress_reporter


def _mining(config: ExperimentConfig, _: dict[str, Any]) -> tuple[str, StageIdentity]:
    return HINTS_DIR, mining_identity(config, ArtifactStore(config.run.run_root))


def _indexing(config: ExperimentConfig, _: dict[str, Any]) -> tuple[str, StageIdentity]:
    return INDEX_DIR, indexing_identity(config, ArtifactStore(config.run.run_root))


def _teaching(config: ExperimentConfig, _: dict[str, Any]) -> tuple[str, StageIdentity]:
    return rollout_prefix(TEACHER_STAGE), plan_identity(config, teacher_plan(config))


@task(
    name="mine",
    task_run_name="mine-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_mining, __name__),
    result_serializer="json",
)
def mine_task(config: ExperimentConfig, rollout_digest: str) -> dict[str, Any]:
    manifest = run_mining(config)
    return publish_manifest(manifest, key="hints", description=f"{config.run.name}: hint bank")


@task(
    name="index",
    task_run_name="index-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_indexing, __name__),
    result_serializer="json",
)
def index_task(config: ExperimentConfig, hints_digest: str) -> dict[str, Any]:
    manifest = run_indexing(config)
    return publish_manifest(manifest, key="index", description=f"{config.run.name}: FAISS index")


@task(
    name="teach",
    task_run_name="teach-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_teaching, __name__),
    result_serializer="json",
)
def teach_task(config: ExperimentConfig, hints_digest: str, index_digest: str | None) -> dict[str, Any]:
    with use_shard_runner(prefect_shard_runner(config.orchestration)):
        manifest = run_teacher(config, progress=progress_reporter(TEACHER_STAGE))
    return publish_manifest(
        manifest, key="rollout-teacher", description=f"{config.run.name}: rollouts/teacher"
    )
