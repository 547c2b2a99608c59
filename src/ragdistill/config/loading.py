"""Reading a config: YAML files, dotted overrides, validation errors a user can act on, hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ragdistill.config.base import ConfigError
from ragdistill.config.experiment import ExperimentConfig


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid setting(s):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; check its spelling against ragdistill.config")
        elif not item[
            "loc"
        ]:  # a check across settings: its input is the whole config, which may hold secrets
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a mapping, naming ``source`` and the dotted key of every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply dotted-key ``overrides`` (e.g. ``{"env.split": "x"}``) and
    validate it. What it names on this machine is not checked here: a caller about to run work calls
    :func:`ragdistill.preflight.check_runnable` next."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    data = data or {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value, source=str(path))
    return validate_config(data, source=str(path))


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted-key overrides applied and everything re-validated."""
    data = config.model_dump(mode="json")
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value, source="override")
    return validate_config(data, source="override")


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {dotted}: {part} is not a section")
        node = child
    node[leaf] = value


def config_hash(section: BaseModel | dict[str, Any]) -> str:
    """A stable sha256 of a config (or one section of it), for manifests and cache keys."""
    payload = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
