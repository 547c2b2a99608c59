"""Storage faults on an s3:// run root, against a real S3 server (s3rver) this module stops and restarts.

The session's ``s3_endpoint`` server is shared, so these tests run their own on a port and data folder
of their own: a stage whose server dies fails with a :class:`StorageError` naming the endpoint and bucket
(within seconds, not after minutes of retries), leaves no manifest and no partial record, and resumes to
exactly the expected records once the server is back; a missing bucket or refused credentials stop a
stage before it does any work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from conftest import S3_BUCKET, free_port, launch_s3rver, require_s3rver
from ragdistill.config import ExperimentConfig
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference.base import Backend, Generation, GenerationRequest
from ragdistill.leases import StageLease
from ragdistill.stages import run_rollout
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    Manifest,
    RecordLog,
    StorageError,
    check_writable,
    read_manifest,
    read_records,
)
from test_stages import PolicyDouble, counter_config


class RestartableS3:
    """An s3rver process on a fixed port and data folder that can be killed and started again."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = launch_s3rver(self.directory, self.port)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to finish a request it is serving."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableS3]:
    require_s3rver()
    server = RestartableS3(tmp_path / "s3rver")
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "S3RVER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S3RVER")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    try:
        yield server
    finally:
        server.kill()


class ServerKillingPolicy(PolicyDouble):
    """The counter game's winning policy (a test double) that kills the S3 server before answering the
    batch holding request number ``kill_at`` (counted from 1), so the next write of the stage meets a dead
    server. Requests, not calls: the continuous engine sends a request as soon as its episode is ready."""

    def __init__(self, server: RestartableS3, kill_at: int) -> None:
        super().__init__("inc")
        self.server, self.kill_at = server, kill_at
        self.killed_at: float | None = None

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if len(self.requests) < self.kill_at <= len(self.requests) + len(requests):
            self.server.kill()
            self.killed_at = time.monotonic()
        return super().generate(requests)


def s3_config(tmp_path: Path, root: str) -> ExperimentConfig:
    overrides = {"run.run_root": root, "env.workers": 1, "rollout.batch_size": 2, "rollout.shard_size": 2}
    return counter_config(tmp_path, **overrides)


def rollout(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage A of ``config`` with ``backend`` as the agent."""
    stages = PipelineSettings.from_experiment(config)
    return run_rollout(stages.ctx, stages.rollout(), {}, backend=backend)


@pytest.mark.s3
def test_a_stage_whose_server_dies_fails_clearly_and_resumes_to_exactly_the_expected_records(
    own_s3: RestartableS3, tmp_path: Path
) -> None:
    config = s3_config(tmp_path, f"s3://{S3_BUCKET}/run")
    # Episodes of three requests, two at a time: the first two are recorded before either of the next two
    # sends its second request (the 9th), on either schedule.
    killer = ServerKillingPolicy(own_s3, kill_at=9)
    with pytest.raises(StorageError) as raised:
        rollout(config, killer)
    assert killer.killed_at is not None and time.monotonic() - killer.killed_at < 30, "bounded retries"
    message = str(raised.value)
    assert f"bucket '{S3_BUCKET}' at {own_s3.endpoint}" in message and "run the stage again" in message
    assert "Traceback" not in message

    own_s3.start()
    store = ArtifactStore(config.run.run_root)
    with pytest.raises(ArtifactError, match="did not finish"):
        read_manifest(store, "rollouts/base")
    kept = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"]).records()
    assert 2 <= len(kept) < 6 and all(record["success"] for record in kept), "only complete records"

    resumed = PolicyDouble("inc")
    manifest = rollout(config, resumed)
    records = list(read_records(store, "rollouts/base", manifest))
    assert sorted(record["task_id"] for record in records) == [f"t{i}" for i in range(6)]
    assert manifest.counts["episodes"] == 6 and manifest.counts["won"] == 6
    assert store.read_json("rollouts/base/run-stats.json")["played_now"] == 6 - len(kept)
    assert [path for path in store.list("rollouts/base", hidden=True) if "/." in path] == [], "no lease left"


@pytest.mark.s3
def test_appends_cut_by_a_killed_server_leave_only_whole_records_and_continue_after_restart(
    own_s3: RestartableS3,
) -> None:
    """SIGKILL the server while large records are being PUT. s3rver writes objects in place, so it can
    keep the first bytes of the PUT it died in (AWS and MinIO never do): the log must not serve it."""
    store = ArtifactStore(f"s3://{S3_BUCKET}/appends")
    log = RecordLog(store, "stage", key=lambda record: str(record["i"]))
    payload = "x" * 1_000_000
    killer = threading.Timer(1.5, own_s3.kill)
    killer.start()
    appended = 0
    with pytest.raises(StorageError, match=f"bucket '{S3_BUCKET}'"):
        while True:
            log.append({"i": appended, "payload": payload})
            appended += 1
    killer.join()
    own_s3.start()
    reopened = RecordLog(store, "stage", key=lambda record: str(record["i"]))
    survivors = reopened.records()
    assert appended >= 1 and appended <= len(survivors) + 1 and len(survivors) <= appended + 1
    assert all(record["payload"] == payload for record in survivors)
    assert [record["i"] for record in survivors] == list(range(len(survivors)))
    reopened.append({"i": len(survivors), "payload": ""})
    assert len(reopened.records()) == len(survivors) + 1


@pytest.mark.s3
def test_a_torn_part_counts_as_not_appended(own_s3: RestartableS3) -> None:
    """What a server that dies mid-PUT can leave (see above), made on purpose."""
    store = ArtifactStore(f"s3://{S3_BUCKET}/torn")
    log = RecordLog(store, "stage", key=lambda record: str(record["i"]))
    log.append({"i": 0})
    store.write_text("stage/parts/part-000000001.jsonl", json.dumps({"i": 1, "payload": "x" * 50})[:30])
    assert [record["i"] for record in RecordLog(store, "stage", key=lambda r: str(r["i"])).records()] == [0]
    reopened = RecordLog(store, "stage", key=lambda record: str(record["i"]))
    reopened.append({"i": 1})
    reopened.compact()
    assert [record["i"] for record in read_records(store, "stage")] == [0, 1]


@pytest.mark.s3
def test_a_missing_bucket_stops_the_stage_before_any_work(own_s3: RestartableS3, tmp_path: Path) -> None:
    config = s3_config(tmp_path, "s3://no-such-bucket/run")
    policy = PolicyDouble("inc")
    with pytest.raises(StorageError, match=f"bucket 'no-such-bucket' at {own_s3.endpoint} does not exist"):
        rollout(config, policy)
    assert policy.requests == []
    assert sorted(os.listdir(own_s3.directory)) == [S3_BUCKET], "nothing was created"


@pytest.mark.s3
def test_refused_credentials_stop_the_stage_before_any_work(
    own_s3: RestartableS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOT-A-KEY-OF-THIS-SERVER")
    config = s3_config(tmp_path, f"s3://{S3_BUCKET}/refused")
    policy = PolicyDouble("inc")
    with pytest.raises(StorageError, match="refused the credentials") as raised:
        rollout(config, policy)
    assert f"bucket '{S3_BUCKET}' at {own_s3.endpoint}" in str(raised.value)
    assert "AWS_ACCESS_KEY_ID" in str(raised.value)
    assert policy.requests == []
    assert sorted(os.listdir(own_s3.directory / S3_BUCKET)) == [], "nothing was written"


@pytest.mark.s3
def test_an_unreachable_endpoint_fails_the_preflight_in_seconds(
    own_s3: RestartableS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_s3.kill()
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"bucket '{S3_BUCKET}' at {own_s3.endpoint}"):
        check_writable(f"s3://{S3_BUCKET}/down")
    assert time.monotonic() - started < 20


def test_a_local_run_root_that_cannot_be_created_fails_the_preflight(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(StorageError, match=r"cannot write to the run root file://.*a-file/run"):
        check_writable(str(tmp_path / "a-file" / "run"))


@pytest.mark.s3
def test_a_lease_keeps_its_heartbeat_through_an_outage(
    own_s3: RestartableS3, caplog: pytest.LogCaptureFixture
) -> None:
    store = ArtifactStore(f"s3://{S3_BUCKET}/heartbeat")
    lease = StageLease(store, "stage", label="outage", heartbeat_s=0.1)
    with caplog.at_level("WARNING", logger="ragdistill.leases"):
        lease.acquire()
        own_s3.kill()
        deadline = time.monotonic() + 30
        while "could not refresh the lease" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"bucket '{S3_BUCKET}' at {own_s3.endpoint}" in caplog.text
    own_s3.start()
    assert lease._heartbeat is not None and lease._heartbeat.is_alive()
    lease.release()
    assert store.list("stage", hidden=True) == []


@pytest.mark.s3
def test_the_cli_reports_a_missing_bucket_in_one_line_before_any_work(own_s3: RestartableS3) -> None:
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "ragdistill.cli", "warm-start", "--config", "configs/demo-alfworld.yaml",
         "--run-root", "s3://no-such-bucket/run"],  # the demo's first stage
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "Traceback" not in run.stderr
    assert f"bucket 'no-such-bucket' at {own_s3.endpoint} does not exist" in last_line
    assert sorted(os.listdir(own_s3.directory)) == [S3_BUCKET]
