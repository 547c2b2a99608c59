"""Requests that go in one at a time and come back each as soon as it is answered: what the continuous
rollout engine generates with (``rollout.continuous``).

A :class:`GenerationStream` takes a request the moment its episode is ready for it and calls that
request's ``done`` callback, from the stream's own thread, when it is answered. How requests are batched
is the backend's business (:func:`open_stream` picks):

- vLLM (``inference.vllm_stream``): each request joins the running engine at its next step
  (``LLM.enqueue`` + ``LLMEngine.step``), so no request waits for another's generation to end;
- openai (``inference.openai_stream``): each request is sent at once, concurrently; the server batches;
- any other backend (hf, test doubles): :class:`PendingBatchStream` calls ``generate`` with every request
  that is pending when the previous call returns.

``done`` receives the request's :class:`Generation` (a failed one for a fault of that request alone, as
``Backend.generate`` puts it in its place), or the exception that made the backend unusable
(:class:`~ragdistill.inference.base.BackendError`, or whatever the backend's ``generate`` raised): the
caller raises it, as it would have from ``generate``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from ragdistill.inference.base import Backend, Generation, GenerationRequest

Answer = Generation | BaseException
Done = Callable[[Answer], None]
"""Called once per submitted request, from the stream's thread: keep it short (put it on a queue)."""


class GenerationStream(Protocol):
    """Takes requests one at a time; answers each through its callback as soon as it is done."""

    def submit(self, request: GenerationRequest, done: Done) -> None: ...

    def close(self) -> None:
        """Stop answering: requests still pending are dropped (their callbacks are never called)."""
        ...


class StreamingBackend(Protocol):
    """A backend that batches requests as they arrive (vLLM, openai); ``None`` when it cannot here."""

    def open_stream(self) -> GenerationStream | None: ...


def open_stream(backend: Backend) -> GenerationStream:
    """The backend's own stream when it has one, else :class:`PendingBatchStream` over ``generate``."""
    opener: Callable[[], GenerationStream | None] | None = getattr(backend, "open_stream", None)
    stream = opener() if opener is not None else None
    return stream if stream is not None else PendingBatchStream(backend)


class PendingBatchStream:
    """One thread calls ``backend.generate`` with every request pending when the previous call returned.

    A backend whose ``generate`` raises has failed every request it was given and every later one: each
    of their callbacks receives the exception (one object, raised by whoever reads it first).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pending: list[tuple[GenerationRequest, Done]] = []
        self._failure: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=f"generate-{backend.name}", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, done: Done) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError("submit on a closed generation stream")
            failure = self._failure
            if failure is None:
                self._pending.append((request, done))
                self._changed.notify()
                return
        done(failure)

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                batch, self._pending = self._pending, []
            try:
                answers: list[Generation] = self.backend.generate([request for request, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(
                        f"backend {self.backend.name!r} returned {len(answers)} answers for {len(batch)} requests"
                    )
            except BaseException as error:  # the caller raises it, as it would have from generate
                self._fail(batch, error)
                continue
            for (_, done), answer in zip(batch, answers, strict=True):
                done(answer)

    def _fail(self, batch: list[tuple[GenerationRequest, Done]], error: BaseException) -> None:
        with self._changed:
            self._failure = error
            batch = batch + self._pending
            self._pending = []
        for _, done in batch:
            done(error)

    def close(self) -> None:
        """Stop the thread (after the ``generate`` call in progress, if any, returns)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> PendingBatchStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
