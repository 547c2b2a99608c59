"""Rollout shards as Prefect tasks: the ``rollout-shard`` task (a thin wrapper over
``rollout.play.play_shard``) and the shard runner that submits one per shard to the configured task
runner (``tasks.runners``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from ragdistill.config import OrchestrationConfig
from ragdistill.config.run_context import RunContext
from ragdistill.rollout.collaborators import RolloutStats
from ragdistill.rollout.play import play_shard
from ragdistill.rollout.shards import ShardJob, ShardRunner, for_threads, use_shard_runner
from ragdistill.tasks.progress import progress_reporter
from ragdistill.tasks.runners import shard_resources, task_runner_for


@task(
    name="rollout-shard",
    task_run_name="rollout-{job.name}-{job.ctx.env_name}-{job.ctx.run_name}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def rollout_shard_task(job: ShardJob) -> dict[str, Any]:
    """Play one shard; the stage (its Prefect task) merges and caches the result. A shard sent to another
    process reports its own progress artifact."""
    if job.progress is None:
        job = replace(job, progress=progress_reporter(job.plan.stage, f"shard {job.index}"))
    return asdict(play_shard(job))


def prefect_shard_runner(settings: OrchestrationConfig) -> ShardRunner:
    """A shard runner that submits one ``rollout-shard`` Prefect task per shard to the configured task
    runner and waits for all of them (a failed shard fails the stage after the others finished)."""

    def run(jobs: list[ShardJob]) -> list[RolloutStats]:
        if settings.task_runner == "ray":
            jobs = [replace(job, progress=None) for job in jobs]
        else:
            jobs = for_threads(jobs)
        with task_runner_for(settings, len(jobs)) as runner:
            with shard_resources(settings):
                futures = [runner.submit(rollout_shard_task, {"job": job}) for job in jobs]
            for future in futures:
                future.wait()
            return [RolloutStats(**future.result()) for future in futures]

    return run


@contextmanager
def shard_runner_for(ctx: RunContext) -> Iterator[None]:
    """Rollouts started inside the block play their shards as Prefect tasks on ``ctx.orchestration``."""
    with use_shard_runner(prefect_shard_runner(ctx.orchestration)):
        yield
