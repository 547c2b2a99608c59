"""The ``prefect.yaml`` for ``prefect deploy --all``, generated from :data:`~.specs.DEPLOYMENTS`.

``prefect deploy --all`` run from the repository root registers the same deployments as ``ragdistill
deploy``: same names, module-path entrypoints, default parameters, descriptions, tags, work pools (CPU or
GPU per deployment, for the config), schedules (inactive unless asked for), retrain trigger and concurrency
limit. The file has one build step that prints the folder ``prefect deploy`` runs in (``pwd``); its output
becomes the pull step's working directory, so the committed file names no absolute path. It sets no job
variables: the project's pools fix a run's command, working folder and environment in their template.
``prefect deploy`` does not create work pools: create the ones the file names first with ``ragdistill
deploy`` (the project's template; ``prefect work-pool create`` would make Prefect's default one, whose
runs may set their own command); the header lists them. Nor can it declare the crash automations
(``deployments.crashes``: not a deployment's own trigger), which ``ragdistill deploy`` creates; the header
says so.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ragdistill.config import ConfigError
from ragdistill.config.files import CONFIG_NAME_PATTERN
from ragdistill.deployments.specs import (
    DEFAULT_PLAN,
    DEPLOYMENT_NAME,
    DEPLOYMENTS,
    RETRAIN_CONCURRENCY_LIMIT,
    SCHEDULE_TIMEZONE,
    DeploymentPlan,
    deployment_parameters,
    deployment_tags,
    flow_summary,
    work_pools,
)
from ragdistill.deployments.triggers import retrain_trigger
from ragdistill.orchestration.worker import WORK_POOL_TYPE

PREFECT_YAML = "prefect.yaml"
PROJECT_NAME = "ragdistill"
REGENERATE_COMMAND = f"ragdistill deploy --write-prefect-yaml {PREFECT_YAML}"
FOLDER_STEP_ID = "project-folder"
PROJECT_FOLDER = "{{ " + FOLDER_STEP_ID + ".stdout }}"


def _header(pools: list[str]) -> str:
    plural = "s" if len(pools) > 1 else ""
    return (
        "# Generated from ragdistill.deployments.specs.DEPLOYMENTS; do not edit by hand.\n"
        f"# Regenerate from the repository root with:  {REGENERATE_COMMAND}\n"
        "# (tests/test_deployments.py fails while this file and the code disagree.)\n"
        "#\n"
        f"# Register every deployment from the repository root; the {WORK_POOL_TYPE} work pool{plural} "
        f"{', '.join(pools)} must exist\n"
        "# with the project's job template (runs cannot set their command, folder or environment), which\n"
        "# `ragdistill deploy` creates (Prefect's `prefect work-pool create` would not):\n"
        "#   prefect --no-prompt deploy --all\n"
        "# The automations that mark a run whose worker died Crashed and retry a crashed retrain are not\n"
        "# deployment triggers, so this file cannot declare them: `ragdistill deploy` creates them.\n"
    )


def _prefect_version() -> str:
    import prefect

    return str(prefect.__version__)


def _trigger_spec() -> dict[str, Any]:
    """The retrain trigger as prefect.yaml writes one: its fields as JSON, the trigger type first."""
    trigger = retrain_trigger()
    return {"type": trigger.type, **trigger.model_dump(mode="json", exclude_unset=True)}


def prefect_yaml(plan: DeploymentPlan = DEFAULT_PLAN) -> dict[str, Any]:
    """The prefect.yaml content: one deployment per entry of :data:`DEPLOYMENTS`, as
    :func:`~.register.runner_deployments` builds them for the same plan. The config is a name under
    ``configs/``: ``prefect deploy`` takes each flow's parameter schema as it is, which accepts no path, so
    a path would make the server refuse every run."""
    config_name = plan.config_name
    if not re.fullmatch(CONFIG_NAME_PATTERN, config_name):
        raise ConfigError(
            f"prefect.yaml names its config by name under configs/, not {config_name!r}: put the file in "
            "configs/ and pass its name, or register with `ragdistill deploy --config PATH`, whose "
            "deployments accept that one file"
        )
    pools = work_pools(config_name, plan.work_pool, plan.gpu_work_pool)
    deployments = []
    for spec in DEPLOYMENTS:
        flow = spec.load()
        entry: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "entrypoint": spec.flow,
            "description": flow_summary(flow),
            "tags": deployment_tags(spec),
            "parameters": deployment_parameters(spec, config_name, plan.run_root),
            "work_pool": {"name": pools[spec.flow]},
        }
        if spec.schedule is not None:
            entry["schedules"] = [
                {
                    "cron": spec.schedule.cron,
                    "timezone": SCHEDULE_TIMEZONE,
                    "active": plan.schedules.active(spec.schedule),
                    "slug": spec.schedule.slug,
                }
            ]
        if spec.retrain_trigger:
            entry["triggers"] = [_trigger_spec()]
            entry["concurrency_limit"] = {
                "limit": RETRAIN_CONCURRENCY_LIMIT,
                "collision_strategy": "ENQUEUE",
            }
        deployments.append(entry)
    return {
        "name": PROJECT_NAME,
        "prefect-version": _prefect_version(),
        "build": [{"prefect.deployments.steps.run_shell_script": {"id": FOLDER_STEP_ID, "script": "pwd"}}],
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": PROJECT_FOLDER}}],
        "deployments": deployments,
    }


def prefect_yaml_text(plan: DeploymentPlan = DEFAULT_PLAN) -> str:
    """:func:`prefect_yaml` as the file's text, with a header that says how to regenerate it and which
    work pools to create."""
    content = prefect_yaml(plan)
    pools = list(dict.fromkeys(entry["work_pool"]["name"] for entry in content["deployments"]))
    body = yaml.safe_dump(content, sort_keys=False, width=110, allow_unicode=True)
    return _header(pools) + "\n" + body


def write_prefect_yaml(path: Path, plan: DeploymentPlan = DEFAULT_PLAN) -> Path:
    """Write :func:`prefect_yaml_text` to ``path`` (a folder gets a ``prefect.yaml`` in it); the file."""
    target = path / PREFECT_YAML if path.is_dir() else path
    target.write_text(prefect_yaml_text(plan))
    return target
