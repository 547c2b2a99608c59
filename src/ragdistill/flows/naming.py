"""Run names that say what runs: ``<flow>[-<stage>]-<environment>-<run name>``, e.g.
``rollout-teacher-alfworld-demo-alfworld``, instead of Prefect's random adjective-animal names.

Task runs get theirs from format strings over their ``config`` parameter (``tasks.common.TASK_RUN_SUFFIX``); a
flow run's name is computed from its parameters by :func:`flow_run_namer`, which reads the config the
flow will run with (named file plus overrides; for a collect or retrain given only a run root, the config
stored there), so a deployment run started from the UI with an overridden environment is named after what
it really plays. It reads them only as the flow itself would (``flows.run_requests``): a deployment run's
config by name, its run root inside the operator's prefix; else the run is named after what it asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragdistill.errors import UserFacingError
from ragdistill.flows.loop_config import stored_config
from ragdistill.flows.parameters import ExperimentOverrides, experiment_config


def run_name(head: str, env_name: str, run: str) -> str:
    return f"{head}-{env_name}-{run}"


def flow_run_label(flow_name: str, parameters: dict[str, Any], default_stage: str | None = None) -> str:
    """The name of a run of ``flow_name`` with these parameters (and its ``stage`` parameter, defaulting
    to ``default_stage``, for a flow that has one); a config that cannot be read (the run itself will say
    why) names the run after the config's file name instead."""
    stage = parameters.get("stage") or default_stage
    head = f"{flow_name}-{stage}" if stage else flow_name
    config_name = str(parameters.get("config_name") or "")
    run_root = parameters.get("run_root")
    overrides = parameters.get("overrides")
    settings = {"env.split": parameters.get("split"), "env.limit": parameters.get("limit")}
    settings["run.run_root"] = run_root
    try:
        if not config_name and run_root:
            config = stored_config(str(run_root))
        else:
            if isinstance(overrides, dict):
                overrides = ExperimentOverrides.model_validate(overrides)
            config, _ = experiment_config(config_name, overrides, settings, run_root_check=False)
    except (UserFacingError, ValueError):
        fallback = Path(config_name).stem or Path(str(run_root or "")).name or "unknown-config"
        return f"{head}-{fallback}"
    return run_name(head, config.env.name, config.run.name)


def flow_run_namer(flow_name: str, default_stage: str | None = None) -> Callable[[], str]:
    """A ``flow_run_name`` callable for ``@flow``: Prefect calls it with the run's context set."""

    def name() -> str:
        from prefect.runtime import flow_run

        return flow_run_label(flow_name, dict(flow_run.parameters), default_stage)

    name.__qualname__ = f"{flow_name}_run_name"
    return name
