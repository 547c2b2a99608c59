"""What is deployed: one deployment per flow, its name, tags, default parameters and nightly schedule.

Every flow of ``ragdistill.flows`` is deployed under the name ``ragdistill`` (``pipeline/ragdistill``,
``index/ragdistill``, …) to the process work pool (:data:`ragdistill.orchestration.worker.WORK_POOL`: a
worker on this machine runs each flow run as a subprocess, in the project folder, so ``configs/``,
``data/`` and relative run roots resolve as they do for the CLI). Flows are named by entrypoint string
(``module.function``), loaded only when a deployment is built, so this package never imports the flows
and a worker needs the installed package, not a copy of the source tree.

The pipeline deployment carries a nightly cron schedule that is inactive unless asked for
(``ragdistill serve --nightly``, or ``RAGDISTILL_NIGHTLY=1``); registering again applies the flag anew.
A new flow gets a deployment by adding one :class:`FlowDeployment` to :data:`DEPLOYMENTS`: both
``ragdistill deploy`` (``deployments.register``) and the ``prefect.yaml`` at the repository root
(``deployments.prefect_yaml``) are built from that list.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect import Flow

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
    whether failure events trigger it (with a concurrency limit of 1; see
    :func:`ragdistill.deployments.triggers.retrain_trigger`)."""

    flow: str
    nightly: bool = False
    retrain_trigger: bool = False

    def load(self) -> Flow[..., Any]:
        module_name, _, attribute = self.flow.rpartition(".")
        return getattr(importlib.import_module(module_name), attribute)  # type: ignore[no-any-return]


DEPLOYMENTS: tuple[FlowDeployment, ...] = (
    FlowDeployment("ragdistill.flows.pipeline.pipeline_flow", nightly=True),
    FlowDeployment("ragdistill.flows.standalone.rollout_flow"),
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
