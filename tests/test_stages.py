"""Stage functions on real worker pools and a real artifact store: resume, identity, leases, faults.

The environment is the ``counter-double`` (tests/env_doubles.py, played in real worker processes) and
the models are named test doubles, so the stage mechanics are what is under test; the real ALFWorld /
vLLM / Prefect runs live in test_pipeline_flow.py and test_rollout_real.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.layout import HINTS_DIR
from ragdistill.leases import LeaseHeldError, StageLease
from ragdistill.stages.lifecycle import StageError, StageIdentity, current_manifest, upstream_inputs
from ragdistill.stages.mining import CHUNKS_DIR, run_mining
from ragdistill.stages.rollout import rollout_identity, run_rollout
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records

TESTS_DIR = Path(__file__).parent
HINT = '{"hints": [{"text": "Open {container} before looking for {object} inside it."}]}'


class PolicyDouble:
    """Plays ``action`` for the agent (``inc`` wins the counter game in 3 steps, ``wait`` never wins);
    answers hint-extraction requests (they carry a JSON schema) with one fixed hint. Fails every
    request whose prompt contains ``poison``. Token counts are word counts."""

    name = "policy-double"

    def __init__(self, action: str = "wait", poison: str | None = None, delay_s: float = 0.0) -> None:
        self.action, self.poison, self.delay_s = action, poison, delay_s
        self.requests: list[GenerationRequest] = []

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) + 1 for m in messages), len(completion.split())

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.requests.extend(requests)
        time.sleep(self.delay_s)
        out = []
        for index, request in enumerate(requests):
            if self.poison and any(self.poison in m.content for m in request.messages):
                out.append(
                    Generation("", "error", 0, 0, error=f"request {index}: too long", error_kind="request")
                )
                continue
            text = HINT if request.json_schema is not None else self.action
            prompt, completion = self.count_tokens(request.messages, text)
            out.append(Generation(text, "stop", prompt, completion))
        return out

    def close(self) -> None:
        pass


def counter_config(tmp_path: Path, **overrides: object) -> ExperimentConfig:
    settings: dict[str, object] = {
        "run.run_root": f"file://{tmp_path}/run",
        "env.name": "counter-double",
        "env.limit": 6,
        "env.workers": 2,
        "agent.fewshot_source": "none",
        "agent.max_calls": 4,
        "mining.chunk_size": 2,
        "rollout.batch_size": 4,
    }
    return with_overrides(ExperimentConfig(), {**settings, **overrides})


def rollout(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage A of ``config`` with ``backend`` as the agent."""
    stages = PipelineSettings.from_experiment(config)
    return run_rollout(stages.ctx, stages.rollout(), {}, backend=backend)


def mine(config: ExperimentConfig, backend: Backend) -> Manifest:
    """Stage B of ``config`` on its base rollout as the run root holds it now, ``backend`` extracting."""
    stages = PipelineSettings.from_experiment(config)
    settings = stages.mining
    inputs = upstream_inputs(ArtifactStore(stages.ctx.run_root), settings)
    return run_mining(stages.ctx, settings, inputs, backend=backend)


def episodes(config: ExperimentConfig, stage: str = "base") -> list[EpisodeRecord]:
    store = ArtifactStore(config.run.run_root)
    manifest = read_manifest(store, f"rollouts/{stage}")
    return [EpisodeRecord.from_dict(item) for item in read_records(store, f"rollouts/{stage}", manifest)]


def test_a_rollout_is_current_after_it_finishes_and_a_larger_limit_plays_only_the_new_tasks(
    tmp_path: Path,
) -> None:
    config = counter_config(tmp_path, **{"env.limit": 4})
    backend = PolicyDouble("inc")
    first = rollout(config, backend)
    assert first.counts["episodes"] == 4 and first.counts["won"] == 4
    calls = len(backend.requests)
    assert rollout(config, backend).identity == first.identity
    assert len(backend.requests) == calls, "a finished stage with the same identity plays nothing"

    bigger = with_overrides(config, {"env.limit": 6})
    second = rollout(bigger, backend)
    played = {record.task_id for record in episodes(bigger)}
    assert second.counts["episodes"] == 6 and played == {f"t{i}" for i in range(6)}
    stats = ArtifactStore(config.run.run_root).read_json("rollouts/base/run-stats.json")
    assert stats["played_now"] == 2 and stats["skipped_finished"] == 4


def test_a_setting_the_rollout_reads_starts_it_again_and_one_it_does_not_read_does_not(
    tmp_path: Path,
) -> None:
    config = counter_config(tmp_path)
    backend = PolicyDouble("inc")
    first = rollout(config, backend)
    calls = len(backend.requests)
    unrelated = with_overrides(
        config,
        {"training.learning_rate": 1e-4, "env.workers": 1, "rollout.batch_size": 2, "run.name": "renamed",
         "mining.max_hints_per_failure": 2, "retrieval.k": 5, "rollout.shard_size": 3},
    )  # fmt: skip
    assert rollout(unrelated, backend).identity == first.identity
    assert len(backend.requests) == calls

    changed = with_overrides(config, {"agent.max_calls": 3})
    again = rollout(changed, PolicyDouble("wait"))
    assert again.identity != first.identity
    assert all(not record.success and record.model_calls == 3 for record in episodes(changed))


def test_a_deleted_or_altered_shard_makes_the_stage_run_again(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    store = ArtifactStore(config.run.run_root)
    first = rollout(config, PolicyDouble("inc"))
    (shard,) = [name for name in first.files if name.startswith("shard-")]
    store.write_text(f"rollouts/base/{shard}", store.read_text(f"rollouts/base/{shard}").replace("t1", "tX"))
    backend = PolicyDouble("inc")
    rebuilt = rollout(config, backend)
    assert backend.requests, "an altered output is not current"
    assert {record.task_id for record in episodes(config)} == {f"t{i}" for i in range(6)}
    assert rebuilt.counts["episodes"] == 6


def test_a_request_that_fails_ends_its_episode_and_the_stage_finishes(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"rollout.max_error_share": 0.5})
    manifest = rollout(config, PolicyDouble("inc", poison="start t2 "))
    assert manifest.counts == {"episodes": 6, "won": 5, "errors": 1, "transient_errors": 0}
    (failed,) = [record for record in episodes(config) if not record.success]
    assert failed.task_id == "t2" and failed.error_kind == "request" and "too long" in failed.error


def test_too_many_errors_fail_the_stage_naming_the_first_causes_and_keep_the_records(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"rollout.max_error_share": 0.1})
    with pytest.raises(
        StageError, match=r"1 of 6 episodes .* ended in an error.*\n  t2: request \d+: too long"
    ):
        rollout(config, PolicyDouble("inc", poison="start t2 "))
    store = ArtifactStore(config.run.run_root)
    assert not store.exists("rollouts/base/manifest.json")
    assert len(list(read_records(store, "rollouts/base"))) == 6, "finished episodes are kept"


def test_episodes_ended_by_an_infrastructure_fault_are_played_again_on_resume(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"rollout.transient_retries": 0, "rollout.max_error_share": 0.5})

    class FlakyDouble(PolicyDouble):
        def __init__(self) -> None:
            super().__init__("inc")
            self.failed = False

        def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
            out = super().generate(requests)
            if not self.failed:
                self.failed = True
                out[0] = Generation(
                    "", "error", 0, 0, error="request 0: connection reset", error_kind="transient"
                )
            return out

    first = rollout(config, FlakyDouble())
    assert first.counts["transient_errors"] == 1
    store = ArtifactStore(config.run.run_root)
    assert current_manifest(store, "rollouts/base", _identity(config)) is None, "holes are never current"
    backend = PolicyDouble("inc")
    second = rollout(config, backend)
    assert second.counts == {"episodes": 6, "won": 6, "errors": 0, "transient_errors": 0}
    assert store.read_json("rollouts/base/run-stats.json")["played_now"] == 1


def _identity(config: ExperimentConfig) -> StageIdentity:
    stages = PipelineSettings.from_experiment(config)
    return rollout_identity(stages.ctx, stages.rollout(), {})


def test_a_second_run_on_the_same_folder_stops_with_the_holders_name_or_waits(tmp_path: Path) -> None:
    config = counter_config(tmp_path)
    store = ArtifactStore(config.run.run_root)
    held = StageLease(store, "rollouts/base", label="other-run: rollouts/base")
    refused = pytest.raises(LeaseHeldError, match=r"being written by 'other-run: rollouts/base' \(pid")
    with held, refused:
        rollout(config, PolicyDouble("inc"))
    assert not store.exists("rollouts/base/manifest.json")

    holder = StageLease(store, "rollouts/base", label="slow run")
    holder.acquire()
    waiting = with_overrides(config, {"run.lease_wait_s": 30})
    import threading

    threading.Timer(1.0, holder.release).start()
    started = time.monotonic()
    manifest = rollout(waiting, PolicyDouble("inc"))
    assert time.monotonic() - started >= 0.9 and manifest.counts["episodes"] == 6


MINING_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import env_doubles
from test_stages import PolicyDouble, counter_config, mine
from pathlib import Path

class SlowExtractor(PolicyDouble):
    def generate(self, requests):
        answers = super().generate(requests)
        print("answered", len(requests), flush=True)
        time.sleep({delay})
        return answers

config = counter_config(Path({tmp!r}), **{{"env.limit": 8}})
backend = SlowExtractor("wait")
mine(config, backend)
print("sent", len(backend.requests), flush=True)
"""


def _mine_in_subprocess(tmp_path: Path, delay: float) -> subprocess.Popen[str]:
    script = MINING_SCRIPT.format(tests=str(TESTS_DIR), tmp=str(tmp_path), delay=delay)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=TESTS_DIR)


def test_a_kill_during_mining_loses_at_most_one_chunk(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"env.limit": 8})
    rollout(config, PolicyDouble("wait"))  # 8 failures
    store = ArtifactStore(config.run.run_root)

    process = _mine_in_subprocess(tmp_path, delay=0.6)
    deadline = time.monotonic() + 60
    while len(store.list(CHUNKS_DIR)) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(store.list(CHUNKS_DIR))
    assert committed in (2, 3) and not store.exists(f"{HINTS_DIR}/manifest.json")

    rerun = _mine_in_subprocess(tmp_path, delay=0.0)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    sent_again = int(out.strip().splitlines()[-1].split()[1])
    assert sent_again == 8 - 2 * committed, "only failures without a committed answer are sent again"
    manifest = read_manifest(store, HINTS_DIR)
    assert manifest.counts["failures"] == 8 and manifest.counts["hints_accepted"] == 8
    ledger = store.read_json(f"{HINTS_DIR}/mined-episodes.json")
    assert len(ledger) == 8
    assert manifest.counts["bank_size"] == 2, "one hint per task type, mentioned by four failures each"


def test_mining_again_after_more_rollouts_sends_only_the_new_failures(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"env.limit": 4})
    rollout(config, PolicyDouble("wait"))
    first = PolicyDouble()
    mine(config, first)
    assert len(first.requests) == 4
    bigger = with_overrides(config, {"env.limit": 6})
    rollout(bigger, PolicyDouble("wait"))
    second = PolicyDouble()
    manifest = mine(bigger, second)
    assert len(second.requests) == 2 and manifest.counts["failures"] == 6
    third = PolicyDouble()
    assert mine(bigger, third).identity == manifest.identity and not third.requests


def test_an_extractor_request_lost_to_a_fault_is_not_ledgered_and_is_sent_again(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"env.limit": 2})
    rollout(config, PolicyDouble("wait"))

    class LosesTheFirst(PolicyDouble):
        def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
            out = super().generate(requests)
            out[0] = Generation("", "error", 0, 0, error="request 0: timed out", error_kind="transient")
            return out

    manifest = mine(config, LosesTheFirst())
    assert manifest.counts["failures_not_answered"] == 1
    store = ArtifactStore(config.run.run_root)
    assert len(store.read_json(f"{HINTS_DIR}/mined-episodes.json")) == 1


def test_records_carry_schema_and_prompt_versions_and_the_stored_history(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"env.limit": 1})
    rollout(config, PolicyDouble("> inc"))
    (record,) = episodes(config)
    assert record.schema_version == 2 and len(record.prompt_version) == 16
    assert [step.history_text for step in record.steps] == ["inc", "inc", "inc"]
    data = json.loads(ArtifactStore(config.run.run_root).read_text("rollouts/base/shard-00000.jsonl"))
    assert data["steps"][0]["output"] == "> inc" and data["steps"][0]["history_text"] == "inc"


def test_every_rollout_stage_pins_its_task_list_and_environment_version(tmp_path: Path) -> None:
    config = counter_config(tmp_path, **{"env.limit": 3})
    manifest = rollout(config, PolicyDouble("inc"))
    assert "tasks.json" in manifest.files
    pinned = ArtifactStore(config.run.run_root).read_json("rollouts/base/tasks.json")
    assert pinned == {
        "env": "counter-double",
        "split": "train",
        "environment_version": {},
        "task_ids": ["t0", "t1", "t2"],
    }


def test_the_alfworld_version_names_its_engine_and_installed_games() -> None:
    from alfworld_data import alfworld_data_dir
    from ragdistill.environments.registry import environment_version

    version = environment_version("alfworld", alfworld_data_dir())
    assert set(version) == {"alfworld", "textworld", "games"} and len(version["games"]) == 64
