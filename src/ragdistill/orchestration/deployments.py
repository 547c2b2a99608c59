"""What the Prefect server is told: a process work pool and one deployment per flow.

Every flow of ``ragdistill.flows`` is deployed under the name ``ragdistill`` (``pipeline/ragdistill``,
``index/ragdistill``, …) to the work pool :data:`WORK_POOL` (type ``process``: a worker on this machine
runs each flow run as a subprocess, in the project folder, so ``configs/``, ``data/`` and relative run
roots resolve as they do for the CLI). Flows are referenced by module path, so a worker needs the
installed package, not a copy of the source tree.

The pipeline deployment carries a nightly cron schedule that is inactive unless asked for
(``ragdistill serve --nightly``, or ``RAGDISTILL_NIGHTLY=1``); registering again applies the flag anew.
A new flow gets a deployment by adding one :class:`FlowDeployment` to :data:`DEPLOYMENTS`; the
``prefect.yaml`` at the repository root (for ``prefect deploy --all``) is generated from the same list by
:mod:`ragdistill.orchestration.prefect_yaml`.

Call these inside :func:`ragdistill.orchestration.server.prefect_api`, which points the client at the
server.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.flows.parameters import DEFAULT_CONFIG
from ragdistill.paths import project_root

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

WORK_POOL = "ragdistill-process"
WORK_POOL_TYPE = "process"
DEPLOYMENT_NAME = "ragdistill"
TAGS = ["ragdistill"]
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
NIGHTLY_SLUG = "nightly"
NIGHTLY_ENV = "RAGDISTILL_NIGHTLY"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
RETRAIN_CONCURRENCY_LIMIT = 1


@dataclass(frozen=True)
class FlowDeployment:
    """One deployment: the flow it runs, as ``module.function``, whether it has the nightly schedule, and
    whether failure events trigger it (with a concurrency limit of 1; see :func:`retrain_trigger`)."""

    flow: str
    nightly: bool = False
    retrain_trigger: bool = False

    def load(self) -> Flow[..., Any]:
        module_name, _, attribute = self.flow.rpartition(".")
        return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


DEPLOYMENTS: tuple[FlowDeployment, ...] = (
    FlowDeployment("ragdistill.flows.pipeline.pipeline_flow", nightly=True),
    FlowDeployment("ragdistill.flows.rollout.rollout_flow"),
    FlowDeployment("ragdistill.flows.standalone.mine_flow"),
    FlowDeployment("ragdistill.flows.standalone.index_flow"),
    FlowDeployment("ragdistill.flows.standalone.teach_flow"),
    FlowDeployment("ragdistill.flows.standalone.expert_flow"),
    FlowDeployment("ragdistill.flows.standalone.build_datasets_flow"),
    FlowDeployment("ragdistill.flows.standalone.train_flow"),
    FlowDeployment("ragdistill.flows.standalone.evaluate_flow"),
    FlowDeployment("ragdistill.flows.standalone.report_flow"),
    FlowDeployment("ragdistill.flows.retrain.collect_flow"),
    FlowDeployment("ragdistill.flows.retrain.retrain_flow", retrain_trigger=True),
)


def nightly_requested(flag: bool | None = None) -> bool:
    """The ``--nightly/--no-nightly`` flag when given, else whether ``RAGDISTILL_NIGHTLY`` is 1/true/yes/on."""
    if flag is not None:
        return flag
    return os.environ.get(NIGHTLY_ENV, "").strip().lower() in TRUE_WORDS


def flow_summary(flow: Flow[..., Any]) -> str | None:
    """The first paragraph of the flow's docstring (the rest documents its parameters)."""
    return flow.description.split("\n\n")[0].strip() if flow.description else None


def deployment_parameters(config_name: str, run_root: str | None = None) -> dict[str, str]:
    """The parameters every deployment's runs default to."""
    return {"config_name": config_name, **({"run_root": run_root} if run_root else {})}


def retrain_trigger(config_name: str) -> Any:
    """The retrain deployment's trigger: ``retrain.trigger_events`` failure events of one run root within
    ``retrain.trigger_window_s`` (of the config ``config_name``) start one run on that run root. The trigger
    is reactive: after firing it ignores further events until its window ends, so the retrain reads every
    failure from storage rather than counting events."""
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    from ragdistill.config import load_config
    from ragdistill.flows.parameters import config_file
    from ragdistill.orchestration.events import FAILURES_RECORDED, RESOURCE_PREFIX, RUN_ROOT_LABEL

    settings = load_config(config_file(config_name)).retrain
    return DeploymentEventTrigger(
        name="failures-recorded",
        expect={FAILURES_RECORDED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        for_each={RUN_ROOT_LABEL},
        posture=Posture.Reactive,
        threshold=settings.trigger_events,
        within=timedelta(seconds=settings.trigger_window_s),
        parameters={"config_name": config_name, "run_root": "{{ event.resource['" + RUN_ROOT_LABEL + "'] }}"},
    )


def runner_deployments(
    config_name: str = DEFAULT_CONFIG,
    nightly: bool = False,
    work_pool: str = WORK_POOL,
    working_dir: Path | None = None,
    run_root: str | None = None,
) -> list[RunnerDeployment]:
    """One deployment per entry of :data:`DEPLOYMENTS`, whose runs default to ``config_name`` (and to
    ``run_root`` instead of the config's run root, when given) and run in ``working_dir`` (default: the
    project folder); the nightly schedule is active only when ``nightly``."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    folder = (working_dir or project_root()).absolute()
    deployments = []
    for spec in DEPLOYMENTS:
        flow = spec.load()
        schedules = (
            [
                DeploymentScheduleCreate(
                    schedule=CronSchedule(cron=NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE),
                    active=nightly,
                    slug=NIGHTLY_SLUG,
                )
            ]
            if spec.nightly
            else []
        )
        triggered = (
            {
                "triggers": [retrain_trigger(config_name)],
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
                parameters=deployment_parameters(config_name, run_root),
                description=flow_summary(flow),
                tags=TAGS,
                work_pool_name=work_pool,
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
                from ragdistill.orchestration.server import PrefectServerError

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
) -> list[str]:
    """Create the work pool if missing and create or update every deployment; their full names
    (``<flow>/<deployment>``), pipeline first."""
    ensure_work_pool(work_pool)
    names = []
    for deployment in runner_deployments(config_name, nightly, work_pool, working_dir, run_root):
        deployment.apply(work_pool_name=work_pool)
        names.append(deployment.full_name)
    return names
