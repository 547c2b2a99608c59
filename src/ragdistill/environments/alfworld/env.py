"""ALFWorld on the official ``alfworld==0.4.2`` + TextWorld engine, behind the :class:`Env` protocol.

Games are the ``game.tw-pddl`` files that ``ragdistill data setup`` unpacks under
``<data_dir>/alfworld/json_2.1.1/<split>/<task folder>/<trial>/``. Each reset loads one game through
``textworld.gym.register_games`` with the same wrappers alfworld's own ``AlfredTWEnv`` uses
(``AlfredDemangler(shuffle=False)``, ``AlfredInfos``), so names and observations match the published
benchmark. Loading costs 1-3 s per game; the environment pool reuses processes across games. TextWorld's
grammar strings are parsed once per process, not on every step (:mod:`.parse_cache`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.environments.selection import check_selection, first, round_robin, seeded_order

ENV_NAME = "alfworld"
GAMES_SUBDIR = Path("alfworld") / "json_2.1.1"
SPLITS: tuple[str, ...] = ("train", "valid_seen", "valid_unseen", "valid_train")
GAME_FILE = "game.tw-pddl"

#: Task folder prefix -> the task type name the paper and ReAct's prompts use. Order is the
#: round-robin order of balanced selection.
TASK_TYPE_PREFIXES: dict[str, str] = {
    "pick_and_place_simple": "put",
    "pick_clean_then_place": "clean",
    "pick_heat_then_place": "heat",
    "pick_cool_then_place": "cool",
    "look_at_obj_in_light": "examine",
    "pick_two_obj_and_place": "puttwo",
}
TASK_TYPES: tuple[str, ...] = tuple(TASK_TYPE_PREFIXES.values())

TASK_PREFIX = "Your task is to: "
INVALID_OBSERVATION = "Nothing happens."
"""What ALFWorld answers to a command it cannot carry out."""
_BANNER = re.compile(r"\A\s*-=.*?=-\s*")
_PUT = re.compile(r"^put\s+(?P<obj>.+?)\s+(?:in/on|in|on)\s+(?P<target>.+)$")
_GRAMMAR_TASK = re.compile(r'"rhs":\s*"Your task is to: (?P<task>[^"]*)"')


def task_type_of(task_folder: str) -> str:
    """The task type of a game folder name such as ``pick_clean_then_place_in_recep-Cloth-None-…``."""
    for prefix, task_type in TASK_TYPE_PREFIXES.items():
        if task_folder.startswith(prefix):
            return task_type
    raise EnvError(
        f"unknown ALFWorld task folder {task_folder!r}: expected one of {list(TASK_TYPE_PREFIXES)}"
    )


def normalize_action(action: str) -> str:
    """Rewrite ``put X in Y`` / ``put X on Y`` / ``put X in/on Y`` to alfworld 0.4's ``move X to Y``.

    ReAct's prompts (and models trained on them) use the older ``put`` grammar; alfworld 0.4.2's games
    only accept ``move``. Everything else is passed through, stripped.
    """
    action = action.strip()
    match = _PUT.match(action)
    if match:
        return f"move {match['obj']} to {match['target']}"
    return action


def strip_banner(observation: str) -> str:
    """Drop the ``-= Welcome to TextWorld, ALFRED! =-`` line so the text starts at the room description."""
    return _BANNER.sub("", observation, count=1)


def instruction_of(observation: str) -> str:
    """The task sentence of a first observation (``put a mug in desk.``), without the prefix."""
    for line in observation.splitlines():
        if line.startswith(TASK_PREFIX):
            return line[len(TASK_PREFIX) :].strip()
    return ""


def games_root(data_dir: Path | str) -> Path:
    return Path(data_dir) / GAMES_SUBDIR


def game_path(data_dir: Path | str, split: str, task_id: str) -> Path:
    return games_root(data_dir) / split / task_id / GAME_FILE


def read_game(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise EnvError(f"cannot read ALFWorld game {path}: {error}") from error
    if not isinstance(data, dict):
        raise EnvError(f"ALFWorld game {path} is not a JSON object")
    return data


def list_tasks(
    data_dir: Path | str = "data",
    split: str = "train",
    limit: int | None = None,
    task_types: Sequence[str] | None = None,
    balanced: bool = True,
    shuffle_seed: int | None = None,
) -> list[TaskInfo]:
    """The solvable games of a split, in a deterministic order.

    Games are sorted by path; ``solvable: false`` games are skipped. ``task_types`` keeps only those
    types. With ``balanced`` the list interleaves the types round-robin (put, clean, heat, cool,
    examine, puttwo, put, …) so that any ``limit`` of at least six covers every type; otherwise the
    sorted order is kept and ``limit`` takes its head. ``shuffle_seed`` orders the games (each type's,
    when balanced) by a seeded hash of their folder instead of their path (``selection.seeded_order``):
    the path order groups each type's games by object, so its head covers few objects (the first 200
    ``put`` games of train name 9 of its 42). A game file is read only when it is the next candidate for
    the list, so a small ``limit`` reads a handful of files, not the whole split.
    """
    root = games_root(data_dir)
    if not root.is_dir():
        raise EnvError(
            f"ALFWorld games not found at {root}; install them with "
            f"`ragdistill data setup --mirror ../shared/data --data-dir {data_dir}`"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(path.name for path in root.iterdir() if path.is_dir())
        raise EnvError(f"unknown ALFWorld split {split!r}; available: {available}")
    wanted = check_selection("ALFWorld", TASK_TYPES, task_types, limit)

    by_type: dict[str, list[Path]] = {task_type: [] for task_type in TASK_TYPES}
    ordered: list[Path] = []
    for path in sorted(split_dir.glob(f"*/trial_*/{GAME_FILE}")):
        task_type = task_type_of(path.parent.parent.name)
        if wanted is None or task_type in wanted:
            by_type[task_type].append(path)
            ordered.append(path)
    if shuffle_seed is not None:

        def game_folder(path: Path) -> str:
            return path.parent.relative_to(split_dir).as_posix()

        ordered = seeded_order(ordered, shuffle_seed, game_folder)
        by_type = {name: seeded_order(paths, shuffle_seed, game_folder) for name, paths in by_type.items()}
    if not balanced:
        return first(_solvable_tasks(ordered, split_dir, split), limit)
    return round_robin(
        (_solvable_tasks(by_type[task_type], split_dir, split) for task_type in TASK_TYPES), limit
    )


def _solvable_tasks(paths: Sequence[Path], split_dir: Path, split: str) -> Iterator[TaskInfo]:
    """The solvable games among ``paths``, in order, each file read when the next task is asked for."""
    for path in paths:
        game = read_game(path)
        if not game.get("solvable", False):
            continue
        found = _GRAMMAR_TASK.search(str(game.get("grammar", "")))
        yield TaskInfo(
            env=ENV_NAME,
            split=split,
            task_id=path.parent.relative_to(split_dir).as_posix(),
            task_type=task_type_of(path.parent.parent.name),
            instruction=found["task"] if found else "",
        )


def environment_version(data_dir: Path | str = "data") -> dict[str, str]:
    """What makes two ALFWorld runs play the same games: the engine versions and the installed games
    (the sha256 of the archive ``ragdistill data setup`` unpacked, from its install marker)."""
    from importlib.metadata import PackageNotFoundError, version

    from ragdistill.data import MARKER_NAME

    found: dict[str, str] = {}
    for package in ("alfworld", "textworld"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    marker = games_root(data_dir) / MARKER_NAME
    try:
        found["games"] = str(json.loads(marker.read_text()).get("sha256", "unknown"))
    except (OSError, ValueError):
        found["games"] = "unknown"
    return found


class AlfworldEnv:
    """One ALFWorld game at a time. ``data_dir`` is the folder ``ragdistill data setup`` filled."""

    name = ENV_NAME

    def __init__(self, data_dir: Path | str = "data") -> None:
        self.data_dir = Path(data_dir)
        self._env: Any = None
        self._task: TaskInfo | None = None
        self._walkthrough: list[str] = []

    def reset(self, task: TaskInfo) -> ResetResult:
        path = game_path(self.data_dir, task.split, task.task_id)
        label = f"{task.split}/{task.task_id}"
        if not path.is_file():
            raise EnvError(f"ALFWorld game {label} not found: no file {path}")
        game = read_game(path)
        self.close()
        try:
            self._env = _load(path)
            observation, infos = self._env.reset()
        except Exception as error:  # textworld raises many unrelated types for a broken game
            self.close()
            raise EnvError(
                f"ALFWorld game {label} ({path}) failed to load: {type(error).__name__}: {error}"
            ) from error
        self._walkthrough = [str(action) for action in game.get("walkthrough", [])]
        observation = strip_banner(observation)
        self._task = TaskInfo(
            env=task.env,
            split=task.split,
            task_id=task.task_id,
            task_type=task.task_type,
            instruction=instruction_of(observation) or task.instruction,
            extras=task.extras,
        )
        return ResetResult(self._task, observation, list(infos["admissible_commands"]))

    def step(self, action: str) -> StepResult:
        if self._env is None or self._task is None:
            raise EnvError("AlfworldEnv.step called before reset")
        try:
            observation, score, done, infos = self._env.step(normalize_action(action))
        except Exception as error:
            raise EnvError(
                f"ALFWorld game {self._task.split}/{self._task.task_id} failed on action {action!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        return StepResult(
            observation=str(observation),
            reward=float(score),
            done=bool(done),
            won=bool(infos["won"]),
            available_actions=list(infos["admissible_commands"]),
        )

    def expert_actions(self) -> list[str]:
        if self._task is None:
            raise EnvError("AlfworldEnv.expert_actions called before reset")
        return list(self._walkthrough)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None


def _load(path: Path) -> Any:
    """A TextWorld gym env over one game, set up exactly as alfworld's AlfredTWEnv does it."""
    import textworld
    import textworld.gym
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    from ragdistill.environments.alfworld.parse_cache import follow_setting

    follow_setting()
    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
    env_id = textworld.gym.register_games(
        [str(path)],
        infos,
        max_episode_steps=0,  # no TextWorld step limit: the caller's step cap applies
        wrappers=[AlfredDemangler(shuffle=False), AlfredInfos],
    )
    try:
        return textworld.gym.make(env_id)
    finally:
        textworld.gym.registry.pop(env_id, None)  # one entry per game would grow without bound
