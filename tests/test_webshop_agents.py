"""WebShop through the agent formats: expert demonstrations in Act / ReAct (think[...]) / StateAct
(no thought line) parse back to the expert's actions, and few-shot examples come from training goals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ragdistill.agents.demonstrations import render_expert_example, render_expert_turns
from ragdistill.agents.expert import play_expert
from ragdistill.agents.fewshot import build_examples
from ragdistill.agents.formats import get_format
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.registry import get_profile, list_tasks, make_env
from ragdistill.episodes import EpisodeRecord
from ragdistill.rollout.plan import open_pool, select_tasks
from ragdistill.stages.rollout import rollout_identity, run_rollout
from ragdistill.store import ArtifactStore, read_records
from rollout_doubles import ScriptedBackendDouble

DATA_DIR = Path("data")
pytestmark = pytest.mark.requires(
    (DATA_DIR / "webshop" / "products_1000.json.xz").is_file(),
    f"no WebShop data in {DATA_DIR.resolve()}: run `ragdistill data setup`",
)


@pytest.fixture(scope="module")
def trajectories() -> list:
    env = make_env("webshop", data_dir=DATA_DIR, page_size=3)
    tasks = list_tasks("webshop", data_dir=DATA_DIR, split="train", limit=7)
    # Upstream's option rule makes train goal 1504 unwinnable (its item shape "rectangular" reads as "tan").
    return [play_expert(env, task) for task in tasks if task.task_id != "webshop-train-1504"]


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


def _webshop_config(**overrides: object) -> ExperimentConfig:
    settings = {"env": {"name": "webshop", "split": "train", "limit": 4, "data_dir": str(DATA_DIR)}}
    return with_overrides(ExperimentConfig(), {**settings, **overrides})


def test_rollouts_and_evaluation_take_goals_in_the_upstream_order() -> None:
    settings = PipelineSettings.from_experiment(_webshop_config(evaluation={"split": "test", "limit": 3}))
    rollout, evaluation = settings.rollout(), settings.evaluation("base")
    assert [t.task_id for t in select_tasks(settings.ctx, rollout.env, rollout.tasks)] == [
        f"webshop-train-{i}" for i in range(1500, 1504)
    ]
    assert [t.task_id for t in select_tasks(settings.ctx, evaluation.env, evaluation.tasks)] == [
        "webshop-test-0",
        "webshop-test-1",
        "webshop-test-2",
    ]


def test_env_options_reach_the_environment_and_the_rollout_identity() -> None:
    options = {"name": "webshop", "options": {"page_size": 3, "max_steps": 2}}
    settings = PipelineSettings.from_experiment(_webshop_config(env=options))
    ctx, rollout = settings.ctx, settings.rollout()
    with open_pool(ctx, rollout.env, 1) as pool:
        ((slot, _reset),) = pool.reset_many(select_tasks(ctx, rollout.env, rollout.tasks)[:1])
        first = pool.step_many([(slot, "click[nothing]")])[0]
        second = pool.step_many([(slot, "click[nothing]")])[0]
    assert not first.done and second.done, "max_steps 2 ends the episode at the second step"
    plain = PipelineSettings.from_experiment(_webshop_config())
    with_options = rollout_identity(ctx, rollout).settings["env"]["options"]
    assert with_options == {"page_size": 3, "max_steps": 2}
    assert with_options != rollout_identity(plain.ctx, plain.rollout()).settings["env"]["options"]


def test_teacher_identity_reads_group_examples_only_for_the_embedding_classifier() -> None:
    def teacher(**retrieval: object) -> dict[str, object]:
        settings = PipelineSettings.from_experiment(_webshop_config(retrieval=retrieval)).teacher
        return settings.model_dump(mode="json", include={"retrieval", "reranker"})

    assert teacher(group="task", group_examples=10) == teacher(group="task", group_examples=20)
    assert teacher(group="embedding", group_examples=10) != teacher(group="embedding", group_examples=20)
    assert teacher(group="llm")["reranker"] is not None and teacher(group="task")["reranker"] is None


def _shopper(observation: str) -> str:
    """A policy double: search the instruction, open the first result, buy it."""
    if observation.rstrip().endswith("[Search]"):
        instruction = observation.split("[SEP]")[2].strip()
        return f"search[{instruction}]"
    asins = re.findall(r"\[(B[0-9A-Z]{9})\]", observation)
    if "Total results" in observation and asins:
        return f"click[{asins[0]}]"
    return "click[Buy Now]"


def test_a_rollout_records_every_part_of_the_reward(tmp_path: Path) -> None:
    config = _webshop_config(
        run={"run_root": f"file://{tmp_path}/run"},
        env={"name": "webshop", "split": "test", "limit": 2, "workers": 1, "data_dir": str(DATA_DIR)},
        agent={"format": "act", "fewshot_source": "none", "fewshot_count": 0, "max_calls": 6},
    )
    settings = PipelineSettings.from_experiment(config)
    run_rollout(settings.ctx, settings.rollout(), backend=ScriptedBackendDouble(_shopper))
    records = [
        EpisodeRecord.from_dict(r) for r in read_records(ArtifactStore(config.run.run_root), "rollouts/base")
    ]
    assert len(records) == 2
    for record in records:
        purchase = record.steps[-1]
        assert purchase.action == "click[Buy Now]" and purchase.done
        parts = purchase.info
        assert {"reward", "r_type", "query_match", "category_match", "title_score", "price_ok"} <= set(parts)
        assert parts["reward"] == purchase.reward == record.score
        assert all(not step.info for step in record.steps[:-1])
