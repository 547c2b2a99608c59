"""The continuous rollout engine: episodes never wait for each other (``rollout.schedule: continuous``).

Each episode sends its next request the moment its environment step returns; the backend batches
whatever is pending (``inference.streaming``: vLLM adds it to the running engine at its next step, the
openai backend sends it at once, any other backend gets every pending request in its next ``generate``
call). Environment steps and game loads run in the pools' own threads (``rollout.env_driver``) while the
model generates for the other episodes, and a finished episode's place is given to the next task at once.

Everything an episode is and does is :class:`~ragdistill.rollout.engine.RolloutEngine`'s: the same
prompt, context budget, parsing, stop rules, records, hints and faults, so a deterministic model plays
the same records under either engine (``tests/test_rollout_continuous.py``); only the order in which
episodes finish differs. All episode state lives in the thread that calls :meth:`run`: the stream's and
the pools' threads only put their answers on one queue, which that thread reads.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ragdistill.agents.control import ContextBudgetError
from ragdistill.environments.base import TaskInfo
from ragdistill.inference.base import GenerationRequest
from ragdistill.inference.streaming import Answer, GenerationStream, open_stream
from ragdistill.messages import render_messages
from ragdistill.rollout.collaborators import RolloutStats
from ragdistill.rollout.engine import ActiveEpisode, AnsweredTurn, RolloutEngine
from ragdistill.rollout.env_driver import DriverFailure, EnvDriver, EnvEvent, ResetDone, StepDone


@dataclass(frozen=True)
class _Generated:
    slot: int
    dropped: int
    """History turns dropped from the prompt to fit the context."""
    answer: Answer


_Event = EnvEvent | _Generated


class ContinuousRolloutEngine(RolloutEngine):
    """Plays tasks with up to ``batch_size`` episodes in flight, each at its own pace.

    ``pool`` is one environment pool or several (``rollout.plan.open_pools``): each is driven by its own
    thread, so a game loading in one holds up only the episodes that live in it.
    """

    takes_many_pools = True

    def run(self, tasks: Sequence[TaskInfo]) -> RolloutStats:
        """Play every task; returns when each has a record."""
        start = time.perf_counter()
        self._total = len(tasks)
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._active: dict[int, ActiveEpisode] = {}
        self._waiting_for_env: dict[int, AnsweredTurn] = {}
        self._stream: GenerationStream | None = None
        pending = deque(tasks)
        starting = 0
        self._env = EnvDriver(self.pools, self._events.put)
        try:
            self._stream = open_stream(self.backend)
            while True:
                while pending and starting + len(self._active) < self.settings.batch_size:
                    self._env.reset(pending.popleft())
                    starting += 1
                if not starting and not self._active:
                    break
                events = self._next_events()
                resets = [event for event in events if isinstance(event, ResetDone)]
                if resets:
                    starting -= len(resets)
                    self._begin(resets)
                for event in events:
                    self._handle(event)
        finally:
            if self._stream is not None:
                self._stream.close()
            self._env.close()
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    def _next_events(self) -> list[_Event]:
        """Every answer that has arrived, waiting for one if none has."""
        events = [self._events.get()]
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def _begin(self, resets: list[ResetDone]) -> None:
        """Start the episodes whose games loaded (hints for all of them in one call) and ask for their
        first output; a game that failed to load is written as that task's error record."""
        started = self._start([event.task for event in resets], [event.outcome for event in resets])
        for episode in started:
            self._active[episode.slot] = episode
            self._ask(episode)

    def _handle(self, event: _Event) -> None:
        if isinstance(event, DriverFailure):
            raise event.error
        if isinstance(event, _Generated):
            self._answered_by_model(event)
        elif isinstance(event, StepDone):
            turn = self._waiting_for_env.pop(event.slot)
            if self._settle(turn, event.outcome):
                self._ask(turn.episode)

    def _answered_by_model(self, event: _Generated) -> None:
        if isinstance(event.answer, BaseException):
            raise event.answer
        turn = self._answered(self._active[event.slot], event.dropped, event.answer)
        if turn is None:
            return
        if turn.env_action is not None:
            self._waiting_for_env[event.slot] = turn
            self._driver().step(event.slot, turn.env_action)
        elif self._settle(turn, None):
            self._ask(turn.episode)

    def _ask(self, episode: ActiveEpisode) -> None:
        """Send the episode's next request, or finish it when its fixed prompt no longer fits."""
        try:
            segments, dropped = self._fit(episode)
        except ContextBudgetError as error:
            self._finish(
                episode, "context_overflow", won=False, reward=0.0, error=str(error), error_kind="request"
            )
            return
        request = GenerationRequest.sampled(
            render_messages(segments),
            self.sampling,
            stop=list(self.fmt.stop),
            adapter=self.settings.adapter_path,
        )
        slot, events = episode.slot, self._events

        def done(answer: Answer) -> None:
            events.put(_Generated(slot, dropped, answer))

        if self._stream is None:
            raise RuntimeError("the continuous engine asked for a generation outside run()")
        self._stream.submit(request, done)

    def _release(self, slot: int) -> None:
        self._active.pop(slot, None)
        self._driver().release(slot)

    def _driver(self) -> EnvDriver:
        if self._env is None:
            raise RuntimeError("the continuous engine stepped an environment outside run()")
        return self._env
