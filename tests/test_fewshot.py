"""Few-shot examples: ReAct's transcripts, expert trajectories rendered in every format, the cache."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from ragdistill.agents.demonstrations import render_expert_example, render_expert_turns
from ragdistill.agents.expert import (
    cache_path,
    collect_expert_trajectories,
    load_expert_trajectories,
    load_or_collect_expert_trajectories,
    play_expert,
    save_expert_trajectories,
)
from ragdistill.agents.fewshot import FewshotError, build_examples
from ragdistill.agents.fewshot import react_examples as render_react_examples
from ragdistill.agents.formats import AgentFormat
from ragdistill.agents.formats import get_format as format_for
from ragdistill.environments import registry
from ragdistill.environments.alfworld import TASK_TYPES as ALFWORLD_TASK_TYPES
from ragdistill.environments.alfworld.demonstrations import START_LOCATION, expert_thoughts
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.alfworld.react_prompts import parse_react_transcript
from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.trajectories import ExpertTrajectory

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("RAGDISTILL_DATA_MIRROR", REPO_ROOT.parent / "shared" / "data"))
DATA_DIR = REPO_ROOT / "data"
needs_react_prompts = pytest.mark.requires(
    (MIRROR / "react" / "alfworld_3prompts.json").is_file(),
    f"no ReAct prompts under {MIRROR} (set RAGDISTILL_DATA_MIRROR)",
)

THINK_OBSERVATION = "OK."
ALFWORLD = "alfworld"


def get_format(name: str) -> AgentFormat:
    return format_for(name, ALFWORLD_PROFILE)


def react_examples(data_dir: Path, format_name: str, task_type: str, n: int = 2) -> list[str]:
    return render_react_examples(ALFWORLD_PROFILE, data_dir, format_name, task_type, n)


def expert_turns(trajectory: ExpertTrajectory, format_name: str) -> list[tuple[str, str]]:
    return render_expert_turns(trajectory, get_format(format_name))


def expert_example(trajectory: ExpertTrajectory, format_name: str) -> str:
    return render_expert_example(trajectory, get_format(format_name))


HEAT = ExpertTrajectory(
    task_id="pick_heat_then_place_in_recep-Apple-None-CounterTop-2/trial_1",
    task_type="heat",
    instruction="heat some apple and put it in countertop.",
    first_observation=(
        "You are in the middle of a room. Looking quickly around you, you see a countertop 2, a fridge 1, "
        "a microwave 1, and a sinkbasin 1.\n\nYour task is to: heat some apple and put it in countertop."
    ),
    steps=[
        ("go to sinkbasin 1", "You arrive at sinkbasin 1. On the sinkbasin 1, you see a apple 1."),
        ("take apple 1 from sinkbasin 1", "You pick up the apple 1 from the sinkbasin 1."),
        ("go to microwave 1", "You arrive at microwave 1. The microwave 1 is closed."),
        ("heat apple 1 with microwave 1", "You heat the apple 1 using the microwave 1."),
        ("go to countertop 2", "You arrive at countertop 2. On the countertop 2, you see nothing."),
        ("move apple 1 to countertop 2", "You move the apple 1 to the countertop 2."),
    ],
)


@needs_react_prompts
@pytest.mark.parametrize("format_name", ["react", "act"])
@pytest.mark.parametrize("task_type", ALFWORLD_TASK_TYPES)
def test_react_transcripts_load_for_every_task_type(format_name: str, task_type: str) -> None:
    agent = get_format(format_name)
    examples = react_examples(MIRROR, format_name, task_type, n=3)
    assert len(examples) == 3
    for example in examples:
        lines = example.splitlines()
        assert lines[0].startswith("You are in the middle of a room.")
        assert lines[1].startswith("Your task is to: ")
        agent_lines = [line for line in lines if line.startswith(">")]
        assert agent_lines
        for index, line in enumerate(lines):
            if not line.startswith(">"):
                continue
            assert line.startswith("> ") and not line.startswith("> >")
            parsed = agent.parse(line)
            assert parsed.action is not None or parsed.is_think, line
            assert index + 1 < len(lines) and not lines[index + 1].startswith(">"), (
                f"no observation after {line!r}"
            )
            if parsed.is_think:
                assert lines[index + 1] == THINK_OBSERVATION
        has_thinks = any(agent.parse(line).is_think for line in agent_lines)
        assert has_thinks == (format_name == "react")


@needs_react_prompts
def test_react_examples_follow_reacts_order_and_fit_the_task_type() -> None:
    raw = json.loads((MIRROR / "react" / "alfworld_3prompts.json").read_text())
    first, second = react_examples(MIRROR, "react", "put", n=2)
    assert first.splitlines()[:2] == raw["react_put_1"].splitlines()[:2]
    assert second.splitlines()[:2] == raw["react_put_0"].splitlines()[:2]
    assert first != second


def test_parse_react_transcript_repairs_the_published_slips() -> None:
    raw = (
        "You are in a room.\nYour task is to: cool some pan and put it in stoveburner.\n"
        "> think: To solve the task, I need a pan. \nOK. \n"
        ">go to stoveburner 3\nOn the stoveburner 3, you see a pan 1.\n"
        "> take pan 1 from stoveburner 3\n"
        "> think: Now I find a pan (1). Next, I need to take it.\nOK.\n"
        "You pick up the pan 1 from the stoveburner 3.\n"
        "> think: Now I take a pan (1).\n"
        "> go to fridge 1\nThe fridge 1 is closed.\n"
    )
    observation, turns = parse_react_transcript(raw)
    assert observation == "You are in a room.\nYour task is to: cool some pan and put it in stoveburner."
    assert turns == [
        ("think: To solve the task, I need a pan.", "OK."),
        ("go to stoveburner 3", "On the stoveburner 3, you see a pan 1."),
        ("think: Now I find a pan (1). Next, I need to take it.", "OK."),
        ("take pan 1 from stoveburner 3", "You pick up the pan 1 from the stoveburner 3."),
        ("think: Now I take a pan (1).", "OK."),
        ("go to fridge 1", "The fridge 1 is closed."),
    ]


def test_parse_react_transcript_rejects_an_action_without_observation() -> None:
    with pytest.raises(ValueError, match="no observation"):
        parse_react_transcript("Room.\n> go to desk 1\n> go to shelf 1\nOn the shelf 1.", key="broken")


def test_react_examples_refuse_stateact_and_unknown_types(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="react and act"):
        react_examples(tmp_path, "stateact", "put")
    with pytest.raises(ValueError, match="task type"):
        react_examples(tmp_path, "react", "juggle")
    with pytest.raises(FileNotFoundError, match="data setup"):
        react_examples(tmp_path, "react", "put")


@pytest.mark.parametrize("format_name", ["react", "act", "stateact"])
def test_expert_turns_parse_back_to_the_expert_actions(format_name: str) -> None:
    agent = get_format(format_name)
    turns = expert_turns(HEAT, format_name)
    acted = [(agent.parse(output), observation) for output, observation in turns]
    assert [parsed.action for parsed, _ in acted if parsed.action] == [action for action, _ in HEAT.steps]
    for parsed, observation in acted:
        assert parsed.error is None
        if parsed.is_think:
            assert observation == THINK_OBSERVATION
    example = expert_example(HEAT, format_name)
    assert example.startswith("You are in the middle of a room.")
    assert "\n\n" not in example.split("Your task is to:")[0]
    assert example.rstrip().endswith("You move the apple 1 to the countertop 2.")


def test_react_expert_thinks_plan_and_note_progress() -> None:
    turns = expert_turns(HEAT, "react")
    thinks = [output for output, _ in turns if output.startswith("think:")]
    assert thinks[0] == (
        "think: To solve the task, I need to find and take an apple, then heat it with microwave, "
        "then put it in/on countertop."
    )
    assert thinks[1] == "think: First I need to find an apple. I will start with sinkbasin 1."
    outputs = [output for output, _ in turns]
    take = outputs.index("take apple 1 from sinkbasin 1")
    assert outputs[take - 1] == "think: Now I find apple 1. Next, I need to take it."
    assert outputs[take + 1] == "think: Now I have apple 1. Next, I need to heat it with microwave 1."
    heat = outputs.index("heat apple 1 with microwave 1")
    assert outputs[heat + 1] == "think: Now apple 1 is hot. Next, I need to put it in/on countertop 2."
    assert outputs[-1] == "move apple 1 to countertop 2"
    assert expert_turns(HEAT, "act") == HEAT.steps


def test_stateact_state_lines_follow_the_trajectory() -> None:
    stateact = get_format("stateact")
    states = [stateact.parse(output).state for output, _ in expert_turns(HEAT, "stateact")]
    assert all(state["goal"] == "heat some apple and put it in countertop" for state in states)
    assert [state["locations visited"] for state in states] == [
        "None",
        "sinkbasin 1",
        "sinkbasin 1",
        "sinkbasin 1, microwave 1",
        "sinkbasin 1, microwave 1",
        "sinkbasin 1, microwave 1, countertop 2",
    ]
    assert [state["current location"] for state in states] == [
        START_LOCATION,
        "sinkbasin 1",
        "sinkbasin 1",
        "microwave 1",
        "microwave 1",
        "countertop 2",
    ]
    assert [state["current inventory"] for state in states] == [
        "None",
        "None",
        "apple 1",
        "apple 1",
        "apple 1",
        "apple 1",
    ]
    assert [state["action"] for state in states] == [action for action, _ in HEAT.steps]
    assert states[0]["thought"].startswith("To solve the task")
    assert states[2]["thought"] == "Now I have apple 1. Next, I need to heat it with microwave 1."
    assert states[3]["thought"] == "None"


def test_failed_steps_do_not_change_the_state() -> None:
    trajectory = ExpertTrajectory(
        task_id="t",
        task_type="put",
        instruction="put a mug in desk.",
        first_observation="Room.\nYour task is to: put a mug in desk.",
        steps=[
            ("take mug 1 from shelf 1", "Nothing happens."),
            ("go to shelf 1", "You arrive at shelf 1."),
            ("take mug 1 from shelf 1", "You pick up the mug 1 from the shelf 1."),
            ("go to desk 1", "You arrive at desk 1."),
            ("move mug 1 to desk 1", "You move the mug 1 to the desk 1."),
            ("look", "You are facing the desk 1."),
        ],
    )
    stateact = get_format("stateact")
    states = [stateact.parse(output).state for output, _ in expert_turns(trajectory, "stateact")]
    assert [state["current inventory"] for state in states] == [
        "None",
        "None",
        "None",
        "mug 1",
        "mug 1",
        "None",
    ]
    assert expert_thoughts(trajectory)[1] == []


def test_examine_plan_follows_the_walkthrough_order() -> None:
    trajectory = ExpertTrajectory(
        task_id="t",
        task_type="examine",
        instruction="look at alarmclock under the desklamp.",
        first_observation="Room.\nYour task is to: look at alarmclock under the desklamp.",
        steps=[
            (
                "go to dresser 1",
                "You arrive at dresser 1. On the dresser 1, you see a alarmclock 2, a desklamp 1.",
            ),
            ("use desklamp 1", "You turn on the desklamp 1."),
            ("take alarmclock 2 from dresser 1", "You pick up the alarmclock 2 from the dresser 1."),
        ],
    )
    thoughts = expert_thoughts(trajectory)
    assert thoughts[0][0] == (
        "To solve the task, I need to find an alarmclock and a desklamp, then use the lamp and take the alarmclock."
    )
    assert thoughts[2] == ["Now desklamp 1 is on. Next, I need to take alarmclock 2."]


def test_trajectory_json_round_trip_and_cache(tmp_path: Path) -> None:
    path = cache_path(tmp_path, "heat", env_name=ALFWORLD)
    other = replace(HEAT, task_id="pick_heat_then_place_in_recep-Egg-None-CounterTop-2/trial_1")
    save_expert_trajectories(path, [HEAT, other])
    assert load_expert_trajectories(path) == [HEAT, other]
    assert load_or_collect_expert_trajectories(tmp_path, "heat", 1, env_name=ALFWORLD) == [HEAT]
    assert load_or_collect_expert_trajectories(
        tmp_path, "heat", 1, exclude_task_id=HEAT.task_id, env_name=ALFWORLD
    ) == [other]
    assert build_examples("expert", "stateact", "heat", 1, tmp_path, env_name=ALFWORLD) == [
        expert_example(HEAT, "stateact")
    ]
    path.write_text("{}")
    with pytest.raises(ValueError, match="delete it"):
        load_expert_trajectories(path)


def test_build_examples_sources(tmp_path: Path) -> None:
    assert build_examples("none", "react", "put", 2, tmp_path, env_name=ALFWORLD) == []
    assert build_examples("react", "react", "put", 0, tmp_path, env_name=ALFWORLD) == []
    with pytest.raises(FewshotError, match="few-shot source"):
        build_examples("gold", "react", "put", 2, tmp_path, env_name=ALFWORLD)  # type: ignore[arg-type]


@needs_react_prompts
def test_build_examples_react_source_ignores_the_excluded_game() -> None:
    expected = react_examples(MIRROR, "act", "clean", 2)
    assert build_examples("react", "act", "clean", 2, MIRROR, env_name=ALFWORLD) == expected
    shown = build_examples(
        "react", "act", "clean", 2, MIRROR, exclude_task_id="react_clean_1", env_name=ALFWORLD
    )
    assert shown == expected


class WalkthroughEnvDouble:
    """Plays a fixed script: the listed walkthrough wins on its last action."""

    name = "walkthrough-double"

    def __init__(self, walkthrough: list[str], wins: bool = True) -> None:
        self.walkthrough, self.wins, self.position = walkthrough, wins, 0

    def reset(self, task: TaskInfo) -> ResetResult:
        self.position = 0
        return ResetResult(task, "Room.\n\nYour task is to: put a mug in desk.", [])

    def step(self, action: str) -> StepResult:
        self.position += 1
        done = self.wins and self.position == len(self.walkthrough)
        return StepResult(f"after {action}", float(done), done, done, [])

    def expert_actions(self) -> list[str]:
        return list(self.walkthrough)

    def close(self) -> None:
        pass


EXPERT_DOUBLE = "expert-games-double"


class ExpertGamesDouble:
    """Heat games g0…g4 whose walkthrough wins on its last action; g1's is too long to be an example.
    Every reset is recorded in ``PLAYED`` so a test can tell which games were actually played."""

    name = EXPERT_DOUBLE
    PLAYED: ClassVar[list[str]] = []
    WALKTHROUGHS: ClassVar[dict[str, int]] = {"g0": 2, "g1": 30, "g2": 3, "g3": 2, "g4": 4}

    def __init__(self, data_dir: object = None) -> None:
        self.task: TaskInfo | None = None
        self.position = 0

    def reset(self, task: TaskInfo) -> ResetResult:
        self.PLAYED.append(task.task_id)
        self.task, self.position = task, 0
        return ResetResult(task, f"Room of {task.task_id}.\n\nYour task is to: {task.instruction}", [])

    def step(self, action: str) -> StepResult:
        assert self.task is not None
        self.position += 1
        done = self.position == self.WALKTHROUGHS[self.task.task_id]
        return StepResult(f"{self.task.task_id} after {action}", float(done), done, done, [])

    def expert_actions(self) -> list[str]:
        assert self.task is not None
        return [f"look {index}" for index in range(self.WALKTHROUGHS[self.task.task_id])]

    def close(self) -> None:
        self.task = None


def list_expert_double_tasks(task_types: list[str] | None = None, **_: object) -> list[TaskInfo]:
    tasks = [
        TaskInfo(EXPERT_DOUBLE, "train", task_id, "heat", f"heat some {task_id} and put it in countertop.")
        for task_id in ExpertGamesDouble.WALKTHROUGHS
    ]
    return [task for task in tasks if not task_types or task.task_type in task_types]


@pytest.fixture
def expert_games(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The double registered under EXPERT_DOUBLE; returns the list of games played, emptied."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    profile = replace(ALFWORLD_PROFILE, name=EXPERT_DOUBLE)
    registry.register_env(EXPERT_DOUBLE, ExpertGamesDouble, list_expert_double_tasks, profile)
    monkeypatch.setattr(ExpertGamesDouble, "PLAYED", [])
    return ExpertGamesDouble.PLAYED


def games_shown(examples: list[str]) -> list[str]:
    return [example.split()[2].rstrip(".") for example in examples]


def test_expert_examples_never_show_the_game_being_played(tmp_path: Path, expert_games: list[str]) -> None:
    def examples(exclude: str | None) -> list[str]:
        shown = build_examples(
            "expert", "act", "heat", 2, tmp_path, exclude_task_id=exclude, env_name=EXPERT_DOUBLE
        )
        return games_shown(shown)

    assert examples(None) == ["g0", "g2"]
    assert expert_games == ["g0", "g1", "g2", "g3"]  # n + 1 collected; g1's walkthrough is too long
    cached = load_expert_trajectories(cache_path(tmp_path, "heat", env_name=EXPERT_DOUBLE))
    assert [trajectory.task_id for trajectory in cached] == ["g0", "g2", "g3"]
    assert examples("g0") == ["g2", "g3"]
    assert examples("g2") == ["g0", "g3"]
    assert examples("g3") == examples("g4") == examples(None) == ["g0", "g2"]
    assert expert_games == ["g0", "g1", "g2", "g3"]  # every later call read the cache
    assert not cache_path(tmp_path, "heat", env_name=ALFWORLD).exists()  # the alfworld cache is another file


def test_an_old_cache_with_too_few_trajectories_is_extended(tmp_path: Path, expert_games: list[str]) -> None:
    path = cache_path(tmp_path, "heat", env_name=EXPERT_DOUBLE)
    played_before = collect_expert_trajectories(tmp_path, "heat", 2, env_name=EXPERT_DOUBLE)
    assert [trajectory.task_id for trajectory in played_before] == ["g0", "g2"]
    from_old_cache = [replace(trajectory, instruction="as cached") for trajectory in played_before]
    save_expert_trajectories(path, from_old_cache)  # what the cache held when it kept exactly n
    expert_games.clear()
    result = load_or_collect_expert_trajectories(
        tmp_path, "heat", 2, exclude_task_id="g0", env_name=EXPERT_DOUBLE
    )
    assert [trajectory.task_id for trajectory in result] == ["g2", "g3"]
    assert result[0] == from_old_cache[1]
    assert expert_games == ["g1", "g3"]  # only the games the cache lacked were played
    assert load_expert_trajectories(path)[:2] == from_old_cache and len(load_expert_trajectories(path)) == 3
    with pytest.raises(EnvError, match=r"found only 4 of 5 expert trajectories for 'heat'"):
        load_or_collect_expert_trajectories(tmp_path, "heat", 4, env_name=EXPERT_DOUBLE)


def test_play_expert_records_steps_and_requires_a_win() -> None:
    task = TaskInfo(
        env="double", split="train", task_id="t", task_type="put", instruction="put a mug in desk."
    )
    trajectory = play_expert(WalkthroughEnvDouble(["go to shelf 1", "take mug 1 from shelf 1"]), task)
    assert trajectory.steps == [
        ("go to shelf 1", "after go to shelf 1"),
        ("take mug 1 from shelf 1", "after take mug 1 from shelf 1"),
    ]
    assert trajectory.first_observation == "Room.\n\nYour task is to: put a mug in desk."
    with pytest.raises(EnvError, match="did not win"):
        play_expert(WalkthroughEnvDouble(["look"], wins=False), task)


needs_games = pytest.mark.requires(
    (DATA_DIR / "alfworld" / "json_2.1.1" / "train").is_dir(),
    "ALFWorld games not installed (ragdistill data setup)",
)


@pytest.mark.slow
@needs_games
def test_collect_expert_trajectory_from_a_real_training_game(tmp_path: Path) -> None:
    (trajectory,) = collect_expert_trajectories(DATA_DIR, "put", 1, env_name=ALFWORLD)
    assert trajectory.task_type == "put"
    assert trajectory.instruction and trajectory.instruction in trajectory.first_observation
    assert "Welcome" not in trajectory.first_observation
    assert trajectory.steps[-1][0].startswith("move ")
    for format_name in ("react", "act", "stateact"):
        agent = get_format(format_name)
        actions = [agent.parse(output).action for output, _ in expert_turns(trajectory, format_name)]
        assert [action for action in actions if action] == [action for action, _ in trajectory.steps]
    save_expert_trajectories(cache_path(tmp_path, "put", env_name=ALFWORLD), [trajectory])
    assert load_expert_trajectories(cache_path(tmp_path, "put", env_name=ALFWORLD)) == [trajectory]


@pytest.mark.slow
@needs_games
def test_expert_examples_from_real_training_games_leave_out_the_game_played(tmp_path: Path) -> None:
    (tmp_path / "alfworld").symlink_to(DATA_DIR / "alfworld")
    first, second = load_or_collect_expert_trajectories(tmp_path, "cool", 2, env_name=ALFWORLD)
    assert len(load_expert_trajectories(cache_path(tmp_path, "cool", env_name=ALFWORLD))) == 3
    (shown,) = build_examples(
        "expert", "act", "cool", 1, tmp_path, exclude_task_id=first.task_id, env_name=ALFWORLD
    )
    assert shown == expert_example(second, "act")
    assert build_examples("expert", "act", "cool", 1, tmp_path, env_name=ALFWORLD) == [
        expert_example(first, "act")
    ]
