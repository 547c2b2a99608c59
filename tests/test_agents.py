"""Agent formats: parsing junk, think handling, prompt layout, stop rules and context fitting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragdistill.agents.control import ContextBudgetError, StopRules, fit_to_budget
from ragdistill.agents.formats import HINTS_PREAMBLE, AgentFormat, ParsedOutput, render_state
from ragdistill.agents.formats import get_format as format_for
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.base import TaskInfo
from ragdistill.messages import Segment, drop_kinds, render_messages

THINK_OBSERVATION = "OK."
UNPARSEABLE_OBSERVATION = "Nothing happens."


def get_format(name: str) -> AgentFormat:
    return format_for(name, ALFWORLD_PROFILE)


def observation_without_env(parsed: ParsedOutput) -> str | None:
    return get_format("react").observation_without_env(parsed)


FORMAT_NAMES = ("react", "act", "stateact")
TASK = TaskInfo(
    env="alfworld", split="train", task_id="t1", task_type="put", instruction="put some apple on desk."
)
FIRST_OBSERVATION = (
    "You are in the middle of a room. Looking quickly around you, you see a desk 1, and a shelf 1.\n\n"
    "Your task is to: put some apple on desk."
)


@pytest.mark.parametrize(
    ("output", "action"),
    [
        ("go to cabinet 1", "go to cabinet 1"),
        ("> go to cabinet 1", "go to cabinet 1"),
        (">go to cabinet 1.", "go to cabinet 1"),
        ("Action: go to cabinet 1", "go to cabinet 1"),
        ("ACTION 3: Go To Cabinet 1", "go to cabinet 1"),
        ('"take apple 1 from desk 1"', "take apple 1 from desk 1"),
        ("`open drawer 2`!", "open drawer 2"),
        ("**put apple 1 in/on desk 1**", "put apple 1 in/on desk 1"),
        ("  go   to    shelf 1  ", "go to shelf 1"),
        ("\n\n> go to shelf 1\nOn the shelf 1, you see nothing.\n> take x", "go to shelf 1"),
        ("- use desklamp 1", "use desklamp 1"),
    ],
)
@pytest.mark.parametrize("format_name", ["react", "act"])
def test_line_formats_strip_decoration(format_name: str, output: str, action: str) -> None:
    parsed = get_format(format_name).parse(output)
    assert parsed.action == action
    assert parsed.error is None
    assert parsed.text == action
    assert observation_without_env(parsed) is None


@pytest.mark.parametrize("output", ["", "   \n\n ", ">", "> ...", '""', "**"])
@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_outputs_without_an_action_get_an_error_and_nothing_happens(format_name: str, output: str) -> None:
    parsed = get_format(format_name).parse(output)
    assert parsed.action is None
    assert not parsed.is_think
    assert parsed.error
    assert observation_without_env(parsed) == UNPARSEABLE_OBSERVATION


@pytest.mark.parametrize(
    ("output", "thought"),
    [
        ("think: First I need to find an apple.", "First I need to find an apple."),
        ("> think: plan A", "plan A"),
        ("Think:   two  spaces", "two spaces"),
        ("Action: think: hidden in an action", "hidden in an action"),
        ("thought: a ReAct-style thought\n> go to desk 1", "a ReAct-style thought"),
    ],
)
def test_react_think_is_answered_ok_without_an_action(output: str, thought: str) -> None:
    react = get_format("react")
    parsed = react.parse(output)
    assert parsed.is_think
    assert parsed.action is None
    assert parsed.thought == thought
    assert observation_without_env(parsed) == THINK_OBSERVATION
    assert react.turn(output, THINK_OBSERVATION)[0].text == f"think: {thought}"


def test_act_rejects_think_lines() -> None:
    parsed = get_format("act").parse("think: I should look around")
    assert parsed.action is None
    assert not parsed.is_think
    assert "think" in (parsed.error or "")
    assert observation_without_env(parsed) == UNPARSEABLE_OBSERVATION


def test_stateact_takes_the_text_after_the_last_action_label() -> None:
    stateact = get_format("stateact")
    output = (
        "goal: put some apple on desk\n"
        "locations visited: shelf 1\n"
        "current location: shelf 1\n"
        "current inventory: None\n"
        "thought: the plan's action: go to shelf 1 failed\n"
        "Action: Go to desk 1.\n"
        "\n"
        "You arrive at desk 1."
    )
    parsed = stateact.parse(output)
    assert parsed.action == "go to desk 1"
    assert parsed.state["locations visited"] == "shelf 1"
    assert parsed.state["current inventory"] == "None"
    assert parsed.thought == "the plan's action: go to shelf 1 failed"
    assert parsed.text.endswith("Action: Go to desk 1.")
    assert "You arrive" not in parsed.text


def test_stateact_action_label_on_its_own_line_reads_the_next_line() -> None:
    parsed = get_format("stateact").parse("goal: x\naction:\n\n  > open drawer 1\nmore")
    assert parsed.action == "open drawer 1"


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ("goal: x\nthought: go to desk 1", "no 'action:'"),
        ("action:   ", "empty"),
        ("action: think: hmm", "thought"),
    ],
)
def test_stateact_unusable_outputs_name_the_problem(output: str, fragment: str) -> None:
    parsed = get_format("stateact").parse(output)
    assert parsed.action is None
    assert fragment in (parsed.error or "")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(FORMAT_NAMES))
def test_parse_never_crashes_and_returns_a_clean_action_or_none(output: str, format_name: str) -> None:
    parsed = get_format(format_name).parse(output)
    assert parsed.action is None or isinstance(parsed.action, str)
    if parsed.action is not None:
        assert parsed.action == parsed.action.strip()
        assert parsed.action
        assert "\n" not in parsed.action
        assert parsed.action == parsed.action.lower()
        assert parsed.error is None
    elif not parsed.is_think:
        assert isinstance(parsed.error, str)
    assert isinstance(parsed.text, str)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([">", " ", "Action:", '"', "*", "`", "> "]), max_size=4),
    st.sampled_from(["go to desk 1", "take apple 1 from shelf 1", "use desklamp 1"]),
    st.lists(st.sampled_from([".", "!", '"', "*", " ", "`"]), max_size=3),
)
def test_decorated_actions_parse_back(prefix: list[str], action: str, suffix: list[str]) -> None:
    output = "".join(prefix) + action + "".join(suffix)
    assert get_format("react").parse(output).action == action


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_prompt_places_hints_once_before_the_examples(format_name: str) -> None:
    agent = get_format(format_name)
    hints = ["Open {container} before looking inside.", "Check {location} for {object} first."]
    examples = ["EXAMPLE-ONE transcript", "EXAMPLE-TWO transcript"]
    segments = agent.prompt(TASK, FIRST_OBSERVATION, examples, hints)
    assert [segment.kind for segment in segments] == ["system", "hints", "fewshot", "task"]
    messages = render_messages(segments)
    assert [message.role for message in messages] == ["system", "user"]
    assert messages[0].content.startswith("Interact with a household to solve a task.")
    user = messages[1].content
    assert user.count(HINTS_PREAMBLE) == 1
    for hint in hints:
        assert user.count(hint) == 1
    assert user.index(hints[-1]) < user.index("Here are two examples.") < user.index("EXAMPLE-ONE")
    assert user.index("EXAMPLE-TWO") < user.index("Here is the task.")
    assert user.endswith("Your task is to: put some apple on desk.")
    assert "\n\n" not in user[user.index("Here is the task.") :]


def test_prompt_without_hints_or_examples_has_only_system_and_task() -> None:
    segments = get_format("react").prompt(TASK, FIRST_OBSERVATION, [], None)
    assert [segment.kind for segment in segments] == ["system", "task"]
    assert HINTS_PREAMBLE not in "".join(segment.text for segment in segments)


def test_task_block_adds_a_missing_instruction() -> None:
    segments = get_format("act").prompt(TASK, "You are in the middle of a room.", [], None)
    assert segments[-1].text.endswith("Your task is to: put some apple on desk.")


def test_distill_drop_leaves_system_task_and_history() -> None:
    react = get_format("react")
    segments = react.prompt(TASK, FIRST_OBSERVATION, ["EXAMPLE"], ["a hint"])
    segments += react.turn("> go to desk 1", "You arrive at desk 1.")
    kept = drop_kinds(segments, ["hints", "fewshot"])
    assert [segment.kind for segment in kept] == ["system", "task", "history", "history"]
    assert [message.role for message in render_messages(kept)] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_turns_alternate_assistant_and_user(format_name: str) -> None:
    agent = get_format(format_name)
    output = "think: plan" if format_name == "react" else "action: go to desk 1"
    segments = agent.prompt(TASK, FIRST_OBSERVATION, [], None)
    for _ in range(3):
        segments += agent.turn(output, "You arrive at desk 1.")
    roles = [message.role for message in render_messages(segments)]
    assert roles == ["system", "user"] + ["assistant", "user"] * 3


def test_stop_strings() -> None:
    assert get_format("react").stop == ["\n"]
    assert get_format("act").stop == ["\n"]
    assert get_format("stateact").stop == ["\n\n"]


def test_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match="webshop-react"):
        get_format("webshop-react")


def test_render_state_writes_none_for_empty_values() -> None:
    values = {"goal": "goal x", "locations visited": [], "current location": "", "action": "look"}
    block = render_state(ALFWORLD_PROFILE.agent.state_keys, values)
    assert block.splitlines() == [
        "goal: goal x",
        "locations visited: None",
        "current location: None",
        "current inventory: None",
        "thought: None",
        "action: look",
    ]
    assert get_format("stateact").parse(block).action == "look"


def test_stop_rules_max_calls() -> None:
    rules = StopRules(max_calls=100, repeat_stop=5)
    reasons = [rules.update(f"go to cabinet {i}") for i in range(100)]
    assert reasons[:99] == [None] * 99
    assert reasons[99] == "max_calls"
    assert rules.calls == 100


def test_stop_rules_repeated_output() -> None:
    rules = StopRules(max_calls=100, repeat_stop=5)
    sequence = ["look", "look", "look", "look", "go to desk 1", "look", "look", "look", "look"]
    assert [rules.update(output) for output in sequence] == [None] * 9
    assert rules.update(" look \n") == "repeated_output"


def test_stop_rules_reject_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="repeat_stop"):
        StopRules(repeat_stop=1)
    with pytest.raises(ValueError, match="max_calls"):
        StopRules(max_calls=0)


def _words(segments: list[Segment]) -> int:
    return sum(len(segment.text.split()) for segment in segments)


def _long_prompt(turns: int) -> list[Segment]:
    react = get_format("react")
    segments = react.prompt(TASK, FIRST_OBSERVATION, ["EXAMPLE " * 20], ["a useful hint"])
    for index in range(turns):
        segments += react.turn(f"go to cabinet {index}", f"On the cabinet {index}, you see nothing at all.")
    return segments


def test_fit_to_budget_keeps_everything_that_fits() -> None:
    segments = _long_prompt(4)
    kept, dropped = fit_to_budget(segments, _words, budget=_words(segments))
    assert (kept, dropped) == (segments, 0)


def test_fit_to_budget_drops_the_oldest_turns_only() -> None:
    segments = _long_prompt(10)
    fixed = [segment for segment in segments if segment.kind != "history"]
    per_turn = _words(segments[-2:])
    budget = _words(fixed) + 3 * per_turn + per_turn // 2
    calls: list[int] = []

    def counting(items: list[Segment]) -> int:
        calls.append(1)
        return _words(items)

    kept, dropped = fit_to_budget(segments, counting, budget)
    assert dropped == 7
    assert kept[: len(fixed)] == fixed
    assert kept[len(fixed) :] == segments[-6:]
    assert kept[len(fixed)].role == "assistant"
    assert _words(kept) <= budget < _words(fixed + segments[-8:])
    assert len(calls) <= 6


def test_fit_to_budget_fails_clearly_when_the_fixed_prompt_is_too_long() -> None:
    segments = _long_prompt(3)
    fixed = [segment for segment in segments if segment.kind != "history"]
    with pytest.raises(ContextBudgetError, match="max_model_len"):
        fit_to_budget(segments, _words, budget=_words(fixed) - 1)


ALFWORLD_SYSTEM_TEXTS = {
    "react": "Interact with a household to solve a task.\n\nReply with exactly one line, either an action for "
    "the household (for example `go to cabinet 1`, `take apple 1 from countertop 1`, `open fridge 1`) or a "
    "thought that starts with `think:` (for example `think: First I need to find an apple.`). A thought is "
    'answered with "OK." and changes nothing. Write only your reply.',
    "act": "Interact with a household to solve a task.\n\nReply with exactly one line: an action for the "
    "household (for example `go to cabinet 1`, `take apple 1 from countertop 1`, `open fridge 1`). Write only "
    "your reply.",
    "stateact": "Interact with a household to solve a task.\n\nReply with exactly these six lines, in this "
    "order, and nothing after them:\ngoal: <the task>\nlocations visited: <places you have gone to so far, "
    "comma-separated, or None>\ncurrent location: <where you are now>\ncurrent inventory: <what you are "
    "holding, comma-separated, or None>\nthought: <a short reasoning step, or None>\naction: <one action for "
    "the household, for example go to cabinet 1>\nThe household answers each reply with an observation.",
}


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_alfworld_system_texts_are_pinned(format_name: str) -> None:
    assert get_format(format_name).system_text() == ALFWORLD_SYSTEM_TEXTS[format_name]


def test_alfworld_fewshot_header_names_the_household() -> None:
    (fewshot,) = [
        s for s in get_format("act").prompt(TASK, FIRST_OBSERVATION, ["X"], None) if s.kind == "fewshot"
    ]
    assert fewshot.text == (
        "Here is an example. In them, lines that start with `>` are the agent's replies and the line after each "
        "is what the household answered; write only your reply, without the `>`.\n\nX"
    )


@pytest.mark.parametrize(
    ("output", "thought"),
    [
        ("think[First I need a mug.]", "First I need a mug."),
        ("> Think [ two  spaces ]", "two spaces"),
        ("think[unclosed thought", "unclosed thought"),
        ("Action: think[in an action] trailing", "in an action"),
    ],
)
def test_bracket_thoughts_are_thoughts_in_a_label_environment(output: str, thought: str) -> None:
    parsed = get_format("react").parse(output)
    assert parsed.is_think and parsed.thought == thought
    assert parsed.text == f"think: {thought}"
    assert get_format("act").parse(output).action is None
