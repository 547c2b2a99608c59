"""The Prefect task runner rollout shards run on (``orchestration`` in the config).

``in-process``: Prefect's thread pool; the shards share this process's engines (``stages.shards``).
``ray``: prefect-ray's ``RayTaskRunner`` on the cluster at ``orchestration.ray_address`` (None: a local
Ray instance, started for the rollout and stopped after it, unless this process already joined one);
each shard is a Ray task asking for ``cpus_per_shard`` CPUs and ``gpus_per_shard`` GPUs and loads its
own engine in its Ray worker. Ray workers must import ragdistill (and any environment registered at run
time) the way this process does: install the project on every node, or start the cluster from this
environment.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ragdistill.config import OrchestrationConfig
from ragdistill.errors import UserFacingError
from ragdistill.rollout import RolloutStats
from ragdistill.stages.shards import ShardJob, ShardRunner, for_threads


class RunnerError(UserFacingError, RuntimeError):
    """The configured task runner cannot be used; the message says what to install or change."""


def task_runner_for(settings: OrchestrationConfig, shards: int) -> TaskRunner[Any]:
    if settings.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise RunnerError(
                "orchestration.task_runner is 'ray' but prefect-ray is not installed: "
                "pip install -e '.[ray]' (or set orchestration.task_runner to 'in-process')"
            ) from None
        return RayTaskRunner(address=settings.ray_address)
    return ThreadPoolTaskRunner(max_workers=max(shards, 1))


def _resources(settings: OrchestrationConfig) -> AbstractContextManager[Any]:
    if settings.task_runner != "ray":
        return nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_cpus=settings.cpus_per_shard, num_gpus=settings.gpus_per_shard)


def prefect_shard_runner(settings: OrchestrationConfig) -> ShardRunner:
    """A shard runner that submits one ``rollout-shard`` Prefect task per shard to the configured task
    runner and waits for all of them (a failed shard fails the stage after the others finished)."""
    from ragdistill.tasks.shards import rollout_shard_task

    def run(jobs: list[ShardJob]) -> list[RolloutStats]:
        if settings.task_runner == "ray":
            jobs = [replace(job, progress=None) for job in jobs]
        else:
            jobs = for_threads(jobs)
        with task_runner_for(settings, len(jobs)) as runner:
            with _resources(settings):
                futures = [runner.submit(rollout_shard_task, {"job": job}) for job in jobs]
            for future in futures:
                future.wait()
            return [RolloutStats(**future.result()) for future in futures]

    return run
