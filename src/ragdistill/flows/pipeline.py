"""The end-to-end flow over every stage: rollout → mine → index → teach.

Each task's cache key is its stage's identity plus a check that its outputs still exist unchanged
(``tasks.common``), so a re-run with nothing changed finishes from the cache, a changed setting re-runs
the stages that read it and those after them, and a crashed run picks up at the stage (and, inside a
rollout or mining, at the episode or chunk) where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.config import load_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task
from ragdistill.tasks.rollout import rollout_task


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config_path: str, run_root: str | None = None) -> dict[str, Any]:
    config = load_config(config_path, {"run.run_root": run_root} if run_root else None)
    try:
        base = on_run_root(rollout_task, config)(config, "base")
        hints = on_run_root(mine_task, config)(config, base["digest"])
        index = None
        if config.retrieval.retriever == "faiss":
            index = on_run_root(index_task, config)(config, hints["digest"])
        teacher = on_run_root(teach_task, config)(config, hints["digest"], index["digest"] if index else None)
    finally:
        close_shared_backends()
    return {"base": base["counts"], "hints": hints["counts"], "teacher": teacher["counts"]}
