"""A GPU-shaped inference engine, simulated in real time, and the backend double that replays recorded
episodes on it (``SimulatedGPUBackendDouble``: a test double, never a model).

The engine works as vLLM does on a GPU, one iteration at a time: every running sequence gains one token
per decode iteration, a finished sequence leaves at once and a waiting request joins at the next
iteration. An iteration costs (``GPUShape``):

- ``per_token_s`` for the decode step, flat up to ``batch_limit`` running sequences (decoding is
  memory-bound: the weights are read once per step however many sequences share it) and growing in
  proportion above it;
- ``prefill_s`` times the share of a full batch it admits (prefill is compute-bound: it grows with the
  requests; vLLM runs it inside the same step);
- ``fixed_s`` once for each ``generate`` call whose requests it admits (a call's own overhead: adding
  the batch, collecting and sorting its outputs; a request streamed into the running engine has none).

So a lock-step ``generate`` of up to ``batch_limit`` requests costs ``fixed_s + prefill_s·n/limit +
per_token_s·(longest output)``: a fixed cost plus a per-token cost, flat in the batch up to its limit.
Its capacity on a workload (:meth:`GPUShape.capacity`) is the token rate of the same engine kept full:
every request prefilled once, every decode step running ``batch_limit`` sequences, no call overhead.

No GPU was at hand to measure the shape (BENCHMARKS.md says which figures the defaults stand for); the
flags of ``benchmarks/rollout.py --simulate`` set it from a measurement (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ragdistill.environments.base import TaskInfo
from ragdistill.inference.base import ChatMessage, Generation, GenerationRequest
from ragdistill.inference.streaming import Done
from ragdistill.rollout import RetrievedHints
from rollout_simulation.workload import RecordedEpisode


@dataclass(frozen=True)
class GPUShape:
    per_token_s: float = 0.015
    fixed_s: float = 0.005
    prefill_s: float = 0.035
    batch_limit: int = 32

    def iteration_s(self, running: int, admitted: int, calls: int) -> float:
        """A decode step over ``running`` sequences that admits ``admitted`` of them, ``calls`` of those
        batches of a ``generate`` call."""
        decode = self.per_token_s * max(1.0, running / self.batch_limit)
        return decode + self.prefill_s * admitted / self.batch_limit + self.fixed_s * calls

    def capacity(self, calls: int, tokens: int) -> float:
        """Tokens/s of this engine kept full on ``calls`` requests generating ``tokens`` in all."""
        busy = (calls * self.prefill_s + tokens * self.per_token_s) / self.batch_limit
        return tokens / busy


@dataclass
class _Sequence:
    tokens_left: int
    finish: Callable[[], None]
    opens_a_call: bool = False
    """The first request of a ``generate`` call's batch (the step that admits it pays ``fixed_s``)."""


@dataclass
class EngineStats:
    iterations: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    running_sum: int = 0
    """Running sequences summed over iterations (their mean is the engine's average batch)."""


class SimulatedGPUEngine:
    """One thread runs the iterations against a deadline clock, so scheduling jitter does not add up."""

    def __init__(self, shape: GPUShape) -> None:
        self.shape = shape
        self.stats = EngineStats()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="simulated-gpu", daemon=True)
        self._thread.start()

    def submit(self, tokens: Sequence[int], finish: Callable[[], None], *, call: bool) -> None:
        """Requests that generate ``tokens`` tokens each (at least one decode step); ``finish`` is called
        once per request as it is done. ``call``: they are one ``generate`` call (else streamed)."""
        with self._changed:
            for index, count in enumerate(tokens):
                self._waiting.append(_Sequence(max(1, count), finish, opens_a_call=call and not index))
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _serve(self) -> None:
        clock = time.perf_counter()
        while True:
            with self._changed:
                while not self._waiting and not self._running and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                admitted = len(self._waiting)
                calls = sum(sequence.opens_a_call for sequence in self._waiting)
                self._running.extend(self._waiting)
                self._waiting.clear()
                running = list(self._running)
            cost = self.shape.iteration_s(len(running), admitted, calls)
            clock = max(clock, time.perf_counter()) + cost
            delay = clock - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.stats.iterations += 1
            self.stats.busy_s += cost
            self.stats.running_sum += len(running)
            self.stats.tokens += len(running)
            finished: list[_Sequence] = []
            for sequence in running:
                sequence.tokens_left -= 1
                if sequence.tokens_left <= 0:
                    finished.append(sequence)
            with self._changed:
                self._running = [sequence for sequence in self._running if sequence.tokens_left > 0]
            for sequence in finished:
                sequence.finish()


REPLAY_MARK = re.compile(r"replay-(\d+)\b")


class ReplayHints:
    """A hint source that tags each starting episode with its draw (``replay-N``): the draw names the
    recorded episode it replays."""

    def __init__(self, draws: Sequence[int], episodes: Sequence[RecordedEpisode]) -> None:
        self._queues: dict[str, deque[int]] = {}
        for number, index in enumerate(draws):
            self._queues.setdefault(episodes[index].task_id, deque()).append(number)

    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]:
        tags = [f"replay-{self._queues[task.task_id].popleft()}" for task, _ in starts]
        return [RetrievedHints([tag], [tag]) for tag in tags]


@dataclass
class SimulatedGPUBackendDouble:
    """Answers each request with the recorded output of its episode's next call, after the simulated
    engine has generated that many tokens. An episode that goes past its recording (the environment
    answered differently) gets a failed request, which ends it at no engine cost."""

    shape: GPUShape
    episodes: Sequence[RecordedEpisode]
    draws: Sequence[int]
    """The recorded episode each simulated episode replays, by draw number."""
    name: str = "simulated-gpu-double"
    engine: SimulatedGPUEngine = field(init=False)
    past_the_recording: int = 0
    _calls: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.engine = SimulatedGPUEngine(self.shape)

    def answer(self, request: GenerationRequest) -> Generation:
        text = "\n".join(message.content for message in request.messages)
        mark = REPLAY_MARK.search(text)
        if mark is None:
            raise ValueError(
                "a request without its replay-N tag: play it with ReplayHints as the hint source"
            )
        draw = int(mark.group(1))
        episode = self.episodes[self.draws[draw]]
        with self._lock:
            call = self._calls.get(draw, 0)
            self._calls[draw] = call + 1
        if call >= episode.calls:
            self.past_the_recording += 1
            return Generation.failure("request", f"{episode.run} {episode.task_id}: the recording ends here")
        tokens = episode.completion_tokens[call]
        return Generation(episode.outputs[call], "stop", episode.prompt_tokens[call], tokens)

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        """A bound for the engine's context budget (about four characters a token): counts are replayed."""
        return sum(len(message.content) for message in messages) // 4 + 1, len(completion) // 4

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        answers = [self.answer(request) for request in requests]
        pending = [answer.completion_tokens for answer in answers if not answer.failed]
        done = threading.Semaphore(0)
        self.engine.submit(pending, done.release, call=True)
        for _ in pending:
            done.acquire()
        return answers

    def open_stream(self) -> SimulatedStream:
        return SimulatedStream(self)

    def close(self) -> None:
        self.engine.close()


class SimulatedStream:
    def __init__(self, backend: SimulatedGPUBackendDouble) -> None:
        self._backend = backend

    def submit(self, request: GenerationRequest, done: Done) -> None:
        answer = self._backend.answer(request)
        if answer.failed:
            done(answer)
            return
        self._backend.engine.submit([answer.completion_tokens], lambda: done(answer), call=False)

    def close(self) -> None:
        pass
