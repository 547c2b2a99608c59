import json
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ragdistill.leases import LeaseHeldError, StageLease
from ragdistill.store import (
    ArtifactError,
    ArtifactStore,
    RecordLog,
    read_manifest,
    read_records,
    shard_paths,
    verify_manifest,
    write_manifest,
)


def log_at(store: ArtifactStore, prefix: str = "rollouts/base", shard_size: int = 3) -> RecordLog:
    return RecordLog(store, prefix, key=lambda record: str(record["i"]), shard_size=shard_size)


def test_plain_paths_become_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(str(tmp_path / "run"))
    store.write_json("a/b.json", {"x": 1})
    assert store.root_url == f"file://{tmp_path}/run"
    monkeypatch.chdir(tmp_path)
    assert ArtifactStore("file://./run").root_url == store.root_url, "relative roots become absolute"
    assert (tmp_path / "run" / "a" / "b.json").exists()
    assert store.read_json("a/b.json") == {"x": 1}
    assert store.list() == ["a/b.json"]


def test_missing_artifact_is_named(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    with pytest.raises(ArtifactError, match=r"missing artifact .*nothing\.json"):
        store.read_bytes("nothing.json")


def test_appended_records_compact_into_shards_and_reopening_continues(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store)
    for i in range(4):
        log.append({"i": i})
    assert shard_paths(store, "rollouts/base") == [] and len(store.list("rollouts/base/parts")) == 4
    reopened = log_at(store)
    for i in range(4, 7):
        reopened.append({"i": i})
    assert [r["i"] for r in reopened.records()] == list(range(7))
    shards = reopened.compact()
    assert [Path(p).name for p in shards] == ["shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]
    assert store.list("rollouts/base") == shards, "the parts are gone"
    assert [r["i"] for r in read_records(store, "rollouts/base")] == list(range(7))


def test_the_last_record_of_a_key_wins_and_compaction_keeps_what_is_asked(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store, shard_size=2)
    for i in range(5):
        log.append({"i": i, "try": 1})
    log.compact()
    log.append({"i": 1, "try": 2})
    assert [(r["i"], r["try"]) for r in log.records()] == [(0, 1), (2, 1), (3, 1), (4, 1), (1, 2)]
    shards = log.compact(keep=lambda record: record["i"] != 3)
    assert [(r["i"], r["try"]) for r in read_records(store, "rollouts/base")] == [
        (0, 1),
        (2, 1),
        (4, 1),
        (1, 2),
    ]
    assert store.list("rollouts/base") == shards and len(shards) == 2


@contextmanager
def killed_at_second_write(store: ArtifactStore) -> Iterator[None]:
    """The process is killed as ``store`` starts its second write (the first lands); the block must end
    there."""
    real_write, writes = store.write_text, []

    def crash_on_second(relative: str, text: str) -> None:
        writes.append(relative)
        if len(writes) == 2:
            raise KeyboardInterrupt("killed")
        real_write(relative, text)

    store.write_text = crash_on_second  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        store.write_text = real_write  # type: ignore[method-assign]


def test_a_crash_in_the_middle_of_compaction_loses_no_record(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store, shard_size=2)
    for i in range(6):
        log.append({"i": i})
    log.compact()
    for i in range(6, 9):
        log.append({"i": i})
    log.append({"i": 0, "again": True})
    with killed_at_second_write(store):
        log.compact()
    survivors = log_at(store, shard_size=2).records()
    assert sorted(r["i"] for r in survivors) == list(range(9)) and [r for r in survivors if r.get("again")]
    log_at(store, shard_size=2).compact()
    assert sorted(r["i"] for r in read_records(store, "rollouts/base")) == list(range(9))


def test_compaction_writes_the_given_order_whatever_order_records_arrived_in(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store, shard_size=2)
    for i in (3, 0, 4):
        log.append({"i": i})
    shards = log.compact(order=lambda record: record["i"])
    assert [Path(p).name for p in shards] == ["shard-00000.jsonl", "shard-00001.jsonl"], (
        "only parts: in place"
    )
    for i in (2, 1):
        log.append({"i": i})
    shards = log.compact(order=lambda record: record["i"])
    assert [r["i"] for r in read_records(store, "rollouts/base")] == [0, 1, 2, 3, 4]
    assert store.list("rollouts/base") == shards and len(shards) == 3


def test_a_crash_while_compaction_reorders_the_shards_loses_no_record(tmp_path: Path) -> None:
    """Reordering moves records of shard 0 to later shards: writing in place would overwrite shard 0
    before they are written again."""
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store, shard_size=2)
    for i in (5, 4, 3, 2):
        log.append({"i": i})
    log.compact()
    for i in (1, 0):
        log.append({"i": i})
    with killed_at_second_write(store):
        log.compact(order=lambda record: record["i"])
    assert sorted(r["i"] for r in log_at(store, shard_size=2).records()) == list(range(6))
    shards = log_at(store, shard_size=2).compact(order=lambda record: record["i"])
    assert [r["i"] for r in read_records(store, "rollouts/base")] == list(range(6))
    assert store.list("rollouts/base") == shards


def _append_forever(root: str, ready: "multiprocessing.synchronize.Event") -> None:
    log = log_at(ArtifactStore(root), "stage", shard_size=10_000)
    payload = "x" * 200_000
    i = 0
    while True:
        log.append({"i": i, "payload": payload})
        i += 1
        if i == 5:
            ready.set()


def test_killed_writer_leaves_no_partial_record_and_writer_continues(tmp_path: Path) -> None:
    """SIGKILL a process in the middle of large appends: every record read back is complete."""
    root = f"file://{tmp_path}"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_append_forever, args=(root, ready))
    process.start()
    assert ready.wait(60)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.join()

    store = ArtifactStore(root)
    records = log_at(store, "stage").records()
    assert len(records) >= 5
    assert [r["i"] for r in records] == list(range(len(records)))
    log = log_at(store, "stage")
    log.append({"i": len(records), "payload": ""})
    assert [r["i"] for r in log.records()] == list(range(len(records) + 1))
    leftovers = [name for name in os.listdir(tmp_path / "stage" / "parts") if not name.startswith("part-")]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)


def test_corrupted_shard_line_is_reported_by_file_and_line(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    log = log_at(store, "stage", shard_size=10)
    log.append({"i": 0})
    log.compact()
    with open(tmp_path / "stage" / "shard-00000.jsonl", "a") as handle:
        handle.write('{"i": 1, "trunc')
    with pytest.raises(ArtifactError, match=r"shard-00000\.jsonl line 2"):
        list(read_records(store, "stage"))


def test_manifest_verification_names_tampered_and_missing_files(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    store.write_text("hints/bank.jsonl", '{"id": "a"}\n')
    store.write_text("hints/extra/notes.txt", "hello")
    store.write_text("hints/scratch.txt", "not an output")
    manifest = write_manifest(
        store,
        "hints",
        stage="mine",
        identity="abc",
        files=["bank.jsonl", "extra/notes.txt"],
        counts={"hints": 1},
    )
    assert set(manifest.files) == {"bank.jsonl", "extra/notes.txt"}, "exactly the files named"
    assert verify_manifest(store, "hints").digest == manifest.digest
    assert read_manifest(store, "hints").counts == {"hints": 1}

    (tmp_path / "hints" / "bank.jsonl").write_text('{"id": "b"}\n')
    (tmp_path / "hints" / "extra" / "notes.txt").unlink()
    with pytest.raises(ArtifactError) as raised:
        verify_manifest(store, "hints")
    message = str(raised.value)
    assert "corrupted" in message and "bank.jsonl" in message
    assert "missing" in message and "notes.txt" in message


def test_unfinished_stage_has_no_manifest(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    store.write_text("index/part", "x")
    with pytest.raises(ArtifactError, match="did not finish"):
        verify_manifest(store, "index")


def test_manifest_digest_is_the_content_only(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    store.write_text("s/a.txt", "1")
    first = write_manifest(store, "s", stage="s", identity="h", files=["a.txt"], counts={"played_now": 1})
    second = write_manifest(
        store, "s", stage="s", identity="other", files=["a.txt"], counts={"played_now": 0}
    )
    assert first.digest == second.digest, "time, identity and counts are not content"
    store.write_text("s/a.txt", "2")
    assert write_manifest(store, "s", stage="s", identity="h", files=["a.txt"]).digest != first.digest
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["code_version"]


def test_a_second_lease_on_a_folder_is_refused_with_the_holders_name(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    second = StageLease(store, "rollouts/base", label="second run", wait_s=0.3, poll_s=0.1)
    with StageLease(store, "rollouts/base", label="first run"), pytest.raises(LeaseHeldError) as raised:
        second.acquire()
    assert f"'first run' (pid {os.getpid()}" in str(raised.value)
    assert store.list("rollouts/base", hidden=True) == [], "released leases leave nothing behind"
    with StageLease(store, "rollouts/base", label="third run"):
        pass


def test_racing_runs_never_both_hold_a_folder(tmp_path: Path) -> None:
    """Many threads race for one folder, over and over: never two holders at once."""
    import threading

    store = ArtifactStore(f"file://{tmp_path}")
    holding: list[str] = []
    overlaps: list[list[str]] = []
    lock = threading.Lock()

    def contender(name: str) -> None:
        for _ in range(5):
            lease = StageLease(store, "stage", label=name, wait_s=30, poll_s=0.01)
            with lease:
                with lock:
                    holding.append(name)
                    if len(holding) > 1:
                        overlaps.append(list(holding))
                time.sleep(0.002)
                with lock:
                    holding.remove(name)

    threads = [threading.Thread(target=contender, args=(f"run-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


def test_a_lease_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}")
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    now = time.time()
    store.write_json(
        "index/.lease-0-crashed.json",
        {"token": "0-crashed", "host": socket.gethostname(), "pid": dead.pid, "label": "crashed run",
         "acquired_at": now, "refreshed_at": now},
    )  # fmt: skip
    with StageLease(store, "index", label="new run"):
        (only,) = store.list("index", hidden=True)
        assert Path(only).name.startswith(".lease-") and "crashed" not in only


@pytest.mark.s3
def test_s3_store_round_trip_records_manifest_and_lease(s3_root: str) -> None:
    store = ArtifactStore(s3_root)
    assert not store.is_local
    log = log_at(store, shard_size=2)
    for i in range(3):
        log.append({"i": i})
    assert [r["i"] for r in log_at(store, shard_size=2).records()] == [0, 1, 2]
    shards = log.compact()
    assert [r["i"] for r in read_records(store, "rollouts/base")] == [0, 1, 2]
    manifest = write_manifest(
        store, "rollouts/base", stage="rollout", identity="h", files=shards, counts={"episodes": 3}
    )
    assert set(manifest.files) == {"shard-00000.jsonl", "shard-00001.jsonl"}
    verify_manifest(store, "rollouts/base")
    store.write_text("rollouts/base/shard-00001.jsonl", '{"i": 99}\n')
    with pytest.raises(ArtifactError, match=r"corrupted: s3://.*shard-00001\.jsonl"):
        verify_manifest(store, "rollouts/base")
    with pytest.raises(ArtifactError, match=r"missing artifact s3://"):
        store.read_bytes("nope")
    with StageLease(store, "rollouts/base", label="s3 run"), pytest.raises(LeaseHeldError, match="s3 run"):
        StageLease(store, "rollouts/base", label="other").acquire()
