"""What a flow run created from the Prefect UI or API may ask for, checked when the flow starts on the worker.

A deployment run carries parameters chosen by whoever can reach the Prefect API. Its parameter schema
already refuses a config path and the operator's settings (``flows.parameters``), but Prefect's server
enforces a deployment's schema only when the run's creator leaves ``enforce_parameter_schema`` on, so the
flow checks again before it reads any file the run names:

- ``config_name`` is a config under the project's ``configs/`` folder by name, or the config the
  deployment was registered with (``ragdistill deploy --config``, the operator's): never a path a run
  chose (``/etc/passwd``, ``../x.yaml``, ``/home/me/.aws/credentials``);
- the run root lies inside the operator's prefix: ``RAGDISTILL_RUN_ROOT_PREFIX`` in the worker's
  environment when set, else a folder holding a run root the operator configured (the config's
  ``run.run_root``, the deployment's default ``run_root``).

A flow called in-process (the CLI, a test) has no deployment: its caller is the operator, and nothing here
applies to it. Nor to a subflow: its parameters come from its parent flow's code; the flow run that the
deployment started, whose parameters the API chose, is the one checked.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ragdistill.config import CONFIGS_DIR, available_configs, config_file
from ragdistill.config.base import NAME_MAX_CHARS
from ragdistill.config.files import CONFIG_NAME_PATTERN, CONFIG_SUFFIXES
from ragdistill.config.limits import shown
from ragdistill.errors import UserFacingError
from ragdistill.paths import project_root

RUN_ROOT_PREFIX_ENV = "RAGDISTILL_RUN_ROOT_PREFIX"
"""The worker's setting: the folder or URL every deployment run's run root must lie inside."""


class RunRequestRefused(UserFacingError, ValueError):
    """A deployment run asked for a config or a run root that only the operator may choose."""


def deployment_defaults() -> dict[str, Any] | None:
    """The parameters the deployment of the current flow run was registered with, when a deployment
    started this flow run (``{}`` when that deployment is gone); None when it was called in-process or as
    a subflow."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None or flow_run.deployment_id is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment(flow_run.deployment_id)
        except ObjectNotFound:
            return {}
    return dict(deployment.parameters or {})


def named_config(config_name: str, deployed: dict[str, Any]) -> Path:
    """The config file a deployment run's ``config_name`` names: the deployment's own config, else a
    config under the project's ``configs/`` by name. Nothing is read or opened before this."""
    if config_name == deployed.get("config_name"):
        return config_file(config_name)
    folder = project_root() / CONFIGS_DIR
    if len(config_name) <= NAME_MAX_CHARS and re.fullmatch(CONFIG_NAME_PATTERN, config_name):
        for suffix in ("", *CONFIG_SUFFIXES):
            named = folder / f"{config_name}{suffix}"
            if named.suffix in CONFIG_SUFFIXES and named.is_file():
                return named
    raise RunRequestRefused(
        f"config_name {shown(config_name)} is not a config under {folder}: a run started from the UI or the "
        f"API names one of those ({', '.join(available_configs()) or 'none'}) or the deployment's own "
        f"({shown(deployed.get('config_name'))}), never a path; config files elsewhere are the operator's"
    )


def _location(run_root: str) -> tuple[str, str]:
    """A run root as (storage, normalised absolute path): a local folder with its links resolved (the
    worker's folder for a relative one), or ``/bucket/key`` on S3."""
    scheme, separator, rest = run_root.partition("://")
    if not separator:
        scheme, rest = "file", run_root
    if scheme == "file":
        return "file", os.path.realpath(os.path.expanduser(rest))
    return scheme, posixpath.normpath("/" + rest.strip("/"))


def _holding_folder(run_root: str) -> tuple[str, str]:
    """The folder that holds a configured run root, as the prefix it allows: never the whole file system
    nor every bucket (a root at the top is its own prefix)."""
    scheme, path = _location(run_root)
    parent = posixpath.dirname(path)
    return scheme, path if parent == "/" else parent


def _inside(location: tuple[str, str], prefix: tuple[str, str]) -> bool:
    (scheme, path), (prefix_scheme, prefix_path) = location, prefix
    return scheme == prefix_scheme and (path == prefix_path or path.startswith(prefix_path.rstrip("/") + "/"))


def check_run_root(run_root: str, configured: Iterable[str | None]) -> None:
    """Refuse a deployment run's ``run_root`` outside the operator's prefix: ``RAGDISTILL_RUN_ROOT_PREFIX``
    when the worker sets it, else the folders holding the ``configured`` run roots (the config file's, the
    deployment's default)."""
    given = os.environ.get(RUN_ROOT_PREFIX_ENV, "").strip()
    if given:
        prefixes = [_location(given)]
        where = f"{RUN_ROOT_PREFIX_ENV} ({given})"
    else:
        prefixes = [_holding_folder(root) for root in configured if root]
        where = (
            "the folders holding the run roots the operator configured ("
            + ", ".join(f"{scheme}://{path}" for scheme, path in dict.fromkeys(prefixes))
            + ")"
        )
    if not any(_inside(_location(run_root), prefix) for prefix in prefixes):
        raise RunRequestRefused(
            f"run root {shown(run_root)} lies outside {where}, where a run started from the UI or the API may "
            f"put its artifacts; choose a run root inside, or ask the operator to set {RUN_ROOT_PREFIX_ENV} "
            "on the worker"
        )
