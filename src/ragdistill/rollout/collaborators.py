"""What a rollout engine plays with and gives back: the hint source it asks once per episode, the
environment pool it steps, the sink its records go to, its progress callback and its run's counts.
Its own state (episodes in play, settings) stays in :mod:`ragdistill.rollout.engine`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.episodes import EpisodeRecord


@dataclass(frozen=True)
class RetrievedHints:
    """What a hint source gives one episode at its start."""

    texts: list[str]
    ids: list[str]
    tokens: int = 0
    reason: str | None = None  # why fewer than k hints came back, when they did


class HintSource(Protocol):
    """Retrieves hints once per episode, for a whole batch of starting episodes at a time."""

    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]: ...


class RecordSink(Protocol):
    """Where finished episodes go (``store.RecordLog``): one call per episode, durable on return."""

    def append(self, record: dict[str, Any]) -> None: ...


class EpisodePool(Protocol):
    """The part of the environment pool the engine uses (see ``environments.pool.EnvPool``)."""

    @property
    def workers(self) -> int: ...

    def reset_many(self, tasks: Sequence[TaskInfo]) -> list[tuple[int, ResetResult] | EnvError]: ...

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]: ...

    def release(self, slot: int) -> None: ...


@dataclass
class RolloutStats:
    finished: int = 0
    won: int = 0
    errors: int = 0
    transient_errors: int = 0
    model_calls: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    started_task_ids: list[str] = field(default_factory=list)


ProgressCallback = Callable[[EpisodeRecord, int, int], None]
"""Called after each finished episode with (record, finished so far, episodes in this run)."""
