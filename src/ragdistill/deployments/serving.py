"""The project's deployments served on this machine: the Prefect server, the deployments with their triggers
and automations, and one process worker, for as long as a block runs.

``ragdistill serve`` runs a worker in the foreground until Ctrl-C; ``ragdistill loop run`` drives two
collects and the retrain they trigger through the same served deployments, then stops. Both enter
:func:`served_deployments`, which starts (or reuses) the server (``orchestration.server.prefect_api``),
registers the deployments on one pool (``deployments.register``) and starts a worker for it
(``orchestration.worker``); leaving the block, however (an error, Ctrl-C, a SIGTERM turned into one),
stops the worker with its flow runs, then the server when the block started it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ragdistill.deployments.register import register_deployments
from ragdistill.deployments.specs import DEPLOYMENTS, ActiveSchedules, DeploymentPlan, FlowDeployment
from ragdistill.orchestration.server import DEFAULT_START_TIMEOUT_S, prefect_api
from ragdistill.orchestration.worker import WORK_POOL, start_worker, stop_worker


@dataclass(frozen=True)
class ServedDeployments:
    """What :func:`served_deployments` started: the API it talks to, the deployments' full names, the
    pool and its worker process."""

    api_url: str
    deployments: list[str]
    work_pool: str
    worker: subprocess.Popen[bytes]

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


@contextmanager
def served_deployments(
    config_name: str,
    schedules: ActiveSchedules,
    work_pool: str = WORK_POOL,
    *,
    limit: int | None = 1,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    run_root: str | None = None,
    working_dir: Path | None = None,
    worker_output: IO[bytes] | int | None = None,
    worker_environment: dict[str, str] | None = None,
    deployments: Sequence[FlowDeployment] = DEPLOYMENTS,
) -> Iterator[ServedDeployments]:
    """The server (started, or the running one, or ``PREFECT_API_URL``'s), ``deployments`` registered from
    ``config_name`` with ``schedules`` (every one on ``work_pool``: this machine runs them all; the loop
    flows defaulting to ``run_root`` when given) and a process worker on that pool running at most
    ``limit`` flow runs at once, its output to ``worker_output``; all stopped on leaving the block."""
    from ragdistill.config import config_file

    config_file(config_name)  # an unknown config fails here, before a server starts
    with prefect_api(timeout_s=timeout_s) as api_url:
        plan = DeploymentPlan(config_name, schedules, work_pool, gpu_work_pool=work_pool, run_root=run_root)
        names = register_deployments(plan, working_dir, deployments)
        worker = start_worker(
            api_url, work_pool, limit=limit, output=worker_output, environment=worker_environment
        )
        try:
            yield ServedDeployments(api_url, names, work_pool, worker)
        finally:
            stop_worker(worker)
