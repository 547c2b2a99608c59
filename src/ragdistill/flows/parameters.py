"""Typed flow parameters: an experiment config by name, plus typed overrides of the settings a run may change.

A run started from the Prefect UI fills a form generated from a flow's signature: ``config_name`` picks a
YAML file under ``configs/`` by name (``demo-alfworld`` is ``configs/demo-alfworld.yaml``) and
``overrides`` is an :data:`ExperimentOverrides`, the shape of :class:`~ragdistill.config.ExperimentConfig`
with every setting optional except the operator's (:data:`OPERATOR_SETTINGS`), which it leaves out. The
form shows each setting with its type, constraints and description, because the overrides model is
derived from the config models field by field, so the two cannot drift apart.

What a deployment run may ask for is bounded twice: the flow's parameter schema (no operator setting, a
config by name only), which Prefect's server enforces when a run is created, and
:mod:`ragdistill.flows.run_requests` when the flow starts on the worker, since a client may create a run
without the server's schema check. A flow called in-process (the CLI, a test) may name a config file by
path: its caller is the operator.

Parameters stay JSON (names, paths as strings, numbers), so a deployment run, a retry and the run's
record in the UI carry exactly what was asked; secrets never travel in them (configs name environment
variables for API keys).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator
from pydantic_core import to_jsonable_python

from ragdistill.config import (
    BackendConfig,
    EnvConfig,
    ExperimentConfig,
    ModelSpec,
    OrchestrationConfig,
    TrainingLaunch,
    config_file,
    load_config,
)
from ragdistill.config.base import NAME_MAX_CHARS
from ragdistill.config.files import CONFIG_NAME_PATTERN
from ragdistill.config.stages import experiment_record
from ragdistill.flows.run_requests import check_run_root, deployment_defaults, named_config
from ragdistill.preflight import check_runnable
from ragdistill.stages.experiment import check_experiment
from ragdistill.store import ArtifactStore

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_NAME_HELP = (
    "The experiment config: a name under configs/ (demo-alfworld, paper-alfworld-react, …), or the config "
    "this deployment was registered with."
)
OVERRIDES_HELP = (
    "Settings that replace the config's values for this run; empty or null keeps the config's value. "
    "Model server URLs, API key variables, trust_remote_code, the data folder and the Ray cluster are the "
    "operator's (the config file on the worker) and cannot be set here."
)

ConfigName = Annotated[
    str, WithJsonSchema({"type": "string", "pattern": CONFIG_NAME_PATTERN, "maxLength": NAME_MAX_CHARS})
]
"""A flow's ``config_name``: in its parameter schema (what Prefect's server enforces for a deployment
run) a name under ``configs/``, never a path; called in-process, any config file."""

OPERATOR_SETTINGS: dict[type[BaseModel], frozenset[str]] = {
    BackendConfig: frozenset({"base_url", "api_key_env"}),
    ModelSpec: frozenset({"trust_remote_code"}),
    EnvConfig: frozenset({"data_dir"}),
    OrchestrationConfig: frozenset({"ray_address"}),
    TrainingLaunch: frozenset({"main_process_ip"}),
}
"""Settings no run started from the UI or the API may override, by the section model that holds them:
which host a model server is and which environment variable's key is sent to it, whether a model
folder's own code runs, where the environment's data is read, which Ray cluster runs shards, which host
the training processes meet at. They are
the operator's: the config files on the worker. (A run root is bounded instead: ``run_requests``.)"""


class OverridesModel(BaseModel):
    """The base of every overrides section: unknown keys are rejected, as in the config itself, and an
    operator's setting is refused by name."""

    model_config = ConfigDict(extra="forbid")
    operator_settings: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_operator_setting(cls, data: Any) -> Any:
        refused = sorted(set(data) & cls.operator_settings) if isinstance(data, dict) else []
        if refused:
            names, one = ", ".join(refused), len(refused) == 1
            what, pronoun = (
                ("is the operator's setting", "it") if one else ("are the operator's settings", "them")
            )
            raise ValueError(
                f"{names} {what}: a run cannot override {pronoun}, only the config file on the worker sets "
                f"{pronoun}; pick a config (config_name) that sets what you need, or ask the operator for one"
            )
        return data


@cache
def overrides_model(config_model: type[BaseModel]) -> type[OverridesModel]:
    """``config_model`` with every field optional (default None) but the operator's
    (:data:`OPERATOR_SETTINGS`, left out), nested sections turned into their own overrides models (one per
    section model, however often it is used), and each field's type, constraints and description kept."""
    operator = OPERATOR_SETTINGS.get(config_model, frozenset())
    fields: dict[str, Any] = {}
    for name, field in config_model.model_fields.items():
        if name in operator:
            continue
        annotation = field.annotation
        description = field.description
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            description = description or (annotation.__doc__ or "").strip() or None
            annotation = overrides_model(annotation)
        elif field.metadata:
            annotation = Annotated[(annotation, *field.metadata)]
        fields[name] = (annotation | None, Field(None, description=description))
    title = config_model.__name__.removesuffix("Config") + "Overrides"
    doc = (config_model.__doc__ or "").strip()
    if operator:
        doc += f"{chr(10) * 2 if doc else ''}Not overridable (the operator's): {', '.join(sorted(operator))}."
    model = create_model(title, __base__=OverridesModel, __doc__=doc or None, **fields)
    model.operator_settings = operator
    return model


ExperimentOverrides = overrides_model(ExperimentConfig)
"""Every setting of an experiment but the operator's, optional: what a run changes in its named config."""


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
    ``overrides``. ``run_root_check`` False: the run root is not read (for naming a run).

    In a flow run of a deployment, the config is a name under ``configs/`` (or the deployment's own) and
    the run root lies under the operator's prefix (:mod:`~ragdistill.flows.run_requests`), both checked
    before the run root or any other file the run names is touched."""
    deployed = deployment_defaults()
    path = config_file(config_name) if deployed is None else named_config(config_name, deployed)
    explicit = {key: value for key, value in (settings or {}).items() if value is not None}
    config = load_config(path, {**dotted_overrides(overrides), **explicit})
    if deployed is not None:
        check_run_root(config.run.run_root, [load_config(path).run.run_root, deployed.get("run_root")])
    config = check_runnable(config, path)
    if run_root_check:
        store = ArtifactStore(config.run.run_root)
        check_experiment(store, experiment_record(config), replace=config.run.replace_experiment)
    return config, path


PARAMETER_HELP = {
    "config_name": CONFIG_NAME_HELP,
    "run_root": "Where the run's artifacts live (an fsspec URL such as file://./runs/demo or s3://bucket/run); "
    "empty: the config's run.run_root. A run from the UI or the API puts it inside the operator's prefix: "
    "RAGDISTILL_RUN_ROOT_PREFIX on the worker, else the folder holding the configured run root.",
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
    "by name under configs/ whose stage settings must be the run root's; it may change only where and how "
    "the run goes (workers, engines, the retrain threshold).",
    "run_root": "The run root whose loop this runs (an fsspec URL such as file://./runs/demo or s3://bucket/run); "
    "empty: the given config's run.run_root. A run from the UI or the API puts it inside the operator's "
    "prefix: RAGDISTILL_RUN_ROOT_PREFIX on the worker, else the folder holding the deployment's run root.",
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
