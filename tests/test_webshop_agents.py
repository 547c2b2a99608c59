"""WebShop through the agent formats: expert demonstrations in Act / ReAct (think[...]) / StateAct
(no thought line) parse back to the expert's actions, and few-shot examples come from training goals."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragdistill.agents.demonstrations import render_expert_example, render_expert_turns
from ragdistill.agents.expert import play_expert
from ragdistill.agents.fewshot import build_examples
from ragdistill.agents.formats import get_format
from ragdistill.environments.registry import get_profile, list_tasks, make_env

DATA_DIR = Path("data")
pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "webshop" / "products_1000.json.xz").is_file(), reason="run `ragdistill data setup`"
)


@pytest.fixture(scope="module")
def trajectories() -> list:
    env = make_env("webshop", data_dir=DATA_DIR, page_size=3)
    tasks = list_tasks("webshop", data_dir=DATA_DIR, split="train", limit=6)
    return [play_expert(env, task) for task in tasks]


@pytest.mark.parametrize("format_name", ["act", "react", "stateact"])
def test_demonstrations_parse_back_to_the_expert_actions(trajectories: list, format_name: str) -> None:
    fmt = get_format(format_name, get_profile("webshop"))
    for trajectory in trajectories:
        turns = render_expert_turns(trajectory, fmt)
        actions = [fmt.parse(output).action for output, _ in turns]
        assert [a for a in actions if a is not None] == [action for action, _ in trajectory.steps]
        if format_name == "react":
            thoughts = [output for output, _ in turns if fmt.parse(output).is_think]
            assert thoughts and all(t.startswith("think[") and t.endswith("]") for t in thoughts)
        if format_name == "stateact":
            first = turns[0][0].splitlines()
            assert [line.split(":")[0] for line in first] == [
                "goal",
                "current location",
                "current selection",
                "action",
            ]
            assert first[1] == "current location: search page"
            last = turns[-1][0]
            assert "current location: item page B" in last and "click[Buy Now]" in last


def test_system_prompt_speaks_of_the_shop() -> None:
    text = get_format("react", get_profile("webshop")).system_text()
    assert "web store" in text and "think[" in text and "household" not in text
    assert "search[" in text


def test_expert_fewshot_examples_come_from_training_goals(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "webshop").symlink_to((DATA_DIR / "webshop").resolve())
    test_task = list_tasks("webshop", data_dir=data_dir, split="test", limit=1)[0]
    examples = build_examples(
        "expert",
        "act",
        test_task.task_type,
        1,
        data_dir,
        env_name="webshop",
    )
    assert len(examples) == 1 and "click[Buy Now]" in examples[0]
    assert test_task.instruction not in examples[0]
    cached = list((data_dir / "fewshot").glob("expert-webshop-train-*.json"))
    assert cached, "expert few-shot trajectories are collected from the train split and cached"


def test_a_rendered_example_reads_like_a_transcript(trajectories: list) -> None:
    example = render_expert_example(trajectories[0], get_format("react", get_profile("webshop")))
    assert example.startswith("WebShop [SEP] Instruction:")
    assert "> think[" in example and "> click[Buy Now]" in example
