"""Prefect task results under the run root: JSON on local disks and on S3, served only while current.

A one-file stage (`echo`) stands in for the real ones: it takes ``(ctx, settings, inputs)`` and goes
through the same cache policy (``STAGE_CACHE``, its identity found by its settings' type) and result
storage (``on_run_root``) as every stage task.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prefect import flow, task
from prefect.filesystems import RemoteFileSystem

from ragdistill.config import load_config
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.stages import identities
from ragdistill.stages.lifecycle import StageIdentity, stage_identity
from ragdistill.store import ArtifactStore, write_manifest
from ragdistill.tasks.common import (
    RESULTS_DIR,
    STAGE_CACHE,
    on_run_root,
    publish_manifest,
    result_storage,
)

REPO = Path(__file__).resolve().parents[1]
STAGE = "echo"


class EchoSettings(StageSettings):
    """The echo stage writes ``text`` to ``echo/out.txt``."""

    CODE: ClassVar[str] = "ragdistill.tasks.common"
    text: str

    def stage_dir(self) -> str:
        return STAGE


def echo_identity(ctx: RunContext, settings: EchoSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, inputs)


@pytest.fixture(autouse=True)
def echo_is_a_stage(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``identify`` (what ``STAGE_CACHE`` keys on) knows the echo stage as it knows every real one."""
    real = identities._identities
    monkeypatch.setattr(identities, "_identities", lambda: {**real(), EchoSettings: echo_identity})
    yield


def echo(ctx: RunContext, settings: EchoSettings, inputs: Inputs) -> dict[str, Any]:
    store = ArtifactStore(ctx.run_root)
    store.write_text(f"{STAGE}/out.txt", settings.text)
    identity = echo_identity(ctx, settings, inputs)
    manifest = write_manifest(store, STAGE, STAGE, identity.key, ["out.txt"])
    return publish_manifest(manifest, key="echo", description="echo")


# The cache key fingerprints the code of the task's module, which is a stage task module in ragdistill.
echo.__module__ = "ragdistill.tasks.common"
echo_task = task(name="echo", cache_policy=STAGE_CACHE, result_serializer="json")(echo)


@flow(name="echo-flow")
def echo_flow(run_root: str, text: str) -> tuple[str, dict[str, Any]]:
    config = load_config(REPO / "configs" / "demo-alfworld.yaml", {"run.run_root": run_root})
    ctx = PipelineSettings.from_experiment(config).ctx
    state = on_run_root(echo_task, ctx)(ctx, EchoSettings(text=text), {}, return_state=True)
    return state.name, state.result()


def stored_results(store: ArtifactStore) -> dict[str, dict[str, Any]]:
    results = store.child(RESULTS_DIR)
    return {path: json.loads(results.read_bytes(path)) for path in results.list()}


def assert_json_only(records: dict[str, dict[str, Any]]) -> None:
    assert records, "a result was persisted"
    for record in records.values():
        assert record["metadata"]["serializer"]["type"] == "json"
        payload = json.loads(record["result"])  # a pickle would be base64, never a JSON object
        assert payload["stage"] == STAGE and payload["counts"] == {}


def check_results_are_json_and_the_cache_never_lies(run_root: str) -> None:
    store = ArtifactStore(run_root)
    state, first = echo_flow(run_root, "hello")
    assert state == "Completed" and store.read_text(f"{STAGE}/out.txt") == "hello"
    assert_json_only(stored_results(store))

    state, again = echo_flow(run_root, "hello")
    assert state == "Cached" and again == first

    store.delete(f"{STAGE}/out.txt")
    state, _ = echo_flow(run_root, "hello")
    assert state == "Completed", "a result whose outputs were deleted is not served"
    assert store.read_text(f"{STAGE}/out.txt") == "hello"

    state, _ = echo_flow(run_root, "other")
    assert state == "Completed" and len(stored_results(store)) == 2


def test_results_on_a_local_run_root_are_json_and_the_cache_never_lies(
    prefect_server: None, tmp_path: Path
) -> None:
    root = f"file://{tmp_path}/run"
    check_results_are_json_and_the_cache_never_lies(root)
    assert (tmp_path / "run" / RESULTS_DIR).is_dir()


@pytest.mark.s3
def test_results_on_an_s3_run_root_are_json_on_s3_and_the_cache_never_lies(
    prefect_server: None, s3_root: str
) -> None:
    check_results_are_json_and_the_cache_never_lies(s3_root)


@pytest.mark.s3
def test_s3_result_storage_block_holds_no_credentials(prefect_server: None, s3_root: str) -> None:
    storage = result_storage(ArtifactStore(s3_root))
    assert not isinstance(storage, Path)
    assert storage.basepath == f"{s3_root}/{RESULTS_DIR}"
    assert storage.settings == {}, "endpoint and keys come from the environment of the reading process"
    saved = RemoteFileSystem.load(storage._block_document_name)
    assert saved.basepath == storage.basepath and saved.settings == {}
    for dumped in (storage.model_dump_json(), saved.model_dump_json()):
        assert (
            os.environ["AWS_SECRET_ACCESS_KEY"] not in dumped and os.environ["AWS_ENDPOINT_URL"] not in dumped
        )


def test_a_pickled_result_under_the_key_is_removed_not_loaded(prefect_server: None, tmp_path: Path) -> None:
    root = f"file://{tmp_path}/run"
    store = ArtifactStore(root)
    _, payload = echo_flow(root, "hello")
    ((key, record),) = stored_results(store).items()
    record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "cloudpickle"}
    record["result"] = base64.b64encode(pickle.dumps(payload)).decode()
    store.child(RESULTS_DIR).write_text(key, json.dumps(record))

    state, again = echo_flow(root, "hello")
    assert state == "Completed" and again["digest"] == payload["digest"], "the planted pickle was not served"
    assert_json_only(stored_results(store))
