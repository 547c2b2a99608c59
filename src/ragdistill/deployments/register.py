"""Telling the Prefect server: the process work pools (CPU and GPU), one deployment per entry of
:data:`~ragdistill.deployments.specs.DEPLOYMENTS` and the crash automations (``deployments.crashes``),
created or updated.

The pools carry the project's base job template (``orchestration.worker.project_job_template``): the
command, working folder and environment of a flow run are the pool's, so neither a deployment nor a
run created through the API sets them. A deployment whose default config is a file rather than a name
under ``configs/`` accepts that one file in its parameter schema too.

Call these inside :func:`ragdistill.orchestration.server.prefect_api`, which points the client at the
server.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ragdistill.config.files import CONFIG_NAME_PATTERN
from ragdistill.deployments.crashes import register_crash_automations
from ragdistill.deployments.specs import (
    DEFAULT_PLAN,
    DEPLOYMENT_NAME,
    DEPLOYMENTS,
    RETRAIN_CONCURRENCY_LIMIT,
    SCHEDULE_TIMEZONE,
    DeploymentPlan,
    FlowDeployment,
    deployment_parameters,
    deployment_tags,
    flow_summary,
    work_pools,
)
from ragdistill.deployments.triggers import retrain_trigger
from ragdistill.orchestration.heartbeats import HeartbeatSettings
from ragdistill.orchestration.server import PrefectServerError
from ragdistill.orchestration.worker import WORK_POOL, WORK_POOL_TYPE, project_job_template
from ragdistill.paths import project_root

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment


def runner_deployments(
    plan: DeploymentPlan = DEFAULT_PLAN, deployments: Sequence[FlowDeployment] = DEPLOYMENTS
) -> list[RunnerDeployment]:
    """One deployment per entry of ``deployments`` (default :data:`DEPLOYMENTS`) as ``plan`` says: its
    runs' defaults (:func:`~.specs.deployment_parameters`), its work pool (the pools' template sets the
    working folder) and its schedule, active only when ``plan.schedules`` turns it on."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    pools = work_pools(plan.config_name, plan.work_pool, plan.gpu_work_pool, deployments)
    built = []
    for spec in deployments:
        flow = spec.load()
        schedules = (
            [
                DeploymentScheduleCreate(
                    schedule=CronSchedule(cron=spec.schedule.cron, timezone=SCHEDULE_TIMEZONE),
                    active=plan.schedules.active(spec.schedule),
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
        deployment = RunnerDeployment.from_flow(
            flow,
            name=DEPLOYMENT_NAME,
            schedules=schedules,
            parameters=deployment_parameters(spec, plan.config_name, plan.run_root),
            description=flow_summary(flow),
            tags=deployment_tags(spec),
            work_pool_name=pools[spec.flow],
            entrypoint_type=EntrypointType.MODULE_PATH,
            **triggered,
        )
        if not spec.loop:
            _accept_own_config(deployment, plan.config_name)
        built.append(deployment)
    return built


def _accept_own_config(deployment: RunnerDeployment, config_name: str) -> None:
    """A deployment registered with a config file (``--config path/x.yaml``) rather than a name under
    ``configs/``: its schema's ``config_name`` takes that file as well, so its own default passes the
    server's check; a run still cannot name any other path (``flows.run_requests`` checks both again).
    Not for a loop flow's deployment: it defaults to a run root, not a config, so its ``config_name``
    stays a name under ``configs/`` or empty."""
    if re.fullmatch(CONFIG_NAME_PATTERN, config_name):
        return
    schema = deployment._parameter_openapi_schema.properties["config_name"]  # set by from_flow
    named = {key: value for key, value in schema.items() if key in ("type", "pattern", "maxLength")}
    kept = {key: value for key, value in schema.items() if key not in named}
    schema.clear()
    schema.update(kept, anyOf=[named, {"type": "string", "enum": [config_name]}])


def ensure_work_pool(name: str = WORK_POOL, working_dir: Path | None = None) -> bool:
    """Create the process work pool with the project's base job template, whose runs start in
    ``working_dir`` (default: the project folder), or give an existing pool that template; True when
    this call created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    template = project_job_template(working_dir or project_root())
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
            if pool.base_job_template != template:
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            return False
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=WORK_POOL_TYPE, base_job_template=template)
            )
        except ObjectAlreadyExists:
            return False
    return True


def register_deployments(
    plan: DeploymentPlan = DEFAULT_PLAN,
    working_dir: Path | None = None,
    deployments: Sequence[FlowDeployment] = DEPLOYMENTS,
) -> list[str]:
    """Create both work pools if missing (a GPU worker started before a GPU config is deployed finds its
    pool), each with the project's template whose runs start in ``working_dir`` (default: the project
    folder), create or update each of ``deployments`` as ``plan`` says (:func:`runner_deployments`;
    default: the project's flows, :data:`DEPLOYMENTS`, while a test may deploy its own flows under the
    same names) and the crash automations, sized by the heartbeat settings in the environment; the
    deployments' full names (``<flow>/<deployment>``), pipeline first."""
    heartbeats = HeartbeatSettings.from_environment()
    for pool in dict.fromkeys((plan.work_pool, plan.gpu_work_pool)):
        ensure_work_pool(pool, working_dir)
    names = []
    for deployment in runner_deployments(plan, deployments):
        deployment.apply()
        names.append(deployment.full_name)
    register_crash_automations(heartbeats)
    return names
