"""Prefect flow for stage A: play the base agent on a split and store every episode."""

from __future__ import annotations

from typing import Any

from prefect import flow

from ragdistill.config import load_config
from ragdistill.inference.shared import close_shared_backends
from ragdistill.tasks.common import on_run_root
from ragdistill.tasks.rollout import rollout_task


@flow(name="rollout", log_prints=True)
def rollout_flow(
    config_path: str,
    split: str | None = None,
    limit: int | None = None,
    run_root: str | None = None,
    stage: str = "base",
) -> dict[str, Any]:
    overrides = {"env.split": split, "env.limit": limit, "run.run_root": run_root}
    config = load_config(config_path, {key: value for key, value in overrides.items() if value is not None})
    try:
        return on_run_root(rollout_task, config)(config, stage)
    finally:
        close_shared_backends()
