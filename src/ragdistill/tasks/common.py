"""What every stage task shares: a cache key that cannot lie, result storage under the run root, and
readable UI artifacts.

The artifact store is the source of truth; Prefect's cache only saves a task run. A stage task's cache
key is the hash of the absolute run-root URL, the stage's identity (``stages.lifecycle``) and the code
of the task wrapper. Before Prefect looks the key up, the stored result under it is removed unless the
stage's outputs are current (manifest of that identity, every listed file unchanged) and the result
describes exactly those outputs. So a deleted or altered artifact re-runs its stage (and, through its
new content digest, everything downstream), a setting no stage reads re-runs nothing, and two
checkouts never share results (different absolute run roots). Results are small JSON manifests,
persisted under ``<run root>/.prefect-results`` for local run roots (not persisted for object-store
roots: the stage functions then find their own outputs current in seconds).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy

from ragdistill.config import ExperimentConfig
from ragdistill.errors import UserFacingError
from ragdistill.identity import code_fingerprint, digest
from ragdistill.stages.lifecycle import StageIdentity, current_manifest
from ragdistill.store import ArtifactStore, Manifest

RESULTS_DIR = ".prefect-results"
Identify = Callable[[ExperimentConfig, dict[str, Any]], tuple[str, StageIdentity]]
"""(config, the task's parameters) -> (stage folder, identity the stage would run under)."""

T = TypeVar("T", bound=Task)


def stage_cache_key(identify: Identify, task_module: str) -> Callable[[Any, dict[str, Any]], str]:
    def key(_context: Any, parameters: dict[str, Any]) -> str:
        config: ExperimentConfig = parameters["config"]
        store = ArtifactStore(config.run.run_root)
        try:
            stage_dir, identity = identify(config, parameters)
        except UserFacingError:  # an input is missing, or nothing to identify: run the task, which says why
            return uuid.uuid4().hex
        value = digest([store.root_url, identity.key, code_fingerprint(task_module)])
        current = current_manifest(store, stage_dir, identity)
        if store.is_local and not _stored_result_matches(Path(store.root) / RESULTS_DIR / value, current):
            (Path(store.root) / RESULTS_DIR / value).unlink(missing_ok=True)
        return value

    return key


def _stored_result_matches(path: Path, current: Manifest | None) -> bool:
    """Whether Prefect's stored result for a key describes the stage's current outputs. A result of
    outputs that were since deleted, altered or rebuilt must not be served: it is removed instead."""
    if current is None or not path.is_file():
        return False
    try:
        payload = json.loads(json.loads(path.read_text())["result"])
        return payload["digest"] == current.digest and payload["identity"] == current.identity
    except (ValueError, KeyError, TypeError):
        return False


def stage_cache_policy(identify: Identify, task_module: str) -> CachePolicy:
    """The cache key of a stage task (see the module docstring); ``task_module`` is the module holding
    the task, whose code is part of the key."""
    return CachePolicy.from_cache_key_fn(stage_cache_key(identify, task_module))


def on_run_root(task: T, config: ExperimentConfig) -> T:
    """The task with its results persisted under the run root (local roots) or not persisted (others)."""
    store = ArtifactStore(config.run.run_root)
    if store.is_local:
        return task.with_options(result_storage=Path(store.root) / RESULTS_DIR, persist_result=True)
    return task.with_options(persist_result=False)


def publish_manifest(manifest: Manifest, key: str, description: str) -> dict[str, Any]:
    """Show a stage's counts in the Prefect UI and return the manifest as a JSON-able dict."""
    rows = [{"count": name, "value": value} for name, value in sorted(manifest.counts.items())]
    rows.append({"count": "identity", "value": manifest.identity[:12]})
    rows.append({"count": "code_version", "value": manifest.code_version})
    create_table_artifact(key=key, table=rows, description=description)
    payload = asdict(manifest)
    payload["digest"] = manifest.digest
    return payload
