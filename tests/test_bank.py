"""The hint bank: dedupe within a task type, merging, stable ids, JSONL save/load through the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rapidfuzz import fuzz

from ragdistill.config import HintRules
from ragdistill.retrieval.bank import BankFormatError, HintBank
from ragdistill.retrieval.hints import Hint, hint_id, normalise
from ragdistill.store import ArtifactStore
from retrieval_doubles import HashingEmbedderDouble


def hint(text: str, task_type: str = "heat", source: str = "run/1", env: str = "alfworld") -> Hint:
    return Hint.create(text, env, task_type, [source])


NEAR_A = "Open {container} before looking for {object}."
NEAR_B = "Open the {container} before looking for {object}."
FAR = "Heat {object} in the microwave before placing it."


def test_fuzzy_ratio_of_the_fixture_pair_is_above_the_paper_threshold() -> None:
    assert fuzz.ratio(normalise(NEAR_A), normalise(NEAR_B)) > 85
    assert fuzz.ratio(normalise(NEAR_A), normalise(FAR)) < 85


def test_near_duplicates_merge_within_a_type_and_keep_the_first_text_and_id() -> None:
    bank = HintBank()
    assert bank.add(hint(NEAR_A, source="run/1")) == "added"
    assert bank.add(hint(NEAR_B, source="run/2")) == "merged"
    assert bank.add(hint(FAR, source="run/3")) == "added"
    assert bank.add(hint(NEAR_A.upper(), source="run/1")) == "merged"
    first, second = bank.hints("heat")
    assert first.text == NEAR_A and first.id == hint_id(NEAR_A, "alfworld", "heat")
    assert first.mentions == 3 and first.source_episode_ids == ["run/1", "run/2"]
    assert second.text == FAR and second.mentions == 1


def test_threshold_decides_what_counts_as_a_duplicate() -> None:
    strict = HintBank(fuzzy_threshold=0.99)
    assert strict.add_all([hint(NEAR_A), hint(NEAR_B)]) == {"added": 2, "merged": 0}
    loose = HintBank.from_rules(HintRules(fuzzy_threshold=0.85))
    assert loose.add_all([hint(NEAR_A), hint(NEAR_B)]) == {"added": 1, "merged": 1}


def test_hints_of_different_types_are_never_merged() -> None:
    bank = HintBank()
    bank.add_all([hint(NEAR_A, "heat"), hint(NEAR_A, "cool"), hint(NEAR_B, "cool")])
    assert bank.counts_by_type() == {"heat": 1, "cool": 1}
    assert bank.hints("heat")[0].id != bank.hints("cool")[0].id
    assert bank.task_types() == ["heat", "cool"] and len(bank) == 2


def test_merge_adds_mentions_and_unites_sources_without_repeats() -> None:
    left, right = HintBank(), HintBank()
    left.add_all([hint(NEAR_A, source="a/1"), hint(NEAR_A, source="a/2")])
    right.add_all([hint(NEAR_B, source="a/2"), hint(NEAR_B, source="b/1"), hint(FAR, source="b/2")])
    outcome = left.merge(right)
    assert outcome == {"added": 1, "merged": 1}
    merged = left.hints("heat")[0]
    assert merged.mentions == 4 and merged.source_episode_ids == ["a/1", "a/2", "b/1"]
    assert right.hints("heat")[0].mentions == 2, "merging must not change the other bank"


def test_a_bank_holds_one_environment() -> None:
    bank = HintBank()
    bank.add(hint(NEAR_A))
    with pytest.raises(ValueError, match="one bank per environment"):
        bank.add(hint("Check {size}.", "beauty", env="webshop"))


def test_embedding_dedupe_merges_by_cosine_with_one_batched_encode() -> None:
    embedder = HashingEmbedderDouble()
    bank = HintBank(dedupe="embedding", embedder=embedder, embedding_threshold=0.9)
    outcome = bank.add_all(
        [hint("Open {container} first, then look."), hint("Then look, open {container} first!"), hint(FAR)]
    )
    assert outcome == {"added": 2, "merged": 1} and embedder.calls == 1
    with pytest.raises(ValueError, match="needs an embedder"):
        HintBank(dedupe="embedding")


def test_embedding_dedupe_works_on_a_loaded_bank() -> None:
    bank = HintBank()
    bank.add_all([hint("Open {container} first, then look."), hint(FAR)])
    loaded = HintBank.from_jsonl(bank.to_jsonl(), dedupe="embedding", embedder=HashingEmbedderDouble())
    assert loaded.add(hint("then LOOK open {container} first")) == "merged"
    assert loaded.add(hint("Check {location} twice.")) == "added"
    assert [h.mentions for h in loaded.hints("heat")] == [2, 1, 1]


def test_jsonl_is_deterministic_and_round_trips_through_a_file_store(tmp_path: Path) -> None:
    hints = [
        hint(NEAR_A, "heat"),
        hint(FAR, "heat", "run/2"),
        hint(NEAR_B, "heat", "run/3"),
        hint(FAR, "cool"),
    ]
    first, second = HintBank(), HintBank()
    first.add_all(hints)
    second.add_all(hints)
    assert first.to_jsonl() == second.to_jsonl() and first.fingerprint() == second.fingerprint()
    store = ArtifactStore(f"file://{tmp_path}/run")
    uri = first.save(store)
    assert uri.endswith("/run/hints/bank.jsonl") and (tmp_path / "run/hints/bank.jsonl").is_file()
    loaded = HintBank.load(store)
    assert [h.to_dict() for h in loaded] == [h.to_dict() for h in first]
    assert loaded.add(hint(NEAR_B, "heat", "run/9")) == "merged", "a loaded bank keeps deduplicating"


def _line(**changes: object) -> str:
    data = hint(NEAR_A).to_dict() | changes
    return json.dumps(data)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([_line(), "{not json"], r"line 2: not a valid hint"),
        ([_line(), "", '{"text": "x"}'], r"line 3: not a valid hint: .*unknown|line 3: not a valid hint"),
        ([_line(mentions="two")], r"line 1: .*mentions"),
        ([_line(text="Something else entirely.")], r"line 1: id .* does not match"),
        ([_line(), _line()], r"line 2: duplicate hint id"),
        (
            [_line(), json.dumps(hint("Check {size}.", "beauty", env="webshop").to_dict())],
            r"line 2: env 'webshop'",
        ),
        (["[1, 2]"], r"line 1: .*must be a JSON object"),
    ],
    ids=["bad-json", "missing-fields", "bad-mentions", "id-mismatch", "duplicate", "mixed-env", "not-object"],
)
def test_loading_rejects_malformed_lines_with_their_number(lines: list[str], message: str) -> None:
    with pytest.raises(BankFormatError, match=message) as caught:
        HintBank.from_jsonl("\n".join(lines) + "\n", source="mem://bank.jsonl")
    assert "mem://bank.jsonl" in str(caught.value)


def test_get_names_a_missing_id() -> None:
    with pytest.raises(KeyError, match="no hint with id 'nope'"):
        HintBank().get("nope")


@pytest.mark.slow
def test_embedding_dedupe_with_the_real_model_merges_paraphrases_only() -> None:
    import torch

    from ragdistill.retrieval.embed import get_embedder

    torch.set_num_threads(1)
    bank = HintBank(dedupe="embedding", embedder=get_embedder(), embedding_threshold=0.85)
    outcome = bank.add_all(
        [
            hint("Open {container} before looking for {object} inside."),
            hint("Open the {container} before you look for {object} inside it."),
            hint("Heat {object} in the microwave before placing it."),
            hint("Ensure {container} is empty before placing {object} inside."),
        ]
    )
    assert outcome == {"added": 3, "merged": 1}
    assert bank.hints("heat")[0].mentions == 2
