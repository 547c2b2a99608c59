"""The collect and retrain flows: failures accumulate, then a new generation of students learns from them.

``collect`` plays the current student on the next batch of new tasks and emits a
``ragdistill.failures.recorded`` event for the batch's failures. The retrain deployment's trigger starts
``retrain`` after a few such events; ``retrain`` reads every failure stored since its watermark, skips
with a recorded reason below ``retrain.min_failures``, and otherwise runs mine → index → teach (→ expert)
→ datasets → train → evaluate → promote on generation ``k`` (``generations/<k>/``, see ``stages.retrain``),
then advances the watermark. Promote registers generation ``k``'s students in the *run root's* registry
(lineage: the generation and the collect batches it consumed) and lets the gate compare the candidate with
the run root's current version, so the next ``collect`` plays the new student once it is promoted. The
retrain lease makes a second retrain of the same run root skip at once, with the holder recorded as the
reason, while one runs, whichever way it was started; the deployment's concurrency limit 1 keeps a second
triggered run from starting at all.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import ExperimentOverrides, documented_parameters, experiment_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.stages.retrain import advance_watermark, generation_config, record_decision, retrain_turn
from ragdistill.store import ArtifactStore
from ragdistill.tasks.collect import (
    collect_task,
    prepare_generation_task,
    retrain_decision_task,
    watermark_from,
)
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.promotion import promote_task
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.students import dataset_task, evaluate_task, expert_task, train_task


@flow(name="collect", flow_run_name=flow_run_namer("collect"), log_prints=True)
@documented_parameters
def collect_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Let the current student play the next batch of new tasks and announce the batch's failures."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    try:
        return collect_task(config)
    finally:
        close_shared_backends()


@flow(name="retrain", flow_run_name=flow_run_namer("retrain"), log_prints=True)
@documented_parameters
def retrain_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Retrain on every collect failure stored since the last retrain, or skip with the reason."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root})
    with retrain_turn(config) as busy:
        if busy is not None:
            return busy
        decision = retrain_decision_task(config)
        if decision["skipped"] is not None:
            return {key: value for key, value in decision.items() if key not in ("watermark", "pending")}
        try:
            counts = _train_generation(config, decision)
        finally:
            close_shared_backends()
        store = ArtifactStore(config.run.run_root)
        watermark, pending = watermark_from(decision)
        advanced = advance_watermark(store, watermark, pending)
        summary = {
            "generation": advanced.generation,
            "new_failures": decision["new_failures"],
            "by_batch": decision["by_batch"],
            "skipped": None,
            "counts": counts,
        }
        record_decision(store, summary)
        return summary


def _train_generation(config: Any, decision: dict[str, Any]) -> dict[str, Any]:
    """Every stage after the rollout, on generation ``k``'s own root (the pipeline's order)."""
    generation = decision["generation"]
    consumed = sorted(set(decision["watermark"]["consumed"]) | set(decision["pending"]))
    base = on_run_root(prepare_generation_task, config)(config, generation, consumed)
    parent_root = ArtifactStore(config.run.run_root).root_url
    config = generation_config(config, generation)

    def task(wrapped: Any) -> Any:
        return on_run_root(wrapped, config)

    hints = task(mine_task)(config, base["digest"])
    index = task(index_task)(config, hints["digest"]) if config.retrieval.retriever == "faiss" else None
    teacher = task(teach_task)(config, hints["digest"], index["digest"] if index else None)
    sources = {"teacher": teacher["digest"]}
    if config.distill.teacher in ("expert", "both"):
        sources["expert"] = task(expert_task)(config, hints["digest"])["digest"]
    datasets = {
        "sft": task(dataset_task)(config, "sft", [base["digest"]]),
        "distill": task(dataset_task)(config, "distill", [sources[key] for key in sorted(sources)]),
    }
    adapters = {name: task(train_task)(config, name, datasets[name]["digest"]) for name in datasets}
    evaluations = {
        method: task(evaluate_task)(
            config, method, [adapters[method]["digest"]] if method in adapters else [teacher["digest"]]
        )
        for method in config.evaluation.methods
    }
    lineage = {"number": generation, "collect_batches": consumed, "new_batches": sorted(decision["pending"])}
    promotion = task(promote_task)(
        config, [result["digest"] for result in evaluations.values()], parent_root, lineage
    )
    return {
        "base": base["counts"],
        "hints": hints["counts"],
        "teacher": teacher["counts"],
        **{f"dataset_{name}": result["counts"] for name, result in datasets.items()},
        **{f"train_{name}": result["counts"] for name, result in adapters.items()},
        **{f"eval_{method}": result["counts"] for method, result in evaluations.items()},
        "promotion": promotion["counts"],
    }
