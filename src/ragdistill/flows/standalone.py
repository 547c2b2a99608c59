"""One Prefect flow per stage after the rollout, for running a single stage from the UI or a deployment.

Each reads its upstream manifests from the run root, so it runs after the stage before it, whichever
way that one ran (CLI, its own flow, or the pipeline flow). The digests passed to the tasks only draw
the lineage in the UI; a task's cache key is its stage's identity (``tasks.common``), so a stage flow
and the pipeline flow hit the same cache.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from ragdistill.errors import UserFacingError
from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import ExperimentOverrides, documented_parameters, experiment_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.stages.datasets import dataset_dir
from ragdistill.stages.evaluation import eval_stage
from ragdistill.stages.layout import (
    BASE_STAGE,
    EXPERT_STAGE,
    HINTS_DIR,
    INDEX_DIR,
    TEACHER_STAGE,
    rollout_prefix,
)
from ragdistill.stages.training import adapter_dir
from ragdistill.store import ArtifactStore, read_manifest
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.students import dataset_task, evaluate_task, expert_task, report_task, train_task

Student = Literal["sft", "distill"]
Method = Literal["base", "rag", "sft", "distill"]


def _digest(run_root: str, stage_dir: str) -> str:
    return read_manifest(ArtifactStore(run_root), stage_dir).digest


def _digests_present(run_root: str, *stage_dirs: str) -> list[str]:
    """The digests of those stages that finished; a stage that needs a missing one says so itself."""
    found = []
    for stage_dir in stage_dirs:
        try:
            found.append(_digest(run_root, stage_dir))
        except UserFacingError:
            continue
    return found


@flow(name="mine", flow_run_name=flow_run_namer("mine"), log_prints=True)
@documented_parameters
def mine_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage B: extract hints from the base rollout's failures and merge them into the hint bank."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    try:
        return on_run_root(mine_task, config)(
            config, _digest(config.run.run_root, rollout_prefix(BASE_STAGE))
        )
    finally:
        close_shared_backends()


@flow(name="index", flow_run_name=flow_run_namer("index"), log_prints=True)
@documented_parameters
def index_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage C: embed the hint bank and build the FAISS index."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    return on_run_root(index_task, config)(config, _digest(config.run.run_root, HINTS_DIR))


@flow(name="teach", flow_run_name=flow_run_namer("teach"), log_prints=True)
@documented_parameters
def teach_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage C: the RAG teacher, retrieving hints once per episode; resumes like a rollout."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    index_digest = _digest(config.run.run_root, INDEX_DIR) if config.retrieval.retriever == "faiss" else None
    try:
        return on_run_root(teach_task, config)(config, _digest(config.run.run_root, HINTS_DIR), index_digest)
    finally:
        close_shared_backends()


@flow(name="expert", flow_run_name=flow_run_namer("expert"), log_prints=True)
@documented_parameters
def expert_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage D: the expert teacher, demonstrations of training tasks recorded as the agent's episodes."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    try:
        return on_run_root(expert_task, config)(config, _digest(config.run.run_root, HINTS_DIR))
    finally:
        close_shared_backends()


@flow(name="build-datasets", flow_run_name=flow_run_namer("build-datasets"), log_prints=True)
@documented_parameters
def build_datasets_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage D: the sft and distill training sets (parquet + dataset card) under datasets/."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    root = config.run.run_root
    teachers = {"rag": [TEACHER_STAGE], "expert": [EXPERT_STAGE], "both": [EXPERT_STAGE, TEACHER_STAGE]}
    sources = {
        "sft": _digests_present(root, rollout_prefix(BASE_STAGE)),
        "distill": _digests_present(root, *map(rollout_prefix, teachers[config.distill.teacher])),
    }
    task = on_run_root(dataset_task, config)
    return {name: task(config, name, digests)["counts"] for name, digests in sources.items()}


@flow(name="train", flow_run_name=flow_run_namer("train"), log_prints=True)
@documented_parameters
def train_flow(
    config_name: str,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
    students: list[Student] | None = None,
) -> dict[str, Any]:
    """Stage D: LoRA-train the students; a killed training resumes from its checkpoint."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    task = on_run_root(train_task, config)
    return {
        name: task(config, name, _digest(config.run.run_root, dataset_dir(name)))["counts"]
        for name in students or ["sft", "distill"]
    }


@flow(name="evaluate", flow_run_name=flow_run_namer("evaluate"), log_prints=True)
@documented_parameters
def evaluate_flow(
    config_name: str,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
    methods: list[Method] | None = None,
) -> dict[str, Any]:
    """Stage E: each method on the pinned evaluation tasks, into rollouts/eval-<method>."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    root = config.run.run_root
    task = on_run_root(evaluate_task, config)
    try:
        return {
            method: task(
                config,
                method,
                _digests_present(
                    root,
                    adapter_dir(method) if method in ("sft", "distill") else rollout_prefix(TEACHER_STAGE),
                ),
            )["counts"]
            for method in methods or config.evaluation.methods
        }
    finally:
        close_shared_backends()


@flow(name="report", flow_run_name=flow_run_namer("report"), log_prints=True)
@documented_parameters
def report_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Stage E: reports/report.md and the accuracy-vs-tokens figure from the finished evaluations."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    stages = [rollout_prefix(eval_stage(method)) for method in config.evaluation.methods]
    return on_run_root(report_task, config)(config, _digests_present(config.run.run_root, *stages))
