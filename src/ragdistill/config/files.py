"""Which YAML file a config name means: a name under the project's ``configs/`` folder
(``demo-alfworld`` is ``configs/demo-alfworld.yaml``) or a path to a file.

Flows, deployments and the CLI take a config by name, so each of them resolves names here alike.
"""

from __future__ import annotations

from pathlib import Path

from ragdistill.config.base import ConfigError
from ragdistill.paths import project_root

CONFIGS_DIR = "configs"
DEFAULT_CONFIG = "demo-alfworld"
CONFIG_SUFFIXES = (".yaml", ".yml")
CONFIG_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""A config's name under ``configs/`` (``demo-alfworld``, ``paper-alfworld-react.yaml``), never a path:
what a run started from the UI or the API may give as its ``config_name`` (``flows.run_requests``)."""


def available_configs() -> list[str]:
    """The names of the configs under the project's ``configs/`` folder."""
    folder = project_root() / CONFIGS_DIR
    return sorted(path.stem for suffix in CONFIG_SUFFIXES for path in folder.glob(f"*{suffix}"))


def config_file(config_name: str) -> Path:
    """The YAML file ``config_name`` names: an existing file, else ``configs/<name>.yaml`` of the project
    (the git work tree holding the current folder)."""
    given = Path(config_name).expanduser()
    if given.is_file():
        return given
    folder = project_root() / CONFIGS_DIR
    for suffix in ("", *CONFIG_SUFFIXES):
        named = folder / f"{config_name}{suffix}"
        if named.is_file() and named.suffix in CONFIG_SUFFIXES:
            return named
    names = ", ".join(available_configs()) or "none"
    raise ConfigError(
        f"config {config_name!r} is neither a YAML file nor a config under {folder} (available: {names}); "
        "give a name from that list or a path to a config file"
    )
