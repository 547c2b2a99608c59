"""Telling the Prefect server: the process work pools (CPU and GPU) and one deployment per entry of
:data:`~ragdistill.deployments.specs.DEPLOYMENTS`, created or updated.

Call these inside :func:`ragdistill.orchestration.server.prefect_api`, which points the client at the
server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ragdistill.config import DEFAULT_CONFIG
from ragdistill.deployments.specs import (
    DEPLOYMENT_NAME,
    DEPLOYMENTS,
    RETRAIN_CONCURRENCY_LIMIT,
    SCHEDULE_TIMEZONE,
    TAGS,
    ActiveSchedules,
    deployment_parameters,
    flow_summary,
    work_pools,
)
from ragdistill.deployments.triggers import retrain_trigger
from ragdistill.orchestration.server import PrefectServerError
from ragdistill.orchestration.worker import GPU_WORK_POOL, WORK_POOL, WORK_POOL_TYPE
from ragdistill.paths import project_root

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def runner_deployments(
    config_name: str = DEFAULT_CONFIG,
    nightly: bool = False,
    work_pool: str = WORK_POOL,
    working_dir: Path | None = None,
    run_root: str | None = None,
    gpu_work_pool: str = GPU_WORK_POOL,
    *,
    retrain_check: bool = False,
    collect_schedule: bool = False,
) -> list[RunnerDeployment]:
    """One deployment per entry of :data:`DEPLOYMENTS`, whose runs default to ``config_name`` (and to
    ``run_root`` instead of the config's run root, when given; the loop flows to the run root alone) and
    run in ``working_dir`` (default: the project folder), on ``gpu_work_pool`` when the flow does work the
    config runs on GPUs, else on ``work_pool``; each schedule is active only when its flag is set
    (``nightly``, ``retrain_check``, ``collect_schedule``)."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    folder = (working_dir or project_root()).absolute()
    pools = work_pools(config_name, work_pool, gpu_work_pool)
    active = ActiveSchedules(nightly=nightly, retrain_check=retrain_check, collect=collect_schedule)
    deployments = []
    for spec in DEPLOYMENTS:
        flow = spec.load()
        schedules = (
            [
                DeploymentScheduleCreate(
                    schedule=CronSchedule(cron=spec.schedule.cron, timezone=SCHEDULE_TIMEZONE),
                    active=active.active(spec.schedule),
                    slug=spec.schedule.slug,
                )
            ]
            if spec.schedule is not None
            else []
        )
        triggered = (
            {
                "triggers": [retrain_trigger()],
                "concurrency_limit": ConcurrencyLimitConfig(
                    limit=RETRAIN_CONCURRENCY_LIMIT, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
            }
            if spec.retrain_trigger
            else {}
        )
        deployments.append(
            RunnerDeployment.from_flow(
                flow,
                name=DEPLOYMENT_NAME,
                schedules=schedules,
                parameters=deployment_parameters(spec, config_name, run_root),
                description=flow_summary(flow),
                tags=TAGS,
                work_pool_name=pools[spec.flow],
                job_variables={"working_dir": str(folder)},
                entrypoint_type=EntrypointType.MODULE_PATH,
                **triggered,
            )
        )
    return deployments


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the process work pool unless it exists; True when this call created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pool = None
        if pool is not None:
            if pool.type != WORK_POOL_TYPE:
                raise PrefectServerError(
                    f"work pool {name!r} exists with type {pool.type!r}, not {WORK_POOL_TYPE!r}: delete it "
                    f"(`prefect work-pool delete {name}`) or choose another pool with --pool"
                )
            return False
        template = ProcessWorker.get_default_base_job_template()
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=WORK_POOL_TYPE, base_job_template=template)
            )
        except ObjectAlreadyExists:
            return False
    return True


def register_deployments(
    config_name: str = DEFAULT_CONFIG,
    nightly: bool = False,
    work_pool: str = WORK_POOL,
    working_dir: Path | None = None,
    run_root: str | None = None,
    gpu_work_pool: str = GPU_WORK_POOL,
    *,
    retrain_check: bool = False,
    collect_schedule: bool = False,
) -> list[str]:
    """Create both work pools if missing (a GPU worker started before a GPU config is deployed finds its
    pool) and create or update every deployment (:func:`runner_deployments`); their full names
    (``<flow>/<deployment>``), pipeline first."""
    for pool in dict.fromkeys((work_pool, gpu_work_pool)):
        ensure_work_pool(pool)
    names = []
    deployments = runner_deployments(
        config_name,
        nightly,
        work_pool,
        working_dir,
        run_root,
        gpu_work_pool,
        retrain_check=retrain_check,
        collect_schedule=collect_schedule,
    )
    for deployment in deployments:
        deployment.apply()
        names.append(deployment.full_name)
    return names
