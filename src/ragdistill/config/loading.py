"""Reading a config: YAML files, dotted overrides, validation errors a user can act on, hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ragdistill.config.base import ConfigError
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.limits import MAX_ITEMS, check_bounds, check_dotted_key, shown, shown_key
from ragdistill.config.yaml_file import read_yaml_file

MAX_LISTED_PROBLEMS = 20
RETIRED_SETTINGS: dict[tuple[str, ...], str] = {
    ("retrain", "trigger_events"): "the retrain trigger now fires on the stored failure count "
    "(one ragdistill.retrain.due event when it reaches retrain.min_failures)",
    ("retrain", "trigger_window_s"): "the retrain trigger now fires on the stored failure count "
    "(one ragdistill.retrain.due event when it reaches retrain.min_failures)",
}
"""Settings an earlier version had, with why they went: a config file naming one is refused with the
reason, a config stored by an earlier run (``run.json``) loads without it (:func:`validate_stored_config`)."""


def _format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, naming the dotted key; a value is shown only when it is a short plain scalar
    (``limits.shown``), never a whole section: the file may not be a config at all."""
    problems = error.errors()
    lines = [f"{source}: {len(problems)} invalid setting(s):"]
    for item in problems[:MAX_LISTED_PROBLEMS]:
        key = ".".join(shown_key(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden" and tuple(item["loc"]) in RETIRED_SETTINGS:
            lines.append(f"  {key}: no longer a setting: {RETIRED_SETTINGS[tuple(item['loc'])]}; remove it")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; check its spelling against ragdistill.config")
        elif isinstance(item.get("input"), dict | list) or not item["loc"]:
            lines.append(f"  {key}: {item['msg']}")
        else:
            lines.append(f"  {key}: {item['msg']} (got {shown(item.get('input'))})")
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  … and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a mapping, naming ``source`` and the dotted key of every problem. Its size, nesting and
    every value's range are checked first (``limits.check_bounds``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {shown(data)}")
    check_bounds(data, source)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def validate_stored_config(data: Any, source: str) -> ExperimentConfig:
    """A config an earlier run stored (``run.json``), validated like a file after dropping the settings
    retired since (:data:`RETIRED_SETTINGS`), so a run root outlives a retired setting."""
    if isinstance(data, dict):
        data = json.loads(json.dumps(data))
        for *sections, leaf in RETIRED_SETTINGS:
            node: Any = data
            for section in sections:
                node = node.get(section) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
    return validate_config(data, source)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply dotted-key ``overrides`` (e.g. ``{"env.split": "x"}``) and
    validate it. The file is read within bounds (``yaml_file``: its size, its nesting, how far its aliases
    expand, no duplicate or merge keys). What it names on this machine is not checked here: a caller about
    to run work calls :func:`ragdistill.preflight.check_runnable` next."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    data = read_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {shown(data)}")
    _apply_overrides(data, overrides or {}, source=str(path))
    return validate_config(data, source=str(path))


def with_overrides(config: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted-key overrides applied and everything re-validated."""
    data = config.model_dump(mode="json")
    _apply_overrides(data, overrides, source="override")
    return validate_config(data, source="override")


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str) -> None:
    if len(overrides) > MAX_ITEMS:
        raise ConfigError(f"{source}: {len(overrides)} overrides; at most {MAX_ITEMS} at once")
    for dotted, value in overrides.items():
        *parents, leaf = check_dotted_key(dotted, source)
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
