"""Training examples from episode records: selection, the conversation a student learns, its tokens and
loss mask, and the leak check.

One example per episode: the episode's prompt segments minus the removed kinds (``hints`` and
``fewshot`` for distillation), then every model output as an assistant turn and every observation as a
user turn, exactly as the records store them (``episodes.episode_segments``: the stored history texts,
so a later parser change cannot alter an example). Tokens come from the SAME chat template the
inference backends use (``inference.chat``): the ids up to the first assistant turn are exactly what a
backend sends for the episode's first call with those segments removed. The loss covers each assistant
turn's tokens and the template's end-of-turn token, nothing else.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ragdistill.agents.control import ContextBudgetError, fit_to_budget
from ragdistill.episodes import EpisodeRecord, episode_segments
from ragdistill.errors import UserFacingError
from ragdistill.inference.chat import Tokenizer, encode_text, message_dicts, render_chat
from ragdistill.messages import ChatMessage, Segment, SegmentKind, drop_kinds, render_messages

DISTILL_REMOVED: tuple[SegmentKind, ...] = ("hints", "fewshot")
"""What a student never sees: the teacher's hint block and the few-shot examples (the paper)."""


class TemplateError(UserFacingError, ValueError):
    """The model's chat template cannot be split into turns the way training needs."""


class LeakError(UserFacingError, RuntimeError):
    """A training example still holds text the student must learn to do without."""


@dataclass(frozen=True)
class Selection:
    """Which episodes become examples (``DistillConfig`` with the environment's profile filled in)."""

    invalid_observation: str = ""
    max_invalid_actions: int | None = None
    min_score: float | None = None


def invalid_actions(record: EpisodeRecord, invalid_observation: str) -> int:
    if not invalid_observation:
        return 0
    return sum(step.observation.strip() == invalid_observation for step in record.steps)


def select_episodes(
    records: Iterable[EpisodeRecord], selection: Selection
) -> tuple[list[EpisodeRecord], Counter[str]]:
    """The episodes worth learning from, and why each other one was left out."""
    kept: list[EpisodeRecord] = []
    skipped: Counter[str] = Counter()
    for record in records:
        good_enough = record.success or (
            selection.min_score is not None and record.score >= selection.min_score
        )
        if record.stop_reason == "error":
            skipped["error"] += 1
        elif not record.steps:
            skipped["no_steps"] += 1
        elif not good_enough:
            skipped["not_successful"] += 1
        elif (
            selection.max_invalid_actions is not None
            and invalid_actions(record, selection.invalid_observation) > selection.max_invalid_actions
        ):
            skipped["too_many_invalid_actions"] += 1
        else:
            kept.append(record)
    return kept, skipped


def example_segments(record: EpisodeRecord, removed: Sequence[SegmentKind]) -> list[Segment]:
    """The whole episode as one conversation, minus the removed kinds and the final observation (the
    student learns nothing from what followed its last output)."""
    segments = drop_kinds(episode_segments(record), removed)
    while segments and segments[-1].role != "assistant":
        segments.pop()
    return segments


def _full_chat(tokenizer: Tokenizer, messages: Sequence[ChatMessage]) -> str:
    rendered = tokenizer.apply_chat_template(
        message_dicts(messages), add_generation_prompt=False, tokenize=False
    )
    if not isinstance(rendered, str):
        raise TemplateError(f"apply_chat_template returned {type(rendered).__name__}, expected str")
    return rendered


def _prefix_rest(whole: str, prefix: str, what: str, tokenizer: Tokenizer) -> str:
    if not whole.startswith(prefix):
        raise TemplateError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', '?')!r} renders {what} differently from "
            "its prefix, so turns cannot be masked one by one; use a model whose template renders a conversation "
            "as the concatenation of its turns (ChatML, Llama 3, Qwen 2.5 do)"
        )
    return whole[len(prefix) :]


def tokenize_conversation(
    tokenizer: Tokenizer, messages: Sequence[ChatMessage]
) -> tuple[list[int], list[int]]:
    """(input ids, assistant mask) of a conversation that ends with an assistant turn.

    Each piece is rendered through the chat template and tokenised on its own: the prompt before each
    assistant turn (the generation prompt included) and the turn itself (its text and end-of-turn
    token). The first piece is therefore exactly the inference prompt of the first call. The mask is 1
    on assistant tokens except whitespace-only tokens at a turn's end (the template's separator)."""
    ids: list[int] = []
    mask: list[int] = []
    consumed = ""
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        prompt_text = render_chat(tokenizer, messages[:index])
        prompt_ids = encode_text(tokenizer, _prefix_rest(prompt_text, consumed, "a prompt", tokenizer))
        whole = _full_chat(tokenizer, messages[: index + 1])
        answer_ids = encode_text(tokenizer, _prefix_rest(whole, prompt_text, "an assistant turn", tokenizer))
        learned = len(answer_ids)
        while learned and not tokenizer.decode(answer_ids[learned - 1 : learned]).strip():
            learned -= 1
        ids += prompt_ids + answer_ids
        mask += [0] * len(prompt_ids) + [1] * learned + [0] * (len(answer_ids) - learned)
        consumed = whole
    if not ids:
        raise ValueError("a training conversation needs at least one assistant turn")
    return ids, mask


@dataclass
class TrainingExample:
    episode_id: str
    task_id: str
    task_type: str
    source: str
    messages: list[ChatMessage]
    input_ids: list[int]
    assistant_masks: list[int]
    dropped_turns: int = 0

    def row(self) -> dict[str, Any]:
        """The dataset row (the columns TRL reads, and metadata)."""
        return {
            "input_ids": self.input_ids,
            "assistant_masks": self.assistant_masks,
            "episode_id": self.episode_id,
            "task_id": self.task_id,
            "task_type": self.task_type,
            "source": self.source,
            "num_tokens": len(self.input_ids),
            "dropped_turns": self.dropped_turns,
            "text": "".join(f"<{m.role}>\n{m.content}\n" for m in self.messages),
        }


def episode_id(record: EpisodeRecord) -> str:
    return f"{record.source}/{record.run_id}/{record.task_id}"


def build_example(
    record: EpisodeRecord,
    tokenizer: Tokenizer,
    removed: Sequence[SegmentKind],
    max_seq_len: int,
    overlong: Literal["drop_oldest", "skip"] = "drop_oldest",
) -> TrainingExample | None:
    """The example of one episode, or None when it is longer than ``max_seq_len`` and ``overlong`` is
    "skip" (or when even its fixed prompt does not fit). ``drop_oldest`` removes whole turns from the
    start of the history, as inference does when a prompt outgrows the context."""
    segments = example_segments(record, removed)

    def length(candidate: list[Segment]) -> int:
        messages = render_messages(candidate)
        if not any(message.role == "assistant" for message in messages):
            return len(encode_text(tokenizer, render_chat(tokenizer, messages)))
        return len(tokenize_conversation(tokenizer, messages)[0])

    dropped = 0
    if length(segments) > max_seq_len:
        if overlong == "skip":
            return None
        try:
            segments, dropped = fit_to_budget(segments, length, max_seq_len)
        except ContextBudgetError:
            return None
        if not any(segment.role == "assistant" for segment in segments):
            return None
    messages = render_messages(segments)
    ids, mask = tokenize_conversation(tokenizer, messages)
    return TrainingExample(
        episode_id(record), record.task_id, record.task_type, record.source, messages, ids, mask, dropped
    )


@dataclass
class ExampleSet:
    examples: list[TrainingExample] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def build_examples(
    records: Iterable[EpisodeRecord],
    tokenizer: Tokenizer,
    selection: Selection,
    removed: Sequence[SegmentKind],
    max_seq_len: int,
    overlong: Literal["drop_oldest", "skip"] = "drop_oldest",
) -> ExampleSet:
    kept, skipped = select_episodes(records, selection)
    result = ExampleSet(skipped=skipped)
    for record in kept:
        example = build_example(record, tokenizer, removed, max_seq_len, overlong)
        if example is None:
            result.skipped["longer_than_max_seq_len"] += 1
        else:
            result.examples.append(example)
    return result


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def leak_needles(record: EpisodeRecord, hint_texts: Callable[[str], str | None]) -> list[tuple[str, str]]:
    """(what, text) pairs an example of ``record`` must not contain: every hint its episode used (by id,
    and as its prompt showed it), the hint block, and the few-shot block."""
    needles: list[tuple[str, str]] = []
    for hint_id in record.hint_ids:
        text = hint_texts(hint_id)
        if text:
            needles.append((f"hint {hint_id}", text))
    for segment in record.prompt:
        if segment.kind == "hints":
            needles.append(("the hint block", segment.text))
            needles.extend(
                ("a hint of the hint block", line[2:])
                for line in segment.text.splitlines()
                if line.startswith("- ")
            )
        elif segment.kind == "fewshot":
            needles.append(("the few-shot block", segment.text))
            needles.append(("the few-shot header", segment.text.split("\n\n", 1)[0]))
    return [(what, text) for what, text in needles if len(_normalised(text)) >= 12]


def check_leaks(
    examples: Sequence[TrainingExample],
    records: dict[str, EpisodeRecord],
    hint_texts: Callable[[str], str | None],
) -> None:
    """Fail naming the example and the text when any example still holds a hint or few-shot text."""
    for example in examples:
        text = _normalised(" ".join(message.content for message in example.messages))
        for what, needle in leak_needles(records[example.episode_id], hint_texts):
            if _normalised(needle) in text:
                raise LeakError(
                    f"training example {example.episode_id} (task {example.task_id}) contains {what}: "
                    f"{needle[:120]!r}; the {what.split()[-1]} segment must be removed before training"
                )
