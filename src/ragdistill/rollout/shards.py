"""Rollout shards: a rollout's task list split into parts that are played in parallel, each into its own
folder, and merged into the stage's records when they end.

- **Split**: round-robin over the pinned task list (task ``i`` goes to shard ``i % shards``). A task's
  shard depends only on the list and the shard count, and a larger task list (it grows at its end)
  leaves every earlier task in its shard.
- **Records**: shard ``k`` appends its episodes under ``<stage>/shards/<k>/parts/``, under its own lease
  (``<stage>/shards/<k>/.lease-*``, so a shard left running by a killed driver, e.g. on a Ray cluster, is
  never written twice). Every run of the stage first merges whatever shard folders it finds into the
  stage's own record log and removes them, then plays only the tasks without a finished record, and
  merges again before compacting and writing the manifest. A killed run therefore keeps every episode
  any shard finished, whatever the shard count of the next run.
- **Runners**: a :data:`ShardRunner` plays a list of :class:`ShardJob` and returns their stats. The
  default (``rollout.play.run_in_threads``) plays them as threads of this process that share one engine
  (generate calls are serialised: one in-process vLLM engine serves one batch at a time); the Prefect
  tasks install a runner that submits one Prefect task per shard on the configured task runner
  (``tasks.shards.prefect_shard_runner``) with :func:`use_shard_runner`.

Neither the shard count nor the runner is part of the stage's identity: the stage's records, files and
counts are the same set of episodes at the same paths however they were played.
"""

from __future__ import annotations

import posixpath
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar

from ragdistill.config.run_context import RunContext
from ragdistill.environments.base import TaskInfo
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.inference.shared import shared_backend
from ragdistill.inference.streaming import GenerationStream
from ragdistill.layout import SHARDS_DIR
from ragdistill.rollout.collaborators import ProgressCallback, RolloutStats
from ragdistill.rollout.plan import RolloutPlan
from ragdistill.store import ArtifactStore, RecordLog

if TYPE_CHECKING:
    from ragdistill.episodes import EpisodeRecord

_SHARD_FOLDER = re.compile(r"^(\d{3})$")
T = TypeVar("T")


def split_round_robin(items: Sequence[T], shards: int) -> list[list[T]]:
    """``shards`` lists; item ``i`` lands in list ``i % shards``."""
    return [list(items[index::shards]) for index in range(shards)]


def shard_dir(prefix: str, index: int) -> str:
    return f"{prefix.strip('/')}/{SHARDS_DIR}/{index:03d}"


@dataclass
class ShardJob:
    """One shard of one rollout stage: what a runner needs to play it, in this process or another."""

    ctx: RunContext
    plan: RolloutPlan
    index: int
    count: int
    tasks: list[TaskInfo]
    """The shard's tasks still without a finished record."""
    backend: Backend | None = None
    """A backend to play with instead of the role's shared engine (must be picklable for Ray)."""
    progress: ProgressCallback | None = None
    """In-process only: never sent to another process."""

    @property
    def name(self) -> str:
        return f"{self.plan.stage}-shard-{self.index}-of-{self.count}"


ShardRunner = Callable[[list[ShardJob]], list[RolloutStats]]
"""Plays every job (in parallel where it can) and returns their stats in the same order."""


class SerializedBackend:
    """A backend shared by threads: one ``generate`` call at a time reaches it, and one ``count_tokens``
    call (a count never waits for a generation). A backend with a stream of its own (vLLM, openai) is
    shared through it: the stream takes every thread's requests into one batch."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.name = backend, backend.name
        self._lock = threading.Lock()
        self._counting = threading.Lock()

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        with self._lock:
            return self.backend.generate(requests)

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        with self._counting:
            return self.backend.count_tokens(messages, completion)

    def open_stream(self) -> GenerationStream | None:
        opener = getattr(self.backend, "open_stream", None)
        return opener() if opener is not None else None

    def close(self) -> None:
        self.backend.close()


def for_threads(jobs: list[ShardJob]) -> list[ShardJob]:
    """The jobs with one serialised backend between them (the one given, else the role's engine)."""
    if not jobs:
        return jobs
    backend = jobs[0].backend or shared_backend(jobs[0].plan.role)
    shared = backend if isinstance(backend, SerializedBackend) else SerializedBackend(backend)
    return [replace(job, backend=shared) for job in jobs]


_RUNNER: ContextVar[ShardRunner | None] = ContextVar("ragdistill_shard_runner", default=None)


@contextmanager
def use_shard_runner(runner: ShardRunner) -> Iterator[None]:
    """Rollouts started inside the block play their shards with ``runner``."""
    token = _RUNNER.set(runner)
    try:
        yield
    finally:
        _RUNNER.reset(token)


def installed_shard_runner() -> ShardRunner | None:
    """The runner :func:`use_shard_runner` installed around this call, if any."""
    return _RUNNER.get()


def shard_logs(store: ArtifactStore, prefix: str, shard_size: int) -> list[RecordLog]:
    """The record log of every shard folder under a stage folder, in folder order."""
    base = f"{prefix.strip('/')}/{SHARDS_DIR}"
    folders = sorted(
        {
            posixpath.relpath(path, base).split("/", 1)[0]
            for path in store.list(base)
            if _SHARD_FOLDER.match(posixpath.relpath(path, base).split("/", 1)[0])
        }
    )
    return [
        RecordLog(store, f"{base}/{folder}", key=lambda record: record["task_id"], shard_size=shard_size)
        for folder in folders
    ]


def merge_shards(records: RecordLog) -> int:
    """Move every shard folder's records into the stage's log (appended, so they win over an earlier
    record of the same task) and remove the shard folders; the number of records moved. A crash midway
    leaves the records in both places, which the next merge settles the same way."""
    logs = shard_logs(records.store, records.prefix, records.shard_size)
    moved = 0
    for log in logs:
        for record in log.records():
            records.append(record)
            moved += 1
    for log in logs:
        log.remove()
    if logs:
        records.store.remove_empty_folders(f"{records.prefix}/{SHARDS_DIR}")
    return moved


def combined_progress(progress: ProgressCallback | None, total: int) -> ProgressCallback | None:
    """One progress callback for every thread's episodes: ``finished`` counts across shards."""
    if progress is None:
        return None
    lock, finished = threading.Lock(), [0]

    def on_episode(record: EpisodeRecord, _finished: int, _total: int) -> None:
        with lock:
            finished[0] += 1
            progress(record, finished[0], total)

    return on_episode


def total_stats(results: Sequence[RolloutStats]) -> RolloutStats:
    total = RolloutStats()
    for stats in results:
        total.finished += stats.finished
        total.won += stats.won
        total.errors += stats.errors
        total.transient_errors += stats.transient_errors
        total.model_calls += stats.model_calls
        total.completion_tokens += stats.completion_tokens
        total.seconds = max(total.seconds, stats.seconds)
        total.started_task_ids.extend(stats.started_task_ids)
    return total
