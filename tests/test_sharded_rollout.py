"""Rollout shards (``rollout.shards``): the same episodes as an unsharded rollout, in threads and on a
local Ray instance, and resume per shard after a shard failed or its driver died.

The environment is the ``counter-double`` (tests/env_doubles.py) in real worker processes; the model is
a named test double. Ray workers import this module to unpickle the double, which registers the
environment there too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from conftest import installed, require
from ragdistill.config import ExperimentConfig
from ragdistill.config.stages import PipelineSettings
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.rollout import ShardJob, plan_rollout, play_shard, split_round_robin, use_shard_runner
from ragdistill.stages.lifecycle import role_config
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_stages import counter_config as stage_config

TESTS_DIR = Path(__file__).parent


class InstructedPolicyDouble:
    """Answers ``inc`` (the counter game is won in 3 steps) and remembers which game each request was
    for; raises on a request for a game named in ``crash_on`` (a shard dying mid-way)."""

    name = "instructed-policy-double"

    def __init__(self, crash_on: frozenset[str] = frozenset(), trace_dir: Path | None = None) -> None:
        self.crash_on, self.trace_dir = crash_on, trace_dir
        self.games: list[str] = []

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) + 1 for m in messages), len(completion.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if self.trace_dir is not None:
            (self.trace_dir / str(os.getpid())).touch()
        out = []
        for request in requests:
            text = " ".join(m.content for m in request.messages)
            game = next(word for word in text.split() if word.startswith("t") and word[1:].isdigit())
            if game in self.crash_on:
                raise RuntimeError(f"shard lost its engine while playing {game}")
            self.games.append(game)
            prompt, completion = self.count_tokens(request.messages, "inc")
            out.append(Generation("inc", "stop", prompt, completion))
        return out

    def close(self) -> None:
        pass


def counter_config(root: Path, **overrides: object) -> ExperimentConfig:
    """test_stages' counter-double config, with one environment worker per shard's pool."""
    return stage_config(root, **{"env.workers": 1, **overrides})


def rollout(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage A of ``config`` with ``backend`` as the agent."""
    settings = PipelineSettings.from_experiment(config)
    return run_rollout(settings.ctx, settings.rollout(), backend=backend)


def played(config: ExperimentConfig) -> tuple[Manifest, list[str]]:
    store = ArtifactStore(config.run.run_root)
    manifest = read_manifest(store, "rollouts/base")
    return manifest, sorted(record["task_id"] for record in read_records(store, "rollouts/base", manifest))


def test_a_task_keeps_its_shard_when_the_list_grows() -> None:
    assert split_round_robin(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]
    small, large = split_round_robin(list(range(6)), 3), split_round_robin(list(range(10)), 3)
    assert all(set(part) <= set(bigger) for part, bigger in zip(small, large, strict=True))


def test_in_process_shards_play_the_same_episodes_as_one_rollout(tmp_path: Path) -> None:
    single = counter_config(tmp_path / "single")
    sharded = counter_config(tmp_path / "sharded", **{"rollout.shards": 3})
    first = rollout(single, InstructedPolicyDouble())
    backend = InstructedPolicyDouble()
    second = rollout(sharded, backend)
    assert second.identity == first.identity, "the shard count is not part of the identity"
    assert played(sharded)[1] == played(single)[1] == [f"t{i}" for i in range(6)]
    assert second.counts == first.counts and second.counts["won"] == 6
    assert all(name.startswith("shard-") or name == "tasks.json" for name in second.files)
    assert not ArtifactStore(sharded.run.run_root).list("rollouts/base/shards")
    assert sorted(set(backend.games)) == [f"t{i}" for i in range(6)]


def test_a_failed_shard_resumes_alone_and_a_dead_drivers_shard_is_merged(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"rollout.shards": 2})
    with pytest.raises(RuntimeError, match="lost its engine"):
        rollout(config, InstructedPolicyDouble(crash_on=frozenset({"t5"})))
    # Shard 0 (t0, t2, t4) finished; shard 1 (t1, t3, t5) played one lock-step batch that crashed.
    # A driver that died after its shard 1 played t1 leaves that shard's folder behind:
    settings = PipelineSettings.from_experiment(config)
    plan = plan_rollout(
        settings.ctx, settings.rollout(), role=role_config(settings.ctx, settings.rollout().role)
    )
    left_behind = InstructedPolicyDouble()
    play_shard(ShardJob(settings.ctx, plan, 1, 2, [plan.tasks[1]], backend=left_behind))
    assert ArtifactStore(config.run.run_root).list("rollouts/base/shards/001")

    backend = InstructedPolicyDouble()
    manifest = rollout(config, backend)
    assert sorted(set(backend.games)) == ["t3", "t5"], "only the missing episodes are played"
    assert played(config)[1] == [f"t{i}" for i in range(6)] and manifest.counts["won"] == 6
    stats = ArtifactStore(config.run.run_root).read_json("rollouts/base/run-stats.json")
    assert stats["played_now"] == 2 and stats["skipped_finished"] == 4


@pytest.mark.slow
def test_shards_on_a_local_ray_instance_equal_the_unsharded_rollout(
    tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(installed("ray"), "Ray is not installed (`make setup` installs the ray extra)")
    import ray

    from ragdistill.tasks.shards import prefect_shard_runner

    source = str(Path(__import__("ragdistill").__file__).parents[1])
    paths = [source, str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
    single = counter_config(tmp_path / "single")
    sharded = counter_config(tmp_path / "ray", **{"rollout.shards": 2, "orchestration.task_runner": "ray"})
    first = rollout(single, InstructedPolicyDouble())
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with use_shard_runner(prefect_shard_runner(sharded.orchestration)):
            second = rollout(sharded, InstructedPolicyDouble(trace_dir=tmp_path))
    finally:
        ray.shutdown()
    print(f"sharded rollout on local Ray: {time.perf_counter() - started:.1f}s")
    players = {int(path.name) for path in tmp_path.iterdir() if path.name.isdigit()}
    assert players and os.getpid() not in players, "the shards ran in Ray workers"
    assert played(sharded)[1] == played(single)[1]
    assert second.counts == first.counts and second.identity == first.identity


@pytest.mark.slow
def test_shards_as_prefect_tasks_in_process_equal_the_unsharded_rollout(
    tmp_path: Path, prefect_server: None
) -> None:
    from ragdistill.tasks.shards import prefect_shard_runner

    single = counter_config(tmp_path / "single")
    sharded = counter_config(tmp_path / "threads", **{"rollout.shards": 2})
    first = rollout(single, InstructedPolicyDouble())
    with use_shard_runner(prefect_shard_runner(sharded.orchestration)):
        second = rollout(sharded, InstructedPolicyDouble(trace_dir=tmp_path))
    assert {int(path.name) for path in tmp_path.iterdir() if path.name.isdigit()} == {os.getpid()}
    assert played(sharded)[1] == played(single)[1] and second.counts == first.counts
