"""Training checkpoints on the run root (``stages.training_checkpoints``): what is copied up and back, in
which order, and what a rotation removes; and the train stage on a real S3 server (s3rver), each
"machine" a process with a local cache of its own: a training killed on one machine resumes on another
from the checkpoint it had copied up, and two machines train one student together, machine 0 alone
writing under the run root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port
from ragdistill.config import ModelSpec, TrainingLaunch, TrainingRecipe
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import TrainingSettings
from ragdistill.paths import CACHE_ENV
from ragdistill.stages.training import run_training, training_identity
from ragdistill.stages.training_checkpoints import CheckpointSync
from ragdistill.store import ArtifactStore, read_manifest, write_manifest
from tiny_model import write_tiny_model, write_token_dataset

STAGE = "adapters/sft"
STORED = f"{STAGE}/checkpoints"


def make_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(f"weights {step}".encode())
    (checkpoint / "optimizer.pt").write_bytes(f"optimizer {step}".encode())
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def recorded(store: ArtifactStore, method: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The store paths ``method`` (upload_file, download_file) is called with, in order."""
    calls: list[str] = []
    original = getattr(store, method)

    def record(relative: str, local: Path) -> None:
        calls.append(relative)
        original(relative, local)

    monkeypatch.setattr(store, method, record)
    return calls


def test_push_copies_complete_checkpoints_trainer_state_last_and_follows_the_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, local = ArtifactStore(str(tmp_path / "root")), tmp_path / "work" / "checkpoints"
    sync = CheckpointSync(store, STAGE, local)
    uploads = recorded(store, "upload_file", monkeypatch)
    make_checkpoint(local, 2)
    make_checkpoint(local, 4, complete=False)  # being saved
    assert sync.push() == ["checkpoint-2"]
    assert uploads[-1] == f"{STORED}/checkpoint-2/trainer_state.json" and len(uploads) == 3
    assert not store.exists(f"{STORED}/checkpoint-4")
    (local / "checkpoint-4" / "trainer_state.json").write_text("{}")
    shutil.rmtree(local / "checkpoint-2")  # the Trainer's rotation
    assert sync.push() == ["checkpoint-4"]
    assert sorted(sync.stored_checkpoints()) == ["checkpoint-4"]
    (local / "checkpoint-4" / "rng_state_1.pth").write_bytes(b"late")  # another process's, after the state
    calls_before = len(uploads)
    assert sync.push() == ["checkpoint-4"] and uploads[calls_before:] == [
        f"{STORED}/checkpoint-4/rng_state_1.pth"
    ]
    assert sync.push() == [], "nothing is copied twice"


def test_push_copies_the_newest_complete_checkpoint_and_an_older_one_only_when_the_newest_is_rotated_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training that saves faster than the uploads go: each push copies the newest checkpoint (a resume
    needs no other); when the Trainer removes that one mid-upload, the next newest is copied instead."""
    store, local = ArtifactStore(str(tmp_path / "root")), tmp_path / "work" / "checkpoints"
    sync = CheckpointSync(store, STAGE, local)
    for step in (2, 4):
        make_checkpoint(local, step)
    assert sync.push() == ["checkpoint-4"] and sorted(sync.stored_checkpoints()) == ["checkpoint-4"]
    for step in (6, 8):
        make_checkpoint(local, step)
    original = store.upload_file

    def rotated_while_uploading(relative: str, source: Path) -> None:
        if "/checkpoint-8/" in relative:
            shutil.rmtree(local / "checkpoint-8")
            raise FileNotFoundError(source)
        original(relative, source)

    monkeypatch.setattr(store, "upload_file", rotated_while_uploading)
    assert sync.push() == ["checkpoint-6"]
    complete = [name for name, files in sync.stored_checkpoints().items() if "trainer_state.json" in files]
    assert sorted(complete) == ["checkpoint-4", "checkpoint-6"]


def test_pull_copies_the_newest_complete_checkpoint_only_where_none_is_as_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    for step, complete in [(2, True), (4, True), (6, False)]:
        source = make_checkpoint(tmp_path / "elsewhere", step, complete)
        for path in source.iterdir():
            store.upload_file(f"{STORED}/{source.name}/{path.name}", path)
    fresh = tmp_path / "fresh" / "checkpoints"
    downloads = recorded(store, "download_file", monkeypatch)
    assert CheckpointSync(store, STAGE, fresh).pull() == "checkpoint-4"
    assert downloads[-1] == f"{STORED}/checkpoint-4/trainer_state.json"
    assert sorted(path.name for path in fresh.iterdir()) == ["checkpoint-4"]
    assert (fresh / "checkpoint-4" / "optimizer.pt").read_bytes() == b"optimizer 4"
    assert CheckpointSync(store, STAGE, fresh).pull() is None
    newer = tmp_path / "newer" / "checkpoints"
    make_checkpoint(newer, 8)
    assert CheckpointSync(store, STAGE, newer).pull() is None


def test_pushing_copies_while_the_block_runs_and_everything_when_it_fails(tmp_path: Path) -> None:
    store, local = ArtifactStore(str(tmp_path / "root")), tmp_path / "work" / "checkpoints"
    sync = CheckpointSync(store, STAGE, local)
    with pytest.raises(RuntimeError, match="killed"), sync.pushing(interval_s=0.05):
        make_checkpoint(local, 2)
        deadline = time.monotonic() + 10
        while not store.exists(f"{STORED}/checkpoint-2/trainer_state.json"):
            assert time.monotonic() < deadline, "the background push never copied checkpoint-2"
            time.sleep(0.05)
        make_checkpoint(local, 4)
        raise RuntimeError("training killed")
    assert sorted(sync.stored_checkpoints()) == ["checkpoint-2", "checkpoint-4"]


# --- slow: the train stage on s3rver --------------------------------------------------------------------

STAGE_PROCESS = """
import json, sys
from ragdistill.config.stages import RunContext, TrainingSettings
from ragdistill.stages.training import run_training
ctx = RunContext.model_validate_json(sys.argv[1])
settings = TrainingSettings.model_validate_json(sys.argv[2])
print("MANIFEST", run_training(ctx, settings, json.loads(sys.argv[3])).identity)
"""
MAX_STEPS = 60


def stage_on_s3(
    s3_root: str, tmp_path: Path, training: TrainingRecipe, ctx: RunContext | None = None
) -> tuple[RunContext, TrainingSettings, dict[str, str], str]:
    """The sft train stage on ``s3_root`` over a finished tiny training set: its context, settings,
    inputs and its working folder under a cache."""
    model = write_tiny_model(tmp_path / "tiny-llama")
    store = ArtifactStore(s3_root)
    store.upload_file("datasets/sft/data.parquet", write_token_dataset(tmp_path / "data.parquet"))
    dataset = write_manifest(
        store, "datasets/sft", stage="datasets/sft", identity="tiny", files=["data.parquet"],
        counts={"examples": 16}, extra={"card": {"tokenizer": str(model)}},
    )  # fmt: skip
    settings = TrainingSettings(name="sft", training=training, base_model=ModelSpec(name=str(model)), seed=1)
    ctx = ctx or RunContext(run_root=s3_root, run_name="training-on-s3")
    inputs = {"datasets/sft": dataset.digest}
    return ctx, settings, inputs, f"training/{training_identity(ctx, settings, inputs).key[:24]}"


def stage_process(
    ctx: RunContext,
    settings: TrainingSettings,
    inputs: dict[str, str],
    environment: dict[str, str],
    **options: Any,
) -> subprocess.Popen[str]:
    """The train stage in a process of its own (a machine), with ``environment`` added to this one's."""
    command = [sys.executable, "-c", STAGE_PROCESS, ctx.model_dump_json(), settings.model_dump_json()]
    command.append(json.dumps(inputs))
    return subprocess.Popen(command, env={**os.environ, **environment}, text=True, **options)


def complete_stored(store: ArtifactStore) -> list[int]:
    return sorted(
        int(path.split("/")[-2].split("-")[1])
        for path in store.list(STORED)
        if path.endswith("/trainer_state.json")
    )


@pytest.mark.slow
def test_a_training_killed_on_one_machine_resumes_on_another_from_the_checkpoint_on_s3(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    training = TrainingRecipe(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, per_device_batch_size=2, max_steps=MAX_STEPS, save_steps=4,
        save_total_limit=MAX_STEPS // 4, learning_rate=1e-3, torch_threads=1, tensorboard=False,
    )  # fmt: skip
    # every checkpoint is kept: with rotation, a quiet machine's training outpaced the 2-s pushes and removed
    # each checkpoint before its upload was complete, so the first one the store held was the last
    ctx, settings, inputs, work = stage_on_s3(s3_root, tmp_path, training)
    store = ArtifactStore(s3_root)

    machine_a = tmp_path / "cache-a"
    first = stage_process(
        ctx,
        settings,
        inputs,
        {CACHE_ENV: str(machine_a)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not complete_stored(store):
            assert first.poll() is None, "the training ended before a checkpoint reached the store"
            assert time.monotonic() < deadline, "no checkpoint reached the store within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    time.sleep(1.0)  # a PUT the server had wholly received when its client died may still land
    synced = complete_stored(store)[-1]
    assert 0 < synced < MAX_STEPS and not store.exists(f"{STAGE}/manifest.json")
    assert (machine_a / work / "checkpoints").is_dir(), "machine A trained in its own cache"
    shutil.rmtree(machine_a)

    machine_b = tmp_path / "cache-b"
    monkeypatch.setenv(CACHE_ENV, str(machine_b))
    manifest = run_training(ctx, settings, inputs)
    result = manifest.extra["result"]
    assert result["resumed_from"] == f"checkpoint-{synced}", "resumed from the copied checkpoint, not step 0"
    assert (result["steps"], result["steps_run"]) == (MAX_STEPS, MAX_STEPS - synced)
    log = store.read_text(f"{STAGE}/train.log")
    assert f"resuming from {machine_b / work / 'checkpoints' / f'checkpoint-{synced}'}" in log
    assert store.exists(f"{STAGE}/adapter/adapter_model.safetensors")
    assert store.list(STORED) == [], "a finished training leaves no checkpoint in the store"


@pytest.mark.slow
def test_two_machines_train_one_student_and_machine_0_alone_writes_it(s3_root: str, tmp_path: Path) -> None:
    """Two train stages, each with its own cache, told their rank by a scheduler's environment
    (NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); multi-cpu, one process on each."""
    training = TrainingRecipe(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, per_device_batch_size=2, gradient_accumulation_steps=4,
        epochs=1, learning_rate=1e-2, torch_threads=1, tensorboard=False, accelerate_config="multi-cpu",
    )  # fmt: skip
    ctx = RunContext(
        run_root=s3_root, run_name="two-machines", training_launch=TrainingLaunch(processes_per_machine=1)
    )
    ctx, settings, inputs, work = stage_on_s3(s3_root, tmp_path, training, ctx)
    meeting = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    caches = [tmp_path / f"cache-{rank}" for rank in (0, 1)]
    machines = [
        stage_process(
            ctx,
            settings,
            inputs,
            {**meeting, "NODE_RANK": str(rank), CACHE_ENV: str(caches[rank])},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (1, 0)  # machine 1 first: it waits for machine 0
    ]
    outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    store = ArtifactStore(s3_root)
    manifest = read_manifest(store, STAGE)
    assert {out.rsplit("MANIFEST ", 1)[1].strip() for out in outputs} == {manifest.identity}
    result = manifest.extra["result"]
    assert (
        manifest.counts["trained"],
        result["processes"],
        result["steps"],
        result["effective_batch_size"],
    ) == (1, 2, 2, 8)
    assert len(set(result["weight_digests"])) == 1 and len(result["weight_digests"]) == 2
    assert not [path for path in store.list(STAGE) if "machine-1" in path], "machine 1 wrote nothing there"
    assert (caches[1] / work / "train.machine-1.log").is_file() and (
        caches[1] / work / "data.parquet"
    ).is_file()
    assert not (caches[1] / work / "adapter").exists() and (caches[0] / work / "adapter").is_dir()
