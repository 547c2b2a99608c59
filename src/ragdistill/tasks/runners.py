"""The Prefect task runner rollout shards run on (``orchestration`` in the config, ``RunContext.orchestration``).

``in-process``: Prefect's thread pool; the shards share this process's engines (``rollout.shards``).
``ray``: prefect-ray's ``RayTaskRunner`` on the cluster at ``orchestration.ray_address`` (None: a local
Ray instance, started for the rollout and stopped after it, unless this process already joined one);
each shard is a Ray task asking for ``cpus_per_shard`` CPUs and ``gpus_per_shard`` GPUs and loads its
own engine in its Ray worker. Ray workers must import ragdistill (and any environment registered at run
time) the way this process does: install the project on every node, or start the cluster from this
environment.

What the runners run is the tasks' business: ``tasks.shards.prefect_shard_runner`` submits one
``rollout-shard`` task per shard to the runner made here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ragdistill.config import OrchestrationConfig
from ragdistill.errors import UserFacingError


class RunnerError(UserFacingError, RuntimeError):
    """The configured task runner cannot be used; the message says what to install or change."""


def task_runner_for(settings: OrchestrationConfig, shards: int) -> TaskRunner[Any]:
    """The task runner ``settings.task_runner`` names, sized for ``shards`` parallel shards."""
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


def shard_resources(settings: OrchestrationConfig) -> AbstractContextManager[Any]:
    """The resources each task submitted inside the block asks for (Ray: CPUs and GPUs per shard)."""
    if settings.task_runner != "ray":
        return nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_cpus=settings.cpus_per_shard, num_gpus=settings.gpus_per_shard)
