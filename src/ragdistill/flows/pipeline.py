"""The end-to-end flow: (warm start →) rollout → mine → index → teach (→ expert) → datasets → train →
evaluate → promote → report.

Each task's cache key is its stage's identity plus a check that its outputs still exist unchanged
(``tasks.common``), so a re-run with nothing changed finishes from the cache, a changed setting re-runs
the stages that read it and those after them, and a crashed run picks up at the stage (and, inside a
rollout, mining or training, at the episode, chunk or checkpoint) where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import (
    ConfigName,
    ExperimentOverrides,
    documented_parameters,
    experiment_config,
)
from ragdistill.inference.shared import close_shared_backends
from ragdistill.layout import STUDENTS
from ragdistill.stages.report import write_run_file
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.promotion import promote_task
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


@flow(name="pipeline", flow_run_name=flow_run_namer("pipeline"), log_prints=True)
@documented_parameters
def pipeline_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Every stage in order: (warm start), rollout, mine, index, teach, (expert), datasets, train,
    evaluate, report."""
    config, config_file = experiment_config(config_name, overrides, {"run.run_root": run_root})
    stages = PipelineSettings.from_experiment(config, experiment_check=True)
    ctx = stages.ctx
    write_run_file(ArtifactStore(ctx.run_root), config_file.stem, config.model_dump(mode="json"))
    run = StageCalls(ctx)
    counts: dict[str, Any] = {}
    try:
        if config.warm_start.enabled:
            counts["warm_start"] = run(
                warm_start_task, stages.warm_start, reserved=stages.warm_start_reserved()
            )
        counts["base"] = run(rollout_task, stages.rollout())
        counts["hints"] = run(mine_task, stages.mining)
        if config.retrieval.retriever == "faiss":
            run(index_task, stages.indexing)
        counts["teacher"] = run(teach_task, stages.teacher)
        counts.update(run_students(run, stages))
    finally:
        close_shared_backends()
    counts["report"] = run(report_task, stages.report(config_file.stem))
    return counts


class StageCalls:
    """Calls stage tasks in order, each handed the content digests of the folders it reads (its
    ``settings.input_dirs()``) from the results of the tasks before it; returns each one's counts."""

    def __init__(self, ctx: RunContext, digests: dict[str, str] | None = None) -> None:
        self.ctx, self.digests = ctx, dict(digests or {})

    def __call__(self, task: Any, settings: StageSettings, **arguments: Any) -> dict[str, Any]:
        """Run ``task`` on ``settings`` (``arguments``: the task's further parameters)."""
        inputs = {folder: self.digests[folder] for folder in settings.input_dirs() if folder in self.digests}
        result = on_run_root(task, self.ctx)(self.ctx, settings, inputs, **arguments)
        if result.get("digest") is not None:
            self.digests[settings.stage_dir()] = result["digest"]
        return result["counts"]


def run_students(
    run: StageCalls,
    stages: PipelineSettings,
    registry_root: str | None = None,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stages D and E after the teacher, in order: the expert teacher (when ``distill.teacher`` asks for
    it), both training sets and students, every evaluation method under each evaluation seed (counts
    ``eval_<method>``, ``eval_<method>_seed<S>``) and the promotion gate. The pipeline and a retrain
    generation share this order."""
    counts: dict[str, Any] = {}
    if stages.config.distill.teacher in ("expert", "both"):
        counts["expert"] = run(expert_task, stages.expert)
    for name in STUDENTS:
        counts[f"dataset_{name}"] = run(dataset_task, stages.dataset(name))
        counts[f"train_{name}"] = run(train_task, stages.training(name))
    for method in stages.config.evaluation.methods:
        for evaluation in stages.evaluations(method):
            counts[evaluation.stage.replace("-", "_")] = run(evaluate_task, evaluation)
    counts["promotion"] = run(promote_task, stages.promotion(registry_root, generation))
    return counts
