"""Per-stage settings (``config.stages``): a stage's identity is its settings model hashed whole.

Generated from the models, not listed by hand: every field of every settings model, varied to another
valid value, changes that stage's identity; every setting of the experiment config either reaches some
stage's settings (and then changes exactly the identities of the stages whose settings hold it), or is
in the run context (where and how: it changes no identity).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stage_models import RetrainSettings, StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.stages.lifecycle import stage_identity

REPO = Path(__file__).resolve().parents[1]


def demo_config() -> ExperimentConfig:
    import yaml

    from ragdistill.config import validate_config

    return validate_config(yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text()))


def every_stage(pipeline: PipelineSettings) -> dict[str, Any]:
    stages = _every_stage(pipeline)
    for settings in stages.values():
        _collect_samples(settings)
    return stages


def _every_stage(pipeline: PipelineSettings) -> dict[str, Any]:
    """Every stage's settings the pipeline builds, by a readable name."""
    stages: dict[str, Any] = {
        "warm_start": pipeline.warm_start,
        "rollout": pipeline.rollout(),
        "mining": pipeline.mining,
        "indexing": pipeline.indexing,
        "teacher": pipeline.teacher,
        "expert": pipeline.expert,
        "collect": pipeline.collect(0),
        "report": pipeline.report("demo"),
        "promotion": pipeline.promotion(),
        "retrain": pipeline.retrain,
        "ablation-table": pipeline.ablation_table(),
    }
    for name in ("sft", "distill"):
        stages[f"dataset-{name}"] = pipeline.dataset(name)
        stages[f"training-{name}"] = pipeline.training(name)
    for method in ("base", "rag", "sft", "distill"):
        stages[f"evaluation-{method}"] = pipeline.evaluation(method)
    return stages


def identity_key(settings: Any) -> str:
    if isinstance(settings, RetrainSettings):  # bookkeeping: its settings are its identity
        return settings.model_dump_json()
    return stage_identity(settings, {}).key


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_settings_model_is_built_by_the_pipeline() -> None:
    built = {type(s) for s in every_stage(PipelineSettings.from_experiment(demo_config())).values()}
    ours = {cls for cls in _subclasses(StageSettings) if cls.__module__.startswith("ragdistill.")}
    assert ours <= built, "a settings model no test varies"


def _annotation(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].annotation


def _candidates(annotation: Any, value: Any) -> list[Any]:
    """Other values of a field's type, to try in order (the first valid one is used)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return [choice for choice in args if choice != value]
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        out = []
        for option in options:
            example = value if value is not None else _example(option)
            out += _candidates(option, example) if value is not None else [example]
            if value is None and option is int:
                out.append(10_000)  # a position past every range a config reserves (task starts)
        # None last: a set value may equal the default None stands for (warm_start.start: right after
        # env.limit), and then only a value of its own type shows what the setting changes.
        return out + ([None] if value is not None and type(None) in args else [])
    if annotation is bool:
        return [not value]
    if annotation is int:
        return [value + 1, value * 2, max(1, value - 1)]
    if annotation is float:
        return [value * 0.5 if value else 0.5, value + 1.0, value * 2]
    if annotation is str:
        return [f"{value}-x", "x"]
    if annotation is Path:
        return [Path(str(value)) / "elsewhere"]
    if origin is list:
        return [[*value, *value[:1]] if value else [_example(args[0])], value[:-1]]
    if origin is dict:
        return [{**value, "x": 1}]
    return []


SAMPLES: dict[type, BaseModel] = {}
"""An instance of each nested settings model, found in the demo's settings (an example for a field that
is None there, such as the teacher's re-ranker role)."""


def _collect_samples(model: BaseModel) -> None:
    SAMPLES.setdefault(type(model), model)
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _collect_samples(value)


def _example(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return SAMPLES.get(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args[0]
    examples = {int: 1, float: 0.5, str: "x", bool: True, Path: Path("x")}
    if annotation in examples:
        return examples[annotation]
    if origin is list:
        return [_example(args[0])]
    if origin is dict:
        return {"x": 1}
    return None


def _leaves(model: BaseModel, prefix: str = "") -> list[tuple[str, type[BaseModel], str, Any]]:
    """(dotted path, owning model class, field name, value) of every leaf field."""
    found = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            found += _leaves(value, f"{path}.")
        else:
            found.append((path, type(model), name, value))
    return found


def _varied_config(config: ExperimentConfig, path: str, cls: type[BaseModel], field: str, value: Any):
    for candidate in _candidates(_annotation(cls, field), value):
        try:
            return with_overrides(config, {path: candidate})
        except (ValidationError, ValueError):
            continue
    return None


def _varied_settings(settings: BaseModel, path: str, cls: type[BaseModel], field: str, value: Any):
    data = settings.model_dump()
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    for candidate in _candidates(_annotation(cls, field), value):
        if candidate is None and value is None:
            continue
        node[leaf] = candidate.model_dump() if isinstance(candidate, BaseModel) else candidate
        try:
            return type(settings).model_validate(data)
        except ValidationError:
            continue
    return None


def test_every_field_of_every_settings_model_changes_its_stages_identity() -> None:
    unvaried = []
    for name, settings in every_stage(PipelineSettings.from_experiment(demo_config())).items():
        before = identity_key(settings)
        for path, cls, field, value in _leaves(settings):
            varied = _varied_settings(settings, path, cls, field, value)
            if varied is None:
                unvaried.append(f"{name}.{path}")
                continue
            assert identity_key(varied) != before, f"{name}: {path} is not part of the identity"
    assert not unvaried, f"fields no valid variation was found for: {unvaried}"


EVERYTHING_ON = {"retrieval.retriever": "llm-rerank", "retrieval.group": "embedding"}
"""Settings under which every conditionally read setting is read (the re-ranker role, the embedding
group classifier's examples)."""


@pytest.mark.parametrize("base", [{}, EVERYTHING_ON], ids=["demo", "everything-on"])
def test_every_config_setting_changes_exactly_the_stages_that_read_it(base: dict[str, Any]) -> None:
    unread = _unread_settings(with_overrides(demo_config(), base))
    if base:
        assert not unread, f"settings no stage reads and no run context holds (a silent no-op): {unread}"


def _unread_settings(config: ExperimentConfig) -> list[str]:
    """Every setting that changes no stage's settings and not the run context (asserting on the way that
    identities change exactly with settings)."""
    pipeline = PipelineSettings.from_experiment(config)
    stages = every_stage(pipeline)
    keys = {name: identity_key(settings) for name, settings in stages.items()}
    context = pipeline.ctx.model_dump()
    unread, unvaried = [], []
    for path, cls, field, value in _leaves(config):
        if path.startswith("run."):
            continue  # where the run lives and what it is called: the run context (tested below)
        varied_config = _varied_config(config, path, cls, field, value)
        if varied_config is None:
            unvaried.append(path)
            continue
        varied = PipelineSettings.from_experiment(varied_config)
        changed = {
            name
            for name, settings in every_stage(varied).items()
            if settings.model_dump() != stages[name].model_dump()
        }
        for name, settings in every_stage(varied).items():
            assert (identity_key(settings) != keys[name]) == (name in changed), (
                f"{path}: the identity of {name} must change exactly when its settings do"
            )
        if not changed and varied.ctx.model_dump() == context:
            unread.append(path)
    assert not unvaried, f"settings no valid variation was found for: {unvaried}"
    return unread


def test_the_run_name_changes_only_the_report() -> None:
    """The report's title names the run; no other stage's output holds it."""
    config = demo_config()
    before = {
        name: identity_key(s) for name, s in every_stage(PipelineSettings.from_experiment(config)).items()
    }
    varied = PipelineSettings.from_experiment(with_overrides(config, {"run.name": "another-run"}))
    after = {name: identity_key(s) for name, s in every_stage(varied).items()}
    assert {name for name in after if after[name] != before[name]} == {"report"}


@pytest.mark.parametrize(
    "path, value",
    [
        ("run.run_root", "file:///elsewhere/run"),
        ("run.lease_wait_s", 30.0),
        ("env.workers", 1),
        ("env.data_dir", "/elsewhere/data"),
        ("rollout.batch_size", 3),
        ("rollout.shard_size", 7),
        ("rollout.shards", 4),
        ("rollout.schedule", "lockstep"),
        ("mining.chunk_size", 5),
        ("orchestration.task_runner", "ray"),
        ("models.agent.backend.kv_cache_gib", 3.0),
        ("training.launch.num_machines", 2),
        ("training.launch.machine_rank", 1),
        ("training.launch.main_process_ip", "10.1.2.3"),
        ("training.launch.main_process_port", 29400),
        ("training.launch.processes_per_machine", 8),
        ("training.launch.from_environment", False),
    ],
)
def test_where_and_how_settings_change_no_identity(path: str, value: Any) -> None:
    config = demo_config()
    before = {
        name: identity_key(s) for name, s in every_stage(PipelineSettings.from_experiment(config)).items()
    }
    varied = PipelineSettings.from_experiment(with_overrides(config, {path: value}))
    after = {name: identity_key(s) for name, s in every_stage(varied).items()}
    assert after == before
    assert varied.ctx != PipelineSettings.from_experiment(config).ctx, f"{path} reaches the run context"


def test_readme_table_is_generated_from_the_settings_models() -> None:
    from ragdistill.config.settings_table import settings_table

    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- stage-settings:start")
    body = readme[readme.index("\n", start) + 1 : readme.index("<!-- stage-settings:end -->")]
    assert body.strip() == settings_table().strip(), (
        "README's stage table is out of date: paste ragdistill.config.settings_table.settings_table()'s output"
    )


def test_readme_names_every_module_the_code_fingerprint_leaves_out() -> None:
    from ragdistill.identity import NOT_OUTPUT_CODE

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("a fingerprint of its own code") : readme.index("- never the `RunContext`")]
    named = set(re.findall(r"`(ragdistill[\w.]*)`", section))
    assert named == set(NOT_OUTPUT_CODE)


def test_mining_and_indexing_fingerprint_no_rollout_code() -> None:
    """A stage re-runs when code it runs changes; mining and indexing play no episodes, so an edit of the
    rollout engine must not re-run them (their model loading lives with what every stage shares)."""
    from ragdistill.identity import module_closure

    for stage in ("ragdistill.stages.mining", "ragdistill.stages.indexing"):
        played = [name for name in module_closure([stage]) if name.startswith("ragdistill.rollout")]
        assert played == [], (stage, played)
    assert "ragdistill.rollout.engine" in module_closure(["ragdistill.stages.teaching"])
