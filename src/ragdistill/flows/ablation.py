"""The retrieval ablation flow: the paper's k and retriever ablations as one Prefect flow.

The stages before the teacher run once, as the pipeline runs them (the same settings, so the same
cache): the base rollout, mining, the FAISS index when a grid point uses it, and the base agent's
evaluation, the table's reference. Then, for each grid point of ``ablation.*`` (``config.ablation``), the
teacher and what follows it: with ``distill`` in ``ablation.methods`` the teacher's training rollout (or
the expert teacher's, per ``distill.teacher``), the distill set and its student; then each method's
evaluation. The config's own point runs in the run root, so a finished pipeline has already done it;
every other point in its own run root under ``ablation/`` (``stages.ablation``). Last, one comparison
table, ``ablation/table/ablation.md`` (and ``ablation.json``), also shown in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from ragdistill.config import ConfigError, ExperimentConfig, with_overrides
from ragdistill.config.ablation import AblationPoint
from ragdistill.config.stages import PipelineSettings
from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import (
    ConfigName,
    ExperimentOverrides,
    documented_parameters,
    experiment_config,
)
from ragdistill.flows.pipeline import StageCalls
from ragdistill.inference.shared import close_shared_backends
from ragdistill.layout import EXPERT_STAGE, HINTS_DIR, INDEX_DIR, WARM_START_DIR
from ragdistill.preflight import check_runnable
from ragdistill.stages.ablation import point_root
from ragdistill.tasks.ablation import ablation_table_task, prepare_point_task
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.rollout import rollout_task
from ragdistill.tasks.students import dataset_task, evaluate_task, expert_task, train_task, warm_start_task


@flow(name="ablation", flow_run_name=flow_run_namer("ablation"), log_prints=True)
@documented_parameters
def ablation_flow(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """The retrieval ablation: the teacher and its student per k and retriever, one table (ablation/table).

    Every stage before the teacher is the pipeline's; each grid point of ablation.k and
    ablation.retrievers re-runs only the teacher and what follows it (ablation.methods)."""
    config, config_file = experiment_config(config_name, overrides, {"run.run_root": run_root})
    stages = PipelineSettings.from_experiment(config, experiment_check=True)
    table = stages.ablation_table()
    points = [(point, point_settings(stages, point, config_file)) for point in table.points]
    run = StageCalls(stages.ctx)
    counts: dict[str, Any] = {}
    try:
        if config.warm_start.enabled:
            counts["warm_start"] = run(
                warm_start_task, stages.warm_start, reserved=stages.warm_start_reserved()
            )
        counts["base"] = run(rollout_task, stages.rollout())
        counts["hints"] = run(mine_task, stages.mining)
        if any(point.retriever == "faiss" for point in table.points):
            counts["index"] = run(index_task, stages.indexing)
        counts["eval_base"] = run(evaluate_task, stages.evaluation("base"))
        for point, settings in points:
            counts[point.label] = run_point(run, point, settings)
    finally:
        close_shared_backends()
    counts["table"] = run(ablation_table_task, table)
    return counts


def point_settings(stages: PipelineSettings, point: AblationPoint, source: Path) -> PipelineSettings:
    """Every stage's settings at ``point``: the config's own (the pipeline's) or, for another point, the
    config with the point's retriever and k, named ``<run>.<point>`` and rooted in its own folder (playing
    on the run root's warm start, when on, as a retrain generation does), checked
    against this machine before any work starts (a re-ranker model, for instance)."""
    if point.is_pipeline:
        return stages
    where = f"{source} at grid point {point.label}"
    try:
        config: ExperimentConfig = with_overrides(
            stages.config,
            {
                "retrieval.retriever": point.retriever,
                "retrieval.k": point.k,
                "run.run_root": point_root(stages.config.run.run_root, point),
                "run.name": f"{stages.config.run.name}.{point.label}",
            },
        )
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}; change ablation.* or the config") from None
    check_runnable(config, where)
    return PipelineSettings.from_experiment(
        config, experiment_check=stages.experiment_check, warm_start_root=stages.ctx.run_root
    )


def run_point(run: StageCalls, point: AblationPoint, stages: PipelineSettings) -> dict[str, Any]:
    """The teacher and what follows it at one grid point (see the module docstring). The content digests
    of the point's folders are handed back to ``run`` under the run root (``ablation/<point>/…``), where
    the table reads them."""
    config = stages.config
    here = run
    if not point.is_pipeline:
        folders = [HINTS_DIR, INDEX_DIR] if point.retriever == "faiss" else [HINTS_DIR]
        copied = on_run_root(prepare_point_task, run.ctx)(run.ctx, stages.ctx, point, folders)
        shared = {folder: run.digests[folder] for folder in (WARM_START_DIR,) if folder in run.digests}
        here = StageCalls(stages.ctx, {**shared, **copied["digests"]})
    counts: dict[str, Any] = {}
    if "distill" in config.ablation.methods:
        for stage in stages.teacher_stages():
            task, settings = (
                (expert_task, stages.expert) if stage == EXPERT_STAGE else (teach_task, stages.teacher)
            )
            counts[stage] = here(task, settings)
        counts["dataset_distill"] = here(dataset_task, stages.dataset("distill"))
        counts["train_distill"] = here(train_task, stages.training("distill"))
    for method in config.ablation.methods:
        counts[f"eval_{method}"] = here(evaluate_task, stages.evaluation(method))
    if here is not run:
        run.digests.update({point.folder(folder): value for folder, value in here.digests.items()})
    return counts
