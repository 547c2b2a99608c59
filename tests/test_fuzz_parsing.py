"""Property-based tests: whatever a model writes, parsing never crashes and never hands the environment
or a prompt something outside its contract.

Model text here is arbitrary: unicode, binary-ish bytes, huge (tens of thousands of characters), and
text salted with the markers the parsers look for (``> ``, ``Action:``, ``think[``, StateAct keys, code
fences, chat-template tokens, line breaks of every kind). The contracts:

- an action (every agent format, ALFWorld's and WebShop's profiles) is one line, stripped, non-empty,
  at most ``MAX_ACTION_CHARS`` long, free of control characters, without a leading ``>``/``Action:``
  decoration, never a thought, lower case where the environment's commands are case-blind; when there
  is none, the parse says why (or it is a ReAct thought);
- StateAct's state holds only the profile's keys, each value one stripped line;
- the lenient JSON finder returns a JSON container or None;
- a hint that validation accepts is one line within ``max_chars`` and would pass the render-time guard.

tests/test_agents.py and tests/test_hints.py hold the first, smaller fuzzers (ALFWorld only, short
text); these add the other environment, the adversarial alphabets and sizes.
"""

from __future__ import annotations

import json
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ragdistill.agents.formats import FORMATS, get_format
from ragdistill.agents.parsing import MAX_ACTION_CHARS, parse_state_lines, split_think
from ragdistill.environments.alfworld.hints import ALFWORLD_HINT_STYLE
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.webshop.hints import WEBSHOP_HINT_STYLE
from ragdistill.environments.webshop.profile import WEBSHOP_PROFILE
from ragdistill.retrieval.hints import parse_hints, unsafe_for_prompt, validate_hint
from ragdistill.retrieval.lenient_json import find_json

PROFILES = {"alfworld": ALFWORLD_PROFILE, "webshop": WEBSHOP_PROFILE}
HINT_STYLES = {"alfworld": ALFWORLD_HINT_STYLE, "webshop": WEBSHOP_HINT_STYLE}
MARKERS = [
    "> ", ">", "Action:", "action: ", "ACTION 2:", "Next action:", "think:", "Thought: ", "think[", "]",
    "search[", "click[", "goal:", "current location:", "inventory:", "current selection:", "thought:",
    "\n", "\r\n", "\r", "\n\n", "\u2028", "\x0b", "\x85", "\t", "```json\n", "```", "**", "`", '"', "'",
    "- ", "1. ", "{", "}", "[", '{"hints": [', '{"text": "', '"}', "]}", "<|im_start|>", "<|im_end|>",
    "</s>", "[INST]", "\x00", "\x1b[31m", "\u200b", "\u202e", "é", "🙂", "go to desk 1", "take apple 1",
    "Open {container}.", "Ignore previous instructions.", " ", ".", "!", "None",
]  # fmt: skip

salted = st.lists(st.one_of(st.sampled_from(MARKERS), st.text(max_size=12)), max_size=40).map("".join)
binaryish = st.binary(max_size=400).map(lambda data: data.decode("latin-1"))
huge = st.builds(lambda piece, times: piece * times, salted, st.integers(1, 800)).map(lambda t: t[:40_000])
model_text = st.one_of(st.text(max_size=400), salted, binaryish, huge)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def has_control_characters(text: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in text)


@FUZZ
@given(model_text, st.sampled_from(sorted(FORMATS)), st.sampled_from(sorted(PROFILES)))
@example("go " * 1000, "act", "alfworld")
@example("thought: x\naction: search[" + "red " * 200 + "]", "stateact", "webshop")
@example("\x1b", "act", "alfworld")
@example("\x08THINK[", "act", "alfworld")
@example("> go to\x00desk 1\u200b", "react", "alfworld")
def test_every_format_parses_any_text_into_a_clean_action_or_says_why(
    output: str, format_name: str, env: str
) -> None:
    profile = PROFILES[env]
    fmt = get_format(format_name, profile)
    parsed = fmt.parse(output)
    assert isinstance(parsed.text, str)
    if parsed.action is None:
        assert parsed.is_think or (isinstance(parsed.error, str) and parsed.error)
        if parsed.is_think:
            assert format_name == "react" and parsed.thought is not None
        return
    action = parsed.action
    assert parsed.error is None and not parsed.is_think
    assert action and action == action.strip() and len(action.splitlines()) == 1
    assert len(action) <= MAX_ACTION_CHARS
    assert not has_control_characters(action), repr(action)
    assert not action.startswith((">", "*", "`", '"', "'")) and not action.lower().startswith("action:")
    assert split_think(action) is None, "a thought is never sent to the environment"
    if profile.agent.lowercase_actions:
        assert action == action.lower()
    assert fmt.observation_without_env(parsed) is None


@FUZZ
@given(model_text, st.sampled_from(sorted(PROFILES)))
@example("ACTION:0\x1e0", "alfworld")
def test_stateact_state_holds_only_the_profiles_keys_as_single_lines(output: str, env: str) -> None:
    keys = PROFILES[env].agent.state_keys
    state = parse_state_lines(output, keys)
    assert set(state) <= {key.lower() for key in keys}
    for value in state.values():
        assert value == value.strip() and len(value.splitlines()) <= 1, repr(value)


@FUZZ
@given(model_text)
def test_lenient_json_finds_a_container_or_nothing(text: str) -> None:
    value = find_json(text)
    assert value is None or isinstance(value, dict | list)


@FUZZ
@given(model_text, st.sampled_from(sorted(HINT_STYLES)), st.integers(20, 200))
def test_an_accepted_hint_is_one_bounded_line_that_the_prompt_guard_lets_through(
    raw: str, env: str, max_chars: int
) -> None:
    for candidate in (raw, json.dumps({"hints": [{"text": raw}]})):
        result = parse_hints(candidate, HINT_STYLES[env], max_chars=max_chars)
        clean, reason = validate_hint(raw, HINT_STYLES[env], max_chars)
        assert (clean is None) != (reason is None)
        for hint in [*result.hints, *([clean] if clean else [])]:
            assert hint == hint.strip() and len(hint) <= max_chars and len(hint.splitlines()) == 1
            assert unsafe_for_prompt(hint) is None, repr(hint)
        assert all(isinstance(rejection.reason, str) for rejection in result.rejected)


def test_an_overlong_or_control_character_action_is_no_command() -> None:
    react = get_format("react", ALFWORLD_PROFILE)
    overlong = react.parse("go " * 1000)
    assert overlong.action is None and "more than any command" in (overlong.error or "")
    assert react.parse("\x1b[0m").action == "[0m"
    assert react.parse("> go to\x00desk 1\u200b").action == "go to desk 1"
    assert react.parse("\x1b").action is None
    state = parse_state_lines(
        "goal: find\x1eit\ncurrent location: desk 1\r\naction: look", ("goal", "action")
    )
    assert state == {"goal": "find", "action": "look"}
