"""Play tasks of an environment end to end through the pool with a scripted policy.

``expert`` plays the environment's expert actions (ALFWorld: the game's walkthrough), so its success
rate checks that games load, actions parse and wins register; ``random`` picks uniformly among the
available actions (seeded per task, so a run is reproducible whatever the worker scheduling) and
gives the floor a learned agent must beat.
"""

from __future__ import annotations

import inspect
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragdistill.environments.base import EnvError, TaskInfo
from ragdistill.environments.pool import EnvPool
from ragdistill.environments.registry import get_env, list_tasks

Policy = Literal["expert", "random"]


@dataclass
class _Episode:
    slot: int
    task: TaskInfo
    available: list[str]
    plan: deque[str] = field(default_factory=deque)
    rng: random.Random | None = None
    steps: int = 0


@dataclass(frozen=True)
class Outcome:
    task: TaskInfo
    won: bool
    steps: int
    error: str | None = None
    reward: float = 0.0


def _next_action(episode: _Episode, policy: Policy) -> str | None:
    if policy == "expert":
        return episode.plan.popleft() if episode.plan else None
    assert episode.rng is not None
    return episode.rng.choice(episode.available) if episode.available else None


def play(
    pool: EnvPool,
    tasks: list[TaskInfo],
    policy: Policy,
    *,
    seed: int = 42,
    max_steps: int = 50,
    concurrency: int | None = None,
) -> list[Outcome]:
    """Play every task with ``policy``, keeping up to ``concurrency`` episodes alive; outcomes in task order."""
    if policy not in ("expert", "random"):
        raise ValueError(f"unknown policy {policy!r}; choose expert or random")
    concurrency = concurrency or 4 * pool.workers
    queue = deque(enumerate(tasks))
    outcomes: dict[int, Outcome] = {}
    active: dict[int, tuple[int, _Episode]] = {}

    def finish(slot: int, won: bool, error: str | None = None, reward: float = 0.0) -> None:
        index, episode = active.pop(slot)
        outcomes[index] = Outcome(episode.task, won, episode.steps, error, reward)
        pool.release(slot)

    while queue or active:
        admitted = [queue.popleft() for _ in range(min(len(queue), concurrency - len(active)))]
        if admitted:
            for (index, task), started in zip(
                admitted, pool.reset_many([task for _, task in admitted]), strict=True
            ):
                if isinstance(started, EnvError):
                    outcomes[index] = Outcome(task, False, 0, str(started))
                    continue
                slot, reset = started
                episode = _Episode(slot, reset.task, reset.available_actions)
                if policy == "expert":
                    episode.plan = deque(pool.expert_actions(slot))
                else:
                    episode.rng = random.Random(f"{seed}:{task.env}:{task.split}:{task.task_id}")
                active[slot] = (index, episode)
        moves: list[tuple[int, str]] = []
        for slot, (_, episode) in list(active.items()):
            action = _next_action(episode, policy) if episode.steps < max_steps else None
            if action is None:
                finish(slot, won=False)
            else:
                moves.append((slot, action))
        for (slot, _), result in zip(moves, pool.step_many(moves) if moves else [], strict=True):
            episode = active[slot][1]
            episode.steps += 1
            if isinstance(result, EnvError):
                finish(slot, won=False, error=str(result))
            elif result.done:
                finish(slot, won=result.won, reward=result.reward)
            else:
                episode.available = result.available_actions
    return [outcomes[index] for index in range(len(tasks))]


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    def stats(group: list[Outcome]) -> dict[str, Any]:
        won = sum(outcome.won for outcome in group)
        return {
            "episodes": len(group),
            "won": won,
            "success_rate": round(won / len(group), 4) if group else 0.0,
            "mean_steps": round(sum(outcome.steps for outcome in group) / len(group), 2) if group else 0.0,
            "errors": sum(outcome.error is not None for outcome in group),
        }

    by_type: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_type.setdefault(outcome.task.task_type, []).append(outcome)
    return {
        **stats(outcomes),
        "mean_reward": round(sum(outcome.reward for outcome in outcomes) / len(outcomes), 4)
        if outcomes
        else 0.0,
        "by_task_type": {name: stats(group) for name, group in sorted(by_type.items())},
    }


def check_env(
    env_name: str,
    *,
    split: str,
    limit: int | None,
    policy: Policy,
    workers: int = 2,
    data_dir: Path | str = "data",
    seed: int = 42,
    max_steps: int = 50,
    balanced: bool | None = True,
    concurrency: int | None = None,
) -> dict[str, Any]:
    """List tasks, play them through an :class:`EnvPool`, return the summary (JSON-able).

    ``balanced=None`` leaves task order to the environment's lister default. An environment registered
    with a ``check_report`` adds its facts under ``report``."""
    started = time.monotonic()
    spec = get_env(env_name)
    options: dict[str, Any] = {"data_dir": data_dir, "split": split, "limit": limit}
    if balanced is not None and "balanced" in inspect.signature(spec.task_lister).parameters:
        options["balanced"] = balanced
    tasks = list_tasks(env_name, **options)
    if not tasks:
        raise EnvError(f"{env_name} split {split!r} has no tasks to play")
    with EnvPool(env_name, workers=min(workers, len(tasks)), data_dir=data_dir) as pool:
        outcomes = play(pool, tasks, policy, seed=seed, max_steps=max_steps, concurrency=concurrency)
    summary = summarize(outcomes)
    errors = [f"{outcome.task.task_id}: {outcome.error}" for outcome in outcomes if outcome.error]
    result = {
        "env": env_name,
        "split": split,
        "policy": policy,
        "seed": seed,
        "max_steps": max_steps,
        "workers": workers,
        **summary,
        "error_messages": errors[:10],
        "seconds": round(time.monotonic() - started, 2),
    }
    if spec.check_report is not None:
        result["report"] = spec.check_report(data_dir=data_dir, tasks=tasks, summary=result)
    return result
