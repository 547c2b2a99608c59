"""One Prefect flow per stage B/C, for running a single stage from the UI or a deployment.

Each reads the upstream manifest from the run root, so it runs after the stage before it, whichever
way that one ran (CLI, its own flow, or the pipeline flow).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.config import load_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.stages.layout import BASE_STAGE, HINTS_DIR, INDEX_DIR, rollout_prefix
from ragdistill.store import ArtifactStore, read_manifest
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.retrieval import index_task, mine_task, teach_task


def _digest(run_root: str, stage_dir: str) -> str:
    return read_manifest(ArtifactStore(run_root), stage_dir).digest


@flow(name="mine", log_prints=True)
def mine_flow(config_path: str, run_root: str | None = None) -> dict[str, Any]:
    config = load_config(config_path, {"run.run_root": run_root} if run_root else None)
    try:
        return on_run_root(mine_task, config)(
            config, _digest(config.run.run_root, rollout_prefix(BASE_STAGE))
        )
    finally:
        close_shared_backends()


@flow(name="index", log_prints=True)
def index_flow(config_path: str, run_root: str | None = None) -> dict[str, Any]:
    config = load_config(config_path, {"run.run_root": run_root} if run_root else None)
    return on_run_root(index_task, config)(config, _digest(config.run.run_root, HINTS_DIR))


@flow(name="teach", log_prints=True)
def teach_flow(config_path: str, run_root: str | None = None) -> dict[str, Any]:
    config = load_config(config_path, {"run.run_root": run_root} if run_root else None)
    index_digest = _digest(config.run.run_root, INDEX_DIR) if config.retrieval.retriever == "faiss" else None
    try:
        return on_run_root(teach_task, config)(config, _digest(config.run.run_root, HINTS_DIR), index_digest)
    finally:
        close_shared_backends()
