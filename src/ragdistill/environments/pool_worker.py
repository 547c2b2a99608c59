"""One worker process of an :class:`~ragdistill.environments.pool.EnvPool`: the loop that runs in it,
and the parent's handle on it (start, hear from, stop).

The parent sends a list of ops in one message (``reset``, ``step``, ``expert`` or ``release``, each for
one slot) and receives the list of replies, ``(ok, value)``, in the same order. A worker holds one
environment object per slot; an exception there comes back as that op's failed reply, naming the task.
It ignores Ctrl-C (the parent decides) and exits on ``None``, at EOF, or when the parent disappears.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from ragdistill.environments.base import Env, EnvError, TaskInfo
from ragdistill.environments.registry import EnvFactory

Op = tuple[Literal["reset", "step", "expert", "release"], int, Any]
Reply = tuple[bool, Any]


def task_label(task: TaskInfo | None, slot: int) -> str:
    return f"{task.env} {task.split}/{task.task_id}" if task is not None else f"slot {slot}"


def _run_op(
    op: Op, envs: dict[int, Env], tasks: dict[int, TaskInfo], factory: EnvFactory, kwargs: dict[str, Any]
) -> Reply:
    kind, slot, payload = op
    try:
        if kind == "release":
            tasks.pop(slot, None)
            env = envs.pop(slot, None)
            if env is not None:
                env.close()
            return True, None
        if kind == "reset":
            tasks[slot] = payload
            if slot not in envs:
                envs[slot] = factory(**kwargs)
            return True, envs[slot].reset(payload)
        if slot not in envs:
            return False, f"slot {slot} holds no episode in this worker"
        if kind == "step":
            return True, envs[slot].step(payload)
        return True, envs[slot].expert_actions()
    except EnvError as error:
        return False, str(error)
    except Exception as error:
        return False, f"{task_label(tasks.get(slot), slot)}: {kind} failed: {type(error).__name__}: {error}"


def _worker_main(conn: Connection, factory: EnvFactory, kwargs: dict[str, Any]) -> None:
    """A worker's loop: receive a list of ops, reply with a list of results; ``None`` or EOF ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs: dict[int, Env] = {}
    tasks: dict[int, TaskInfo] = {}
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            conn.send([_run_op(op, envs, tasks, factory, kwargs) for op in message])
    finally:
        for env in envs.values():
            with contextlib.suppress(Exception):
                env.close()
        conn.close()


@dataclass(eq=False)
class WorkerProcess:
    """One worker process; compared and hashed by identity (the pool keys its messages by worker)."""

    index: int
    process: BaseProcess
    conn: Connection
    slots: set[int] = field(default_factory=set)
    releases: list[int] = field(default_factory=list)
    games: int = 0
    started: bool = True
    broken: bool = False


def start_worker(
    start_method: Literal["spawn", "forkserver"],
    env_name: str,
    index: int,
    factory: EnvFactory,
    kwargs: dict[str, Any],
) -> WorkerProcess:
    """Start worker ``index``; it counts as started once :func:`await_ready` has heard from it."""
    context = multiprocessing.get_context(start_method)
    parent_conn, child_conn = context.Pipe(duplex=True)
    process = context.Process(
        target=_worker_main,
        args=(child_conn, factory, kwargs),
        name=f"ragdistill-{env_name}-worker-{index}",
        daemon=True,
    )
    process.start()
    child_conn.close()
    return WorkerProcess(index, process, parent_conn, started=False)


def await_ready(worker: WorkerProcess, env_name: str, timeout_s: float) -> WorkerProcess:
    """Wait for the worker's "ready"; one that does not say it in ``timeout_s`` or exits raises."""
    if not worker.conn.poll(timeout_s):
        raise EnvError(f"{env_name} worker {worker.index} did not start within {timeout_s}s")
    try:
        worker.conn.recv()
    except EOFError:
        worker.process.join(2.0)
        raise EnvError(
            f"{env_name} worker {worker.index} exited at start (exit code {worker.process.exitcode}); "
            "a script that builds a pool must do so under `if __name__ == '__main__':` (spawned workers "
            "re-import the main module)"
        ) from None
    worker.started = True
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    """Ask the process to exit, then stop it (terminate, then kill) and close its pipe."""
    with contextlib.suppress(OSError, ValueError):
        worker.conn.send(None)
    stop_process(worker.process)
    worker.conn.close()


def stop_process(process: BaseProcess, grace_s: float = 5.0) -> None:
    process.join(grace_s)
    if process.is_alive():
        process.terminate()
        process.join(2.0)
    if process.is_alive():
        process.kill()
        process.join(2.0)
