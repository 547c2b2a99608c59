"""Typed flow parameters: an experiment config by name or path, plus typed overrides of any setting.

A run started from the Prefect UI fills a form generated from a flow's signature: ``config_name`` picks a
YAML file (``demo-alfworld`` is ``configs/demo-alfworld.yaml``; a path works too) and ``overrides`` is an
:data:`ExperimentOverrides`, the shape of :class:`~ragdistill.config.ExperimentConfig` with every
setting optional. The form shows each setting with its type, constraints and description, because
the overrides model is derived from the config models field by field, so the two cannot drift apart.

Parameters stay JSON (names, paths as strings, numbers), so a deployment run, a retry and the run's
record in the UI carry exactly what was asked; secrets never travel in them (configs name environment
variables for API keys).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import to_jsonable_python

from ragdistill.config import ExperimentConfig, config_file, load_config
from ragdistill.config.stages import experiment_record
from ragdistill.preflight import check_runnable
from ragdistill.stages.experiment import check_experiment
from ragdistill.store import ArtifactStore

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_NAME_HELP = (
    "The experiment config: a name under configs/ (demo-alfworld, paper-alfworld-react, …) or a path to "
    "a YAML file, relative to the project folder."
)
OVERRIDES_HELP = (
    "Settings that replace the config's values for this run; empty or null keeps the config's value."
)


class OverridesModel(BaseModel):
    """The base of every overrides section: unknown keys are rejected, as in the config itself."""

    model_config = ConfigDict(extra="forbid")


@cache
def overrides_model(config_model: type[BaseModel]) -> type[OverridesModel]:
    """``config_model`` with every field optional (default None), nested sections turned into their own
    overrides models (one per section model, however often it is used), and each field's type,
    constraints and description kept."""
    fields: dict[str, Any] = {}
    for name, field in config_model.model_fields.items():
        annotation = field.annotation
        description = field.description
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            description = description or (annotation.__doc__ or "").strip() or None
            annotation = overrides_model(annotation)
        elif field.metadata:
            annotation = Annotated[(annotation, *field.metadata)]
        fields[name] = (annotation | None, Field(None, description=description))
    title = config_model.__name__.removesuffix("Config") + "Overrides"
    return create_model(title, __base__=OverridesModel, __doc__=config_model.__doc__, **fields)


ExperimentOverrides = overrides_model(ExperimentConfig)
"""Every setting of an experiment, optional: what a run changes in its named config."""


def dotted_overrides(overrides: BaseModel | None) -> dict[str, Any]:
    """The values set in ``overrides`` as ``{"env.limit": 2, …}`` for :func:`ragdistill.config.load_config`.
    None means "keep the config's value", so a setting cannot be reset to None here (edit the config)."""
    if overrides is None:
        return {}
    dotted: dict[str, Any] = {}
    for name, value in overrides:
        if value is None:
            continue
        if isinstance(value, OverridesModel):
            dotted.update({f"{name}.{key}": inner for key, inner in dotted_overrides(value).items()})
        else:
            dotted[name] = to_jsonable_python(value)
    return dotted


def experiment_config(
    config_name: str,
    overrides: BaseModel | None = None,
    settings: dict[str, Any] | None = None,
    *,
    run_root_check: bool = True,
) -> tuple[ExperimentConfig, Path]:
    """The validated config a flow runs with, and the file it came from, once its run root is known to
    hold this experiment or none yet (``stages.experiment``; nothing is written before that). ``settings``
    are a flow's own dotted overrides (e.g. its ``run_root`` parameter); those that are not None win over
    ``overrides``. ``run_root_check`` False: the run root is not read (for naming a run)."""
    path = config_file(config_name)
    explicit = {key: value for key, value in (settings or {}).items() if value is not None}
    config = check_runnable(load_config(path, {**dotted_overrides(overrides), **explicit}), path)
    if run_root_check:
        store = ArtifactStore(config.run.run_root)
        check_experiment(store, experiment_record(config), replace=config.run.replace_experiment)
    return config, path


PARAMETER_HELP = {
    "config_name": CONFIG_NAME_HELP,
    "run_root": "Where the run's artifacts live (an fsspec URL such as file://./runs/demo or s3://bucket/run); "
    "empty: the config's run.run_root.",
    "overrides": OVERRIDES_HELP,
    "split": "Play this split's tasks (empty: the config's env.split).",
    "limit": "Play the first N tasks of the split (empty: the config's env.limit).",
    "stage": "The folder under rollouts/ the episodes go to (a name: letters, digits, '.', '_', '-'); a "
    "finished or interrupted one is resumed.",
    "students": "Which students to train: sft and/or distill (empty: both).",
    "methods": "Which methods to evaluate: base, rag, sft, distill (empty: the config's evaluation.methods).",
}


LOOP_PARAMETER_HELP = {
    "config_name": "Empty (the usual): run with the config stored in the run root by its pipeline. Or a config "
    "(a name under configs/ or a YAML path) whose stage settings must be the run root's; it may change "
    "only where and how the run goes (workers, engines, the retrain threshold).",
    "run_root": "The run root whose loop this runs (an fsspec URL such as file://./runs/demo or s3://bucket/run); "
    "empty: the given config's run.run_root.",
    "overrides": "Settings that replace the run root's (or the given config's) values for this run; a change "
    "to a stage setting is refused, naming it.",
}
"""The collect and retrain flows' own help: they run with the config their run root was made with."""


def documented_parameters(function: F) -> F:
    """Append a Google-style ``Args:`` section describing each of ``function``'s parameters from
    :data:`PARAMETER_HELP`; Prefect shows these descriptions in a deployment's run form. A parameter
    without help is a programming error, reported at import."""
    return _documented(function, PARAMETER_HELP)


def documented_loop_parameters(function: F) -> F:
    """:func:`documented_parameters` with :data:`LOOP_PARAMETER_HELP` for the loop flows."""
    return _documented(function, {**PARAMETER_HELP, **LOOP_PARAMETER_HELP})


def _documented(function: F, help_texts: dict[str, str]) -> F:
    names = list(inspect.signature(function).parameters)
    missing = [name for name in names if name not in help_texts]
    if missing:
        raise TypeError(f"{function.__qualname__}: no help text for parameter(s) {missing} in PARAMETER_HELP")
    lines = "".join(f"    {name}: {help_texts[name]}\n" for name in names)
    function.__doc__ = f"{inspect.cleandoc(function.__doc__ or '')}\n\nArgs:\n{lines}"
    return function
