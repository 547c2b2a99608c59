"""Environment work for the continuous engine, run beside generation: one thread per environment pool.

The engine asks for a reset, a step or a release and goes on; each pool's thread runs what was asked of
it in batches (releases first, then every pending step in one ``step_many``, then resets, at most one
game per worker process per call so that episodes start as their games load) and hands every outcome
back through a callback. A pool is used by its own thread only (``EnvPool`` is not thread-safe).

With several pools (``rollout.plan.open_pools`` opens one single-process pool per worker), a game
loading in one process holds up only the episodes that live in that process: the steps of every other
process go on.

Slots are numbered by the driver across its pools. A pool call that raises (a worker that would not
start) is handed back as :class:`DriverFailure`: the engine raises it, as the lock-step engine would have.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.rollout.collaborators import EpisodePool


@dataclass(frozen=True)
class ResetDone:
    task: TaskInfo
    outcome: tuple[int, ResetResult] | EnvError
    """(the driver's slot, the first observation), or why the game did not start."""


@dataclass(frozen=True)
class StepDone:
    slot: int
    outcome: StepResult | EnvError


@dataclass(frozen=True)
class DriverFailure:
    error: BaseException


EnvEvent = ResetDone | StepDone | DriverFailure


@dataclass
class _PoolWork:
    """What one pool's thread has been asked to do, and how many episodes live in its pool."""

    pool: EpisodePool
    resets: list[TaskInfo] = field(default_factory=list)
    steps: list[tuple[int, str]] = field(default_factory=list)
    """(the pool's own slot, action)."""
    releases: list[int] = field(default_factory=list)
    live: int = 0
    starting: int = 0
    """Resets asked for and not answered yet."""


class EnvDriver:
    """Runs resets, steps and releases on ``pools`` from one thread per pool; outcomes go to ``deliver``."""

    def __init__(self, pools: Sequence[EpisodePool], deliver: Callable[[EnvEvent], None]) -> None:
        if not pools:
            raise ValueError("the environment driver needs at least one pool")
        self._work = [_PoolWork(pool) for pool in pools]
        self._deliver = deliver
        self._slots: dict[int, tuple[int, int]] = {}
        """The driver's slot -> (pool index, the pool's slot)."""
        self._next_slot = 0
        self._closed = False
        self._changed = threading.Condition()
        self._threads = [
            threading.Thread(target=self._serve, args=(index,), name=f"env-pool-{index}", daemon=True)
            for index in range(len(pools))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return sum(work.pool.workers for work in self._work)

    def reset(self, task: TaskInfo) -> None:
        """Start an episode of ``task`` in the pool with the fewest episodes (live and starting)."""
        with self._changed:
            work = min(self._work, key=lambda item: item.live + item.starting)
            work.resets.append(task)
            work.starting += 1
            self._changed.notify_all()

    def step(self, slot: int, action: str) -> None:
        with self._changed:
            index, local = self._slots[slot]
            self._work[index].steps.append((local, action))
            self._changed.notify_all()

    def release(self, slot: int) -> None:
        with self._changed:
            index, local = self._slots.pop(slot)
            work = self._work[index]
            work.releases.append(local)
            work.live -= 1
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the threads once their pool calls in progress return (the pools stay open)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _serve(self, index: int) -> None:
        work = self._work[index]
        while True:
            with self._changed:
                while not (work.resets or work.steps or work.releases or self._closed):
                    self._changed.wait()
                if self._closed:
                    return
                releases, work.releases = work.releases, []
                steps, work.steps = work.steps, []
                resets = work.resets[: work.pool.workers]
                del work.resets[: len(resets)]
            try:
                for local in releases:
                    work.pool.release(local)
                if steps:
                    self._steps_done(index, steps, work.pool.step_many(steps))
                if resets:
                    self._resets_done(index, resets, work.pool.reset_many(resets))
            except BaseException as error:  # the engine raises it
                self._deliver(DriverFailure(error))
                return

    def _steps_done(
        self, index: int, steps: list[tuple[int, str]], outcomes: list[StepResult | EnvError]
    ) -> None:
        with self._changed:
            by_local = {local: slot for slot, (pool, local) in self._slots.items() if pool == index}
        for (local, _), outcome in zip(steps, outcomes, strict=True):
            self._deliver(StepDone(by_local[local], outcome))

    def _resets_done(
        self, index: int, tasks: list[TaskInfo], outcomes: list[tuple[int, ResetResult] | EnvError]
    ) -> None:
        events: list[ResetDone] = []
        with self._changed:
            self._work[index].starting -= len(tasks)
            for task, outcome in zip(tasks, outcomes, strict=True):
                if isinstance(outcome, EnvError):
                    events.append(ResetDone(task, outcome))
                    continue
                local, reset = outcome
                slot, self._next_slot = self._next_slot, self._next_slot + 1
                self._slots[slot] = (index, local)
                self._work[index].live += 1
                events.append(ResetDone(task, (slot, reset)))
        for event in events:
            self._deliver(event)
