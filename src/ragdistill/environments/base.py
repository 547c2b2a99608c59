"""The environment protocol: the only surface agents and rollouts see.

Shaped like Gymnasium / verifiers: ``reset`` a task, ``step`` an action, read the available actions and
the task's metadata. Agents never reach inside an environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ragdistill.errors import UserFacingError


@dataclass(frozen=True)
class TaskInfo:
    """What is known about a task before it is played."""

    env: str
    split: str
    task_id: str
    task_type: str
    instruction: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    observation: str
    reward: float
    done: bool
    won: bool
    available_actions: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    """Facts about the step beyond the observation (WebShop: every part of the reward on a purchase)."""


@dataclass(frozen=True)
class ResetResult:
    task: TaskInfo
    observation: str
    available_actions: list[str]


@runtime_checkable
class Env(Protocol):
    """One episode at a time over one task."""

    name: str

    def reset(self, task: TaskInfo) -> ResetResult: ...

    def step(self, action: str) -> StepResult: ...

    def expert_actions(self) -> list[str]:
        """An action list that wins the current task (ALFWorld: the game's walkthrough)."""
        ...

    def close(self) -> None: ...


class EnvError(UserFacingError, RuntimeError):
    """The environment could not load or play a task; the message names the task and the cause.

    ``transient`` marks a fault of the machinery rather than of the task (a worker process that died or
    stopped answering): the same task may well play fine when tried again."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
