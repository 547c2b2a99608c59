"""Whether a config may run the loop (collect, retrain) on a run root another config made.

A run root's outputs were computed with the stage settings of the config that made it (``run.json``
holds it). Collect batches and retrain generations extend those outputs, so they must compute with the
same stage settings: :func:`loop_stage_digests` digests each stage's settings (the pipeline's stages,
plus the expert teacher, a collect batch and the promotion gate), and :func:`settings_differences`
names the config settings that change any of them. Everything else may differ (workers, batch sizes,
engine loading, the retrain threshold): that is where and how, not what.
"""

from __future__ import annotations

from typing import Any

from ragdistill.config.base import ConfigError
from ragdistill.config.experiment import ExperimentConfig
from ragdistill.config.limits import shown
from ragdistill.config.loading import with_overrides
from ragdistill.config.stages import PipelineSettings, pipeline_stage_settings
from ragdistill.identity import digest

MAX_LISTED_FOLDERS = 4


def loop_stage_digests(config: ExperimentConfig) -> dict[str, str]:
    """A digest of each stage's settings that collect batches and retrain generations compute with, by
    the stage's folder (``rollouts/base``, ``hints``, …, ``rollouts/collect-*``, ``promotion``)."""
    stages = PipelineSettings(config)
    dumped = {key.split(":", 1)[1]: value for key, value in pipeline_stage_settings(config).items()}
    dumped[stages.expert.stage_dir()] = stages.expert.model_dump(mode="json")
    dumped["rollouts/collect-*"] = stages.collect(0).model_dump(mode="json")
    dumped[stages.promotion().stage_dir()] = stages.promotion().model_dump(mode="json")
    return {folder: digest(settings) for folder, settings in dumped.items()}


def _changed_folders(reference: dict[str, str], config: ExperimentConfig) -> list[str]:
    digests = loop_stage_digests(config)
    return sorted(
        folder for folder in reference.keys() | digests.keys() if reference.get(folder) != digests.get(folder)
    )


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        found: dict[str, Any] = {}
        for key, inner in value.items():
            found.update(_leaves(inner, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {prefix: value}


def _folders(names: list[str]) -> str:
    listed = ", ".join(names[:MAX_LISTED_FOLDERS])
    more = len(names) - MAX_LISTED_FOLDERS
    return f"{listed} and {more} more" if more > 0 else listed


def settings_differences(recorded: ExperimentConfig, given: ExperimentConfig) -> list[str]:
    """The settings of ``given`` that change a stage's settings from ``recorded``'s, one line each: the
    dotted key, both values (short plain ones only) and the stage folders it changes. Empty when every
    stage computes the same. A setting that changes stages only together with another one is listed
    with the other; when no single setting explains a change, every differing setting is listed."""
    reference = loop_stage_digests(recorded)
    if not _changed_folders(reference, given):
        return []
    old, new = _leaves(recorded.model_dump(mode="json")), _leaves(given.model_dump(mode="json"))
    differing = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    lines = []
    for key in differing:
        try:
            folders = _changed_folders(reference, with_overrides(recorded, {key: new.get(key)}))
        except ConfigError:
            folders = ["(valid only together with other changes)"]
        if folders:
            lines.append(
                f"{key}: {shown(old.get(key))} on the run root, {shown(new.get(key))} here "
                f"(changes {_folders(folders)})"
            )
    if not lines:
        lines = [
            f"{key}: {shown(old.get(key))} on the run root, {shown(new.get(key))} here" for key in differing
        ]
    return lines
