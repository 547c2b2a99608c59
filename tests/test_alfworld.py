"""ALFWorld behind the Env protocol: task discovery, action rewriting, real games, the pool on real games."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections import Counter
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pytest

from alfworld_data import alfworld_data_dir
from ragdistill.environments import registry
from ragdistill.environments.alfworld import (
    TASK_TYPES,
    AlfworldEnv,
    game_path,
    instruction_of,
    list_tasks,
    normalize_action,
    strip_banner,
    task_type_of,
)
from ragdistill.environments.alfworld import env as alfworld_env
from ragdistill.environments.base import Env, EnvError, TaskInfo
from ragdistill.environments.pool import EnvPool
from ragdistill.environments.registry import get_env, get_profile, make_env, register_env, registered_envs
from ragdistill.environments.registry import list_tasks as registry_list_tasks

FIRST_OBSERVATION = (
    "-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
    "you see a desk 1, and a shelf 1.\n\nYour task is to: put a mug in desk."
)


@pytest.mark.parametrize(
    ("folder", "task_type"),
    [
        ("pick_and_place_simple-Mug-None-Desk-308", "put"),
        ("pick_clean_then_place_in_recep-Cloth-None-Bathtub-405", "clean"),
        ("pick_heat_then_place_in_recep-Apple-None-Fridge-21", "heat"),
        ("pick_cool_then_place_in_recep-Bread-None-CounterTop-11", "cool"),
        ("look_at_obj_in_light-AlarmClock-None-DeskLamp-308", "examine"),
        ("pick_two_obj_and_place-CD-None-Safe-308", "puttwo"),
    ],
)
def test_task_type_comes_from_the_folder_prefix(folder: str, task_type: str) -> None:
    assert task_type_of(folder) == task_type


def test_an_unknown_folder_prefix_is_an_error() -> None:
    with pytest.raises(EnvError, match="unknown ALFWorld task folder"):
        task_type_of("pick_and_place_with_movable_recep-Mug-Bowl-Desk-1")


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("put mug 1 in desk 2", "move mug 1 to desk 2"),
        ("put mug 1 on desk 2", "move mug 1 to desk 2"),
        ("put spraybottle 2 in/on toilet 1", "move spraybottle 2 to toilet 1"),
        ("  put cd 1 in safe 1 ", "move cd 1 to safe 1"),
        ("move mug 1 to desk 2", "move mug 1 to desk 2"),
        ("take mug 1 from shelf 2", "take mug 1 from shelf 2"),
        ("go to countertop 1", "go to countertop 1"),
        ("output", "output"),
    ],
)
def test_put_actions_are_rewritten_to_the_move_grammar(action: str, expected: str) -> None:
    assert normalize_action(action) == expected


def test_banner_is_removed_and_instruction_read() -> None:
    observation = strip_banner(FIRST_OBSERVATION)
    assert observation.startswith("You are in the middle of a room.")
    assert "Welcome" not in observation
    assert instruction_of(observation) == "put a mug in desk."
    assert strip_banner("You arrive at desk 1.") == "You arrive at desk 1."


def write_game(root: Path, split: str, folder: str, trial: str, solvable: bool = True) -> None:
    path = root / "alfworld" / "json_2.1.1" / split / folder / trial / "game.tw-pddl"
    path.parent.mkdir(parents=True, exist_ok=True)
    grammar = '"task": [ { "rhs": "Your task is to: do the ' + folder.split("-")[1].lower() + ' thing." } ]'
    path.write_text(json.dumps({"solvable": solvable, "grammar": grammar, "walkthrough": []}))


@pytest.fixture
def fake_games(tmp_path: Path) -> Path:
    """A data folder with tiny game files: 3 put, 2 clean, 1 examine (+1 unsolvable put)."""
    for index in range(3):
        write_game(tmp_path, "valid_unseen", f"pick_and_place_simple-Obj{index}-None-Desk-1", "trial_T1")
    write_game(tmp_path, "valid_unseen", "pick_and_place_simple-Dead-None-Desk-1", "trial_T1", solvable=False)
    write_game(tmp_path, "valid_unseen", "pick_clean_then_place_in_recep-Rag-None-Sink-1", "trial_T2")
    write_game(tmp_path, "valid_unseen", "pick_clean_then_place_in_recep-Rag-None-Sink-1", "trial_T1")
    write_game(tmp_path, "valid_unseen", "look_at_obj_in_light-Book-None-Lamp-1", "trial_T1")
    return tmp_path


def test_list_tasks_sorts_skips_unsolvable_and_reads_instructions(fake_games: Path) -> None:
    tasks = list_tasks(fake_games, "valid_unseen", balanced=False)
    assert [task.task_id for task in tasks] == [
        "look_at_obj_in_light-Book-None-Lamp-1/trial_T1",
        "pick_and_place_simple-Obj0-None-Desk-1/trial_T1",
        "pick_and_place_simple-Obj1-None-Desk-1/trial_T1",
        "pick_and_place_simple-Obj2-None-Desk-1/trial_T1",
        "pick_clean_then_place_in_recep-Rag-None-Sink-1/trial_T1",
        "pick_clean_then_place_in_recep-Rag-None-Sink-1/trial_T2",
    ]
    assert [task.task_type for task in tasks] == ["examine", "put", "put", "put", "clean", "clean"]
    assert tasks[1].instruction == "do the obj0 thing."
    assert {(task.env, task.split) for task in tasks} == {("alfworld", "valid_unseen")}


def test_balanced_selection_covers_every_type_before_repeating(fake_games: Path) -> None:
    tasks = list_tasks(fake_games, "valid_unseen", limit=4)
    assert [task.task_type for task in tasks] == ["put", "clean", "examine", "put"]
    assert list_tasks(fake_games, "valid_unseen", limit=4) == tasks
    assert [task.task_type for task in list_tasks(fake_games, "valid_unseen", limit=2, balanced=False)] == [
        "examine",
        "put",
    ]
    assert {task.task_type for task in list_tasks(fake_games, "valid_unseen", task_types=["clean"])} == {
        "clean"
    }


def test_list_tasks_errors_name_the_problem(fake_games: Path, tmp_path: Path) -> None:
    with pytest.raises(EnvError, match=r"unknown ALFWorld split 'test'; available: \['valid_unseen'\]"):
        list_tasks(fake_games, "test")
    with pytest.raises(EnvError, match="unknown ALFWorld task type"):
        list_tasks(fake_games, "valid_unseen", task_types=["juggle"])
    with pytest.raises(EnvError, match="ragdistill data setup"):
        list_tasks(tmp_path / "empty", "valid_unseen")


def test_real_valid_unseen_has_the_published_type_counts() -> None:
    data_dir = alfworld_data_dir()
    tasks = list_tasks(data_dir, "valid_unseen")
    assert Counter(task.task_type for task in tasks) == {
        "put": 24,
        "clean": 31,
        "heat": 23,
        "cool": 21,
        "examine": 18,
        "puttwo": 17,
    }
    assert {task.task_type for task in list_tasks(data_dir, "valid_unseen", limit=12)} == set(TASK_TYPES)
    assert all(task.instruction for task in tasks)


@functools.cache
def every_solvable_game(data_dir: Path, split: str) -> tuple[TaskInfo, ...]:
    """Every solvable game of a split in path order, every file parsed (how list_tasks worked before
    it became lazy)."""
    split_dir = data_dir / "alfworld" / "json_2.1.1" / split
    games: list[TaskInfo] = []
    for path in sorted(split_dir.glob("*/trial_*/game.tw-pddl")):
        game = json.loads(path.read_text())
        if game.get("solvable", False):
            found = re.search(r'"rhs":\s*"Your task is to: (?P<task>[^"]*)"', str(game.get("grammar", "")))
            task_id = path.parent.relative_to(split_dir).as_posix()
            task_type = task_type_of(path.parent.parent.name)
            games.append(TaskInfo("alfworld", split, task_id, task_type, found["task"] if found else ""))
    return tuple(games)


def eager_list_tasks(
    data_dir: Path, split: str, task_types: list[str] | None, balanced: bool
) -> list[TaskInfo]:
    """The unlimited listing as list_tasks computed it before it became lazy."""
    ordered = [
        task
        for task in every_solvable_game(data_dir, split)
        if not task_types or task.task_type in task_types
    ]
    if balanced:
        by_type = [[task for task in ordered if task.task_type == task_type] for task_type in TASK_TYPES]
        ordered = [task for round_ in zip_longest(*by_type) for task in round_ if task is not None]
    return ordered


SELECTIONS: list[tuple[list[str] | None, bool]] = [
    (None, True),
    (None, False),
    (["clean"], True),
    (["heat", "put"], True),
    (["examine", "puttwo", "cool"], False),
]


@pytest.mark.parametrize(("task_types", "balanced"), SELECTIONS)
def test_a_limited_listing_is_the_head_of_the_full_one(
    fake_games: Path, task_types: list[str] | None, balanced: bool
) -> None:
    full = eager_list_tasks(fake_games, "valid_unseen", task_types, balanced)
    for limit in [None, *range(1, len(full) + 2)]:
        expected = full[:limit]
        assert list_tasks(fake_games, "valid_unseen", limit, task_types, balanced) == expected, limit
    data_dir = alfworld_data_dir()
    small = eager_list_tasks(data_dir, "valid_unseen", task_types, balanced)
    for limit in (None, 1, 2, 5, 6, 7, 12, 13, 40, len(small) - 1, len(small), len(small) + 1):
        assert list_tasks(data_dir, "valid_unseen", limit, task_types, balanced) == small[:limit], limit
    large = eager_list_tasks(data_dir, "train", task_types, balanced)
    assert len(large) > 100
    for limit in (None, 1, 6, 7, 50, 333):
        assert list_tasks(data_dir, "train", limit, task_types, balanced) == large[:limit], limit


def test_a_small_limit_reads_only_a_handful_of_game_files(monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = alfworld_data_dir()
    read: list[Path] = []

    def counting_read_game(path: Path) -> dict[str, Any]:
        read.append(path)
        return real_read_game(path)

    real_read_game = alfworld_env.read_game
    monkeypatch.setattr(alfworld_env, "read_game", counting_read_game)
    six = list_tasks(data_dir, "train", limit=6)
    assert {task.task_type for task in six} == set(TASK_TYPES)
    assert len(read) == 6
    read.clear()
    assert len(list_tasks(data_dir, "train", limit=6, balanced=False)) == 6 and len(read) == 6
    read.clear()
    assert len(list_tasks(data_dir, "train", limit=3, task_types=["cool"])) == 3 and len(read) == 3
    read.clear()
    everything = list_tasks(data_dir, "train")
    assert len(read) == len(everything) > 3000


def test_registry_knows_alfworld_and_takes_new_envs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "alfworld" in registered_envs()
    assert get_env("alfworld").factory is AlfworldEnv
    assert isinstance(make_env("alfworld", data_dir="data"), Env)
    with pytest.raises(EnvError, match=r"unknown environment 'nethack'; registered: \[.*'alfworld'.*\]"):
        get_env("nethack")
    profile = get_profile("alfworld")
    assert profile.invalid_observation == "Nothing happens." and profile.task_groups == TASK_TYPES
    with pytest.raises(ValueError, match="already registered"):
        register_env("alfworld", AlfworldEnv, list_tasks, profile)
    with pytest.raises(ValueError, match="profile of 'alfworld'"):
        register_env("alfworld-copy", AlfworldEnv, list_tasks, profile)
    copy = replace(profile, name="alfworld-copy")
    register_env("alfworld-copy", AlfworldEnv, lambda **kwargs: ["listed", kwargs], copy, replace=True)
    assert registry_list_tasks("alfworld-copy", split="x") == ["listed", {"split": "x"}]
    assert get_profile("alfworld-copy") is copy


def as_put(action: str) -> str:
    """The walkthrough's ``move X to Y`` in ReAct's older ``put X in/on Y`` words."""
    return re.sub(r"^move (.+) to (.+)$", r"put \1 in/on \2", action)


@pytest.mark.slow
def test_walkthroughs_win_real_games_and_put_actions_work() -> None:
    data_dir = alfworld_data_dir()
    env = AlfworldEnv(data_dir)
    try:
        for task in list_tasks(data_dir, "valid_unseen", limit=2):  # a put game, then a clean game
            reset = env.reset(task)
            assert reset.observation.startswith("You are in the middle of a room. Looking quickly around you")
            assert reset.task.instruction and reset.task.instruction == task.instruction
            assert f"Your task is to: {reset.task.instruction}" in reset.observation
            assert reset.available_actions and "look" in reset.available_actions
            walkthrough = env.expert_actions()
            assert (
                walkthrough
                == json.loads(game_path(data_dir, task.split, task.task_id).read_text())["walkthrough"]
            )
            nothing = env.step("fly to the moon")
            assert (nothing.observation, nothing.done, nothing.won) == ("Nothing happens.", False, False)
            result = None
            for action in walkthrough:
                result = env.step(as_put(action) if task.task_type == "put" else action)
            assert result is not None and result.won and result.done and result.reward == 1.0
            assert task.task_type != "put" or any(action.startswith("move ") for action in walkthrough)
    finally:
        env.close()


@pytest.mark.slow
def test_pool_plays_real_games_in_parallel_and_reports_a_broken_one(tmp_path: Path) -> None:
    data_dir = alfworld_data_dir()
    picked = list_tasks(data_dir, "valid_unseen", limit=3)
    for task in picked:
        target = game_path(tmp_path, task.split, task.task_id)
        target.parent.mkdir(parents=True)
        shutil.copyfile(game_path(data_dir, task.split, task.task_id), target)
    broken = TaskInfo("alfworld", "valid_unseen", "pick_and_place_simple-Broken-None-Desk-1/trial_T1", "put")
    game = json.loads(game_path(data_dir, picked[0].split, picked[0].task_id).read_text())
    game["pddl_problem"] = "(define (problem broken) (:objects"
    game_path(tmp_path, broken.split, broken.task_id).parent.mkdir(parents=True)
    game_path(tmp_path, broken.split, broken.task_id).write_text(json.dumps(game))

    with EnvPool("alfworld", workers=2, data_dir=tmp_path) as pool:
        pids = pool.worker_pids()
        started = pool.reset_many([picked[0], broken, picked[1]])
        assert isinstance(started[1], EnvError)
        assert "Broken-None-Desk-1/trial_T1" in str(started[1]) and "failed to load" in str(started[1])
        episodes = [item for item in started if not isinstance(item, EnvError)]
        plans = {slot: pool.expert_actions(slot) for slot, _ in episodes}
        won: dict[int, bool] = {}
        while len(won) < len(plans):
            moves = [(slot, plan.pop(0)) for slot, plan in plans.items() if slot not in won and plan]
            for (slot, _), result in zip(moves, pool.step_many(moves), strict=True):
                assert not isinstance(result, EnvError), result
                if result.done:
                    won[slot] = result.won
            if not moves:
                break
        assert won == {slot: True for slot in plans}
        for slot in plans:
            pool.release(slot)
        ((slot, reset),) = pool.reset_many([picked[2]])  # type: ignore[misc]
        assert reset.task.task_id == picked[2].task_id
        assert pool.worker_pids() == pids
