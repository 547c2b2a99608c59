"""A cheap scripted environment for testing the pool and the checker with real worker processes.

Registered as ``counter-double`` on import; spawned workers import this module by name to unpickle
the factory, so it must stay importable from the tests folder.
"""

from __future__ import annotations

import os
from dataclasses import replace

from ragdistill.environments.alfworld.hints import ALFWORLD_HINT_STYLE
from ragdistill.environments.alfworld.profile import ALFWORLD_AGENT_STYLE
from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.environments.profile import EnvProfile
from ragdistill.environments.registry import register_env

DOUBLE = "counter-double"


class CounterEnvDouble:
    """Counts ``inc`` actions and wins at ``goal``; task ids ``bad`` / ``boom`` fail to load, ``die`` kills."""

    name = DOUBLE

    def __init__(self, goal: int = 3, data_dir: object = None) -> None:
        self.goal = goal
        self.count = 0
        self.task: TaskInfo | None = None

    def reset(self, task: TaskInfo) -> ResetResult:
        if task.task_id == "bad":
            raise EnvError(f"{DOUBLE} game {task.task_id} is broken")
        if task.task_id == "boom":
            raise ValueError("unexpected parser failure")
        self.task, self.count = task, 0
        return ResetResult(task, f"start {task.task_id} in {os.getpid()}", ["inc", "wait"])

    def step(self, action: str) -> StepResult:
        if action == "die":
            os._exit(3)
        if action == "inc":
            self.count += 1
        won = self.count >= self.goal
        return StepResult(
            f"{self.task.task_id if self.task else '?'}:{self.count}", float(won), won, won, ["inc", "wait"]
        )

    def expert_actions(self) -> list[str]:
        return ["inc"] * self.goal

    def close(self) -> None:
        self.task = None


def list_counter_tasks(limit: int | None = None, **_: object) -> list[TaskInfo]:
    """Tasks t0, t1, … of two types (even, odd); four unless ``limit`` says otherwise."""
    return [TaskInfo(DOUBLE, "test", f"t{index}", ("even", "odd")[index % 2]) for index in range(limit or 4)]


COUNTER_PROFILE_DOUBLE = EnvProfile(
    name=DOUBLE,
    task_groups=("even", "odd", "count"),
    group_label="Task type",
    invalid_observation="Nothing happens.",
    agent=ALFWORLD_AGENT_STYLE,
    hints=replace(ALFWORLD_HINT_STYLE, description="a counting game"),
    default_max_invalid=1,
)
"""The counter game speaks like ALFWorld (its agent and hint styles) and offers no few-shot examples."""

register_env(DOUBLE, CounterEnvDouble, list_counter_tasks, COUNTER_PROFILE_DOUBLE, replace=True)


def tasks(*ids: str) -> list[TaskInfo]:
    return [TaskInfo(DOUBLE, "test", task_id, "count") for task_id in ids]
