"""Expert trajectories: play a training game's walkthrough and keep what the environment answered.

Collected once per task type and cached as JSON under ``<data_dir>/fewshot/``; later runs read the
cache. Only training games are used, so examples never come from an evaluation split. The cache holds
one trajectory more than the examples asked for, so that a rollout on a training game can leave out
that game's own solution and still show as many examples. The environment is reached by name through
the registry (``env_name``), never imported.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from ragdistill.environments.base import Env, EnvError, TaskInfo
from ragdistill.environments.registry import list_tasks, make_env
from ragdistill.trajectories import ExpertTrajectory

FEWSHOT_SUBDIR = "fewshot"
CACHE_VERSION = 1
"""Version 1: ``{"version": 1, "trajectories": [...]}``, the first qualifying walkthroughs of a type in
task-list order. A cache with fewer than a call needs is extended in place (see
:func:`load_or_collect_expert_trajectories`), so caches written before the extra trajectory still work."""
DEFAULT_MAX_STEPS = 12
"""Walkthroughs longer than this are skipped: short examples keep the prompt small."""


def play_expert(env: Env, task: TaskInfo) -> ExpertTrajectory:
    """Reset ``task``, play its expert actions, and fail unless they win the game."""
    reset = env.reset(task)
    steps: list[tuple[str, str]] = []
    won = False
    for action in env.expert_actions():
        result = env.step(action)
        steps.append((action, result.observation.strip()))
        if result.done:
            won = result.won
            break
    if not won:
        raise EnvError(
            f"the expert actions of {task.split}/{task.task_id} did not win the game ({len(steps)} steps)"
        )
    return ExpertTrajectory(
        task_id=task.task_id,
        task_type=task.task_type,
        instruction=reset.task.instruction or task.instruction,
        first_observation=reset.observation.strip(),
        steps=steps,
    )


def collect_expert_trajectories(
    data_dir: Path | str,
    task_type: str,
    n: int,
    split: str = "train",
    max_steps: int = DEFAULT_MAX_STEPS,
    env_factory: Callable[[], Env] | None = None,
    *,
    env_name: str,
    known: Mapping[str, ExpertTrajectory] | None = None,
) -> list[ExpertTrajectory]:
    """Play walkthroughs of ``split`` games of ``task_type`` (in the task lister's order) until ``n`` won
    with at most ``max_steps`` steps. Games that fail to load or to win are skipped. A game whose
    trajectory is in ``known`` (by task id, e.g. from a cache) is taken from there instead of played.
    The environment is ``env_factory()`` or else ``make_env(env_name, data_dir=data_dir)``."""
    if n <= 0:
        return []
    tasks = list_tasks(env_name, data_dir=data_dir, split=split, task_types=[task_type], balanced=False)
    known = known or {}
    env: Env | None = None
    trajectories: list[ExpertTrajectory] = []
    problems: list[str] = []
    try:
        for task in tasks:
            trajectory = known.get(task.task_id)
            if trajectory is None:
                if env is None:
                    env = env_factory() if env_factory is not None else make_env(env_name, data_dir=data_dir)
                try:
                    trajectory = play_expert(env, task)
                except EnvError as error:
                    problems.append(str(error))
                    continue
            if len(trajectory.steps) <= max_steps:
                trajectories.append(trajectory)
            if len(trajectories) == n:
                break
    finally:
        if env is not None:
            env.close()
    if len(trajectories) < n:
        raise EnvError(
            f"found only {len(trajectories)} of {n} expert trajectories for {task_type!r} in {split} "
            f"({len(tasks)} games; walkthroughs over {max_steps} steps skipped); problems: {problems[:3]}"
        )
    return trajectories


def cache_path(data_dir: Path | str, task_type: str, split: str = "train", *, env_name: str) -> Path:
    """``<data_dir>/fewshot/expert-<env>-<split>-<type>.json``."""
    return Path(data_dir) / FEWSHOT_SUBDIR / f"expert-{env_name}-{split}-{task_type}.json"


def save_expert_trajectories(path: Path, trajectories: list[ExpertTrajectory]) -> None:
    """Write atomically, so a concurrent reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": CACHE_VERSION, "trajectories": [t.to_dict() for t in trajectories]}
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file, indent=1)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_expert_trajectories(path: Path) -> list[ExpertTrajectory]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot read expert trajectories {path}: {error}; delete the file to rebuild it"
        ) from None
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} is not a version-{CACHE_VERSION} expert cache; delete it to rebuild it")
    return [ExpertTrajectory.from_dict(item) for item in payload["trajectories"]]


def load_or_collect_expert_trajectories(
    data_dir: Path | str,
    task_type: str,
    n: int,
    split: str = "train",
    *,
    exclude_task_id: str | None = None,
    env_name: str,
) -> list[ExpertTrajectory]:
    """``n`` expert trajectories of ``task_type``, none of them ``exclude_task_id``'s.

    The cache keeps ``n + 1`` (so ``n`` remain whichever game is left out); a cache with fewer is
    extended: its trajectories are reused, only the missing games are played, and the file rewritten.
    Without ``exclude_task_id`` the result is the first ``n``, as before the cache held one more.
    """
    if n <= 0:
        return []
    path = cache_path(data_dir, task_type, split, env_name=env_name)
    cached = load_expert_trajectories(path) if path.is_file() else []
    if len(cached) < n + 1:
        cached = collect_expert_trajectories(
            data_dir,
            task_type,
            n + 1,
            split=split,
            env_name=env_name,
            known={trajectory.task_id: trajectory for trajectory in cached},
        )
        save_expert_trajectories(path, cached)
    return [trajectory for trajectory in cached if trajectory.task_id != exclude_task_id][:n]
