"""Prefect flow for stage A: play the base agent on a split and store every episode."""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import ExperimentOverrides, documented_parameters, experiment_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.rollout import rollout_task


@flow(name="rollout", flow_run_name=flow_run_namer("rollout", "base"), log_prints=True)
@documented_parameters
def rollout_flow(
    config_name: str,
    split: str | None = None,
    limit: int | None = None,
    run_root: str | None = None,
    stage: str = "base",
    overrides: ExperimentOverrides | None = None,
) -> dict[str, Any]:
    """Stage A: play the agent on the config's tasks; re-running resumes where it stopped."""
    settings = {"env.split": split, "env.limit": limit, "run.run_root": run_root}
    config, _ = experiment_config(config_name, overrides, settings)
    try:
        return on_run_root(rollout_task, config)(config, stage)
    finally:
        close_shared_backends()
