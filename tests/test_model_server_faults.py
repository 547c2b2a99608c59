"""The ``openai`` backend against a fault-injecting OpenAI-compatible server (tests/openai_fault_server.py),
alone and under the real rollout and mining stages.

Every fault kind is retried and then served; exhausted retries fail the request with the server's URL and
the fault. A server that dies for good during a rollout or during mining ends the stage with a
:class:`~ragdistill.errors.UserFacingError` naming the server; finished episodes and committed mining
chunks are kept, and the re-run against the healthy server completes, every task exactly once. The
request-level retry policy itself (backoff growth, which statuses are retried, 4xx handling) is pinned
in tests/test_inference.py; the episode- and stage-level replay of transient faults with a model double
in tests/test_stages.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import env_doubles  # noqa: F401  (registers the counter-double environment)
from openai_fault_server import FAULTS, FaultInjectingOpenAIServer, scripted_policy, train_tiny_tokenizer
from ragdistill.config import BackendConfig, ExperimentConfig, ModelSpec, RoleConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.errors import UserFacingError
from ragdistill.inference import ChatMessage, GenerationRequest
from ragdistill.inference.base import Backend
from ragdistill.inference.openai_backend import OpenAIBackend, retry_after_s
from ragdistill.layout import HINTS_DIR
from ragdistill.stages.lifecycle import StageError, upstream_inputs
from ragdistill.stages.mining import CHUNKS_DIR, run_mining
from ragdistill.stages.rollout import run_rollout
from ragdistill.store import ArtifactStore, Manifest, read_manifest, read_records
from test_stages import PolicyDouble, counter_config

FAST_RETRIES = {"retry_backoff_s": 0.001, "max_retries": 2, "timeout_s": 1.0}
"""Tiny backoffs; a timeout short enough for the ``timeout`` and ``slow`` faults to trip it quickly."""

WHAT_THE_ERROR_SAYS = {
    "500": "HTTP 500",
    "503": "HTTP 503",
    "429": "HTTP 429",
    "timeout": "(Timeout|within backend.timeout_s)",
    "reset": "(RemoteProtocolError|ReadError|ConnectError)",
    "slow": "within backend.timeout_s",
    "malformed": "not JSON",
    "empty-choices": r"without choices\[0\]\.message",
    "truncated": "(RemoteProtocolError|ReadError)",
}


class SleepRecorder:
    """An awaitable sleep that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("served-model"))


@pytest.fixture
def server() -> Iterator[FaultInjectingOpenAIServer]:
    with FaultInjectingOpenAIServer(scripted_policy("go to desk 1"), hang_s=2.5, slow_total_s=2.5) as double:
        yield double


def served_role(server: FaultInjectingOpenAIServer, model: Path) -> RoleConfig:
    backend = BackendConfig(kind="openai", base_url=server.base_url, **FAST_RETRIES)
    return RoleConfig(model=ModelSpec(name=str(model)), backend=backend)


def one_request() -> list[GenerationRequest]:
    return [GenerationRequest(messages=[ChatMessage("user", "You are in a room.")], max_tokens=8)]


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_retried_and_then_served(
    fault: str, server: FaultInjectingOpenAIServer, tokenizer_dir: Path
) -> None:
    server.script(fault)
    role = served_role(server, tokenizer_dir)
    sleep = SleepRecorder()
    [generation] = OpenAIBackend(role, sleep=sleep).generate(one_request())
    assert not generation.failed, generation.error
    assert generation.text == "go to desk 1" and generation.completion_tokens > 0
    assert server.served == [fault, "ok"] and len(sleep.delays) == 1


@pytest.mark.parametrize("fault", FAULTS)
def test_exhausted_retries_fail_the_request_naming_the_server_and_the_fault(
    fault: str, server: FaultInjectingOpenAIServer, tokenizer_dir: Path
) -> None:
    server.script(*[fault] * 3)
    role = served_role(server, tokenizer_dir)
    [generation] = OpenAIBackend(role, sleep=SleepRecorder()).generate(one_request())
    assert generation.failed and generation.error is not None
    assert generation.error_kind == ("request" if fault == "empty-choices" else "transient")
    assert f"{server.base_url}/chat/completions failed 3 time(s)" in generation.error
    assert re.search(WHAT_THE_ERROR_SAYS[fault], generation.error), generation.error
    assert server.served == [fault] * 3


def test_a_429_waits_at_least_the_servers_retry_after(tokenizer_dir: Path) -> None:
    with FaultInjectingOpenAIServer(scripted_policy(), ["429"], retry_after="3") as server:
        role = served_role(server, tokenizer_dir)
        sleep = SleepRecorder()
        assert OpenAIBackend(role, sleep=sleep).generate(one_request())[0].text == "inc"
    assert sleep.delays and sleep.delays[0] >= 3.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_s("soon") is None and retry_after_s("-5") == 0.0 and retry_after_s("9999") == 30.0


def test_a_slow_stream_inside_the_deadline_is_simply_slow(tokenizer_dir: Path) -> None:
    with FaultInjectingOpenAIServer(scripted_policy(), ["slow"], slow_gap_s=0.02, slow_total_s=0.2) as server:
        role = served_role(server, tokenizer_dir)
        sleep = SleepRecorder()
        assert OpenAIBackend(role, sleep=sleep).generate(one_request())[0].text == "inc"
    assert server.served == ["slow"] and sleep.delays == []


# --- under the real stages ------------------------------------------------------------------------


def served_config(
    tmp_path: Path, server: FaultInjectingOpenAIServer, model: Path, **overrides: Any
) -> ExperimentConfig:
    """test_stages' counter-double config, with the agent and the extractor on the fault server."""
    backend = {"kind": "openai", "base_url": server.base_url, **FAST_RETRIES, "timeout_s": 5.0}
    settings: dict[str, Any] = {
        "models.agent.model.name": str(model),
        "models.agent.backend": backend,
        "models.extractor.model.name": str(model),
        "models.extractor.backend": backend,
    }
    return with_overrides(counter_config(tmp_path), {**settings, **overrides})


def rollout(config: ExperimentConfig, backend: Backend | None = None) -> Manifest:
    """Stage A of ``config`` (the agent on the config's backend unless ``backend`` is given)."""
    settings = PipelineSettings.from_experiment(config)
    return run_rollout(settings.ctx, settings.rollout(), backend=backend)


def mine(config: ExperimentConfig) -> Manifest:
    """Stage B of ``config`` on its base rollout, the extractor on the config's backend."""
    settings = PipelineSettings.from_experiment(config)
    inputs = upstream_inputs(ArtifactStore(config.run.run_root), settings.mining)
    return run_mining(settings.ctx, settings.mining, inputs)


def stored_episodes(config: ExperimentConfig) -> list[dict[str, Any]]:
    return list(read_records(ArtifactStore(config.run.run_root), "rollouts/base"))


def test_a_server_dying_mid_rollout_fails_the_stage_clearly_and_the_rerun_plays_only_the_rest(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    with FaultInjectingOpenAIServer(scripted_policy("inc")) as server:
        config = served_config(tmp_path, server, tokenizer_dir)
        # The counter game takes 3 calls and at most 4 episodes are in flight: whatever the interleaving,
        # 12 answers finish at least one episode and leave at least one of the 6 unfinished.
        server.die_after(12)
        with pytest.raises(StageError) as failed:
            rollout(config)
        assert isinstance(failed.value, UserFacingError)
        message = str(failed.value)
        assert f"{server.base_url}/chat/completions failed 3 time(s)" in message, message
        assert re.search("ConnectError|RemoteProtocolError|ReadError", message), message
        kept = stored_episodes(config)
        won = {record["task_id"] for record in kept if record["success"]}
        lost = {record["task_id"] for record in kept if record["stop_reason"] == "error"}
        assert won and lost and won | lost == {f"t{i}" for i in range(6)} and not won & lost
        assert all(record["error_kind"] == "transient" for record in kept if record["task_id"] in lost)

        server.start()
        before = len(server.requests)
        manifest = rollout(config)
    assert manifest.counts == {"episodes": 6, "won": 6, "errors": 0, "transient_errors": 0}
    final = stored_episodes(config)
    assert sorted(record["task_id"] for record in final) == [f"t{i}" for i in range(6)]
    store = ArtifactStore(config.run.run_root)
    assert store.read_json("rollouts/base/run-stats.json")["played_now"] == len(lost)
    assert len(server.requests) - before == 3 * len(lost), "finished episodes are never played again"


def rollout_of_failures(config: ExperimentConfig) -> None:
    """Four failed episodes (``wait`` never wins), played by a model double: mining is under test."""
    rollout(config, PolicyDouble("wait"))


def test_a_server_dying_during_mining_keeps_the_committed_chunks_and_the_rerun_completes(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    with FaultInjectingOpenAIServer(scripted_policy()) as server:
        config = served_config(tmp_path, server, tokenizer_dir, **{"env.limit": 6, "mining.chunk_size": 2})
        rollout_of_failures(config)
        server.die_after(2)  # the first chunk is answered, then the server is gone
        with pytest.raises(UserFacingError) as failed:
            mine(config)
        message = str(failed.value)
        assert "answered none of 2 request(s)" in message and server.base_url in message, message
        store = ArtifactStore(config.run.run_root)
        assert len(store.list(CHUNKS_DIR)) == 1 and not store.exists(f"{HINTS_DIR}/manifest.json")

        server.start()
        before = len(server.requests)
        manifest = mine(config)
    assert len(server.requests) - before == 4, "only failures without a committed answer are sent again"
    assert manifest.counts["failures"] == 6 and manifest.counts["hints_accepted"] == 6
    assert manifest.counts["transient_errors"] == 0
    assert len(store.read_json(f"{HINTS_DIR}/mined-episodes.json")) == 6


def test_a_mining_answer_lost_beside_answered_ones_is_sent_again_by_the_next_run(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    with FaultInjectingOpenAIServer(scripted_policy(), ["503", "503", "503"]) as server:
        overrides = {"env.limit": 2, "models.extractor.backend.max_concurrency": 1}
        config = served_config(tmp_path, server, tokenizer_dir, **overrides)
        rollout_of_failures(config)
        first = mine(config)
        assert first.counts["failures_not_answered"] == 1 and first.counts["transient_errors"] == 1
        before = len(server.requests)
        second = mine(config)
    assert len(server.requests) - before == 1
    assert second.counts["failures_not_answered"] == 0 and second.counts["hints_accepted"] == 2
    assert read_manifest(ArtifactStore(config.run.run_root), HINTS_DIR).identity == second.identity
