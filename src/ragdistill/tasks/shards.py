"""Prefect task for one rollout shard: a thin wrapper over ``stages.rollout.play_shard``."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ragdistill.stages.rollout import play_shard
from ragdistill.stages.shards import ShardJob
from ragdistill.tasks.rollout import progress_reporter


@task(
    name="rollout-shard",
    task_run_name="rollout-{job.name}-{job.config.env.name}-{job.config.run.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def rollout_shard_task(job: ShardJob) -> dict[str, Any]:
    """Play one shard; the stage (its Prefect task ``rollout-<stage>``) merges and caches the result.
    A shard sent to another process reports its own progress artifact."""
    if job.progress is None:
        job = replace(job, progress=progress_reporter(f"{job.plan.stage} shard {job.index}"))
    return asdict(play_shard(job))
