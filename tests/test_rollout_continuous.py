"""The continuous rollout engine (``rollout.schedule: continuous``) against the lock-step engine.

Under a deterministic model double both engines write the same records on the same tasks (every field
but the timing), through every path an episode can take: won, think, invalid output, repeated output,
call cap, dropped history, hints, a game that will not load, a request the backend cannot serve, a
prompt over the context. Then what only the continuous engine does: episodes that do not wait for each
other's environment steps, places refilled at once, a backend that raises, and resume after a kill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.agents.formats import get_format
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.base import EnvError, StepResult, TaskInfo
from ragdistill.inference.base import ChatMessage, Generation, GenerationRequest
from ragdistill.inference.streaming import PendingBatchStream
from ragdistill.rollout import EngineSettings, RetrievedHints, RolloutEngine
from ragdistill.rollout.continuous import ContinuousRolloutEngine
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, RecordLog, read_records
from rollout_doubles import CountdownPoolDouble, ScriptedBackendDouble, count_down, countdown_tasks
from test_stages import PolicyDouble, counter_config

TESTS_DIR = Path(__file__).parent
TIMING_FIELDS = {"seconds"}


class EpisodeScriptDouble(ScriptedBackendDouble):
    """A deterministic model whose answer depends on the episode's marker (in its first observation) and
    on the episode's last observation; fails the requests of a ``POISON`` episode as a server would."""

    name = "episode-script-double"

    def __init__(self) -> None:
        super().__init__(count_down)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.batch_sizes.append(len(requests))
        return [self._answer(index, request) for index, request in enumerate(requests)]

    def _answer(self, index: int, request: GenerationRequest) -> Generation:
        task_text = next(m.content for m in request.messages if "Here is the task." in m.content)
        last = request.messages[-1].content
        if "POISON" in task_text:
            return Generation.failure("request", "the prompt exceeds the context length")
        if "MARK-loop" in task_text:
            text = "look"
        elif "MARK-think" in task_text and "Here is the task." in last:
            text = "think: I should count down."
        elif "MARK-babble" in task_text and "Counter at 2." in last:
            text = ""
        elif "MARK-wander" in task_text:
            text = f"go to shelf {len(request.messages)}"
        else:
            text = count_down(last)
        prompt, completion = self.count_tokens(request.messages, text)
        return Generation(text, "stop", prompt, completion)


class FailingStepPoolDouble(CountdownPoolDouble):
    """The countdown game, whose worker crashes on the second step of a ``MARK-crash`` episode."""

    def __init__(self, fail_reset_ids: Sequence[str] = ()) -> None:
        super().__init__(fail_reset_ids)
        self.crash_slots: set[int] = set()
        self.steps_by_slot: dict[int, int] = {}

    def reset_many(self, tasks: Sequence[TaskInfo]) -> list[Any]:
        results = super().reset_many(tasks)
        for task, outcome in zip(tasks, results, strict=True):
            if not isinstance(outcome, EnvError) and "MARK-crash" in self.observation_suffix.get(
                task.task_id, ""
            ):
                self.crash_slots.add(outcome[0])
        return results

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]:
        results = super().step_many(actions)
        for position, (slot, _) in enumerate(actions):
            self.steps_by_slot[slot] = self.steps_by_slot.get(slot, 0) + 1
            if slot in self.crash_slots and self.steps_by_slot[slot] == 2:
                results[position] = EnvError("worker 0 failed: it exited; lost the episode", transient=True)
        return results


class HintSourceDouble:
    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]:
        return [
            RetrievedHints([f"Count {task.task_id} down."], [f"h-{task.task_id}"], 5) for task, _ in starts
        ]


MARKS = {
    2: " MARK-think",
    4: " MARK-loop",
    5: " MARK-babble",
    7: " POISON",
    8: " MARK-wander",
    9: " MARK-long" + " word" * 250,
    10: " MARK-crash",
    12: " MARK-overflow" + " word" * 400,
}
COUNTS = [1, 2, 3, 6, 2, 4, 1, 2, 3, 40, 3, 1, 2, 5]


def play(tmp_path: Path, engine_class: type[RolloutEngine], batch_size: int) -> list[dict[str, Any]]:
    tasks = countdown_tasks(COUNTS)
    pool = FailingStepPoolDouble(fail_reset_ids=[tasks[3].task_id])
    pool.observation_suffix = {tasks[index].task_id: mark for index, mark in MARKS.items()}
    config = with_overrides(
        ExperimentConfig(),
        {
            "agent.max_calls": 9,
            "models.agent.model.max_model_len": 420,
            "models.agent.sampling.max_tokens": 16,
        },
    )
    store = ArtifactStore(f"file://{tmp_path}")
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=50)
    engine = engine_class(
        EngineSettings(config.agent, config.models.agent, batch_size, prompt_version="v"),
        EpisodeScriptDouble(),
        pool,
        get_format("react", ALFWORLD_PROFILE),
        lambda _: [],
        log,
        source="teacher",
        hint_source=HintSourceDouble(),
        run_id="same-run",
    )
    stats = engine.run(tasks)
    assert stats.finished == len(tasks)
    return [{k: v for k, v in record.items() if k not in TIMING_FIELDS} for record in log.records()]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_continuous_and_lockstep_write_the_same_records_under_a_deterministic_model(
    tmp_path: Path, batch_size: int
) -> None:
    lockstep = play(tmp_path / "lockstep", RolloutEngine, batch_size)
    continuous = play(tmp_path / "continuous", ContinuousRolloutEngine, batch_size)
    by_task = {record["task_id"]: record for record in lockstep}
    assert sorted(by_task) == sorted(record["task_id"] for record in continuous)
    for record in continuous:
        assert record == by_task[record["task_id"]], record["task_id"]
    stops = {record["stop_reason"] for record in continuous}
    assert stops == {"done", "max_calls", "repeated_output", "context_overflow", "error"}
    assert any(record["truncated_turns"] for record in continuous), "some history was dropped"
    assert {record["error_kind"] for record in continuous} == {None, "request", "transient"}


def without_pids(record: dict[str, Any]) -> Any:
    """The record with the worker pid the counter game names in its first observation taken out."""
    return json.loads(re.sub(r" in \d+", " in <pid>", json.dumps(record)))


def test_the_stage_writes_the_same_records_on_either_schedule(tmp_path: Path) -> None:
    """Through the real stage: worker processes, one pool per worker for continuous, shards on disk."""
    played = {}
    for schedule in ("lockstep", "continuous"):
        config = counter_config(tmp_path / schedule, **{"rollout.schedule": schedule, "env.limit": 8})
        settings = PipelineSettings.from_experiment(config)
        manifest = run_rollout(settings.ctx, settings.rollout(), {}, backend=PolicyDouble("inc"))
        assert manifest.counts == {"episodes": 8, "won": 8, "errors": 0, "transient_errors": 0}
        store = ArtifactStore(config.run.run_root)
        records = list(read_records(store, "rollouts/base"))
        assert [record["task_id"] for record in records] == store.read_json("rollouts/base/tasks.json")[
            "task_ids"
        ]
        played[schedule] = {
            record["task_id"]: without_pids(
                {k: v for k, v in record.items() if k not in {"seconds", "run_id"}}
            )
            for record in records
        }
        played[f"{schedule}-identity"] = manifest.identity
    assert played["lockstep"] == played["continuous"]
    assert played["lockstep-identity"] == played["continuous-identity"], "the schedule is no identity"


class SlowStepPoolDouble(CountdownPoolDouble):
    """The countdown game whose steps take ``step_s`` each."""

    def __init__(self, step_s: float) -> None:
        super().__init__()
        self.step_s = step_s

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]:
        time.sleep(self.step_s)
        return super().step_many(actions)


def test_episodes_do_not_wait_for_each_others_environment_steps(tmp_path: Path) -> None:
    """A slow game in one pool holds up only its own episode: the fast one plays all its calls meanwhile."""
    slow, fast = countdown_tasks([2, 12])
    store = ArtifactStore(f"file://{tmp_path}")
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=50)
    config = ExperimentConfig()
    engine = ContinuousRolloutEngine(
        EngineSettings(config.agent, config.models.agent, batch_size=2),
        ScriptedBackendDouble(count_down),
        [SlowStepPoolDouble(step_s=1.0), SlowStepPoolDouble(step_s=0.0)],
        get_format("react", ALFWORLD_PROFILE),
        lambda _: [],
        log,
    )
    engine.run([slow, fast])
    finished = [record["task_id"] for record in log.records()]
    assert finished == [fast.task_id, slow.task_id]
    seconds = {record["task_id"]: record["seconds"] for record in log.records()}
    assert seconds[fast.task_id] < 1.0 < seconds[slow.task_id]


def test_a_finished_episode_is_replaced_at_once_and_never_more_than_the_batch_are_in_flight(
    tmp_path: Path,
) -> None:
    """One long episode beside many short ones: the short ones pass through its place while it plays."""
    backend, pool = ScriptedBackendDouble(count_down, delay_s=0.002), CountdownPoolDouble()
    store = ArtifactStore(f"file://{tmp_path}")
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=50)
    config = with_overrides(ExperimentConfig(), {"agent.max_calls": 60})
    tasks = countdown_tasks([40] + [1] * 12)
    engine = ContinuousRolloutEngine(
        EngineSettings(config.agent, config.models.agent, batch_size=3),
        backend,
        pool,
        get_format("react", ALFWORLD_PROFILE),
        lambda _: [],
        log,
    )
    stats = engine.run(tasks)
    assert stats.finished == 13 and stats.won == 13
    assert pool.max_live <= 3 and max(backend.batch_sizes) <= 3
    assert [record["task_id"] for record in log.records()][-1] == tasks[0].task_id


class RaisingBackendDouble(ScriptedBackendDouble):
    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if len(self.batch_sizes) >= 3:
            raise RuntimeError("the engine died")
        return super().generate(requests)


def test_a_backend_that_raises_ends_the_run_with_its_error_and_stops_every_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    store = ArtifactStore(f"file://{tmp_path}")
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=50)
    config = ExperimentConfig()
    engine = ContinuousRolloutEngine(
        EngineSettings(config.agent, config.models.agent, batch_size=4),
        RaisingBackendDouble(count_down),
        CountdownPoolDouble(),
        get_format("react", ALFWORLD_PROFILE),
        lambda _: [],
        log,
    )
    with pytest.raises(RuntimeError, match="the engine died"):
        engine.run(countdown_tasks([5, 5, 5, 5]))
    assert threading.active_count() == before


def test_a_pending_batch_stream_batches_what_is_pending_and_passes_a_failure_to_every_request() -> None:
    class GateDouble(ScriptedBackendDouble):
        def __init__(self) -> None:
            super().__init__(lambda _: "inc")
            self.gate = threading.Event()

        def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
            self.gate.wait(5)
            if any("boom" in r.messages[-1].content for r in requests):
                raise RuntimeError("boom")
            return super().generate(requests)

    backend = GateDouble()
    answers: list[Any] = []
    done = threading.Event()

    def collect(answer: Any) -> None:
        answers.append(answer)
        if len(answers) == 5:
            done.set()

    request = GenerationRequest([ChatMessage("user", "go")])
    with PendingBatchStream(backend) as stream:
        stream.submit(request, collect)
        time.sleep(0.1)  # the first call is running: the next three wait for it and go together
        for _ in range(3):
            stream.submit(request, collect)
        backend.gate.set()
        while len(answers) < 4:
            time.sleep(0.01)
        stream.submit(GenerationRequest([ChatMessage("user", "boom")]), collect)
        assert done.wait(5)
        stream.submit(request, collect)
    assert backend.batch_sizes == [1, 3]
    assert all(isinstance(answer, Generation) for answer in answers[:4])
    assert isinstance(answers[4], RuntimeError) and answers[5] is answers[4]


RESUMABLE_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
from rollout_doubles import CountdownPoolDouble, ScriptedBackendDouble, countdown_tasks
from ragdistill.agents.formats import get_format
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.config import ExperimentConfig
from ragdistill.rollout import EngineSettings
from ragdistill.rollout.continuous import ContinuousRolloutEngine
from ragdistill.store import ArtifactStore, RecordLog

store = ArtifactStore({root!r})
log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=3)
done = log.keys()
tasks = [t for t in countdown_tasks([2] * 16) if t.task_id not in done]
config = ExperimentConfig()
settings = EngineSettings(config.agent, config.models.agent, batch_size=4)
engine = ContinuousRolloutEngine(settings, ScriptedBackendDouble(lambda _: "inc", delay_s={delay}),
                                 CountdownPoolDouble(), get_format("react", ALFWORLD_PROFILE), lambda _: [], log)
stats = engine.run(tasks)
print(json.dumps(stats.started_task_ids))
"""


def test_a_killed_continuous_rollout_resumes_redoing_only_the_episodes_in_flight(tmp_path: Path) -> None:
    root = f"file://{tmp_path}"
    store = ArtifactStore(root)
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=3)

    def run_script(delay: float) -> subprocess.Popen[str]:
        script = RESUMABLE_SCRIPT.format(tests=str(TESTS_DIR), root=root, delay=delay)
        return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)

    process = run_script(0.05)
    deadline = time.monotonic() + 60
    while len(log.keys()) < 6:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = log.keys()
    assert 6 <= len(finished_before) < 16

    rerun = run_script(0.0)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    started_again = set(json.loads(out.strip().splitlines()[-1]))
    all_ids = [item["task_id"] for item in log.records()]
    assert len(all_ids) == 16 and len(set(all_ids)) == 16
    assert started_again == {t.task_id for t in countdown_tasks([2] * 16)} - finished_before
