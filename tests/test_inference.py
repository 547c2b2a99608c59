"""Inference backends: the factory, shared chat/token helpers, the OpenAI client's retries (against an
in-test HTTP server double), and slow tests of hf, vllm and openai (a real vLLM server) on SmolLM2-135M."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from openai_fault_server import train_tiny_tokenizer
from ragdistill.config import BackendConfig, ModelSpec, RoleConfig
from ragdistill.inference import BackendError, ChatMessage, Generation, GenerationRequest, make_backend
from ragdistill.inference import factory as factory_module
from ragdistill.inference.chat import (
    completion_token_count,
    count_chat_tokens,
    encode_text,
    load_tokenizer,
    render_chat,
    truncate_at_stop,
)
from ragdistill.inference.openai_backend import (
    OpenAIBackend,
    adapter_model_name,
    backoff_delay,
    is_retryable_status,
)

CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}


def ask(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", "Answer in one short sentence."), ChatMessage("user", question)]


def capital_requests(**options: Any) -> list[GenerationRequest]:
    return [
        GenerationRequest(messages=ask(f"What is the capital of {country}?"), **options)
        for country in CAPITALS
    ]


def assert_counts_match(
    backend: Any, requests: list[GenerationRequest], generations: list[Generation]
) -> None:
    for request, generation in zip(requests, generations, strict=True):
        recount = backend.count_tokens(request.messages, generation.text)
        assert recount == (generation.prompt_tokens, generation.completion_tokens), generation


# --- a tiny real tokenizer with a chat template, trained in-test -------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = ("The capital of France is Paris.", "Hello world, more text here.")
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"), corpus)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_dir: Path) -> Any:
    return load_tokenizer(str(tiny_tokenizer_dir))


def test_render_chat_opens_the_assistant_turn(tiny_tokenizer: Any) -> None:
    rendered = render_chat(tiny_tokenizer, [ChatMessage("user", "hi")])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    prompt, completion = count_chat_tokens(tiny_tokenizer, [ChatMessage("user", "hi")], "Hello world")
    assert prompt == len(encode_text(tiny_tokenizer, rendered))
    assert completion == len(encode_text(tiny_tokenizer, "Hello world")) > 0


def test_truncate_at_stop_cuts_at_the_earliest_stop() -> None:
    assert truncate_at_stop("go north. then > look", [">", "."]) == ("go north", True)
    assert truncate_at_stop("nothing here", ["\n"]) == ("nothing here", False)
    assert truncate_at_stop("abc", []) == ("abc", False)


def test_completion_token_count_ignores_end_tokens_and_text_past_a_stop(tiny_tokenizer: Any) -> None:
    full = "The capital of France is Paris. Hello world"
    ids = [*encode_text(tiny_tokenizer, full), tiny_tokenizer.eos_token_id]
    assert completion_token_count(tiny_tokenizer, ids, full) == len(ids) - 1
    cut, stopped = truncate_at_stop(full, ["."])
    assert stopped
    assert completion_token_count(tiny_tokenizer, ids, cut) == len(encode_text(tiny_tokenizer, cut))
    assert completion_token_count(tiny_tokenizer, ids, "") == 0


# --- factory -------------------------------------------------------------------------------------


class RecordingEngineDouble:
    """Takes the place of an engine class so the factory's dispatch is checked without loading a model."""

    created: ClassVar[list[tuple[str, RoleConfig]]] = []

    def __init__(self, role: RoleConfig) -> None:
        self.created.append((role.backend.kind, role))


@pytest.mark.parametrize(
    ("kind", "module", "attribute"),
    [("vllm", "vllm_backend", "VLLMBackend"), ("hf", "hf_backend", "HFBackend")],
)
def test_factory_starts_the_engine_the_role_names(
    monkeypatch: pytest.MonkeyPatch, kind: str, module: str, attribute: str
) -> None:
    import importlib

    monkeypatch.setattr(
        importlib.import_module(f"ragdistill.inference.{module}"), attribute, RecordingEngineDouble
    )
    RecordingEngineDouble.created.clear()
    role = RoleConfig(backend=BackendConfig(kind=kind))  # type: ignore[arg-type]
    backend = make_backend(role)
    assert isinstance(backend, RecordingEngineDouble)
    assert RecordingEngineDouble.created == [(kind, role)]


def test_factory_makes_an_openai_client_without_touching_the_network() -> None:
    role = RoleConfig(backend=BackendConfig(kind="openai", base_url="http://127.0.0.1:9/v1"))
    backend = factory_module.make_backend(role)
    assert isinstance(backend, OpenAIBackend) and backend.name == "openai"
    with pytest.raises(BackendError, match=r"needs backend\.base_url"):
        make_backend(RoleConfig(backend=BackendConfig(kind="openai")))


# --- retry policy --------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert [backoff_delay(n, 0.5, lambda: 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff_delay(n, 0.5, lambda: 0.0) for n in range(3)] == [0.25, 0.5, 1.0]
    assert backoff_delay(20, 0.5, lambda: 1.0) == 30.0
    assert is_retryable_status(429) and is_retryable_status(500) and is_retryable_status(503)
    assert not is_retryable_status(400) and not is_retryable_status(404) and not is_retryable_status(422)


def test_adapter_model_name_is_the_folder_name() -> None:
    assert adapter_model_name("file:///runs/x/adapters/distill/") == "distill"
    assert adapter_model_name("runs/sft") == "sft"


CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, your prompt contains 2300 input tokens"
)


class FlakyOpenAIServerDouble:
    """A real loopback HTTP server speaking just enough of ``/v1/chat/completions``, from a script.

    One script item per incoming request: an HTTP status (200 answers normally), "hang" (sleeps past
    the client's timeout, then answers), "no-usage" (200 without a usage block), "no-choices" (200 with
    an error object instead of choices), "non-json" (200 with an HTML page), "truncated" (200 whose
    body stops short of its content-length), "context-length" (vLLM's 400 for a prompt over the
    window). ``by_prompt`` holds a script per last user message, used before ``script`` for requests
    with that message. Once a script is used up every request gets 200. The 200 reply echoes the last
    user message.
    """

    def __init__(
        self,
        script: list[int | str],
        delay_s: float = 0.0,
        finish_reason: str = "length",
        by_prompt: dict[str, list[int | str]] | None = None,
    ) -> None:
        self.script = list(script)
        self.by_prompt = {prompt: list(actions) for prompt, actions in (by_prompt or {}).items()}
        self.delay_s = delay_s
        self.finish_reason = finish_reason
        self.bodies: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FlakyOpenAIServerDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_action(self, body: dict[str, Any], authorization: str | None) -> int | str:
        with self._lock:
            self.bodies.append(body)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            prompt_script = self.by_prompt.get(body["messages"][-1]["content"])
            if prompt_script:
                return prompt_script.pop(0)
            return self.script.pop(0) if self.script else 200

    def prompts_sent(self) -> list[str]:
        return [body["messages"][-1]["content"] for body in self.bodies]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(
                self,
                status: int,
                payload: dict[str, Any] | str,
                headers: dict[str, str] | None = None,
                missing_bytes: int = 0,
            ) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data) + missing_bytes))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                action = double._next_action(body, self.headers.get("authorization"))
                try:
                    if action == "hang":
                        time.sleep(1.0)
                    if action == "context-length":
                        self._send(400, {"error": {"message": CONTEXT_LENGTH_MESSAGE, "code": 400}})
                        return
                    if action == "no-choices":
                        self._send(200, {"object": "error", "message": "scripted: no choices"})
                        return
                    if action == "non-json":
                        self._send(200, "<html><body>502 Bad Gateway</body></html>")
                        return
                    if isinstance(action, int) and action != 200:
                        headers = {"retry-after": "0"} if action == 429 else {}
                        self._send(action, {"error": {"message": f"scripted {action}"}}, headers)
                        return
                    time.sleep(double.delay_s)
                    reply: dict[str, Any] = {
                        "choices": [
                            {
                                "message": {
                                    "role": "assistant",
                                    "content": "echo " + body["messages"][-1]["content"],
                                },
                                "finish_reason": double.finish_reason,
                            }
                        ]
                    }
                    if action != "no-usage":
                        reply["usage"] = {"prompt_tokens": 7, "completion_tokens": 3}
                    self._send(200, reply, missing_bytes=40 if action == "truncated" else 0)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with double._lock:
                        double.in_flight -= 1

        return Handler


class SleepRecorder:
    """An awaitable sleep that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def openai_role(base_url: str, **backend: Any) -> RoleConfig:
    settings = {"kind": "openai", "base_url": base_url, "retry_backoff_s": 0.5, "timeout_s": 5.0, **backend}
    return RoleConfig(model=ModelSpec(name="test-org/no-such-model"), backend=BackendConfig(**settings))


def one_request(text: str = "hello") -> list[GenerationRequest]:
    return [GenerationRequest(messages=[ChatMessage("user", text)], max_tokens=3)]


def test_a_500_then_200_is_retried_once_after_a_backoff() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([500, 200]) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep, rand=lambda: 1.0)
        [generation] = backend.generate(one_request("hello"))
    assert generation == Generation(
        text="echo hello", finish_reason="length", prompt_tokens=7, completion_tokens=3
    )
    assert len(server.bodies) == 2 and sleep.delays == [0.5]


def test_a_429_is_retried() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([429, 429, 200]) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep, rand=lambda: 1.0)
        assert backend.generate(one_request())[0].text == "echo hello"
    assert len(server.bodies) == 3 and sleep.delays == [0.5, 1.0]


def test_a_timeout_is_retried() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble(["hang", 200]) as server:
        backend = OpenAIBackend(openai_role(server.base_url, timeout_s=0.3), sleep=sleep)
        assert backend.generate(one_request())[0].text == "echo hello"
    assert len(server.bodies) == 2 and len(sleep.delays) == 1


def assert_failed(generation: Generation, kind: str, *fragments: str) -> None:
    assert generation.failed and generation.error is not None, generation
    assert generation.error_kind == kind and generation.finish_reason == "error", generation
    assert generation.text == "" and generation.completion_tokens == 0, generation
    for fragment in fragments:
        assert fragment in generation.error, (fragment, generation.error)


def test_a_4xx_fails_its_request_at_once_with_the_servers_message() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([400]) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep)
        [generation] = backend.generate(one_request())
    assert_failed(generation, "request", "request 0: ", server.base_url, "answered 400", "scripted 400")
    assert len(server.bodies) == 1 and sleep.delays == []


def test_retries_stop_after_max_retries_and_the_request_fails_transient() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([503] * 10) as server:
        backend = OpenAIBackend(openai_role(server.base_url, max_retries=2), sleep=sleep, rand=lambda: 1.0)
        [generation] = backend.generate(one_request())
    assert_failed(generation, "transient", "request 0: ", "failed 3 time(s), last with HTTP 503")
    assert len(server.bodies) == 3 and sleep.delays == [0.5, 1.0]


def test_connection_errors_are_retried_then_reported_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleep = SleepRecorder()
    backend = OpenAIBackend(openai_role(f"http://127.0.0.1:{port}/v1", max_retries=1), sleep=sleep)
    [generation] = backend.generate(one_request())
    assert_failed(generation, "transient", f"127.0.0.1:{port}", "ConnectError")
    assert len(sleep.delays) == 1


def test_one_requests_fault_stays_with_it_and_the_rest_arrive_in_order(tiny_tokenizer_dir: Path) -> None:
    """A batch with a prompt over the server's window (not retried), one that exhausts its retries on
    503 and one answered without choices on every retry: those three fail in their places, the
    siblings are served."""
    prompts = ["first", "too long", "second", "flaky", "empty", "third"]
    scripts: dict[str, list[int | str]] = {
        "too long": ["context-length"],
        "flaky": [503] * 3,
        "empty": ["no-choices"] * 3,
    }
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([], delay_s=0.05, by_prompt=scripts) as server:
        role = openai_role(server.base_url, max_retries=2, max_concurrency=3)
        backend = OpenAIBackend(role, tokenizer_path=str(tiny_tokenizer_dir), sleep=sleep, rand=lambda: 1.0)
        requests = [one_request(prompt)[0] for prompt in prompts]
        generations = backend.generate(requests)
    first, too_long, second, flaky, empty, third = generations
    assert [g.text for g in (first, second, third)] == ["echo first", "echo second", "echo third"]
    assert not any(g.failed or g.error_kind for g in (first, second, third))
    assert_failed(
        too_long, "request", "request 1: ", server.base_url, "answered 400", "maximum context length"
    )
    assert_failed(flaky, "transient", "request 3: ", server.base_url, "failed 3 time(s)", "HTTP 503")
    assert_failed(empty, "request", "request 4: ", server.base_url, "without choices", "scripted: no choices")
    prompt_count = backend.count_tokens(requests[1].messages)[0]
    assert too_long.prompt_tokens == prompt_count > 0  # counted with the tokenizer at hand
    assert sorted(server.prompts_sent()) == sorted([*prompts, "flaky", "flaky", "empty", "empty"])
    assert sorted(sleep.delays) == [0.5, 0.5, 1.0, 1.0]


def test_a_non_json_200_is_retried_then_fails_transient() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble(["non-json", 200]) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep)
        assert backend.generate(one_request())[0].text == "echo hello"
    assert len(server.bodies) == 2 and len(sleep.delays) == 1
    with FlakyOpenAIServerDouble(["non-json"] * 3) as server:
        backend = OpenAIBackend(openai_role(server.base_url, max_retries=2), sleep=SleepRecorder())
        [generation] = backend.generate(one_request())
    assert_failed(generation, "transient", "failed 3 time(s)", "not JSON", "502 Bad Gateway")


def test_a_body_cut_short_is_retried() -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble(["truncated", 200]) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep)
        assert backend.generate(one_request())[0].text == "echo hello"
    assert len(server.bodies) == 2 and len(sleep.delays) == 1


@pytest.mark.parametrize(("status", "fix"), [(401, "api_key_env"), (403, "key"), (404, "served_model_name")])
def test_an_answer_that_would_fail_every_request_raises_for_the_batch(status: int, fix: str) -> None:
    sleep = SleepRecorder()
    with FlakyOpenAIServerDouble([], delay_s=0.05, by_prompt={"b": [status]}) as server:
        backend = OpenAIBackend(openai_role(server.base_url), sleep=sleep)
        with pytest.raises(
            BackendError, match=rf"{server.base_url}/chat/completions answered {status}"
        ) as caught:
            backend.generate([one_request(prompt)[0] for prompt in "abc"])
    assert fix in str(caught.value) and sleep.delays == []


def test_a_base_url_that_is_not_http_fails_before_any_request() -> None:
    with pytest.raises(BackendError, match=r"'ftp://example\.org/v1' is not an http:// or https:// URL"):
        OpenAIBackend(openai_role("ftp://example.org/v1"))


def test_generation_keeps_its_positional_fields_and_says_whether_it_failed() -> None:
    served = Generation("text", "stop", 5, 2)
    assert not served.failed and served.error is None and served.error_kind is None
    failed = Generation.failure("transient", "request 3: down", prompt_tokens=9)
    assert failed == Generation("", "error", 9, 0, "request 3: down", "transient") and failed.failed


def test_concurrency_is_capped_and_results_keep_request_order() -> None:
    with FlakyOpenAIServerDouble([], delay_s=0.2) as server:
        backend = OpenAIBackend(openai_role(server.base_url, max_concurrency=2))
        texts = [f"q{i}" for i in range(6)]
        generations = backend.generate([one_request(text)[0] for text in texts])
    assert [g.text for g in generations] == [f"echo {text}" for text in texts]
    assert server.max_in_flight == 2


def test_request_body_carries_schema_stops_adapter_and_key_but_logs_never_show_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-secret-1234"
    monkeypatch.setenv("RAGDISTILL_TEST_KEY", secret)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    requests = [
        GenerationRequest(messages=[ChatMessage("user", "a")], stop=["\n", ">"], json_schema=schema, seed=7),
        GenerationRequest(messages=[ChatMessage("user", "b")], adapter="/runs/demo/adapters/distill"),
    ]
    caplog.set_level(logging.DEBUG)
    with FlakyOpenAIServerDouble([500]) as server:
        role = openai_role(
            server.base_url, api_key_env="RAGDISTILL_TEST_KEY", served_model_name="base", max_concurrency=1
        )
        OpenAIBackend(role, sleep=SleepRecorder()).generate(requests)
    assert set(server.authorizations) == {f"Bearer {secret}"}
    first, second = server.bodies[-2], server.bodies[-1]
    assert first["model"] == "base" and first["stop"] == ["\n", ">"] and first["seed"] == 7
    assert first["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    assert second["model"] == "distill" and "response_format" not in second and "stop" not in second
    assert any("retry" in record.getMessage() for record in caplog.records)
    assert secret not in caplog.text


def test_requests_for_different_models_go_out_in_waves() -> None:
    requests = [
        GenerationRequest(messages=[ChatMessage("user", "a")], adapter="/runs/demo/adapters/distill"),
        GenerationRequest(messages=[ChatMessage("user", "b")]),
        GenerationRequest(messages=[ChatMessage("user", "c")], adapter="/runs/demo/adapters/distill"),
        GenerationRequest(messages=[ChatMessage("user", "d")]),
    ]
    with FlakyOpenAIServerDouble([], delay_s=0.1) as server:
        generations = OpenAIBackend(openai_role(server.base_url, served_model_name="base")).generate(requests)
    assert [g.text for g in generations] == ["echo a", "echo b", "echo c", "echo d"]
    models = [body["model"] for body in server.bodies]
    assert models == ["distill", "distill", "base", "base"]
    assert server.max_in_flight == 2


def test_generate_works_inside_a_running_event_loop() -> None:
    with FlakyOpenAIServerDouble([]) as server:
        backend = OpenAIBackend(openai_role(server.base_url))

        async def caller() -> list[Generation]:
            return backend.generate(one_request("from a loop"))

        assert asyncio.run(caller())[0].text == "echo from a loop"


def test_missing_usage_is_counted_with_the_tokenizer_or_fails_clearly(tiny_tokenizer_dir: Path) -> None:
    with FlakyOpenAIServerDouble(["no-usage", "no-usage"]) as server:
        counted = OpenAIBackend(openai_role(server.base_url), tokenizer_path=str(tiny_tokenizer_dir))
        requests = one_request("hello world")
        generations = counted.generate(requests)
        assert_counts_match(counted, requests, generations)
        assert generations[0].completion_tokens > 0
        blind = OpenAIBackend(openai_role(server.base_url))
        with pytest.raises(BackendError, match="no token usage and no tokenizer"):
            blind.generate(one_request())
        with pytest.raises(BackendError, match="cannot count tokens"):
            blind.count_tokens([ChatMessage("user", "x")])


def test_a_reply_that_ended_on_a_stop_counts_its_text_with_the_tokenizer(tiny_tokenizer_dir: Path) -> None:
    with FlakyOpenAIServerDouble([], finish_reason="stop") as server:
        backend = OpenAIBackend(openai_role(server.base_url), tokenizer_path=str(tiny_tokenizer_dir))
        requests = one_request("Hello world")
        [generation] = backend.generate(requests)
    assert generation.prompt_tokens == 7  # the server's usage
    assert generation.completion_tokens == len(
        encode_text(load_tokenizer(str(tiny_tokenizer_dir)), "echo Hello world")
    )


# --- hf backend on a tiny random model: fault isolation without the SmolLM2 checkpoint ------------


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, randomly initialised one-layer Llama on the tiny tokenizer: loads and decodes in a second."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    for file in tiny_tokenizer_dir.iterdir():
        shutil.copy(file, folder)
    tokenizer = load_tokenizer(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


TINY_WINDOW = 48


@pytest.fixture(scope="module")
def tiny_hf_backend(tiny_llama_dir: Path) -> Iterator[Any]:
    from ragdistill.inference.hf_backend import HFBackend

    role = RoleConfig(
        model=ModelSpec(name=str(tiny_llama_dir), dtype="float32", max_model_len=TINY_WINDOW),
        backend=BackendConfig(kind="hf", batch_size=4, torch_threads=1),
    )
    backend = HFBackend(role, model_path=str(tiny_llama_dir))
    yield backend
    backend.close()


def test_hf_fails_only_the_prompt_over_the_window_and_stops_others_at_the_window(
    tiny_hf_backend: Any,
) -> None:
    requests = [
        GenerationRequest(messages=[ChatMessage("user", "Hello")], max_tokens=4),
        GenerationRequest(messages=[ChatMessage("user", "Hello world " * 30)], max_tokens=4),
        GenerationRequest(messages=[ChatMessage("user", "Hello world " * 10)], max_tokens=40),
        GenerationRequest(messages=[ChatMessage("user", "Hello")], max_tokens=40),  # batched with the above
    ]
    short, too_long, near_full, roomy = tiny_hf_backend.generate(requests)
    prompt_count = tiny_hf_backend.count_tokens(requests[1].messages)[0]
    assert_failed(too_long, "request", "request 1: ", "transformers on", f"{prompt_count} tokens", "is 48")
    assert too_long.prompt_tokens == prompt_count >= TINY_WINDOW
    assert not short.failed and short.completion_tokens > 0
    room = TINY_WINDOW - near_full.prompt_tokens
    assert 0 < room < 40
    assert near_full.finish_reason == "length" and near_full.completion_tokens == room
    assert roomy.completion_tokens > room


class GenerateRefusingMarkerDouble:
    """Wraps a real model's ``generate`` and raises, as an engine would, for any batch holding a prompt
    with ``marker``: the hf backend must then run the batch one request at a time."""

    def __init__(self, generate: Any, tokenizer: Any, marker: str) -> None:
        self.generate = generate
        self.tokenizer = tokenizer
        self.marker = marker
        self.batch_sizes: list[int] = []

    def __call__(self, **inputs: Any) -> Any:
        rows = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in inputs["input_ids"]]
        self.batch_sizes.append(len(rows))
        if any(self.marker in row for row in rows):
            raise RuntimeError(f"scripted refusal of a prompt with {self.marker!r}")
        return self.generate(**inputs)


def test_hf_runs_a_failed_batch_one_at_a_time_so_only_the_culprit_fails(
    tiny_hf_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [
        GenerationRequest(messages=[ChatMessage("user", text)], max_tokens=4)
        for text in ("Hello", "The capital of France", "more text here")
    ]
    alone = [tiny_hf_backend.generate([request])[0] for request in requests]
    double = GenerateRefusingMarkerDouble(
        tiny_hf_backend._model.generate, tiny_hf_backend._tokenizer, "France"
    )
    monkeypatch.setattr(tiny_hf_backend._model, "generate", double)
    first, culprit, third = tiny_hf_backend.generate(requests)
    assert double.batch_sizes == [3, 1, 1, 1]
    assert (first, third) == (alone[0], alone[2])
    assert_failed(culprit, "request", "request 1: ", "RuntimeError: scripted refusal")
    assert culprit.prompt_tokens == alone[1].prompt_tokens


# --- slow: the real tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """SmolLM2-135M in float32: on CPUs without native bf16 (AVX2 only) it decodes 3-5x faster."""
    from ragdistill.models import prepare_model

    return prepare_model("smollm2-135m", "fp32")


@pytest.fixture(scope="module")
def lora_adapter(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA with random (non-zero) weights, so adapted outputs differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapters") / "test-lora"
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


def smollm2_role(path: Path, max_model_len: int = 2048, **backend: Any) -> RoleConfig:
    return RoleConfig(
        model=ModelSpec(name=str(path), dtype="float32", max_model_len=max_model_len),
        backend=BackendConfig(**backend),
    )


STORY = [ChatMessage("user", "Write a short story about a robot.")]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


def check_capitals(generations: list[Generation]) -> None:
    for capital, generation in zip(CAPITALS.values(), generations, strict=True):
        assert capital in generation.text, generation
        assert generation.finish_reason == "stop" and "." not in generation.text


@pytest.mark.slow
def test_hf_backend_batches_stops_and_switches_adapters(smollm2: Path, lora_adapter: Path) -> None:
    backend = make_backend(smollm2_role(smollm2, kind="hf", batch_size=2, torch_threads=1))
    try:
        requests = capital_requests(max_tokens=24, stop=["."])
        generations = backend.generate(requests)
        check_capitals(generations)
        assert_counts_match(backend, requests, generations)

        story = [
            GenerationRequest(messages=STORY, max_tokens=12),
            GenerationRequest(messages=STORY, max_tokens=12, adapter=str(lora_adapter)),
            GenerationRequest(messages=STORY, max_tokens=12),
        ]
        base, adapted, base_again = backend.generate(story)
        assert adapted.text != base.text and base_again.text == base.text
        assert base.finish_reason == "length" and base.completion_tokens == 12
        assert_counts_match(backend, story, [base, adapted, base_again])
        assert backend.generate(capital_requests(max_tokens=24, stop=["."])) == generations
    finally:
        backend.close()


@pytest.mark.slow
def test_vllm_backend_mixed_batch_with_json_schema_and_lora(smollm2: Path, lora_adapter: Path) -> None:
    backend = make_backend(
        smollm2_role(smollm2, kind="vllm", enable_lora=True, max_lora_rank=8, kv_cache_gib=1)
    )
    try:
        requests = [
            *capital_requests(max_tokens=24, stop=["."]),
            GenerationRequest(
                messages=ask("Is Paris sunny today? Answer in JSON."),
                max_tokens=40,
                json_schema=ANSWER_SCHEMA,
            ),
            GenerationRequest(messages=STORY, max_tokens=12),
            GenerationRequest(messages=STORY, max_tokens=12, adapter=str(lora_adapter)),
        ]
        generations = backend.generate(requests)
        check_capitals(generations[:3])
        answer = json.loads(generations[3].text)
        assert set(answer) == {"city", "sunny"} and isinstance(answer["sunny"], bool)
        base, adapted = generations[4:]
        assert adapted.text != base.text and base.finish_reason == adapted.finish_reason == "length"
        assert base.completion_tokens == 12
        assert backend.generate([requests[4]])[0].text == base.text  # the adapter did not leak into base
        assert_counts_match(backend, requests, generations)
    finally:
        backend.close()


SMALL_WINDOW = 256
FILLER = "The robot walked along the quiet road and looked at every house it passed. " * 12


def window_requests() -> list[GenerationRequest]:
    """Under a 256-token window: three that fit, a prompt over it, one that leaves less room than max_tokens."""
    return [
        *capital_requests(max_tokens=24, stop=["."]),
        GenerationRequest(messages=ask("Summarise this. " + "word " * 300), max_tokens=24),
        GenerationRequest(messages=[ChatMessage("system", FILLER), *STORY], max_tokens=120, temperature=0.0),
    ]


def check_window_generations(generations: list[Generation], engine: str) -> None:
    *capitals, too_long, near_full = generations
    check_capitals(capitals)
    assert_failed(too_long, "request", "request 3: ", engine, "model.max_model_len) is 256")
    assert too_long.prompt_tokens > SMALL_WINDOW
    assert not near_full.failed and SMALL_WINDOW - 120 < near_full.prompt_tokens < SMALL_WINDOW
    assert near_full.finish_reason == "length"
    assert near_full.prompt_tokens + near_full.completion_tokens == SMALL_WINDOW


@pytest.mark.slow
def test_hf_backend_fails_only_the_prompt_over_a_small_window(smollm2: Path) -> None:
    backend = make_backend(smollm2_role(smollm2, SMALL_WINDOW, kind="hf", batch_size=4, torch_threads=1))
    try:
        check_window_generations(backend.generate(window_requests()), "transformers on")
    finally:
        backend.close()


@pytest.mark.slow
def test_vllm_backend_isolates_a_prompt_over_the_window_and_a_request_the_engine_refuses(
    smollm2: Path,
) -> None:
    """The over-window prompt is refused before vLLM sees it; the unusable schema is refused by vLLM
    itself, which fails the whole ``LLM.generate`` call: the backend reruns that wave one at a time."""
    backend = make_backend(smollm2_role(smollm2, SMALL_WINDOW, kind="vllm", kv_cache_gib=1))
    try:
        requests = window_requests()
        broken_schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
        requests.append(
            GenerationRequest(messages=ask("Answer in JSON."), max_tokens=24, json_schema=broken_schema)
        )
        generations = backend.generate(requests)
        check_window_generations(generations[:5], "vLLM engine on")
        assert_failed(generations[5], "request", "request 5: ", "vLLM engine on", "$defs/missing")
        assert backend.generate(requests[:3]) == generations[:3]  # the engine is left clean
    finally:
        backend.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(smollm2: Path, lora_adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``vllm.entrypoints.openai.api_server`` on the tiny model, torn down whatever happens."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(smollm2), "--served-model-name", "smollm2", "--port", str(port), "--host", "127.0.0.1",
        "--enforce-eager", "--max-model-len", "2048", "--dtype", "float32",
        "--enable-lora", "--max-lora-rank", "8", "--lora-modules", f"{lora_adapter.name}={lora_adapter}",
    ]  # fmt: skip
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"vLLM server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy within 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.mark.slow
def test_openai_backend_against_a_real_vllm_server(
    vllm_server: str, smollm2: Path, lora_adapter: Path
) -> None:
    role = smollm2_role(
        smollm2,
        kind="openai",
        base_url=vllm_server,
        served_model_name="smollm2",
        max_concurrency=4,
        max_retries=1,
    )
    backend = make_backend(role)
    requests = [
        *capital_requests(max_tokens=24, stop=["."]),
        GenerationRequest(
            messages=ask("Is Paris sunny today? Answer in JSON."), max_tokens=40, json_schema=ANSWER_SCHEMA
        ),
        GenerationRequest(messages=STORY, max_tokens=12),
        GenerationRequest(messages=STORY, max_tokens=12, adapter=str(lora_adapter)),
    ]
    generations = backend.generate(requests)
    check_capitals(generations[:3])
    answer = json.loads(generations[3].text)
    assert set(answer) == {"city", "sunny"}
    base, adapted = generations[4:]
    assert base.finish_reason == "length" and base.completion_tokens == 12
    assert adapted.text != base.text
    assert backend.generate([requests[4]])[0].text == base.text  # the adapter did not leak into base
    assert_counts_match(backend, requests, generations)

    over_window = GenerationRequest(messages=ask("Summarise this. " + "word " * 2100), max_tokens=12)
    served, refused = backend.generate([requests[4], over_window])
    assert served.text == base.text
    assert_failed(refused, "request", "request 1: ", vllm_server, "answered 400", "maximum context length")
    unserved = GenerationRequest(messages=STORY, max_tokens=12, adapter="/runs/x/adapters/not-served")
    with pytest.raises(BackendError, match=r"answered 404: .*not-served.*served_model_name"):
        backend.generate([requests[4], unserved])
