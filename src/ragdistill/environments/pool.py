"""Many episodes at once over a fixed number of worker processes.

The rollout engine keeps N episodes alive (N may exceed the number of workers) and steps all of them
every turn. Each episode lives in a *slot*: an id the pool hands out at reset, pinned to one worker
process that holds one environment object per slot. A batch call sends every process its share of the
work in one message, then gathers the replies, so processes run in parallel while each plays its own
slots in order. Processes are reused across games: loading an ALFWorld game costs 1-3 s, a process
costs that plus imports.

Worker processes are recycled: each game loaded leaves memory behind that TextWorld never frees
(every ALFWorld load maps a fresh copy of fast-downward's shared library, ~5 MB a game, measured).
No process ever loads more than ``recycle_after`` games. One that has is *retired*: it takes no new
games, keeps playing the episodes it holds and is told to exit when its last one is released, while
a fresh process takes its place for new games at once. So ``workers`` processes take new games and
the retiring ones come on top: for a while there are more processes than ``workers``. A worker's
retiring predecessor normally finishes its episodes long before the worker wears out too (the default
200 games against a rollout's few dozen live episodes per worker), so there is at most one retiring
process per worker index. Only a batch of live episodes far beyond ``workers * recycle_after`` needs
more; the pool then still keeps the per-process limit, and since every retiring process holds a live
episode there are never more than ``workers`` plus the live episodes.

Workers are started with ``spawn`` (safe next to the threads of an inference engine): a script
that builds a pool must do so under ``if __name__ == "__main__":``.

Failures stay per episode: an exception inside a worker (a broken game file, a crashing action)
comes back as an :class:`EnvError` in that item's place, naming the task. A worker that dies or hangs
is replaced (a retiring one is just dropped); the episodes it held come back as errors. Workers
ignore Ctrl-C (the parent decides) and exit when the parent closes the pool or disappears.

This module is the parent's side: slots, batching, recycling and recovery. What runs in a worker
process, and how one is started and stopped, is ``environments.pool_worker``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.environments.pool_worker import (
    Op,
    Reply,
    WorkerProcess,
    await_ready,
    start_worker,
    stop_process,
    stop_worker,
    task_label,
)
from ragdistill.environments.registry import get_env


class EnvPool:
    """Worker processes that reset and step many episodes of one environment in parallel.

    ``EnvPool("alfworld", {"data_dir": "data"}, workers=2)`` or ``EnvPool("alfworld", workers=2,
    data_dir="data")``: ``env_kwargs`` and extra keyword arguments go to the environment's factory.
    ``recycle_after`` caps the games one process loads (``None``: no cap). Use it as a context manager
    (or call :meth:`close`) so the workers always stop.
    """

    def __init__(
        self,
        env_name: str,
        env_kwargs: Mapping[str, Any] | None = None,
        workers: int = 2,
        *,
        start_method: Literal["spawn", "forkserver"] = "spawn",
        op_timeout_s: float = 600.0,
        start_timeout_s: float = 120.0,
        recycle_after: int | None = 200,
        **kwargs: Any,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if recycle_after is not None and recycle_after < 1:
            raise ValueError(f"recycle_after must be at least 1 (or None for no limit), got {recycle_after}")
        self.env_name = env_name
        self._factory = get_env(env_name).factory
        self._kwargs = {**(env_kwargs or {}), **kwargs}
        self._start_method = start_method
        self._op_timeout_s = op_timeout_s
        self._start_timeout_s = start_timeout_s
        self._recycle_after = recycle_after
        self._workers: list[WorkerProcess] = []
        self._retiring: list[WorkerProcess] = []
        self._exiting: list[WorkerProcess] = []
        self._games_by_pid: dict[int, int] = {}
        self._slot_worker: dict[int, WorkerProcess] = {}
        self._lost: dict[int, str] = {}
        self._next_slot = 0
        self._closed = False
        try:
            for index in range(workers):
                self._workers.append(self._spawn(index))
            for worker in self._workers:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerProcess:
        """Start a process; it counts as started once :meth:`_await_ready` has heard from it."""
        worker = start_worker(self._start_method, self.env_name, index, self._factory, self._kwargs)
        if worker.process.pid is not None:
            self._games_by_pid[worker.process.pid] = 0
        return worker

    def _await_ready(self, worker: WorkerProcess) -> WorkerProcess:
        return await_ready(worker, self.env_name, self._start_timeout_s)

    @property
    def workers(self) -> int:
        """The number of processes that take new games (retiring ones not counted)."""
        return len(self._workers)

    def worker_pids(self) -> list[int]:
        """The processes that take new games, by worker index."""
        return [worker.process.pid for worker in self._workers if worker.process.pid is not None]

    def retiring_pids(self) -> list[int]:
        """Processes that have loaded ``recycle_after`` games and still play episodes they hold."""
        return [worker.process.pid for worker in self._retiring if worker.process.pid is not None]

    def games_played_by_pid(self) -> dict[int, int]:
        """Every process this pool started, alive or not, and how many games it was given to load."""
        return dict(self._games_by_pid)

    def live_slots(self) -> list[int]:
        return sorted(self._slot_worker)

    def close(self) -> None:
        """Stop every process: ask politely, then terminate, then kill. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        everyone = self._workers + self._retiring + self._exiting
        for worker in everyone:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in everyone:
            stop_process(worker.process)
            worker.conn.close()
        self._retiring.clear()
        self._exiting.clear()
        self._slot_worker.clear()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.close()

    # ---- episodes --------------------------------------------------------------------------------

    def reset_many(self, tasks: Sequence[TaskInfo]) -> list[tuple[int, ResetResult] | EnvError]:
        """Start one episode per task, each in a new slot on the least-loaded process taking games.

        Returns ``(slot, ResetResult)`` per task, or an :class:`EnvError` (the slot is then freed).
        """
        self._check_open()
        self._reap_exited()
        slots: list[int] = []
        ops: dict[WorkerProcess, list[tuple[int, Op]]] = defaultdict(list)
        for position, task in enumerate(tasks):
            worker = self._worker_for_new_game()
            slot = self._next_slot
            self._next_slot += 1
            worker.slots.add(slot)
            worker.games += 1
            if worker.process.pid is not None:
                self._games_by_pid[worker.process.pid] += 1
            self._slot_worker[slot] = worker
            slots.append(slot)
            ops[worker].append((position, ("reset", slot, task)))
        self._start_fresh_workers(slots)
        replies = self._dispatch(ops, len(tasks))
        results: list[tuple[int, ResetResult] | EnvError] = []
        for slot, (ok, value) in zip(slots, replies, strict=True):
            if ok:
                results.append((slot, value))
            else:
                if slot not in self._lost:
                    self._release_in_worker(slot)
                self._lost.pop(slot, None)
                results.append(value if isinstance(value, EnvError) else EnvError(value))
        return results

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]:
        """Apply one action per live slot (a slot at most once per call); results in input order."""
        self._check_open()
        seen: set[int] = set()
        for slot, _ in actions:
            if slot in seen:
                raise ValueError(f"slot {slot} appears twice in one step_many call")
            seen.add(slot)
        self._reap_exited()
        return self._run_on_slots([(slot, ("step", slot, action)) for slot, action in actions])

    def expert_actions(self, slot: int) -> list[str]:
        """The environment's expert action list for the episode in ``slot`` (ALFWorld: the walkthrough)."""
        self._check_open()
        (value,) = self._run_on_slots([(slot, ("expert", slot, None))])
        if isinstance(value, EnvError):
            raise value
        return list(value)

    def release(self, slot: int) -> None:
        """End the episode in ``slot``: its environment object is closed with the process's next message;
        a retiring process whose last episode this was is told to exit now."""
        if slot in self._lost:
            del self._lost[slot]
            return
        self._release_in_worker(slot)

    # ---- plumbing --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EnvError("the environment pool is closed")

    def _worn_out(self, worker: WorkerProcess) -> bool:
        return worker.broken or (self._recycle_after is not None and worker.games >= self._recycle_after)

    def _worker_for_new_game(self) -> WorkerProcess:
        """The least-loaded process that may load one more game; worn-out ones are retired first and a
        fresh process (started by :meth:`_start_fresh_workers`) takes each one's place."""
        for index, worker in enumerate(self._workers):
            if self._worn_out(worker):
                self._retire(worker)
                self._workers[index] = self._spawn(index)
        return min(self._workers, key=lambda worker: (len(worker.slots), worker.index))

    def _start_fresh_workers(self, slots_of_this_call: list[int]) -> None:
        """Wait for the processes :meth:`_worker_for_new_game` started. If one fails to start, no
        episode of this call begins, the error is raised, and the next call replaces that process."""
        fresh = [worker for worker in self._workers + self._retiring if not worker.started]
        try:
            for worker in fresh:
                self._await_ready(worker)
        except EnvError:
            for worker in fresh:
                worker.broken = worker.broken or not worker.started
            for slot in slots_of_this_call:
                self._slot_worker.pop(slot, None)
            for worker in self._workers + self._retiring:
                worker.slots.difference_update(slots_of_this_call)
            for worker in [worker for worker in self._retiring if not worker.slots]:
                self._retiring.remove(worker)
                self._dismiss(worker)
            raise

    def _retire(self, worker: WorkerProcess) -> None:
        if worker.slots:
            self._retiring.append(worker)
        else:
            self._dismiss(worker)

    def _dismiss(self, worker: WorkerProcess) -> None:
        """Tell a process with no episodes left to exit (it closes its environments on the way out)."""
        with contextlib.suppress(OSError, ValueError):
            worker.conn.send(None)
        self._exiting.append(worker)

    def _reap_exited(self) -> None:
        still: list[WorkerProcess] = []
        for worker in self._exiting:
            worker.process.join(0)
            if worker.process.is_alive():
                still.append(worker)
            else:
                worker.conn.close()
        self._exiting = still

    def _release_in_worker(self, slot: int) -> None:
        """Forget ``slot``; its process closes its environment with the next message, or exits when it
        is retiring and this was its last episode."""
        worker = self._slot_worker.pop(slot, None)
        if worker is None:
            return
        worker.slots.discard(slot)
        if worker in self._retiring and not worker.slots:
            self._retiring.remove(worker)
            self._dismiss(worker)
            return
        worker.releases.append(slot)

    def _run_on_slots(self, items: Sequence[tuple[int, Op]]) -> list[Any]:
        ops: dict[WorkerProcess, list[tuple[int, Op]]] = defaultdict(list)
        early: dict[int, EnvError] = {}
        for position, (slot, op) in enumerate(items):
            if slot in self._lost:
                early[position] = EnvError(self._lost[slot], transient=True)
            elif slot in self._slot_worker:
                ops[self._slot_worker[slot]].append((position, op))
            else:
                raise ValueError(f"slot {slot} holds no live episode (never reset, or already released)")
        replies = self._dispatch(ops, len(items))
        return [
            early[i] if i in early else (value if ok or isinstance(value, EnvError) else EnvError(value))
            for i, (ok, value) in enumerate(replies)
        ]

    def _dispatch(self, ops: Mapping[WorkerProcess, list[tuple[int, Op]]], size: int) -> list[Reply]:
        """Send each process its ops in one message, then collect; replies land at their positions."""
        replies: list[Reply] = [(False, "no reply")] * size
        sent: list[tuple[WorkerProcess, list[tuple[int, Op]], int]] = []
        for worker, items in ops.items():
            releases = [("release", slot, None) for slot in worker.releases]
            worker.releases = []
            try:
                worker.conn.send(releases + [op for _, op in items])
            except (OSError, ValueError) as error:
                self._replace(worker, f"could not reach it ({error})", items, replies)
                continue
            sent.append((worker, items, len(releases)))
        for worker, items, skipped in sent:
            try:
                if not worker.conn.poll(self._op_timeout_s):
                    self._replace(worker, f"no answer within {self._op_timeout_s}s", items, replies)
                    continue
                answer = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(1)
                self._replace(worker, f"it exited (exit code {worker.process.exitcode})", items, replies)
                continue
            for (position, _), reply in zip(items, answer[skipped:], strict=True):
                replies[position] = reply
        return replies

    def _replace(
        self, worker: WorkerProcess, why: str, items: list[tuple[int, Op]], replies: list[Reply]
    ) -> None:
        """A process died or hung: fail its in-flight ops and live slots, stop it, and start a fresh
        process in its place if it was taking new games."""
        message = f"{self.env_name} worker {worker.index} failed: {why}"
        for position, (kind, slot, payload) in items:
            label = task_label(payload, slot) if kind == "reset" else f"slot {slot}"
            replies[position] = (False, EnvError(f"{message}; lost {label}", transient=True))
        for slot in worker.slots:
            self._lost[slot] = f"{message}; the episode in slot {slot} was lost"
            self._slot_worker.pop(slot, None)
        worker.slots.clear()
        stop_worker(worker)
        if worker in self._retiring:
            self._retiring.remove(worker)
        elif self._workers[worker.index] is worker:
            self._workers[worker.index] = self._await_ready(self._spawn(worker.index))
