"""One Prefect flow per stage, for running a single stage from the UI or a deployment (the warm start too,
when the config turns it on).

Each reads the content digests of its upstream folders from the run root (``upstream_inputs``), so it
runs after the stage before it, whichever way that one ran (CLI, its own flow, or the pipeline flow),
and hands them to the stage's task: the task's cache key is its stage's identity (``tasks.common``), so a
stage flow and the pipeline flow hit the same cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow

from ragdistill.config import ConfigError
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import StageName, StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import (
    ConfigName,
    ExperimentOverrides,
    documented_parameters,
    experiment_config,
)
from ragdistill.inference.shared import close_shared_backends
from ragdistill.layout import BASE_STAGE, STUDENTS
from ragdistill.stages.lifecycle import upstream_inputs
from ragdistill.stages.report import write_run_file
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.rollout import rollout_task
from ragdistill.tasks.students import (
    dataset_task,
    evaluate_task,
    expert_task,
    report_task,
    train_task,
    warm_start_task,
)

Student = Literal["sft", "distill"]
Method = Literal["base", "rag", "sft", "distill"]


def _stages(
    config_name: str, run_root: str | None, overrides: ExperimentOverrides | None, **settings: Any
) -> PipelineSettings:
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root, **settings})
    return PipelineSettings.from_experiment(config, experiment_check=True)


def _run(task: Any, ctx: RunContext, settings: StageSettings, **arguments: Any) -> dict[str, Any]:
    """Run one stage's task on the upstream folders as they are now (``arguments``: its further
    parameters)."""
    inputs = upstream_inputs(ArtifactStore(ctx.run_root), settings)
    return on_run_root(task, ctx)(ctx, settings, inputs, **arguments)


@flow(name="warm-start", flow_run_name=flow_run_namer("warm-start"), log_prints=True)
@documented_parameters
def warm_start_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage 0: LoRA on expert demonstrations of training tasks, merged into the agent's base checkpoint."""
    stages = _stages(config_name, run_root, overrides)
    if not stages.config.warm_start.enabled:
        raise ConfigError(
            f"warm_start.enabled is false in {config_name}: no later stage would play on the warm start's "
            "checkpoint; set warm_start.enabled: true (in the config or the overrides)"
        )
    return _run(warm_start_task, stages.ctx, stages.warm_start, reserved=stages.warm_start_reserved())


@flow(name="rollout", flow_run_name=flow_run_namer("rollout", BASE_STAGE), log_prints=True)
@documented_parameters
def rollout_flow(
    config_name: ConfigName,
    split: str | None = None,
    limit: int | None = None,
    run_root: str | None = None,
    stage: StageName = BASE_STAGE,
    overrides: ExperimentOverrides | None = None,
) -> dict[str, Any]:
    """Stage A: play the agent on the config's tasks; re-running resumes where it stopped."""
    stages = _stages(config_name, run_root, overrides, **{"env.split": split, "env.limit": limit})
    try:
        return _run(rollout_task, stages.ctx, stages.rollout(stage))
    finally:
        close_shared_backends()


@flow(name="mine", flow_run_name=flow_run_namer("mine"), log_prints=True)
@documented_parameters
def mine_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage B: extract hints from the base rollout's failures and merge them into the hint bank."""
    stages = _stages(config_name, run_root, overrides)
    try:
        return _run(mine_task, stages.ctx, stages.mining)
    finally:
        close_shared_backends()


@flow(name="index", flow_run_name=flow_run_namer("index"), log_prints=True)
@documented_parameters
def index_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage C: embed the hint bank and build the FAISS index."""
    stages = _stages(config_name, run_root, overrides)
    return _run(index_task, stages.ctx, stages.indexing)


@flow(name="teach", flow_run_name=flow_run_namer("teach"), log_prints=True)
@documented_parameters
def teach_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage C: the RAG teacher, retrieving hints once per episode; resumes like a rollout."""
    stages = _stages(config_name, run_root, overrides)
    try:
        return _run(teach_task, stages.ctx, stages.teacher)
    finally:
        close_shared_backends()


@flow(name="expert", flow_run_name=flow_run_namer("expert"), log_prints=True)
@documented_parameters
def expert_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage D: the expert teacher, demonstrations of training tasks recorded as the agent's episodes."""
    stages = _stages(config_name, run_root, overrides)
    try:
        return _run(expert_task, stages.ctx, stages.expert)
    finally:
        close_shared_backends()


@flow(name="build-datasets", flow_run_name=flow_run_namer("build-datasets"), log_prints=True)
@documented_parameters
def build_datasets_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage D: the sft and distill training sets (parquet + dataset card) under datasets/."""
    stages = _stages(config_name, run_root, overrides)
    return {name: _run(dataset_task, stages.ctx, stages.dataset(name))["counts"] for name in STUDENTS}


@flow(name="train", flow_run_name=flow_run_namer("train"), log_prints=True)
@documented_parameters
def train_flow(
    config_name: ConfigName,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
    students: list[Student] | None = None,
) -> dict[str, Any]:
    """Stage D: LoRA-train the students; a killed training resumes from its checkpoint."""
    stages = _stages(config_name, run_root, overrides)
    return {
        name: _run(train_task, stages.ctx, stages.training(name))["counts"] for name in students or STUDENTS
    }


@flow(name="evaluate", flow_run_name=flow_run_namer("evaluate"), log_prints=True)
@documented_parameters
def evaluate_flow(
    config_name: ConfigName,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
    methods: list[Method] | None = None,
) -> dict[str, Any]:
    """Stage E: each method on the pinned evaluation tasks under each evaluation seed, into
    rollouts/eval-<method> (the agent's own seed) and rollouts/eval-<method>-seed<S> (the others)."""
    stages = _stages(config_name, run_root, overrides)
    try:
        return {
            evaluation.label: _run(evaluate_task, stages.ctx, evaluation)["counts"]
            for method in methods or stages.config.evaluation.methods
            for evaluation in stages.evaluations(method)
        }
    finally:
        close_shared_backends()


@flow(name="report", flow_run_name=flow_run_namer("report"), log_prints=True)
@documented_parameters
def report_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage E: reports/report.md and the accuracy-vs-tokens figure from the finished evaluations."""
    stages = _stages(config_name, run_root, overrides)
    name = Path(config_name).stem
    write_run_file(ArtifactStore(stages.ctx.run_root), name, stages.config.model_dump(mode="json"))
    return _run(report_task, stages.ctx, stages.report(name))
