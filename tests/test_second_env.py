"""A second environment that speaks differently from ALFWorld, known to nothing outside environments/
and tests/: ``think[…]`` thoughts, StateAct lines without a thought, actions whose case matters, its own
invalid observation, groups predicted from the instruction. A rollout, a mining request, a dataset
example, few-shot examples and the teacher's retrieval query all follow its profile."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ragdistill.agents.fewshot import FewshotError, build_examples
from ragdistill.agents.formats import AgentFormat, get_format
from ragdistill.config import ExperimentConfig, RetrievalConfig, with_overrides
from ragdistill.config.stages import PipelineSettings, retrieval_settings
from ragdistill.environments import registry
from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.environments.profile import AgentStyle, DemonstratedStep, EnvProfile
from ragdistill.environments.registry import get_profile
from ragdistill.environments.webshop.hints import WEBSHOP_HINT_STYLE
from ragdistill.episodes import EpisodeRecord
from ragdistill.retrieval.bank import HintBank
from ragdistill.retrieval.groups import GroupPrediction
from ragdistill.retrieval.hints import Hint
from ragdistill.retrieval.mining import extract_hints
from ragdistill.retrieval.retrievers import RetrievalQuery, RetrievalResult
from ragdistill.retrieval.teacher import RetrieverHintSource, build_hint_source
from ragdistill.rollout import EngineSettings, RolloutEngine
from ragdistill.stages.datasets import selection
from ragdistill.store import ArtifactStore, RecordLog
from ragdistill.training.examples import DISTILL_REMOVED, example_segments, select_episodes
from ragdistill.trajectories import ExpertTrajectory
from retrieval_doubles import RERANKER_ROLE, EnginesDouble, ScriptedExtractorDouble
from rollout_doubles import ScriptedBackendDouble

SHOP = "shop-double"
INVALID = "Invalid action!"
INSTRUCTION = "i want a red mug under 20 dollars"
WALKTHROUGH = ("search[Red Mug]", "click[Red Mug]", "click[Buy Now]")


class ShopEnvDouble:
    """A three-page shop: search, open the product, buy it. Clicks are case-sensitive, as on a web page."""

    name = SHOP

    def __init__(self, data_dir: object = None) -> None:
        self.page = "search"

    def reset(self, task: TaskInfo) -> ResetResult:
        self.page = "search"
        return ResetResult(task, f"Shop [SEP] Instruction: [SEP] {task.instruction} [SEP] Search", [])

    def step(self, action: str) -> StepResult:
        pages = {
            ("search", "search[Red Mug]"): ("results", "Results [SEP] B0REDMUG01 [SEP] Red Mug [SEP] $12.00"),
            ("results", "click[Red Mug]"): ("item", "Red Mug [SEP] $12.00 [SEP] Buy Now"),
            ("item", "click[Buy Now]"): ("done", "Thank you for shopping with us!"),
        }
        self.page, observation = pages.get((self.page, action), (self.page, INVALID))
        won = self.page == "done"
        return StepResult(observation, float(won), won, won, [])

    def expert_actions(self) -> list[str]:
        return list(WALKTHROUGH)

    def close(self) -> None:
        pass


def list_shop_tasks(task_types: Sequence[str] | None = None, **_: object) -> list[TaskInfo]:
    tasks = [TaskInfo(SHOP, "train", f"s{index}", "mugs", INSTRUCTION) for index in range(3)]
    return [task for task in tasks if not task_types or task.task_type in task_types]


def demonstrate(trajectory: ExpertTrajectory) -> list[DemonstratedStep]:
    """A plan before the first action; the page and the selection tracked from the clicks."""
    steps: list[DemonstratedStep] = []
    page, selected = "search page", ""
    for index, (action, observation) in enumerate(trajectory.steps):
        thoughts = ("I should search for the mug first.",) if index == 0 else ()
        state = {"goal": trajectory.instruction, "current location": page, "current selection": selected}
        steps.append(DemonstratedStep(action, observation, thoughts, state))
        page = "results page" if action.startswith("search") else "item page"
        if action.startswith("click[") and action != "click[Buy Now]":
            selected = action[len("click[") : -1]
    return steps


SHOP_PROFILE = EnvProfile(
    name=SHOP,
    task_groups=("mugs", "shoes"),
    group_label="Product category",
    invalid_observation=INVALID,
    agent=AgentStyle(
        instruction="You are shopping on a website to buy what the instruction asks for.",
        env_noun="the shop",
        action_examples=("search[red mug]", "click[Buy Now]"),
        think_example="I should compare the prices.",
        state_keys=("goal", "current location", "current selection", "action"),
        state_descriptions=(
            "the instruction",
            "the page you are on",
            "the product you chose, or None",
            "one action for the shop, for example click[Buy Now]",
        ),
        think_syntax="brackets",
        lowercase_actions=False,
        task_prefix="Instruction: ",
    ),
    hints=WEBSHOP_HINT_STYLE,
    default_max_invalid=0,
    fewshot_sources=("expert",),
    render_demonstration=demonstrate,
)


@pytest.fixture(autouse=True)
def shop_registered(monkeypatch: pytest.MonkeyPatch) -> EnvProfile:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_env(SHOP, ShopEnvDouble, list_shop_tasks, SHOP_PROFILE)
    return SHOP_PROFILE


class ShopPoolDouble:
    """The shop in-process, one env per slot."""

    workers = 2

    def __init__(self) -> None:
        self.envs: dict[int, ShopEnvDouble] = {}
        self.stepped: list[str] = []

    def reset_many(self, tasks: Sequence[TaskInfo]) -> list[tuple[int, ResetResult] | EnvError]:
        results: list[tuple[int, ResetResult] | EnvError] = []
        for task in tasks:
            slot = len(self.envs)
            self.envs[slot] = ShopEnvDouble()
            results.append((slot, self.envs[slot].reset(task)))
        return results

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]:
        self.stepped.extend(action for _, action in actions)
        return [self.envs[slot].step(action) for slot, action in actions]

    def release(self, slot: int) -> None:
        pass


def shopper(sloppy: bool) -> Callable[[str], str]:
    """ReAct on the shop: a bracket thought, then the walkthrough; ``sloppy`` adds an unusable output."""

    def policy(observation: str) -> str:
        if "Instruction:" in observation:
            return "think[I need a red mug.]"
        if observation == "OK.":
            return "???" if sloppy else "search[Red Mug]"
        if observation == INVALID:
            return "search[Red Mug]"
        if observation.startswith("Results"):
            return "Action: click[Red Mug]."
        return "click[Buy Now]"

    return policy


def play(tmp_path: Path, sloppy: bool, format_name: str = "react") -> tuple[EpisodeRecord, ShopPoolDouble]:
    config = ExperimentConfig()
    store = ArtifactStore(f"file://{tmp_path}")
    log = RecordLog(store, "rollouts/base", key=lambda record: record["task_id"], shard_size=5)
    pool = ShopPoolDouble()
    engine = RolloutEngine(
        EngineSettings(config.agent, config.models.agent, batch_size=1),
        ScriptedBackendDouble(shopper(sloppy)),
        pool,
        get_format(format_name, get_profile(SHOP)),
        lambda _: [],
        log,
    )
    engine.run(list_shop_tasks()[:1])
    (record,) = [EpisodeRecord.from_dict(item) for item in log.records()]
    return record, pool


def test_a_rollout_follows_the_profile(tmp_path: Path) -> None:
    record, pool = play(tmp_path, sloppy=True)
    assert record.success and record.env == SHOP
    assert [step.history_text for step in record.steps] == [
        "think[I need a red mug.]",
        "???",
        "search[Red Mug]",
        "click[Red Mug]",
        "click[Buy Now]",
    ]
    assert [step.observation for step in record.steps[:2]] == ["OK.", INVALID]
    assert pool.stepped == list(WALKTHROUGH)  # case kept; neither the thought nor "???" reached the shop
    system = record.prompt[0].text
    assert system.startswith("You are shopping on a website")
    assert (
        "or a thought written as `think[...]` (for example `think[I should compare the prices.]`)" in system
    )
    assert (
        record.prompt[-1].text
        == f"Here is the task.\nShop [SEP] Instruction: [SEP] {INSTRUCTION} [SEP] Search"
    )


def test_a_label_thought_is_stored_in_the_profiles_bracket_syntax() -> None:
    react = get_format("react", SHOP_PROFILE)
    parsed = react.parse("think: compare prices")
    assert parsed.is_think and parsed.text == "think[compare prices]"
    assert react.observation_without_env(react.parse("")) == INVALID


def test_stateact_uses_the_profiles_keys_without_a_thought_line() -> None:
    stateact = get_format("stateact", SHOP_PROFILE)
    assert "Reply with exactly these four lines" in stateact.system_text()
    assert "thought:" not in stateact.system_text()
    assert stateact.system_text().endswith("The shop answers each reply with an observation.")
    output = (
        "goal: a red mug\ncurrent location: results page\ncurrent selection: None\naction: click[Red Mug]"
    )
    parsed = stateact.parse(output + "\n\nRed Mug [SEP] Buy Now")
    assert parsed.action == "click[Red Mug]" and parsed.thought is None
    assert parsed.state == {
        "goal": "a red mug",
        "current location": "results page",
        "current selection": "None",
        "action": "click[Red Mug]",
    }
    assert parsed.text == output


def test_mining_asks_in_the_profiles_words_and_validates_with_its_hint_style(tmp_path: Path) -> None:
    record, _ = play(tmp_path, sloppy=True)
    record.success = False
    answer = {
        "hints": [
            {"text": "Check that the price is below $20 before clicking Buy Now."},
            {"text": "Avoid B0REDMUG01 next time."},
        ]
    }
    backend = ScriptedExtractorDouble([json.dumps(answer)])
    (mined,) = extract_hints([record], backend, max_hints=4)
    user = backend.requests[0].messages[-1].content
    assert "Product category: mugs" in user and "1 to 2 hints" in user
    assert "> think[I need a red mug.]\nOK.\n> ???\nInvalid action!\n> search[Red Mug]" in user
    assert "its exact price" in user and "{object}" not in user
    assert mined.hints == ["Check that the price is below {price} before clicking Buy Now."]
    assert mined.rejected == [("Avoid B0REDMUG01 next time.", "episode_specific")]


def test_a_dataset_keeps_only_episodes_within_the_profiles_invalid_limit(tmp_path: Path) -> None:
    sloppy, _ = play(tmp_path / "sloppy", sloppy=True)
    clean, _ = play(tmp_path / "clean", sloppy=False)
    config = with_overrides(ExperimentConfig(), {"env.name": SHOP})
    chosen = selection(PipelineSettings.from_experiment(config).dataset("distill"))
    assert (chosen.invalid_observation, chosen.max_invalid_actions) == (INVALID, 0)
    kept, skipped = select_episodes([sloppy, clean], chosen)
    assert kept == [clean] and skipped == {"too_many_invalid_actions": 1}
    segments = example_segments(clean, DISTILL_REMOVED)
    assert [segment.kind for segment in segments[:2]] == ["system", "task"]
    assert [segment.text for segment in segments if segment.role == "assistant"] == [
        "think[I need a red mug.]",
        *WALKTHROUGH,
    ]


@pytest.mark.parametrize("format_name", ["react", "act", "stateact"])
def test_expert_fewshot_examples_come_from_the_registry_and_the_profiles_renderer(
    tmp_path: Path, format_name: str
) -> None:
    (example,) = build_examples("expert", format_name, "mugs", 1, tmp_path, env_name=SHOP)
    agent: AgentFormat = get_format(format_name, SHOP_PROFILE)
    if format_name == "stateact":
        blocks = example.split("\n\n")
        assert blocks[1].splitlines() == [
            f"goal: {INSTRUCTION}",
            "current location: search page",
            "current selection: None",
            "action: search[Red Mug]",
        ]
        assert agent.parse(blocks[5]).state["current selection"] == "Red Mug"
    else:
        lines = [line[2:] for line in example.splitlines() if line.startswith("> ")]
        thoughts = ["think[I should search for the mug first.]"] if format_name == "react" else []
        assert lines == [*thoughts, *WALKTHROUGH]
        assert [agent.parse(line).action for line in lines if not agent.parse(line).is_think] == list(
            WALKTHROUGH
        )
    assert (tmp_path / "fewshot" / f"expert-{SHOP}-train-mugs.json").is_file()


def test_a_source_the_profile_does_not_offer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FewshotError, match=r"offers no 'react' few-shot examples.*expert, none"):
        build_examples("react", "react", "mugs", 1, tmp_path, env_name=SHOP)
    with pytest.raises(ValueError, match="unknown shop-double product category 'hats'"):
        build_examples("expert", "react", "hats", 1, tmp_path, env_name=SHOP)


class RecordingRetrieverDouble:
    name = "recording-double"

    def __init__(self) -> None:
        self.queries: list[RetrievalQuery] = []

    def retrieve(self, queries: Sequence[RetrievalQuery], k: int) -> list[RetrievalResult]:
        self.queries.extend(queries)
        return [RetrievalResult() for _ in queries]


class KeywordClassifierDouble:
    """A group classifier that says "mugs" for any instruction naming a mug and costs 7 tokens."""

    name = "keyword-double"

    def classify(self, instructions: Sequence[str]) -> list[GroupPrediction]:
        return [GroupPrediction("mugs" if "mug" in text else "shoes", tokens=7) for text in instructions]


def test_the_teacher_queries_the_group_the_classifier_predicts() -> None:
    retriever = RecordingRetrieverDouble()
    source = RetrieverHintSource(retriever, 3, "instruction", KeywordClassifierDouble())
    task = TaskInfo(SHOP, "test", "s9", "shoes", INSTRUCTION)
    (hints,) = source.hints_for([(task, "Shop [SEP] Search")])
    assert [query.task_type for query in retriever.queries] == ["mugs"]
    assert hints.tokens == 7
    assert (
        hints.reason is not None and "group mugs predicted by the keyword-double classifier" in hints.reason
    )


def test_without_a_classifier_the_teacher_queries_the_task_group() -> None:
    retriever = RecordingRetrieverDouble()
    RetrieverHintSource(retriever, 3, "instruction").hints_for(
        [(TaskInfo(SHOP, "test", "s9", "shoes", INSTRUCTION), "")]
    )
    assert [query.task_type for query in retriever.queries] == ["shoes"]


def test_the_hint_source_built_from_settings_retrieves_in_the_group_the_llm_predicts() -> None:
    bank = HintBank()
    bank.add_all(
        Hint.create(text, SHOP, group)
        for text, group in (("Search for the colour first.", "mugs"), ("Check the shoe size.", "shoes"))
    )
    engines = EnginesDouble(ScriptedExtractorDouble(['{"group": "mugs"}']))
    retrieval = retrieval_settings(RetrievalConfig(retriever="bm25", group="llm", query="instruction"))
    source = build_hint_source(
        retrieval,
        RERANKER_ROLE,
        bank=bank,
        index=None,
        engines=engines,
        profile=SHOP_PROFILE,
        training_tasks=lambda limit: pytest.fail("only the embedding classifier reads training tasks"),
    )
    (hints,) = source.hints_for([(TaskInfo(SHOP, "test", "s9", "shoes", "a red mug, colour red"), "")])
    assert hints.texts == ["Search for the colour first."] and hints.tokens > 0
    assert hints.reason is not None and "group mugs predicted by the llm classifier" in hints.reason
    assert engines.roles == ["reranker"] and engines.embedders == []


def test_prompt_version_follows_the_profile() -> None:
    from ragdistill.rollout.plan import prompt_version

    assert prompt_version(SHOP) != prompt_version("alfworld")


def test_a_profile_must_back_the_sources_it_offers() -> None:
    kwargs: dict[str, Any] = {"fewshot_sources": ("react",)}
    with pytest.raises(ValueError, match="without react_examples"):
        EnvProfile(**{**SHOP_PROFILE.__dict__, **kwargs})
    with pytest.raises(ValueError, match="end with 'action'"):
        AgentStyle(**{**SHOP_PROFILE.agent.__dict__, "state_keys": ("goal", "current location", "x", "y")})
