import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragdistill.agents.formats import get_format
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Generation
from ragdistill.messages import render_messages
from ragdistill.rollout import EngineSettings, RetrievedHints, RolloutEngine, call_segments
from ragdistill.store import ArtifactStore, RecordLog
from rollout_doubles import CountdownPoolDouble, ScriptedBackendDouble, count_down, countdown_tasks

TESTS_DIR = Path(__file__).parent


def think_then_inc(last_message: str) -> str:
    return "think: I should count down." if "Here is the task." in last_message else "inc"


def make_engine(
    tmp_path: Path, backend, pool, overrides=None, **kwargs
) -> tuple[RolloutEngine, ArtifactStore]:
    config = with_overrides(ExperimentConfig(), {"rollout.batch_size": 4, **(overrides or {})})
    store = ArtifactStore(f"file://{tmp_path}")
    settings = EngineSettings(config.agent, config.models.agent, config.rollout.batch_size)
    engine = RolloutEngine(
        settings,
        backend,
        pool,
        get_format("react", ALFWORLD_PROFILE),
        lambda _: [],
        record_log(store),
        **kwargs,
    )
    return engine, store


def record_log(store: ArtifactStore) -> RecordLog:
    return RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=5)


def records(store: ArtifactStore) -> list[EpisodeRecord]:
    return [EpisodeRecord.from_dict(item) for item in record_log(store).records()]


def finished_task_ids(store: ArtifactStore) -> set[str]:
    return record_log(store).keys()


def test_lock_step_batches_and_every_episode_is_recorded(tmp_path: Path) -> None:
    backend, pool = ScriptedBackendDouble(think_then_inc), CountdownPoolDouble()
    engine, store = make_engine(tmp_path, backend, pool)
    stats = engine.run(countdown_tasks([1, 2, 3, 1, 2, 3, 1, 2, 3, 1]))
    assert stats.finished == 10 and stats.won == 10
    assert max(backend.batch_sizes) == 4 and pool.max_live <= 4
    # First a wave of one game per worker, so the model starts while the rest of the batch loads; then
    # full batches, refilled as episodes finish.
    assert backend.batch_sizes[:2] == [pool.workers, 4]
    saved = records(store)
    assert sorted(r.task_id for r in saved) == sorted(
        t.task_id for t in countdown_tasks([1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    )
    for record in saved:
        n = int(record.task_id.rsplit("-", 1)[1])
        assert record.success and record.stop_reason == "done" and record.score == 1.0
        assert record.env_steps == n and record.model_calls == n + 1


def test_think_is_answered_ok_without_stepping_the_environment(tmp_path: Path) -> None:
    backend, pool = ScriptedBackendDouble(think_then_inc), CountdownPoolDouble()
    engine, store = make_engine(tmp_path, backend, pool)
    engine.run(countdown_tasks([2]))
    (record,) = records(store)
    first = record.steps[0]
    assert first.is_think and first.action is None and first.observation == "OK."
    assert [action for _, action in pool.stepped] == ["inc", "inc"]


def test_repeated_output_stops_after_five_and_max_calls_caps(tmp_path: Path) -> None:
    engine, store = make_engine(tmp_path, ScriptedBackendDouble(lambda _: "look"), CountdownPoolDouble())
    engine.run(countdown_tasks([3]))
    (record,) = records(store)
    assert record.stop_reason == "repeated_output" and record.model_calls == 5 and not record.success

    outputs = iter(f"go to shelf {i}" for i in range(1000))
    engine, store = make_engine(
        tmp_path / "cap",
        ScriptedBackendDouble(lambda _: next(outputs)),
        CountdownPoolDouble(),
        {"agent.max_calls": 7},
    )
    engine.run(countdown_tasks([3]))
    (record,) = records(store)
    assert record.stop_reason == "max_calls" and record.model_calls == 7


def test_unparseable_output_gets_nothing_happens_and_never_reaches_the_env(tmp_path: Path) -> None:
    replies = iter(["", "inc"])
    pool = CountdownPoolDouble()
    engine, store = make_engine(tmp_path, ScriptedBackendDouble(lambda _: next(replies)), pool)
    engine.run(countdown_tasks([1]))
    (record,) = records(store)
    assert record.steps[0].action is None and record.steps[0].parse_error
    assert record.steps[0].observation == "Nothing happens."
    assert pool.stepped == [(0, "inc")] and record.success


def test_reset_error_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    tasks = countdown_tasks([1, 1, 1])
    pool = CountdownPoolDouble(fail_reset_ids=[tasks[1].task_id])
    engine, store = make_engine(tmp_path, ScriptedBackendDouble(lambda _: "inc"), pool)
    stats = engine.run(tasks)
    assert stats.errors == 1 and stats.won == 2
    failed = next(r for r in records(store) if r.task_id == tasks[1].task_id)
    assert failed.stop_reason == "error" and "cannot load" in failed.error


def test_recorded_token_counts_equal_retokenising_the_recorded_prompts(tmp_path: Path) -> None:
    backend = ScriptedBackendDouble(think_then_inc)
    engine, store = make_engine(tmp_path, backend, CountdownPoolDouble())
    engine.run(countdown_tasks([3, 2]))
    for record in records(store):
        assert record.policy_prompt_tokens == sum(step.prompt_tokens for step in record.steps)
        for index, step in enumerate(record.steps):
            prompt, completion = backend.count_tokens(
                render_messages(call_segments(record, index)), step.output
            )
            assert (prompt, completion) == (step.prompt_tokens, step.completion_tokens)


def test_long_histories_drop_the_oldest_turns_and_record_it(tmp_path: Path) -> None:
    backend = ScriptedBackendDouble(count_down)
    overrides = {"models.agent.model.max_model_len": 300, "models.agent.sampling.max_tokens": 16}
    engine, store = make_engine(tmp_path, backend, CountdownPoolDouble(), overrides)
    engine.run(countdown_tasks([60]))
    (record,) = records(store)
    assert record.success and record.truncated_turns > 0
    for index, step in enumerate(record.steps):
        messages = render_messages(call_segments(record, index))
        assert backend.count_tokens(messages)[0] == step.prompt_tokens <= 300 - 16
        assert messages[0].role == "system" and "Here is the task." in messages[1].content


def test_hints_are_retrieved_once_per_episode_and_recorded(tmp_path: Path) -> None:
    class HintSourceDouble:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def hints_for(self, starts):
            self.calls.append(len(starts))
            return [
                RetrievedHints([f"Count {task.task_id} carefully."], [f"h-{task.task_id}"], 7)
                for task, _ in starts
            ]

    source = HintSourceDouble()
    engine, store = make_engine(
        tmp_path,
        ScriptedBackendDouble(think_then_inc),
        CountdownPoolDouble(),
        hint_source=source,
        source="teacher",
    )
    engine.run(countdown_tasks([2, 2, 2, 2, 2, 2]))
    assert sum(source.calls) == 6 and max(source.calls) <= 4
    for record in records(store):
        kinds = [segment.kind for segment in record.prompt]
        assert kinds.count("hints") == 1
        assert record.hint_ids == [f"h-{record.task_id}"] and record.retrieval_tokens == 7
        assert record.source == "teacher"


RESUMABLE_SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
from rollout_doubles import CountdownPoolDouble, ScriptedBackendDouble, count_down, countdown_tasks
from ragdistill.agents.formats import get_format
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.config import ExperimentConfig
from ragdistill.rollout import EngineSettings, RolloutEngine
from ragdistill.store import ArtifactStore, RecordLog

store = ArtifactStore({root!r})
log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=3)
done = log.keys()
tasks = [t for t in countdown_tasks([2] * 16) if t.task_id not in done]
config = ExperimentConfig()
settings = EngineSettings(config.agent, config.models.agent, batch_size=4)
engine = RolloutEngine(settings, ScriptedBackendDouble(lambda _: "inc", delay_s={delay}), CountdownPoolDouble(),
                       get_format("react", ALFWORLD_PROFILE), lambda _: [], log)
stats = engine.run(tasks)
print(json.dumps(stats.started_task_ids))
"""


def run_script(root: str, delay: float) -> subprocess.Popen:
    script = RESUMABLE_SCRIPT.format(tests=str(TESTS_DIR), root=root, delay=delay)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


def test_killed_rollout_resumes_redoing_only_the_episodes_in_flight(tmp_path: Path) -> None:
    root = f"file://{tmp_path}"
    store = ArtifactStore(root)
    process = run_script(root, delay=0.15)
    deadline = time.monotonic() + 60
    while len(finished_task_ids(store)) < 6:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = finished_task_ids(store)
    assert 6 <= len(finished_before) < 16

    rerun = run_script(root, delay=0.0)
    out, _ = rerun.communicate(timeout=60)
    assert rerun.returncode == 0
    started_again = set(json.loads(out.strip().splitlines()[-1]))
    all_ids = [item["task_id"] for item in record_log(store).records()]
    assert len(all_ids) == 16 and len(set(all_ids)) == 16
    assert started_again == {t.task_id for t in countdown_tasks([2] * 16)} - finished_before
    assert not started_again & finished_before


@pytest.mark.parametrize("batch_size", [1, 16])
def test_memory_holds_only_active_episodes(tmp_path: Path, batch_size: int) -> None:
    pool = CountdownPoolDouble()
    engine, store = make_engine(
        tmp_path, ScriptedBackendDouble(lambda _: "inc"), pool, {"rollout.batch_size": batch_size}
    )
    engine.run(countdown_tasks([1] * 200))
    assert pool.max_live == batch_size
    assert len(finished_task_ids(store)) == 200


class OneFailingRequestDouble(ScriptedBackendDouble):
    """Fails the requests whose task text contains ``poison`` the way a backend reports one request it
    could not serve (a context-length error from a server), and answers the rest with the policy."""

    def __init__(self, policy, poison: str, kind: str = "request") -> None:
        super().__init__(policy)
        self.poison, self.kind = poison, kind

    def generate(self, requests):
        answers = super().generate(requests)
        return [
            Generation("", "error", 0, 0, error=f"request {i}: context length exceeded", error_kind=self.kind)
            if any(self.poison in message.content for message in request.messages)
            else answer
            for i, (request, answer) in enumerate(zip(requests, answers, strict=True))
        ]


@pytest.mark.parametrize("kind", ["request", "transient"])
def test_a_request_the_backend_cannot_serve_ends_only_its_episode(tmp_path: Path, kind: str) -> None:
    tasks = countdown_tasks([2, 2, 2, 2])
    backend = OneFailingRequestDouble(lambda _: "inc", poison="POISON", kind=kind)
    pool = CountdownPoolDouble()
    pool.observation_suffix = {tasks[1].task_id: " POISON"}
    engine, store = make_engine(tmp_path, backend, pool)
    stats = engine.run(tasks)
    assert stats.finished == 4 and stats.won == 3 and stats.errors == 1
    failed = next(r for r in records(store) if r.stop_reason == "error")
    assert failed.task_id == tasks[1].task_id and failed.error_kind == kind
    assert "context length" in failed.error and failed.is_transient_failure == (kind == "transient")


def test_a_prompt_over_the_context_budget_ends_only_its_episode(tmp_path: Path) -> None:
    tasks = countdown_tasks([2, 2, 2])
    pool = CountdownPoolDouble()
    pool.observation_suffix = {tasks[0].task_id: " word" * 400}
    overrides = {"models.agent.model.max_model_len": 300, "models.agent.sampling.max_tokens": 16}
    engine, store = make_engine(tmp_path, ScriptedBackendDouble(lambda _: "inc"), pool, overrides)
    stats = engine.run(tasks)
    assert stats.finished == 3 and stats.won == 2
    overflowed = next(r for r in records(store) if not r.success)
    assert overflowed.task_id == tasks[0].task_id and overflowed.stop_reason == "context_overflow"
    assert overflowed.error_kind == "request" and "budget" in overflowed.error


def test_rebuilt_calls_use_the_stored_history_text_not_a_new_parse(tmp_path: Path) -> None:
    """A record rebuilds the same messages after the parser changes: the history text is stored."""
    engine, store = make_engine(tmp_path, ScriptedBackendDouble(lambda _: "> inc  "), CountdownPoolDouble())
    engine.run(countdown_tasks([2]))
    (record,) = records(store)
    before = [render_messages(call_segments(record, i)) for i in range(len(record.steps))]
    assert record.steps[0].history_text == "inc" and record.steps[0].output == "> inc  "

    import ragdistill.agents.formats as formats

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            formats.ReActFormat,
            "parse",
            lambda self, output: formats.ParsedOutput(action="changed", text="a different canonical form"),
        )
        after = [render_messages(call_segments(record, i)) for i in range(len(record.steps))]
    assert after == before
    assert before[1][-2].content == "inc"
