"""Orchestration faults: racing leases and retrains, a Prefect server restarted mid-run, a worker killed.

Every case runs the real stages on the counter-double environment with policy doubles
(tests/test_stages.py); the slow ones run real ``prefect server start`` / ``prefect worker start``
processes, or flows in child processes against the session's test server, and check the stored records
exactly: every task once, every failure consumed once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prefect import flow

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, load_config
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference.base import Backend
from ragdistill.leases import LeaseHeldError, StageLease
from ragdistill.retrieval.mining import episode_id
from ragdistill.rollout.play import episode_log, is_transient
from ragdistill.stages import run_rollout
from ragdistill.stages.collect import (
    CollectBatch,
    finished_batches,
    next_batch,
    recorded_failures,
    run_collect,
)
from ragdistill.stages.lifecycle import StageError
from ragdistill.stages.report import write_run_file
from ragdistill.stages.retrain import (
    DECISIONS_DIR,
    WATERMARK_FILE,
    advance_watermark,
    pending_failures,
    read_watermark,
)
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_retrain import collect_config
from test_stages import PolicyDouble, counter_config

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SOURCES = REPO / "src"


def collect(config: ExperimentConfig, backend: Backend) -> tuple[CollectBatch, Manifest]:
    """The next collect batch of ``config``, played by ``backend``."""
    stages = PipelineSettings.from_experiment(config)
    batch = next_batch(ArtifactStore(stages.ctx.run_root))
    return run_collect(stages.ctx, stages.collect(batch), backend=backend)


class LeaseBarrierStore(ArtifactStore):
    """An artifact store that lines ``parties`` threads up on their first lease candidate: each waits
    before writing it until all have listed the empty folder, and after writing it until all have
    written, so every contender lists every other candidate: the tie the lease must resolve. Without the
    first wait, a thread started late (a loaded machine) lists the early one's candidate and is refused
    at once, and the early one waits for a write that never comes."""

    def __init__(self, root: str, parties: int) -> None:
        super().__init__(root)
        self.listed, self.written = (threading.Barrier(parties, timeout=30) for _ in range(2))
        self.waited: set[int] = set()

    def write_json(self, relative: str, payload: Any) -> None:
        first = "/.lease-" in relative and threading.get_ident() not in self.waited
        if first:
            self.waited.add(threading.get_ident())
            self.listed.wait()
        super().write_json(relative, payload)
        if first:
            self.written.wait()


@pytest.mark.parametrize("parties", [2, 3])
def test_runs_that_write_their_lease_candidates_at_once_leave_exactly_one_holder(
    tmp_path: Path, parties: int
) -> None:
    """Every run lists every other's candidate; with ``wait_s`` 0 none may give up on a contender that
    withdraws: the smallest token holds (whatever the timing), the others are refused naming it."""
    store = LeaseBarrierStore(f"file://{tmp_path}", parties=parties)
    leases = [
        StageLease(store, "retrain", label=f"retrain-{i}", wait_s=0.0, poll_s=0.2) for i in range(parties)
    ]
    held: list[str] = []
    refused: list[str] = []
    all_tried = threading.Barrier(parties, timeout=30)

    def contender(lease: StageLease) -> None:
        try:
            lease.acquire()
        except LeaseHeldError as error:
            refused.append(str(error))
            all_tried.wait()
            return
        held.append(lease.label)
        all_tried.wait()
        lease.release()

    threads = [threading.Thread(target=contender, args=(lease,)) for lease in reversed(leases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    first = min(leases, key=lambda lease: lease.token)
    assert held == [first.label] and len(refused) == parties - 1, (held, refused)
    assert all(f"'{first.label}'" in message for message in refused), "the refused runs name the holder"
    assert store.list("retrain", hidden=True) == []


def test_a_retrain_whose_decision_went_stale_consumes_nothing(tmp_path: Path) -> None:
    """Two decisions taken on the same watermark (a retrain resumed after another one finished): the
    first advances it, the second is refused and the watermark keeps exactly the first's failures."""
    config = collect_config(tmp_path)
    collect(config, PolicyDouble("wait"))
    store = ArtifactStore(config.run.run_root)
    decided_on = read_watermark(store)
    first = pending_failures(store, decided_on)
    collect(config, PolicyDouble("wait"))
    stale = pending_failures(store, decided_on)
    advanced = advance_watermark(store, decided_on, first)
    with pytest.raises(StageError, match="moved from generation 0 to 1"):
        advance_watermark(store, decided_on, stale)
    assert read_watermark(store) == advanced and store.read_json(WATERMARK_FILE)["generation"] == 1
    assert pending_failures(store, advanced).by_stage.keys() == {"collect-0001"}


def child_environment(api_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **extra,
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
    stages = PipelineSettings.from_experiment(config)
    store = ArtifactStore(config.run.run_root)
    write_run_file(
        store, "retrain", config.model_dump(mode="json")
    )  # as the pipeline does: the loop's config
    run_rollout(stages.ctx, stages.rollout(), {}, backend=PolicyDouble("wait"))
    for _ in range(2):
        collect(config, PolicyDouble("wait"))
    gate = tmp_path / "gate"

    first = start_retrain(config_path, gate, api_url, tmp_path / "a.log")
    try:
        wait_until(
            lambda: store.exists("generations/1/rollouts/base/manifest.json") or first.poll() is not None,
            240,
            "retrain A to take its decision and prepare generation 1",
        )
        assert first.poll() is None, (tmp_path / "a.log").read_text(errors="replace")[-4000:]
        collect(config, PolicyDouble("wait"))
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


ROLLOUT_TASKS = 10
CALLS_PER_EPISODE = 3  # the policy double plays ``inc``, which wins the counter game in 3 steps


def slow_rollout_config(tmp_path: Path) -> Path:
    """Ten counter-double episodes, one at a time: with the policy double's delay, a run of ~15 s."""
    config = counter_config(
        tmp_path, **{"env.limit": ROLLOUT_TASKS, "env.workers": 1, "rollout.batch_size": 1}
    )
    path = tmp_path / "slow-rollout.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


@flow(name="rollout-with-policy-double")
def rollout_with_policy_double(config_path: str, delay_s: float = 0.4) -> dict[str, Any]:
    """The real rollout flow, as a subflow, with the agent's model replaced by the slow policy double: the
    only way to hand a double to a flow run that a worker starts in a process of its own."""
    from ragdistill.flows.standalone import rollout_flow
    from ragdistill.inference import shared

    config = load_config(config_path)
    double = PolicyDouble("inc", delay_s=delay_s)
    shared._BACKENDS[shared._key(config.models.agent)] = double
    try:
        return {**rollout_flow(config_path), "requests": len(double.requests)}
    finally:
        print(f"REQUESTS {len(double.requests)}")


ROLLOUT_CHILD = """
import json, sys
from test_orchestration_faults import rollout_with_policy_double

state = rollout_with_policy_double(sys.argv[1], return_state=True)
print("STATE " + json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "type": state.type.value}))
"""


def stored_task_ids(run_root: str) -> list[str]:
    store = ArtifactStore(run_root)
    return [r["task_id"] for r in read_records(store, "rollouts/base", read_manifest(store, "rollouts/base"))]


def appended_parts(run_root: str) -> int:
    return len(ArtifactStore(run_root).list("rollouts/base/parts"))


def finished_records(run_root: str) -> dict[str, dict[str, Any]]:
    """task id -> the record of each base episode stored as finished: what a re-run keeps and skips (an
    episode stored as ended by a transient fault, e.g. its game worker killed first, is played again)."""
    records = episode_log(ArtifactStore(run_root), "rollouts/base", shard_size=50).records()
    return {record["task_id"]: record for record in records if not is_transient(record)}


def flow_run_state(flow_run_id: str) -> str:
    import uuid

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(uuid.UUID(flow_run_id)).state_type.value)  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize("client_retries", ["5", "0"], ids=["prefect-client-retries", "no-client-retries"])
def test_a_prefect_server_killed_and_restarted_mid_rollout_loses_and_repeats_no_episode(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
    client_retries: str,
) -> None:
    """A rollout flow in a child process reports to a real ``prefect server start`` (SQLite); the server
    is SIGKILLed after a few episodes and started again on the same port and database. With Prefect's
    client retries (``PREFECT_CLIENT_MAX_RETRIES``, 5 by default: about a minute of backoff) the run
    rides the restart out and its final state is on the restarted server. Without them (an outage longer
    than the retries) the progress updates that fail are skipped and the rollout plays every episode; the
    run may then fail to report its end, and a re-run finds the stage finished. Either way every task is
    stored once and the model is asked for each episode once."""
    from ragdistill.orchestration.server import prefect_api, server_status, start_server, stop_server

    config_path = slow_rollout_config(tmp_path)
    run_root = load_config(config_path).run.run_root
    server, started = start_server(timeout_s=600, keep=True)
    assert started
    total = ROLLOUT_TASKS * CALLS_PER_EPISODE
    try:
        log = tmp_path / "first.log"
        with log.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-c", ROLLOUT_CHILD, str(config_path)],
                cwd=REPO,
                env=child_environment(server.api_url, PREFECT_CLIENT_MAX_RETRIES=client_retries),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(lambda: appended_parts(run_root) >= 3 or child.poll() is not None, 240, "three episodes")
        assert child.poll() is None, log.read_text(errors="replace")[-4000:]
        os.killpg(server.pid, signal.SIGKILL)
        wait_until(lambda: server_status() is None, 30, "the killed server to be gone")
        restarted, started_again = start_server(timeout_s=600, port=server.port, keep=True)
        assert started_again and restarted.api_url == server.api_url and restarted.pid != server.pid
        child.wait(timeout=300)
        text = log.read_text(errors="replace")
        (requests,) = [int(line.split()[1]) for line in text.splitlines() if line.startswith("REQUESTS ")]
        assert requests == total, ("the rollout plays on through the outage", text[-4000:])
        if client_retries != "0":
            assert child.returncode == 0, text[-4000:]
        if child.returncode == 0:
            (state,) = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("STATE ")]
            with prefect_api():
                assert flow_run_state(state["flow_run_id"]) == "COMPLETED", "recorded on the restarted server"
        else:
            again = subprocess.run(
                [sys.executable, "-c", ROLLOUT_CHILD, str(config_path)],
                cwd=REPO, env=child_environment(server.api_url), capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert again.returncode == 0, (text[-3000:], again.stdout[-3000:], again.stderr[-3000:])
            assert "REQUESTS 0" in again.stdout, "the re-run plays nothing again"
    finally:
        stop_server()
    assert sorted(stored_task_ids(run_root)) == sorted(f"t{i}" for i in range(ROLLOUT_TASKS))
    assert len(stored_task_ids(run_root)) == ROLLOUT_TASKS


def kill_process_tree(pid: int) -> int:
    """SIGKILL ``pid`` and every process under it (the worker, its flow-run process, the game workers)."""
    root = psutil.Process(pid)
    processes = [*root.children(recursive=True), root]
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=30)
    return len(processes)


@pytest.mark.slow
def test_a_worker_killed_mid_flow_and_the_run_rescheduled_resumes_without_repeating_episodes(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A deployment run of the rollout (with the policy double) is picked up by a real process worker;
    the worker and its flow-run process are SIGKILLed mid-rollout. The run is set back to Scheduled
    through the API and a new worker runs it again: it completes, and the stage holds every task once,
    the episodes finished before the kill kept, not played again."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.deployments.runner import RunnerDeployment
    from prefect.states import Scheduled

    from ragdistill.deployments.register import ensure_work_pool
    from ragdistill.orchestration.server import prefect_api
    from ragdistill.orchestration.worker import WORK_POOL, start_worker, stop_worker

    config_path = slow_rollout_config(tmp_path)
    run_root = load_config(config_path).run.run_root
    python_path = os.pathsep.join([str(SOURCES), str(TESTS), os.environ.get("PYTHONPATH", "")])
    worker_environment = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PYTHONPATH": python_path}
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    with prefect_api(timeout_s=600) as api_url:
        ensure_work_pool(working_dir=REPO)
        deployment = RunnerDeployment.from_flow(
            rollout_with_policy_double,
            name="worker-killed",
            parameters={"config_path": str(config_path)},
            work_pool_name=WORK_POOL,
        )
        deployment.apply(work_pool_name=WORK_POOL)
        run = run_deployment(deployment.full_name, timeout=0)
        with logs[0].open("wb") as out:
            worker = start_worker(api_url, output=out, environment=worker_environment)
        try:
            wait_until(
                lambda: appended_parts(run_root) >= 3 or worker.poll() is not None, 300, "three episodes"
            )
            assert worker.poll() is None, logs[0].read_text(errors="replace")[-4000:]
            assert kill_process_tree(worker.pid) >= 2, "the worker and its flow-run process"
        finally:
            if worker.poll() is None:
                stop_worker(worker)
            worker.wait()
        before = appended_parts(run_root)
        time.sleep(2)
        assert appended_parts(run_root) == before, "nothing plays on after the kill"
        kept = finished_records(run_root)
        assert 2 <= len(kept) < ROLLOUT_TASKS, kept.keys()
        assert flow_run_state(str(run.id)) == "RUNNING", "the server still believes the run is running"

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Scheduled(), force=True)
        with logs[1].open("wb") as out:
            worker = start_worker(api_url, output=out, environment=worker_environment)
        try:
            wait_until(
                lambda: flow_run_state(str(run.id)) in ("COMPLETED", "FAILED", "CRASHED"), 300, "rerun"
            )
        finally:
            stop_worker(worker)
        worker_log = logs[1].read_text(errors="replace")
        assert flow_run_state(str(run.id)) == "COMPLETED", worker_log[-4000:]

    assert sorted(stored_task_ids(run_root)) == sorted(f"t{i}" for i in range(ROLLOUT_TASKS))
    assert len(stored_task_ids(run_root)) == ROLLOUT_TASKS
    stats = ArtifactStore(run_root).read_json("rollouts/base/run-stats.json")
    assert stats["skipped_finished"] == len(kept), (stats, sorted(kept))
    assert stats["played_now"] == ROLLOUT_TASKS - len(kept), (stats, sorted(kept))
    final = {record["task_id"]: record for record in read_records(ArtifactStore(run_root), "rollouts/base")}
    assert all(final[task_id] == record for task_id, record in kept.items()), "finished episodes are kept"
