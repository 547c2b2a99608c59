"""Training examples and datasets from real records: segments removed by kind, template parity with
inference, label masks, the leak check, overlong episodes, and the dataset stage's outputs.

Records come from the real stage code: the expert teacher on real ALFWorld games (slow) or an episode
built with the real agent format from a solved walkthrough (fast). The tokenizer is SmolLM2's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import installed, require
from ragdistill.agents.formats import get_format
from ragdistill.config import AgentConfig, ModelSpec
from ragdistill.environments.alfworld.profile import ALFWORLD_PROFILE
from ragdistill.episodes import EpisodeRecord, call_segments
from ragdistill.inference.chat import count_chat_tokens, encode_chat, load_tokenizer
from ragdistill.messages import drop_kinds, render_messages
from ragdistill.models import CHAT_MODELS, is_prepared, model_dir, resolve_model
from ragdistill.rollout import RetrievedHints
from ragdistill.rollout.expert_episodes import Demonstration, expert_record
from ragdistill.training.examples import (
    DISTILL_REMOVED,
    LeakError,
    Selection,
    build_example,
    build_examples,
    check_leaks,
    episode_id,
    select_episodes,
)
from ragdistill.trajectories import ExpertTrajectory

HINT = "Open {container} before looking for {object} inside it."
WALKTHROUGH = [
    ("go to countertop 1", "On the countertop 1, you see a apple 1, and a knife 1."),
    ("take apple 1 from countertop 1", "You pick up the apple 1 from the countertop 1."),
    ("go to microwave 1", "The microwave 1 is closed."),
    ("heat apple 1 with microwave 1", "You heat the apple 1 using the microwave 1."),
    ("go to diningtable 1", "On the diningtable 1, you see a bread 1."),
    ("move apple 1 to diningtable 1", "You move the apple 1 to the diningtable 1."),
]


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer from its fp32 checkpoint, prepared on demand from the package that ships it.
    Skipped only when the checkpoint is neither prepared nor preparable (that package is missing; under
    CI=true this fails); any other error loading it fails the tests."""
    source = CHAT_MODELS["smollm2-135m"]
    require(
        is_prepared(model_dir("smollm2-135m", "fp32")) or installed(source.package),
        f"the SmolLM2 checkpoint is not prepared and {source.distribution} is not installed: run `make setup`",
    )
    return load_tokenizer(resolve_model(ModelSpec(name="smollm2-135m", dtype="float32")))


def demonstration(
    task_id: str = "pick_heat_then_place_in_recep-Apple-None-DiningTable-1/trial_1",
) -> Demonstration:
    from ragdistill.environments.base import TaskInfo

    task = TaskInfo("alfworld", "train", task_id, "heat", "put a hot apple in diningtable.")
    trajectory = ExpertTrajectory(
        task_id, "heat", task.instruction,
        "You are in the middle of a room. Looking quickly around you, you see a countertop 1, a diningtable 1, "
        "and a microwave 1.\n\nYour task is to: put a hot apple in diningtable.",
        WALKTHROUGH,
    )  # fmt: skip
    rewards = [0.0] * (len(WALKTHROUGH) - 1) + [1.0]
    done = [False] * (len(WALKTHROUGH) - 1) + [True]
    return Demonstration(task, trajectory, rewards, done, won=True)


def teacher_record(
    tokenizer, format_name: str = "react", budget: int = 4000, **agent: object
) -> EpisodeRecord:
    """An expert-teacher episode with a hint block and a few-shot block, recorded by the real code."""
    fmt = get_format(format_name, ALFWORLD_PROFILE)
    demo = demonstration()
    example = fmt.transcript(
        "You are in a kitchen.\nYour task is to: cool a mug.",
        [("go to fridge 1", "The fridge 1 is closed."), ("cool mug 1 with fridge 1", "You cool the mug 1.")],
    )
    hints = RetrievedHints([HINT.replace("{container}", "the microwave")], ["hint-1"], tokens=0)
    prompt = fmt.prompt(demo.task, demo.trajectory.first_observation, [example], hints.texts)
    return expert_record(
        demo,
        fmt,
        AgentConfig(format=format_name, fewshot_source="none", **agent),
        prompt,
        hints,
        lambda messages, completion: count_chat_tokens(tokenizer, messages, completion),
        budget,
        run_id="run-x",
    )


@pytest.mark.parametrize("format_name", ["react", "act", "stateact"])
def test_an_expert_episode_is_recorded_like_a_played_one(tokenizer, format_name: str) -> None:
    record = teacher_record(tokenizer, format_name)
    assert record.success and record.stop_reason == "done" and record.source == "expert"
    assert record.env_steps == len(WALKTHROUGH) and [s.action for s in record.steps if s.action] == [
        action for action, _ in WALKTHROUGH
    ]
    assert [segment.kind for segment in record.prompt] == ["system", "hints", "fewshot", "task"]
    for index, step in enumerate(record.steps):
        messages = render_messages(call_segments(record, index))
        assert count_chat_tokens(tokenizer, messages, step.output) == (
            step.prompt_tokens,
            step.completion_tokens,
        )


def test_distill_examples_are_the_episode_minus_exactly_the_removed_segments(tokenizer) -> None:
    record = teacher_record(tokenizer)
    example = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert example is not None and example.dropped_turns == 0
    kept = [segment for segment in record.prompt if segment.kind not in DISTILL_REMOVED]
    removed = [segment for segment in record.prompt if segment.kind in DISTILL_REMOVED]
    text = "\n".join(message.content for message in example.messages)
    assert all(segment.text in text for segment in kept)
    assert all(segment.text not in text for segment in removed)
    assert [m.role for m in example.messages][:2] == ["system", "user"]
    assert [m.content for m in example.messages if m.role == "assistant"] == [
        s.history_text for s in record.steps
    ]
    assert example.messages[-1].role == "assistant", "the final observation teaches nothing"


def test_the_first_prompt_tokens_equal_what_inference_sends_without_the_removed_segments(tokenizer) -> None:
    record = teacher_record(tokenizer)
    example = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert example is not None
    for index in range(len(record.steps)):
        sent = encode_chat(
            tokenizer, render_messages(drop_kinds(call_segments(record, index), DISTILL_REMOVED))
        )
        assert example.input_ids[: len(sent)] == sent, f"call {index}"
        assert example.assistant_masks[len(sent) - 1] == 0 and example.assistant_masks[len(sent)] == 1


def test_labels_decode_to_exactly_the_assistant_turns(tokenizer) -> None:
    record = teacher_record(tokenizer, "stateact")
    example = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert example is not None
    learned = [token for token, mask in zip(example.input_ids, example.assistant_masks, strict=True) if mask]
    turns = [message.content for message in example.messages if message.role == "assistant"]
    assert tokenizer.decode(learned, skip_special_tokens=True) == "".join(turns)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(token == end_of_turn for token in learned) == len(turns), "each turn learns to end"
    unlearned = tokenizer.decode(
        [t for t, m in zip(example.input_ids, example.assistant_masks, strict=True) if not m]
    )
    assert all(turn not in unlearned for turn in turns if len(turn) > 8)


def test_the_leak_check_catches_a_hint_planted_in_an_example(tokenizer) -> None:
    record = teacher_record(tokenizer)
    example = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert example is not None
    records = {example.episode_id: record}
    check_leaks([example], records, {"hint-1": HINT}.get)  # a clean example passes
    planted = example.messages[-1].content + " " + HINT.replace("{container}", "the microwave")
    example.messages[-1] = type(example.messages[-1])("assistant", planted)
    with pytest.raises(LeakError, match=r"training example expert/run-x/.*contains a hint of the hint block"):
        check_leaks([example], records, {"hint-1": HINT}.get)
    example.messages[-1] = type(example.messages[-1])("assistant", HINT)
    with pytest.raises(LeakError, match=r"contains hint hint-1"):
        check_leaks([example], records, {"hint-1": HINT}.get)


def test_overlong_episodes_drop_their_oldest_turns_or_are_skipped_and_counted(tokenizer) -> None:
    record = teacher_record(tokenizer)
    full = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert full is not None
    limit = len(full.input_ids) - 40
    trimmed = build_example(record, tokenizer, DISTILL_REMOVED, max_seq_len=limit)
    assert trimmed is not None and trimmed.dropped_turns > 0 and len(trimmed.input_ids) <= limit
    assert trimmed.messages[0] == full.messages[0] and trimmed.messages[-1] == full.messages[-1]
    built = build_examples([record], tokenizer, Selection(), DISTILL_REMOVED, limit, overlong="skip")
    assert built.examples == [] and built.skipped["longer_than_max_seq_len"] == 1


def test_selection_keeps_successes_with_few_invalid_actions(tokenizer) -> None:
    won = teacher_record(tokenizer)
    lost = teacher_record(tokenizer, max_calls=3)
    assert not lost.success and lost.stop_reason == "max_calls"
    sloppy = teacher_record(tokenizer)
    sloppy.task_id = "sloppy"
    sloppy.steps[0].observation = sloppy.steps[1].observation = "Nothing happens."
    kept, skipped = select_episodes([won, lost, sloppy], Selection("Nothing happens.", max_invalid_actions=1))
    assert kept == [won] and skipped == {"not_successful": 1, "too_many_invalid_actions": 1}
    kept, _ = select_episodes([lost], Selection(min_score=0.0))
    assert kept == [lost], "a score threshold admits unsuccessful episodes"
    assert episode_id(won) == "expert/run-x/" + won.task_id


def test_parquet_rows_load_with_the_datasets_library(tokenizer, tmp_path: Path) -> None:
    import datasets

    from ragdistill.stages.training_sets import parquet_bytes as _parquet

    example = build_example(teacher_record(tokenizer), tokenizer, DISTILL_REMOVED, max_seq_len=4096)
    assert example is not None
    (tmp_path / "data.parquet").write_bytes(_parquet([example.row()]))
    (tmp_path / "empty.parquet").write_bytes(_parquet([]))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "data.parquet"), split="train")
    assert (
        loaded[0]["input_ids"] == example.input_ids
        and loaded[0]["assistant_masks"] == example.assistant_masks
    )
    # datasets 5.2 cannot load a parquet file without rows; an empty set keeps its schema for pyarrow,
    # and its card and manifest say it is empty (the training stage reads those first).
    import pyarrow.parquet as pq

    empty = pq.read_table(tmp_path / "empty.parquet")
    assert empty.num_rows == 0 and "assistant_masks" in empty.column_names
