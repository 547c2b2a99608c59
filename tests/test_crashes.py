"""SIGKILL inside a stage, then run it again: the stage ends exactly as an uninterrupted run ends.

Each case runs the stage's plain function in a subprocess of its own process group, on the tiniest real
config (the ``counter-double`` environment, named model doubles, the real store, leases and stage
life cycle). The child kills its whole group with SIGKILL at a *kill point*: the N-th atomic write of a
file matching a pattern, after the store has written and flushed its temp file and before the rename
(the state a power cut or the OOM killer leaves). The kill point is installed by the test's child
script, never by product code. The stage is then run again in this process and compared with the same
stage run uninterrupted on a copy of the same upstream artifacts: same identity, same counts, same
files (byte for byte where the stage is deterministic; episode records up to their run id, timing and
worker pid), no duplicates, no temp files, no record that does not parse.

Covered elsewhere: the rollout engine's own resume (test_rollout.py::
test_killed_rollout_resumes_redoing_only_the_episodes_in_flight), a mining kill costing at most one
chunk (test_stages.py::test_a_kill_during_mining_loses_at_most_one_chunk), appends that never leave a
partial record (test_store.py::test_killed_writer_leaves_no_partial_record_and_writer_continues) and a
killed training resuming from its last checkpoint (test_training.py::
test_killed_training_resumes_from_its_last_checkpoint, slow: it trains the real model).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig
from ragdistill.config.stage_models import Inputs, StageSettings
from ragdistill.config.stages import PipelineSettings
from ragdistill.stages import run_indexing, run_mining, run_rollout
from ragdistill.stages.datasets import run_dataset
from ragdistill.stages.evaluation import run_evaluation
from ragdistill.stages.lifecycle import BOOKKEEPING, upstream_inputs
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_stages import PolicyDouble, counter_config

TESTS_DIR = Path(__file__).parent


@contextmanager
def hashing_embedder() -> Iterator[None]:
    """Stage C with the hashing embedder double instead of loading sentence-transformers (seconds), inside
    the block only: later tests in the process get the real embedder."""
    import ragdistill.retrieval.embed as embed
    from retrieval_doubles import HashingEmbedderDouble

    def hashing_embedder(model_name: str = "all-minilm-l6-v2", *_args: object, **_kwargs: object) -> object:
        double = HashingEmbedderDouble()
        double.model_name = model_name
        return double

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embed, "get_embedder", hashing_embedder)
        yield


def upstream(config: ExperimentConfig, settings: StageSettings) -> Inputs:
    """The digests of the folders ``settings`` reads, as the run root holds them now (what the CLI
    hands a stage)."""
    return upstream_inputs(ArtifactStore(config.run.run_root), settings)


def _rollout(config: ExperimentConfig, action: str = "wait") -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    return run_rollout(stages.ctx, stages.rollout(), {}, backend=PolicyDouble(action))


def _mine(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.mining
    return run_mining(stages.ctx, settings, upstream(config, settings), backend=PolicyDouble())


def _index(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    with hashing_embedder():
        return run_indexing(stages.ctx, stages.indexing, upstream(config, stages.indexing))


def _sft_dataset(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.dataset("sft")
    return run_dataset(stages.ctx, settings, upstream(config, settings))


def _evaluate_base(config: ExperimentConfig) -> Manifest:
    stages = PipelineSettings.from_experiment(config)
    settings = stages.evaluation("base")
    manifest = run_evaluation(stages.ctx, settings, upstream(config, settings), backend=PolicyDouble("inc"))
    assert isinstance(manifest, Manifest)
    return manifest


@dataclass(frozen=True)
class CrashCase:
    """A stage, what must exist before it, and where its run is killed."""

    stage_dir: str
    run: Callable[[ExperimentConfig], Manifest]
    upstream: tuple[Callable[[ExperimentConfig], Manifest], ...]
    kill_pattern: str
    """A regular expression over the relative path of the write that is killed."""
    kill_at: int
    """Which matching write (1-based)."""
    deterministic: bool
    """Its files are byte-identical across runs on the same inputs (rollouts are not: run id, timing)."""


CASES: dict[str, CrashCase] = {
    "rollout": CrashCase(
        "rollouts/base", _rollout, (), r"rollouts/base/parts/part-\d+\.jsonl", 3, deterministic=False
    ),
    "rollout-compaction": CrashCase(
        "rollouts/base", _rollout, (), r"rollouts/base/shard-00001\.jsonl", 1, deterministic=False
    ),
    "mining": CrashCase("hints", _mine, (_rollout,), r"hints/chunks/chunk-\d+\.json", 2, deterministic=True),
    "mining-bank": CrashCase("hints", _mine, (_rollout,), r"hints/bank\.jsonl", 1, deterministic=True),
    "indexing": CrashCase(
        "index", _index, (_rollout, _mine), r"index/type-001\.faiss", 1, deterministic=True
    ),
    "indexing-manifest": CrashCase(
        "index", _index, (_rollout, _mine), r"index/manifest\.json", 1, deterministic=True
    ),
    "datasets": CrashCase(
        "datasets/sft",
        _sft_dataset,
        (lambda config: _rollout(config, "inc"),),
        r"datasets/sft/README\.md",
        1,
        deterministic=True,
    ),
    "evaluation": CrashCase(
        "rollouts/eval-base", _evaluate_base, (), r"rollouts/eval-base/parts/part-\d+\.jsonl", 4, False
    ),
}


def crash_config(root: Path) -> ExperimentConfig:
    return counter_config(
        root,
        **{
            "env.limit": 8,
            "evaluation.limit": 8,
            "rollout.shard_size": 3,
            "rollout.batch_size": 2,
            "mining.chunk_size": 2,
        },
    )


CHILD = """
import os, re, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import ragdistill.store as store
import test_crashes

pattern, kill_at, seen = re.compile({pattern!r}), {kill_at}, [0]
real_write = store.ArtifactStore.write_bytes

def write_bytes(self, relative, data):
    if pattern.fullmatch(relative.strip("/")):
        seen[0] += 1
        if seen[0] == kill_at:
            def killed_before_the_rename(*_args):
                print("killed", relative, flush=True)
                os.killpg(os.getpgid(0), signal.SIGKILL)
            store.os.replace = killed_before_the_rename
    real_write(self, relative, data)

store.ArtifactStore.write_bytes = write_bytes
case = test_crashes.CASES[{case!r}]
case.run(test_crashes.crash_config(Path({root!r})))
print("finished without reaching the kill point", flush=True)
"""


def run_killed(case_name: str, root: Path) -> str:
    """Run a case's stage in a subprocess that SIGKILLs its process group at the case's kill point."""
    case = CASES[case_name]
    script = CHILD.format(
        tests=str(TESTS_DIR), pattern=case.kill_pattern, kill_at=case.kill_at, case=case_name, root=str(root)
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=TESTS_DIR,
        timeout=180,
        start_new_session=True,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout[-2000:] + child.stderr[-3000:]
    return child.stdout


PID = re.compile(r"\bin \d+\b")


def comparable_records(store: ArtifactStore, stage_dir: str, manifest: Manifest) -> list[dict[str, Any]]:
    """A rollout's records without what differs between any two runs: run id, timing, worker pid."""
    found = []
    for record in read_records(store, stage_dir, manifest):
        text = PID.sub("in PID", json.dumps(record, sort_keys=True))
        found.append({k: v for k, v in json.loads(text).items() if k not in ("run_id", "seconds")})
    return sorted(found, key=lambda record: record["task_id"])


def leftovers(root: Path) -> list[str]:
    """Temp files and JSONL lines that do not parse, anywhere under ``root``."""
    found = [str(path) for path in root.rglob("*.tmp")]
    for path in root.rglob("*.jsonl"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                found.append(f"{path} line {number}")
    return found


def files_on_disk(root: Path, stage_dir: str) -> set[str]:
    folder = root / stage_dir
    names = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    return {name for name in names if name not in BOOKKEEPING and not name.startswith(".lease-")}


@pytest.mark.parametrize("case_name", list(CASES))
def test_a_stage_killed_midway_ends_like_an_uninterrupted_run(tmp_path: Path, case_name: str) -> None:
    case = CASES[case_name]
    upstream = tmp_path / "upstream"
    for stage in case.upstream:
        stage(crash_config(upstream))
    uninterrupted_root, killed_root = tmp_path / "uninterrupted", tmp_path / "killed"
    for root in (uninterrupted_root, killed_root):
        if upstream.exists():
            shutil.copytree(upstream, root)
    expected = case.run(crash_config(uninterrupted_root))

    out = run_killed(case_name, killed_root)
    assert "killed" in out
    killed_store = ArtifactStore(crash_config(killed_root).run.run_root)
    assert not killed_store.exists(f"{case.stage_dir}/manifest.json")

    resumed = case.run(crash_config(killed_root))
    assert read_manifest(killed_store, case.stage_dir) == resumed
    assert (resumed.stage, resumed.identity, resumed.counts, resumed.inputs) == (
        expected.stage,
        expected.identity,
        expected.counts,
        expected.inputs,
    )
    assert set(resumed.files) == set(expected.files)
    if case.deterministic:
        assert resumed.files == expected.files
    else:
        expected_store = ArtifactStore(crash_config(uninterrupted_root).run.run_root)
        records = comparable_records(killed_store, case.stage_dir, resumed)
        assert records == comparable_records(expected_store, case.stage_dir, expected)
        assert len({record["task_id"] for record in records}) == len(records) == 8
    assert files_on_disk(killed_root / "run", case.stage_dir) == set(resumed.files)
    assert leftovers(killed_root) == []
