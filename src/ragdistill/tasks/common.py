"""What every stage task shares: a cache key that cannot lie, result storage under the run root, and
readable UI artifacts.

The artifact store is the source of truth; Prefect's cache only saves a task run. Every stage task takes
``(ctx, settings, inputs)`` (``config.stages``), and one cache key serves them all: the hash of the
absolute run-root URL, the stage's identity (``stages.identities.identify``) and the code of the task
wrapper. Before Prefect looks the key up, the stored result under it is removed unless the
stage's outputs are current (manifest of that identity, every listed file unchanged) and the result
describes exactly those outputs. So a deleted or altered artifact re-runs its stage (and, through its
new content digest, everything downstream), a setting no stage reads re-runs nothing, and two
checkouts never share results (different absolute run roots).

Results are small JSON manifests, persisted under ``<run root>/.prefect-results`` on local disks and
object stores alike, always with Prefect's JSON serializer: a stored result is only ever parsed as JSON,
never unpickled, since anyone who can write to shared storage could plant a pickle. On ``s3://`` roots
the storage is a ``RemoteFileSystem`` block (Prefect wants it saved on the server, one per run root)
holding only the base path, never settings: s3fs takes the endpoint and keys from the environment of
each process that reads or writes (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``), so no secret reaches the Prefect server, a block document or a task's
options.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import CachePolicy
from prefect.filesystems import RemoteFileSystem

from ragdistill.config.run_context import RunContext
from ragdistill.errors import UserFacingError
from ragdistill.identity import code_fingerprint, digest
from ragdistill.stages.identities import identify
from ragdistill.stages.lifecycle import current_manifest
from ragdistill.store import ArtifactStore, Manifest

RESULTS_DIR = ".prefect-results"
RESULT_SERIALIZER = "json"
RESULTS_BLOCK_PREFIX = "ragdistill-results"
T = TypeVar("T", bound=Task)

TASK_RUN_SUFFIX = "{ctx.env_name}-{ctx.run_name}"
"""Appended to a stage task's run name (a format string over its ``ctx`` parameter): the environment it
plays and the run it belongs to, e.g. ``rollout-teacher-alfworld-demo-alfworld``."""


def stage_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The cache key of a stage task run on ``parameters["ctx"]``, ``["settings"]`` and ``["inputs"]``
    (see the module docstring); a stored result that no longer describes the stage's outputs is removed
    first, so Prefect never serves it."""
    ctx: RunContext = parameters["ctx"]
    settings = parameters["settings"]
    store = ArtifactStore(ctx.run_root)
    try:
        identity = identify(ctx, settings, parameters.get("inputs") or {})
    except UserFacingError:  # an input is missing, or nothing to identify: run the task, which says why
        return uuid.uuid4().hex
    value = digest([store.root_url, identity.key, code_fingerprint(context.task.fn.__module__)])
    results = store.child(RESULTS_DIR)
    if not _stored_result_matches(results, value, current_manifest(store, identity.stage, identity)):
        results.delete(value)
    return value


def _stored_result_matches(results: ArtifactStore, key: str, current: Manifest | None) -> bool:
    """Whether Prefect's stored result under ``key`` is a JSON result that describes the stage's current
    outputs. Anything else (outputs since deleted, altered or rebuilt; another serializer; an unreadable
    record) must not be served: it is removed instead."""
    if current is None or not results.exists(key):
        return False
    try:
        record = json.loads(results.read_bytes(key))
        if record["metadata"]["serializer"]["type"] != RESULT_SERIALIZER:
            return False
        payload = json.loads(record["result"])
        return payload["digest"] == current.digest and payload["identity"] == current.identity
    except (ValueError, KeyError, TypeError):
        return False


STAGE_CACHE: CachePolicy = CachePolicy.from_cache_key_fn(stage_cache_key)
"""The cache policy of every stage task (see the module docstring)."""


def result_storage(store: ArtifactStore) -> Path | RemoteFileSystem:
    """Where the task results of a run root go: ``<run root>/.prefect-results`` (see the module docstring)."""
    results = store.child(RESULTS_DIR)
    if store.is_local:
        return Path(results.root)
    block = RemoteFileSystem(basepath=results.root_url)
    name = f"{RESULTS_BLOCK_PREFIX}-{hashlib.sha256(results.root_url.encode()).hexdigest()[:16]}"
    block.save(name, overwrite=True)
    return block


def on_run_root(task: T, ctx: RunContext) -> T:
    """The task with its results persisted as JSON under the run root."""
    store = ArtifactStore(ctx.run_root)
    return task.with_options(
        result_storage=result_storage(store), result_serializer=RESULT_SERIALIZER, persist_result=True
    )


def publish_manifest(manifest: Manifest, key: str, description: str) -> dict[str, Any]:
    """Show a stage's counts in the Prefect UI and return the manifest as a JSON-able dict."""
    rows = [{"count": name, "value": value} for name, value in sorted(manifest.counts.items())]
    rows.append({"count": "identity", "value": manifest.identity[:12]})
    rows.append({"count": "code_version", "value": manifest.code_version})
    create_table_artifact(key=key, table=rows, description=description)
    payload = asdict(manifest)
    payload["digest"] = manifest.digest
    return payload


def send_progress(what: str, send: Callable[[], object]) -> None:
    """Call ``send`` (a progress artifact's create or update). Best effort: an update the API does not
    take (the server down for longer than the client's retries) is logged and skipped, and the stage goes
    on; its outputs are stored either way."""
    try:
        send()
    except Exception as error:  # whatever the client raises: progress is not the result
        logging.getLogger(__name__).warning(
            "%s: progress not sent to the Prefect API (%s); going on", what, error
        )
