"""What is deployed: one deployment per flow, its name, tags, default parameters and nightly schedule.

Every flow of ``ragdistill.flows`` is deployed under the name ``ragdistill`` (``pipeline/ragdistill``,
``index/ragdistill``, …) to a process work pool (a worker runs each flow run as a subprocess, in the
project folder, so ``configs/``, ``data/`` and relative run roots resolve as they do for the CLI). Two
pools: :data:`~ragdistill.orchestration.worker.WORK_POOL` for CPU work and
:data:`~ragdistill.orchestration.worker.GPU_WORK_POOL` for a flow whose model inference or training the
deployed config runs on GPUs (:func:`gpu_work`), so a GPU run never lands on a CPU-only worker. Flows are named by entrypoint string
(``module.function``), loaded only when a deployment is built, so this package never imports the flows
and a worker needs the installed package, not a copy of the source tree.

Three deployments carry a cron schedule, visible and editable in the UI (the deployment's Schedules),
each active only when asked for; registering again applies the flags anew: the pipeline's nightly run
(``--nightly``, or ``RAGDISTILL_NIGHTLY=1``), the retrain check (``--retrain-check``; ``ragdistill serve``
turns it on), which retrains a run root whose sparse collects reached the threshold without a trigger
firing, and a collect that plays the champion on the next fresh tasks (``--collect-schedule``).

The collect and retrain deployments (``loop``) default to a run root, never to a config: their runs use
the config stored in that run root by its pipeline (``flows.loop_config``), and the retrain trigger
(``deployments.triggers``) passes the run root of the event.

A deployment whose runs may be retried after a crash (``retry_crashed``: the retrain) carries the tag
:data:`RETRY_CRASHED_TAG`, which the project's retry automation (``deployments.crashes``) answers.
A new flow gets a deployment by adding one :class:`FlowDeployment` to :data:`DEPLOYMENTS`: both
``ragdistill deploy`` (``deployments.register``) and the ``prefect.yaml`` at the repository root
(``deployments.prefect_yaml``) are built from that list.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ragdistill.config import DEFAULT_CONFIG, ExperimentConfig, config_file, load_config
from ragdistill.orchestration.worker import GPU_WORK_POOL, WORK_POOL
from ragdistill.training.accelerate_configs import read_accelerate_config

if TYPE_CHECKING:
    from prefect import Flow

GpuWork = Literal["inference", "training"]
"""What a flow may do on a GPU: run model engines (rollouts, mining, teaching, evaluation) or train."""
INFERENCE: frozenset[GpuWork] = frozenset({"inference"})
TRAINING: frozenset[GpuWork] = frozenset({"training"})

DEPLOYMENT_NAME = "ragdistill"
TAGS = ["ragdistill"]
RETRY_CRASHED_TAG = "retry-crashed"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
NIGHTLY_SLUG = "nightly"
NIGHTLY_ENV = "RAGDISTILL_NIGHTLY"
SCHEDULE_TIMEZONE = NIGHTLY_TIMEZONE
RETRAIN_CHECK_SLUG = "retrain-check"
RETRAIN_CHECK_CRON = "15 * * * *"
COLLECT_SLUG = "collect"
COLLECT_CRON = "0 */6 * * *"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
RETRAIN_CONCURRENCY_LIMIT = 1


@dataclass(frozen=True)
class Schedule:
    """A deployment's cron schedule (UTC), named by ``slug``; whether it is active is decided when
    registering (:class:`ActiveSchedules`)."""

    slug: str
    cron: str


NIGHTLY = Schedule(NIGHTLY_SLUG, NIGHTLY_CRON)
RETRAIN_CHECK = Schedule(RETRAIN_CHECK_SLUG, RETRAIN_CHECK_CRON)
COLLECT_SCHEDULE = Schedule(COLLECT_SLUG, COLLECT_CRON)


@dataclass(frozen=True)
class ActiveSchedules:
    """Which schedules a registration turns on (each off unless asked for)."""

    nightly: bool = False
    retrain_check: bool = False
    collect: bool = False

    def active(self, schedule: Schedule) -> bool:
        return {
            NIGHTLY_SLUG: self.nightly,
            RETRAIN_CHECK_SLUG: self.retrain_check,
            COLLECT_SLUG: self.collect,
        }[schedule.slug]


@dataclass(frozen=True)
class DeploymentPlan:
    """What one registration makes of the deployments: their runs' default config (a name under
    ``configs/`` or, registered through the API, a file) and run root (None: the config's; a loop flow
    defaults to the run root alone), the schedules it turns on, and the CPU and GPU work pools (a flow
    doing work the config runs on GPUs goes to the GPU pool)."""

    config_name: str = DEFAULT_CONFIG
    schedules: ActiveSchedules = ActiveSchedules()
    work_pool: str = WORK_POOL
    gpu_work_pool: str = GPU_WORK_POOL
    run_root: str | None = None


DEFAULT_PLAN = DeploymentPlan()
"""The demo config on the project's pools, every schedule off (the committed prefect.yaml's plan)."""


@dataclass(frozen=True)
class FlowDeployment:
    """One deployment: the flow it runs, as ``module.function``, the work it does that a config may put
    on a GPU (``uses``), its schedule, whether it is a loop flow (collect, retrain: it defaults to a run
    root, not a config), whether retrain-due events trigger it (with a concurrency limit of 1; see
    :func:`ragdistill.deployments.triggers.retrain_trigger`), and whether a crashed run of it is retried
    (``retry_crashed``; see :mod:`ragdistill.deployments.crashes`)."""

    flow: str
    uses: frozenset[GpuWork] = frozenset()
    schedule: Schedule | None = None
    loop: bool = False
    retrain_trigger: bool = False
    retry_crashed: bool = False

    def load(self) -> Flow[..., Any]:
        module_name, _, attribute = self.flow.rpartition(".")
        return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


DEPLOYMENTS: tuple[FlowDeployment, ...] = (
    FlowDeployment("ragdistill.flows.pipeline.pipeline_flow", INFERENCE | TRAINING, schedule=NIGHTLY),
    FlowDeployment("ragdistill.flows.standalone.warm_start_flow", TRAINING),
    FlowDeployment("ragdistill.flows.standalone.rollout_flow", INFERENCE),
    FlowDeployment("ragdistill.flows.standalone.mine_flow", INFERENCE),
    FlowDeployment("ragdistill.flows.standalone.index_flow"),
    FlowDeployment("ragdistill.flows.standalone.teach_flow", INFERENCE),
    FlowDeployment("ragdistill.flows.standalone.expert_flow", INFERENCE),
    FlowDeployment("ragdistill.flows.standalone.build_datasets_flow"),
    FlowDeployment("ragdistill.flows.standalone.train_flow", TRAINING),
    FlowDeployment("ragdistill.flows.standalone.evaluate_flow", INFERENCE),
    FlowDeployment("ragdistill.flows.standalone.report_flow"),
    FlowDeployment("ragdistill.flows.ablation.ablation_flow", INFERENCE | TRAINING),
    FlowDeployment("ragdistill.flows.retrain.collect_flow", INFERENCE, schedule=COLLECT_SCHEDULE, loop=True),
    FlowDeployment(
        "ragdistill.flows.retrain.retrain_flow",
        INFERENCE | TRAINING,
        schedule=RETRAIN_CHECK,
        loop=True,
        retrain_trigger=True,
        retry_crashed=True,
    ),
)


def nightly_requested(flag: bool | None = None) -> bool:
    """The ``--nightly/--no-nightly`` flag when given, else whether ``RAGDISTILL_NIGHTLY`` is 1/true/yes/on."""
    if flag is not None:
        return flag
    return os.environ.get(NIGHTLY_ENV, "").strip().lower() in TRUE_WORDS


def deployment_tags(spec: FlowDeployment) -> list[str]:
    """The deployment's tags (its runs carry them): the project's, and :data:`RETRY_CRASHED_TAG` when a
    crashed run of it is retried."""
    return [*TAGS, *([RETRY_CRASHED_TAG] if spec.retry_crashed else [])]


def flow_summary(flow: Flow[..., Any]) -> str | None:
    """The first paragraph of the flow's docstring, on one line (the rest documents its parameters)."""
    return " ".join(flow.description.split("\n\n")[0].split()) if flow.description else None


def deployment_parameters(
    spec: FlowDeployment, config_name: str, run_root: str | None = None
) -> dict[str, str]:
    """The parameters the deployment's runs default to: the config (and ``run_root`` instead of its run
    root, when given); for a loop flow, only the run root (``run_root``, else the config's), whose stored
    config its runs use."""
    if spec.loop:
        return {"run_root": run_root or load_config(config_file(config_name)).run.run_root}
    return {"config_name": config_name, **({"run_root": run_root} if run_root else {})}


def gpu_work(config: ExperimentConfig) -> frozenset[GpuWork]:
    """What ``config`` runs on GPUs: training when its accelerate config trains on CUDA; inference when
    rollout shards ask Ray for GPUs, an in-use vLLM engine has a GPU-only setting (a GPU memory share,
    or tensor parallelism) or an in-use hf engine loads bitsandbytes weights (CUDA only). A vLLM engine
    with neither runs on whichever vLLM build the worker has installed, so the config does not say;
    such configs deploy to the CPU pool (name the same pool twice to send everything to one worker)."""
    work: set[GpuWork] = set()
    if read_accelerate_config(config.training.accelerate_config).uses_gpus:
        work.add("training")
    roles = list(config.engine_roles().values())
    if config.retrieval.group == "llm":
        roles.append(config.models.reranker)
    vllm_on_gpu = any(
        role.backend.kind == "vllm"
        and (role.backend.gpu_memory_utilization is not None or role.backend.tensor_parallel_size > 1)
        for role in roles
    )
    quantized_in_process = any(
        role.backend.kind == "hf" and role.model.quantization is not None for role in roles
    )
    if vllm_on_gpu or quantized_in_process or config.orchestration.gpus_per_shard > 0:
        work.add("inference")
    return frozenset(work)


def work_pools(
    config_name: str, cpu_pool: str, gpu_pool: str, deployments: Sequence[FlowDeployment] = DEPLOYMENTS
) -> dict[str, str]:
    """The work pool of each of ``deployments`` (by flow entrypoint) for runs of the config
    ``config_name``: the GPU pool when the flow does work the config runs on GPUs, else the CPU pool."""
    on_gpu = gpu_work(load_config(config_file(config_name)))
    return {spec.flow: gpu_pool if spec.uses & on_gpu else cpu_pool for spec in deployments}
