"""The end-to-end flow: rollout → mine → index → teach (→ expert) → datasets → train → evaluate → promote →
report.

Each task's cache key is its stage's identity plus a check that its outputs still exist unchanged
(``tasks.common``), so a re-run with nothing changed finishes from the cache, a changed setting re-runs
the stages that read it and those after them, and a crashed run picks up at the stage (and, inside a
rollout, mining or training, at the episode, chunk or checkpoint) where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.flows.naming import flow_run_namer
from ragdistill.flows.parameters import ExperimentOverrides, documented_parameters, experiment_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.stages.report import write_run_file
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.promotion import promote_task
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.rollout import rollout_task
from ragdistill.tasks.students import dataset_task, evaluate_task, expert_task, report_task, train_task


@flow(name="pipeline", flow_run_name=flow_run_namer("pipeline"), log_prints=True)
@documented_parameters
def pipeline_flow(
    config_name: str, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> dict[str, Any]:
    """Every stage in order: rollout, mine, index, teach (expert), datasets, train, evaluate, report."""
    config, config_file = experiment_config(config_name, overrides, {"run.run_root": run_root})
    write_run_file(config, str(config_file))

    def task(wrapped: Any) -> Any:
        return on_run_root(wrapped, config)

    try:
        base = task(rollout_task)(config, "base")
        hints = task(mine_task)(config, base["digest"])
        index = task(index_task)(config, hints["digest"]) if config.retrieval.retriever == "faiss" else None
        teacher = task(teach_task)(config, hints["digest"], index["digest"] if index else None)
        sources = {"base": base["digest"], "teacher": teacher["digest"]}
        if config.distill.teacher in ("expert", "both"):
            sources["expert"] = task(expert_task)(config, hints["digest"])["digest"]
        datasets = {
            "sft": task(dataset_task)(config, "sft", [base["digest"]]),
            "distill": task(dataset_task)(
                config, "distill", [sources[key] for key in sorted(sources) if key != "base"]
            ),
        }
        adapters = {name: task(train_task)(config, name, datasets[name]["digest"]) for name in datasets}
        evaluations = {
            method: task(evaluate_task)(
                config, method, [adapters[method]["digest"]] if method in adapters else [teacher["digest"]]
            )
            for method in config.evaluation.methods
        }
        promotion = task(promote_task)(config, [result["digest"] for result in evaluations.values()])
        report = task(report_task)(config, [result["digest"] for result in evaluations.values()])
    finally:
        close_shared_backends()
    return {
        "base": base["counts"],
        "hints": hints["counts"],
        "teacher": teacher["counts"],
        **{f"dataset_{name}": result["counts"] for name, result in datasets.items()},
        **{f"train_{name}": result["counts"] for name, result in adapters.items()},
        **{f"eval_{method}": result["counts"] for method, result in evaluations.items()},
        "promotion": promotion["counts"],
        "report": report["counts"],
    }
