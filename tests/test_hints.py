"""Stage B: hint records, validation, tolerant parsing, extraction prompts and batched mining."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import installed, require
from ragdistill.config import SamplingConfig
from ragdistill.environments.alfworld.hints import ALFWORLD_HINT_STYLE
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.environments.profile import HintStyle
from ragdistill.environments.webshop.hints import WEBSHOP_HINT_STYLE
from ragdistill.episodes import Step
from ragdistill.retrieval.bank import HintBank
from ragdistill.retrieval.hints import Hint, hint_id, normalise, parse_hints, validate_hint
from ragdistill.retrieval.lenient_json import find_json
from ragdistill.retrieval.mining import extraction_request, format_trajectory, mine_hints
from retrieval_doubles import ScriptedExtractorDouble, make_record

STYLES: dict[str, HintStyle] = {"alfworld": ALFWORLD_HINT_STYLE, "webshop": WEBSHOP_HINT_STYLE}
WEBSHOP_PROFILE_DOUBLE = replace(
    ALFWORLD_PROFILE,
    name="webshop",
    group_label="Product category",
    hints=WEBSHOP_HINT_STYLE,
    fewshot_sources=(),
    react_examples=None,
    render_demonstration=None,
)
"""Mining needs only the hint style and the group label; the agent style is borrowed."""


def test_normalise_lowercases_and_collapses_whitespace() -> None:
    assert normalise("  Open THE\t{container}\n first ") == "open the {container} first"


def test_hint_id_is_a_content_hash_of_normalised_text_env_and_type() -> None:
    base = hint_id("Open {container} first.", "alfworld", "heat")
    assert base == hint_id("  open {CONTAINER}   first. ", "alfworld", "heat")
    assert base != hint_id("Open {container} first.", "alfworld", "cool")
    assert base != hint_id("Open {container} first.", "webshop", "heat")
    hint = Hint.create("Open  {container} first.", "alfworld", "heat", ["run/1"])
    assert hint.id == base and hint.text == "Open {container} first." and hint.mentions == 1


def test_hint_round_trips_and_from_dict_names_the_bad_field() -> None:
    hint = Hint.create("Open {container} first.", "alfworld", "heat", ["run/1"])
    assert Hint.from_dict(hint.to_dict()) == hint
    with pytest.raises(ValueError, match="mentions"):
        Hint.from_dict({**hint.to_dict(), "mentions": 0})
    with pytest.raises(ValueError, match="task_type"):
        Hint.from_dict({**hint.to_dict(), "task_type": ""})
    with pytest.raises(ValueError, match="unknown hint fields"):
        Hint.from_dict({**hint.to_dict(), "extra": 1})


GOOD = '{"hints": [{"text": "Open {container} before looking for {object}."}, {"text": "Check {location} twice."}]}'


@pytest.mark.parametrize(
    "answer",
    [
        GOOD,
        f"```json\n{GOOD}\n```",
        f"Sure! Here are the hints:\n{GOOD}\nHope this helps.",
        GOOD.replace("}]}", "},]}").replace('"},', '",},'),
        GOOD.replace('"', "'"),
        '[{"text": "Open {container} before looking for {object}."}, "Check {location} twice."]',
        '["Open {container} before looking for {object}.", "Check {location} twice."]',
        'I think [1] is wrong. {"hints": [{"text": "Open {container} before looking for {object}."}, '
        '{"text": "Check {location} twice."}]}',
    ],
    ids=["plain", "fenced", "prose", "trailing-commas", "single-quotes", "mixed-list", "bare-list", "decoy"],
)
def test_parse_hints_tolerates_common_answer_shapes(answer: str) -> None:
    result = parse_hints(answer, ALFWORLD_HINT_STYLE)
    assert result.error is None
    assert result.hints == ["Open {container} before looking for {object}.", "Check {location} twice."]


def test_parse_hints_accepts_a_single_object_and_salvages_a_cut_off_answer() -> None:
    assert parse_hints('{"text": "Open {container} first."}', ALFWORLD_HINT_STYLE).hints == [
        "Open {container} first."
    ]
    cut = '{"hints": [{"text": "Open {container} first."}, {"text": "Check \\"{object}\\"."}, {"text": "Go to {loc'
    result = parse_hints(cut, ALFWORLD_HINT_STYLE)
    assert result.hints == ["Open {container} first.", 'Check "{object}".'] and result.salvaged


@pytest.mark.parametrize("junk", ["", "no json here", "{", "[[[[", '{"hints": 5}', "null", "{}", "[1, 2]"])
def test_parse_hints_reports_junk_without_raising(junk: str) -> None:
    result = parse_hints(junk, ALFWORLD_HINT_STYLE)
    assert result.hints == []
    assert result.error is not None or result.rejected


@pytest.mark.parametrize(
    ("raw", "env", "expected", "reason"),
    [
        (
            "Open {container} before taking {object}.",
            "alfworld",
            "Open {container} before taking {object}.",
            None,
        ),
        ("1. Open {Container} first.", "alfworld", "Open {container} first.", None),
        ('"- Hint: Check {location}."', "alfworld", "Check {location}.", None),
        (
            "If {object} is dirty, clean it at the sink.",
            "alfworld",
            "If {object} is dirty, clean it at the sink.",
            None,
        ),
        ("Bring {object} to {location}.", "alfworld", "Bring {object} to {location}.", None),
        (
            "Check up to 3 drawers before giving up.",
            "alfworld",
            "Check up to 3 drawers before giving up.",
            None,
        ),
        (
            "Check the price is under $40.00 before buying.",
            "webshop",
            "Check the price is under {price} before buying.",
            None,
        ),
        ("Keep the total below 25 dollars.", "webshop", "Keep the total below {price}.", None),
        ("", "alfworld", None, "empty"),
        ("  -  ", "alfworld", None, "empty"),
        (42, "alfworld", None, "not_text"),
        ("Open {container before {object}.", "alfworld", None, "malformed_placeholder"),
        ("Open {drawer} first.", "alfworld", None, "unknown_placeholder"),
        ("Pick {size} first.", "alfworld", None, "unknown_placeholder"),
        ("Go to cabinet 3 before anything else.", "alfworld", None, "episode_specific"),
        ("Buy B07XYZ1234 when it shows up.", "webshop", None, "episode_specific"),
        ("Open " + "x" * 130, "alfworld", None, "too_long"),
        ("The agent should open the fridge.", "alfworld", None, "not_imperative"),
        ("It is important to open {container}.", "alfworld", None, "not_imperative"),
        ("Tried opening {container} without success.", "alfworld", None, "not_imperative"),
        ("Looking inside {container} did not help.", "alfworld", None, "not_imperative"),
        ("{object} must be heated first.", "alfworld", None, "not_imperative"),
        ("Search the product with color navy, and size iz iz iz.", "webshop", None, "degenerate"),
        ("Buy now, please, please, please, please.", "webshop", None, "degenerate"),
        ("Search the product, find the product, and find the product,.", "webshop", None, "degenerate"),
        ("Search the product's description, its price, and its .", "webshop", None, "degenerate"),
        ("Buy now, ensure it matches the size, and ensure it matches.", "webshop", None, "degenerate"),
        ("Include the product in your order, and the price and size, .", "webshop", None, "degenerate"),
        (
            "Check the size and the color of the item before the purchase.",
            "webshop",
            "Check the size and the color of the item before the purchase.",
            None,
        ),
        (
            "Open {container} and look in {container} again.",
            "alfworld",
            "Open {container} and look in {container} again.",
            None,
        ),
    ],
)
def test_validate_hint(raw: object, env: str, expected: str | None, reason: str | None) -> None:
    assert validate_hint(raw, STYLES[env]) == (expected, reason)


def test_parse_hints_drops_duplicates_and_hints_over_the_env_limit() -> None:
    answer = json.dumps(
        {"hints": [{"text": t} for t in ["Check {size}.", "check  {SIZE}.", "Pick {color}.", "Buy {item}."]]}
    )
    result = parse_hints(answer, WEBSHOP_HINT_STYLE)
    assert result.hints == ["Check {size}.", "Pick {color}."]
    assert [r.reason for r in result.rejected] == ["duplicate", "over_limit"]


def test_parse_hints_rejects_items_that_are_not_text() -> None:
    result = parse_hints('{"hints": [{"text": 3}, {"note": "x"}, "Open {container}."]}', ALFWORLD_HINT_STYLE)
    assert result.hints == ["Open {container}."]
    assert [r.reason for r in result.rejected] == ["not_text", "not_text"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_parse_hints_never_raises_on_any_text(text: str) -> None:
    result = parse_hints(text, ALFWORLD_HINT_STYLE)
    assert all(isinstance(hint, str) and len(hint) <= 120 for hint in result.hints)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["hints", "text", "hint", "x"]), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.text(max_size=20), st.text(max_size=20), st.sampled_from(["alfworld", "webshop"]))
def test_parse_hints_never_raises_on_json_shaped_answers(
    value: object, before: str, after: str, env: str
) -> None:
    result = parse_hints(before + json.dumps(value) + after, STYLES[env])
    assert len(result.hints) <= (4 if env == "alfworld" else 2)


def test_find_json_gives_up_on_pathological_input_instead_of_raising() -> None:
    assert find_json("[" * 50_000) is None
    assert find_json("{" * 5_000 + '{"a": 1}') is None
    assert find_json("{" * 50 + '{"a": 1}') == {"a": 1}


def test_extraction_request_shows_the_failed_trajectory_and_never_the_prompt_segments() -> None:
    record = make_record()
    request = extraction_request(record, ALFWORLD_PROFILE, 4, SamplingConfig(max_tokens=600, seed=7))
    user = request.messages[-1].content
    assert "Goal: Your task is to: heat some mug and put it in cabinet." in user
    assert "Task type: heat" in user
    assert "> think: find a mug\nOK.\n> go to cabinet 1\nOn the cabinet 1, you see a mug 2." in user
    assert "> heat mug 2 with microwave 1\nNothing happens." in user
    assert "FEWSHOT-EXAMPLE" not in user and "Interact with a household" not in user
    assert "{object}, {container}, {location}" in user and "1 to 4 hints" in user
    assert request.max_tokens == 600 and request.seed == 7 and request.temperature == 0.0
    hints_schema = request.json_schema["properties"]["hints"]  # type: ignore[index]
    assert hints_schema["maxItems"] == 4 and hints_schema["items"]["required"] == ["text"]


def test_constrained_hint_text_schema_only_admits_valid_hints() -> None:
    request = extraction_request(make_record(), ALFWORLD_PROFILE, 4, max_chars=100, constrain_hint_text=True)
    text_schema = request.json_schema["properties"]["hints"]["items"]["properties"]["text"]  # type: ignore[index]
    assert text_schema["maxLength"] == 100
    pattern = re.compile(text_schema["pattern"])
    for good in ("Open {container} before looking for {object} inside it.", "Always check {location} first."):
        assert pattern.match(good) and validate_hint(good, ALFWORLD_HINT_STYLE, 100)[1] is None
    for bad in ("Go to cabinet 3.", "The agent failed.", "open the fridge.", "Check it"):
        assert not pattern.match(bad)
    assert "at most 100 characters" in request.messages[-1].content
    plain = extraction_request(make_record(), ALFWORLD_PROFILE, 4)
    assert "pattern" not in json.dumps(plain.json_schema)


def test_extraction_request_for_webshop_asks_for_at_most_two_hints_with_its_placeholders() -> None:
    request = extraction_request(make_record(env="webshop", task_type="beauty"), WEBSHOP_PROFILE_DOUBLE, 4)
    user = request.messages[-1].content
    assert "Product category: beauty" in user and "1 to 2 hints" in user and "{price}" in user
    assert request.json_schema["properties"]["hints"]["maxItems"] == 2  # type: ignore[index]


def test_format_trajectory_keeps_start_and_end_of_a_long_trajectory() -> None:
    steps = [
        Step(f"go to shelf {i}", f"go to shelf {i}", False, "x" * 80, 0.0, False, 1, 1) for i in range(200)
    ]
    text = format_trajectory(steps, max_chars=2000)
    assert len(text) <= 2000
    assert text.startswith("> go to shelf 0\n") and text.rstrip().endswith("x")
    assert "> go to shelf 199" in text and "steps omitted ...]" in text


def test_mine_hints_sends_every_failure_in_one_call_and_counts_every_outcome() -> None:
    records = [
        make_record("won", success=True),
        make_record("f1", "heat"),
        make_record("crashed", stop_reason="error"),
        make_record("f2", "cool"),
        make_record("empty", steps=[]),
    ]
    answers = [
        '{"hints": [{"text": "Heat {object} with the microwave before placing it."}, {"text": "Go to cabinet 3."}]}',
        "I could not think of anything.",
    ]
    backend = ScriptedExtractorDouble(answers)
    result = mine_hints(records, backend, max_hints=4, sampling=SamplingConfig(max_tokens=600))
    assert backend.calls == 1 and len(backend.requests) == 2
    assert [(h.task_type, h.source_episode_ids) for h in result.hints] == [("heat", ["run-a/f1"])]
    counts = result.counts
    assert counts["episodes"] == 5 and counts["failures"] == 2
    assert counts["skipped_success"] == 1 and counts["skipped_error"] == 1 and counts["skipped_no_steps"] == 1
    assert counts["rejected_episode_specific"] == 1 and counts["answers_without_json"] == 1
    assert counts["hints_accepted"] == 1 and counts["hints_rejected"] == 1
    assert counts["extractor_completion_tokens"] > 0
    assert result.rejected == [("run-a/f1", "Go to cabinet 3.", "episode_specific")]


def test_mine_hints_respects_max_failures_and_calls_nothing_without_failures() -> None:
    backend = ScriptedExtractorDouble(lambda _: '{"hints": [{"text": "Open {container}."}]}')
    result = mine_hints([make_record(f"f{i}") for i in range(5)], backend, max_failures=2)
    assert len(backend.requests) == 2 and result.counts["skipped_over_max_failures"] == 3
    idle = ScriptedExtractorDouble([])
    assert mine_hints([make_record(success=True)], idle).hints == [] and idle.calls == 0


def test_mined_hints_from_many_failures_dedupe_and_merge_in_the_bank() -> None:
    answers = {
        "f1": '{"hints": [{"text": "Open {container} before looking for {object}."}]}',
        "f2": '{"hints": [{"text": "open {container} before looking for the {object}"}, {"text": "Check {location}."}]}',
        "f3": '{"hints": [{"text": "Open {container} before looking for {object}."}]}',
    }
    records = [make_record("f1", "heat"), make_record("f2", "heat"), make_record("f3", "cool")]
    order = iter(["f1", "f2", "f3"])
    backend = ScriptedExtractorDouble(lambda _: answers[next(order)])
    mined = mine_hints(records, backend)
    bank = HintBank()
    outcome = bank.add_all(mined.hints)
    assert outcome == {"added": 3, "merged": 1}
    heat = bank.hints("heat")
    assert [h.text for h in heat] == ["Open {container} before looking for {object}.", "Check {location}."]
    assert heat[0].mentions == 2 and heat[0].source_episode_ids == ["run-a/f1", "run-a/f2"]
    assert [h.mentions for h in bank.hints("cool")] == [1]


@pytest.mark.slow
def test_mine_hints_with_the_real_tiny_model_gets_schema_valid_json() -> None:
    require(installed("vllm"), "vLLM is not installed (`make setup` installs the cpu extra)")
    import torch

    from ragdistill.config import BackendConfig, HintRules, ModelSpec, RoleConfig
    from ragdistill.inference.vllm_backend import VLLMBackend
    from ragdistill.retrieval.mining import mine_hints_from_config

    torch.set_num_threads(1)
    role = RoleConfig(
        model=ModelSpec(name="smollm2-135m", max_model_len=4096),
        backend=BackendConfig(kind="vllm", kv_cache_gib=1, enable_lora=False),
        sampling=SamplingConfig(max_tokens=200),
    )
    backend = VLLMBackend(role)
    try:
        records = [make_record("f1", "heat"), make_record("f2", "cool"), make_record("won", success=True)]
        result = mine_hints_from_config(records, backend, HintRules(constrain_hint_text=True), role.sampling)
    finally:
        backend.close()
    counts = result.counts
    assert counts["failures"] == 2 and counts.get("answers_without_json", 0) == 0
    assert counts["hints_accepted"] >= 2, "the constrained schema admits only valid hints, one or more each"
    assert counts["extractor_prompt_tokens"] > 200
    for hint in result.hints:
        assert hint.task_type in ("heat", "cool") and len(hint.text) <= 120
