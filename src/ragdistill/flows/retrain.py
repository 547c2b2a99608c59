"""The collect and retrain flows: failures accumulate, then a new generation of students learns from them.

Both run with the config that made their run root (``flows.loop_config``): given only a run root, the
one its pipeline stored; a config given as well must compute the same stage settings.

``collect`` plays the current student on the next batch of new tasks (never the pipeline's or the
evaluation's), emits a ``ragdistill.failures.recorded`` event for the batch's failures and, once the
failures stored since the watermark reach ``retrain.min_failures``, a ``ragdistill.retrain.due`` event,
which the retrain deployment's trigger answers (a schedule checks too, for sparse collects). ``retrain``
reads every failure stored since its watermark, skips with a recorded reason below
``retrain.min_failures``, and otherwise runs mine → index → teach (→ expert) → datasets → train →
evaluate → promote on generation ``k`` (``generations/<k>/``, see ``stages.retrain``), then advances the
watermark. With no champion yet (nothing promoted) a retrain still runs: every generation trains from
the base model (the run root's warm-started checkpoint when the warm start is on), and its candidate is
gated against the base agent's evaluation. Promote registers generation ``k``'s students in the *run root's* registry
(lineage: the generation and the collect batches it consumed) and lets the gate compare the candidate with
the run root's current version, so the next ``collect`` plays the new student once it is promoted. The
retrain lease makes a second retrain of the same run root skip at once, with the holder recorded as the
reason, while one runs, whichever way it was started; the deployment's concurrency limit 1 keeps a second
triggered run from starting at all.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.config import with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.flows.loop_config import loop_config
from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import ConfigName, ExperimentOverrides, documented_loop_parameters
from ragdistill.flows.pipeline import StageCalls, run_students
from ragdistill.inference.shared import close_shared_backends
from ragdistill.layout import BASE_STAGE, rollout_prefix
from ragdistill.stages.collect import next_batch
from ragdistill.stages.lifecycle import recorded_inputs
from ragdistill.stages.retrain import advance_watermark, generation_root, record_decision, retrain_turn
from ragdistill.store import ArtifactStore
from ragdistill.tasks.collect import (
    collect_task,
    prepare_generation_task,
    publish_loop_status,
    retrain_decision_task,
    watermark_from,
)
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task


@flow(name="collect", flow_run_name=flow_run_namer("collect"), log_prints=True)
@documented_loop_parameters
def collect_flow(
    config_name: ConfigName | None = None,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
) -> dict[str, Any]:
    """Let the current student play the next batch of new tasks and announce the batch's failures."""
    stages = PipelineSettings.from_experiment(
        loop_config(config_name, run_root, overrides), experiment_check=True
    )
    ctx = stages.ctx
    settings = stages.collect(next_batch(ArtifactStore(ctx.run_root)))
    try:
        return collect_task(ctx, settings, stages.retrain, stages.reserved_tasks())
    finally:
        close_shared_backends()


@flow(name="retrain", flow_run_name=flow_run_namer("retrain"), log_prints=True)
@documented_loop_parameters
def retrain_flow(
    config_name: ConfigName | None = None,
    run_root: str | None = None,
    overrides: ExperimentOverrides | None = None,
) -> dict[str, Any]:
    """Retrain on every collect failure stored since the last retrain, or skip with the reason."""
    stages = PipelineSettings.from_experiment(
        loop_config(config_name, run_root, overrides), experiment_check=True
    )
    ctx = stages.ctx
    with retrain_turn(ctx) as busy:
        if busy is not None:
            return busy
        decision = retrain_decision_task(ctx, stages.retrain)
        if decision["skipped"] is not None:
            publish_loop_status(ctx, stages.retrain)
            return {key: value for key, value in decision.items() if key not in ("watermark", "pending")}
        if decision["champion"] is None:
            print(
                f"no champion in {ctx.run_root}'s registry: generation {decision['generation']} trains from "
                "the base model, as every generation does, and its candidate is gated against the base "
                "agent's evaluation"
            )
        try:
            counts = _train_generation(stages, decision)
        finally:
            close_shared_backends()
        store = ArtifactStore(ctx.run_root)
        watermark, pending = watermark_from(decision)
        advanced = advance_watermark(store, watermark, pending)
        summary = {
            "generation": advanced.generation,
            "new_failures": decision["new_failures"],
            "by_batch": decision["by_batch"],
            "champion_before": decision["champion"],
            "skipped": None,
            "counts": counts,
        }
        record_decision(store, summary)
        publish_loop_status(ctx, stages.retrain)
        return summary


def _train_generation(parent: PipelineSettings, decision: dict[str, Any]) -> dict[str, Any]:
    """Every stage after the rollout, on generation ``k``'s own root (the pipeline's order)."""
    generation = decision["generation"]
    consumed = sorted(set(decision["watermark"]["consumed"]) | set(decision["pending"]))
    parent_ctx = parent.ctx
    base = on_run_root(prepare_generation_task, parent_ctx)(parent_ctx, generation, consumed)
    root = generation_root(parent_ctx.run_root, generation)
    generation_config = with_overrides(parent.config, {"run.run_root": root})
    stages = PipelineSettings.from_experiment(
        generation_config, experiment_check=parent.experiment_check, warm_start_root=parent_ctx.run_root
    )
    # Every generation plays and trains on the run root's warm start, as the pipeline did.
    warm_start = recorded_inputs(ArtifactStore(parent_ctx.run_root), parent.rollout().role.input_dirs())
    run = StageCalls(stages.ctx, {rollout_prefix(BASE_STAGE): base["digest"], **warm_start})
    counts = {"base": base["counts"], "hints": run(mine_task, stages.mining)}
    if stages.config.retrieval.retriever == "faiss":
        run(index_task, stages.indexing)
    counts["teacher"] = run(teach_task, stages.teacher)
    lineage = {"number": generation, "collect_batches": consumed, "new_batches": sorted(decision["pending"])}
    parent_root = ArtifactStore(parent_ctx.run_root).root_url
    counts.update(run_students(run, stages, registry_root=parent_root, generation=lineage))
    return counts
