"""Orchestration faults: racing leases and retrains, a Prefect server restarted mid-run, a worker killed.

Every case runs the real stages on the counter-double environment with policy doubles
(tests/test_stages.py); the slow ones run real ``prefect server start`` / ``prefect worker start``
processes, or flows in child processes against the session's test server, and check the stored records
exactly: every task once, every failure consumed once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig
from ragdistill.leases import LeaseHeldError, StageLease
from ragdistill.retrieval.mining import episode_id
from ragdistill.stages import run_rollout
from ragdistill.stages.collect import finished_batches, recorded_failures, run_collect
from ragdistill.stages.retrain import (
    DECISIONS_DIR,
    pending_failures,
    read_watermark,
)
from ragdistill.store import ArtifactStore
from test_retrain import collect_config
from test_stages import PolicyDouble

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SOURCES = REPO / "src"


class LeaseBarrierStore(ArtifactStore):
    """An artifact store that lines ``parties`` threads up on their first lease candidate: each waits after
    writing it until all have written, and before withdrawing it until all are withdrawing, so every
    contender lists every other candidate: the tie the lease must resolve."""

    def __init__(self, root: str, parties: int) -> None:
        super().__init__(root)
        self.written, self.withdrawing = (threading.Barrier(parties, timeout=10) for _ in range(2))
        self.waited: dict[str, set[int]] = {"write": set(), "delete": set()}

    def _first(self, operation: str, relative: str) -> bool:
        if "/.lease-" not in relative or threading.get_ident() in self.waited[operation]:
            return False
        self.waited[operation].add(threading.get_ident())
        return True

    def write_json(self, relative: str, payload: Any) -> None:
        super().write_json(relative, payload)
        if self._first("write", relative):
            self.written.wait()

    def delete(self, relative: str) -> None:
        if self._first("delete", relative):
            self.withdrawing.wait()
        super().delete(relative)


def test_two_runs_that_write_their_lease_candidates_at_once_leave_exactly_one_holder(tmp_path: Path) -> None:
    """Both see the other's candidate and withdraw; with ``wait_s`` 0 neither may give up on a contender
    that withdrew, so one holds and the other is refused with the holder's name."""
    store = LeaseBarrierStore(f"file://{tmp_path}", parties=2)
    held: list[str] = []
    refused: list[str] = []
    both_tried = threading.Barrier(2, timeout=30)

    def contender(name: str) -> None:
        lease = StageLease(store, "retrain", label=name, wait_s=0.0, poll_s=0.2)
        try:
            lease.acquire()
        except LeaseHeldError as error:
            refused.append(str(error))
            both_tried.wait()
            return
        held.append(name)
        both_tried.wait()
        lease.release()

    threads = [threading.Thread(target=contender, args=(f"retrain-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(held) == 1 and len(refused) == 1, (held, refused)
    assert f"'{held[0]}'" in refused[0], "the refused run names the holder"
    assert store.list("retrain", hidden=True) == []


def child_environment(api_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PYTHONPATH": os.pathsep.join([str(SOURCES), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


class GatedPolicyDouble(PolicyDouble):
    """The policy double, whose every generate call waits until the file ``gate`` exists: a retrain in a
    child process holds its lease, with its decision taken, for as long as the test needs."""

    def __init__(self, gate: str, action: str = "wait") -> None:
        super().__init__(action)
        self.gate = Path(gate)

    def generate(self, requests: list[Any]) -> list[Any]:
        while not self.gate.exists():
            time.sleep(0.2)
        return super().generate(requests)


# A retrain flow run in a child process, its models the gated policy double (named by a path).
RETRAIN_CHILD = """
import json, sys
import env_doubles
from ragdistill.config import load_config
from ragdistill.flows.retrain import retrain_flow
from ragdistill.inference import shared
from test_orchestration_faults import GatedPolicyDouble

config_path, gate = sys.argv[1:3]
config = load_config(config_path)
double = GatedPolicyDouble(gate)
for role in (config.models.agent, config.models.extractor):
    shared._BACKENDS[shared._key(role)] = double
print("SUMMARY " + json.dumps(retrain_flow(config_path), default=str), flush=True)
"""


def start_retrain(config_path: Path, gate: Path, api_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", RETRAIN_CHILD, str(config_path), str(gate)],
            cwd=REPO,
            env=child_environment(api_url),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def child_summary(process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> dict[str, Any]:
    process.wait(timeout=timeout_s)
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("SUMMARY ")]
    assert process.returncode == 0 and lines, text[-4000:]
    return json.loads(lines[-1].removeprefix("SUMMARY "))  # type: ignore[no-any-return]


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def stored_failures(config: ExperimentConfig) -> dict[str, set[str]]:
    store = ArtifactStore(config.run.run_root)
    return {
        stage: {episode_id(record) for record in recorded_failures(store, stage)}
        for stage in finished_batches(store)
    }


@pytest.mark.slow
def test_racing_and_crashing_retrains_train_one_generation_and_consume_every_failure_exactly_once(
    prefect_server: None, tmp_path: Path
) -> None:
    """Retrain A (a child process) takes its decision and blocks in its first model call; a collect batch
    finishes meanwhile; retrain B starts beside A and skips at once, recording A as the reason. A is then
    SIGKILLed mid-retrain: the watermark is untouched. Retrain C trains generation 1 on every stored
    failure, the batch finished during A included; the watermark then lists exactly the stored failures."""
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())
    config = collect_config(
        tmp_path, **{"retrieval.retriever": "bm25", "evaluation.limit": 2, "evaluation.split": "test"}
    )
    config_path = tmp_path / "retrain.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    run_rollout(config, backend=PolicyDouble("wait"))
    for _ in range(2):
        run_collect(config, backend=PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    gate = tmp_path / "gate"

    first = start_retrain(config_path, gate, api_url, tmp_path / "a.log")
    try:
        wait_until(
            lambda: store.exists("generations/1/rollouts/base/manifest.json") or first.poll() is not None,
            240,
            "retrain A to take its decision and prepare generation 1",
        )
        assert first.poll() is None, (tmp_path / "a.log").read_text(errors="replace")[-4000:]
        run_collect(config, backend=PolicyDouble("wait"))
        second = start_retrain(config_path, gate, api_url, tmp_path / "b.log")
        skipped = child_summary(second, tmp_path / "b.log", timeout_s=240)
        assert skipped["generation"] is None and "another retrain" in skipped["skipped"]
        assert "pid" in skipped["skipped"] and str(first.pid) in skipped["skipped"], "it names the holder"
        assert not store.exists("retrain/watermark.json")
    finally:
        first.kill()
        first.wait()
    assert not store.exists("retrain/watermark.json"), "a killed retrain leaves the watermark untouched"

    gate.touch()
    third = start_retrain(config_path, gate, api_url, tmp_path / "c.log")
    trained = child_summary(third, tmp_path / "c.log", timeout_s=480)

    failures = stored_failures(config)
    assert set(failures) == {"collect-0000", "collect-0001", "collect-0002"}
    assert trained["generation"] == 1 and trained["new_failures"] == 6
    assert trained["by_batch"] == {stage: 2 for stage in failures}
    watermark = read_watermark(store)
    assert watermark.generation == 1
    assert {stage: set(ids) for stage, ids in watermark.consumed.items()} == failures
    assert all(len(ids) == len(set(ids)) for ids in watermark.consumed.values()), "nothing counted twice"
    assert pending_failures(store, watermark).total == 0
    assert not store.exists("generations/2")
    decisions = [store.read_json(path) for path in store.list(DECISIONS_DIR)]
    assert sorted(str(d["generation"]) for d in decisions) == ["1", "None"], decisions
