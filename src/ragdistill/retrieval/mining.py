"""Stage B: ask an extractor model for hints about every failed episode, in one batched generate call.

The extractor sees the goal, the task type and the failed trajectory as ``> action`` / observation
lines built from the episode's steps only: the prompt segments (few-shot examples, hints) are never
shown, and no gold plan is. It answers strict JSON ``{"hints": [{"text": ...}]}``; the request carries
the JSON schema so backends with structured outputs (vLLM, OpenAI ``response_format``) enforce it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ragdistill.agents.parsing import think_text
from ragdistill.config import HintRules, SamplingConfig
from ragdistill.environments.profile import EnvProfile, HintStyle, ThinkSyntax
from ragdistill.environments.registry import get_profile
from ragdistill.episodes import EpisodeRecord, Step
from ragdistill.errors import UserFacingError
from ragdistill.inference.base import Backend, ChatMessage, GenerationRequest
from ragdistill.retrieval.hints import Hint, parse_hints

SYSTEM_PROMPT = (
    "You study failed attempts of an agent in a text environment and write short, general rules that "
    "would help an agent succeed at other tasks of the same type. You answer with JSON only."
)


class ExtractorUnreachableError(UserFacingError, RuntimeError):
    """Every request of a batch was lost to an infrastructure fault after the backend's own retries: the
    extractor's server is down, so sending the next batches would only fail the same way."""


def episode_id(record: EpisodeRecord) -> str:
    """How a hint names the episode it came from."""
    return f"{record.run_id}/{record.task_id}"


def is_failure(record: EpisodeRecord) -> bool:
    """Not won, as the environment judged it (``success`` False)."""
    return not record.success


def hint_text_pattern(style: HintStyle, max_chars: int) -> str:
    """A regular expression every constrained hint matches, so that it passes :func:`validate_hint`:
    an optional opener, one of the style's verbs, lower-case words and placeholders, no digits (so no
    numbered ids), a final period, at most ``max_chars`` characters."""
    verbs = "|".join(style.verbs)
    lower = "|".join(verb.lower() for verb in style.verbs)
    body = max(8, max_chars - 30)
    start = rf"(({verbs})|(Always|Never|First) ({lower})|If [a-z {{}}]{{3,30}}, ({lower}))"
    return rf"^{start} [a-z{{][a-z{{}} ,'-]{{8,{body}}}\.$"


def hints_json_schema(max_hints: int, text_constraint: tuple[HintStyle, int] | None = None) -> dict[str, Any]:
    """The answer's shape. ``text_constraint`` (style, max chars) adds ``pattern`` and ``maxLength`` to each
    hint's text: vLLM's structured outputs honour them; OpenAI's strict mode rejects them."""
    text: dict[str, Any] = {"type": "string"}
    if text_constraint is not None:
        style, max_chars = text_constraint
        text.update(pattern=hint_text_pattern(style, max_chars), maxLength=max_chars)
    return {
        "type": "object",
        "properties": {
            "hints": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_hints,
                "items": {
                    "type": "object",
                    "properties": {"text": text},
                    "required": ["text"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["hints"],
        "additionalProperties": False,
    }


def _step_line(step: Step, think_syntax: ThinkSyntax) -> str:
    text = step.action if step.action is not None else step.output
    text = " ".join(text.split())
    if step.is_think and not text.lower().startswith("think"):
        text = think_text(text, think_syntax)
    return f"> {text}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_trajectory(
    steps: list[Step],
    max_observation_chars: int = 500,
    max_chars: int = 12_000,
    think_syntax: ThinkSyntax = "label",
) -> str:
    """``> action`` then the observation, per step (a thought stored without its label is written in
    ``think_syntax``). Over ``max_chars``, the middle steps are replaced by a line saying how many were
    left out: the start shows the plan, the end shows where it failed."""
    blocks = [
        f"{_step_line(step, think_syntax)}\n{_clip(step.observation, max_observation_chars)}"
        for step in steps
    ]
    if sum(len(block) + 1 for block in blocks) <= max_chars:
        return "\n".join(blocks)
    head: list[str] = []
    tail: list[str] = []
    budget = max_chars - 60
    front, back = 0, len(blocks) - 1
    while front <= back:
        take_front = len(head) <= len(tail)
        block = blocks[front] if take_front else blocks[back]
        if len(block) + 1 > budget:
            break
        budget -= len(block) + 1
        if take_front:
            head.append(block)
            front += 1
        else:
            tail.insert(0, block)
            back -= 1
    omitted = len(blocks) - len(head) - len(tail)
    return "\n".join([*head, f"[... {omitted} steps omitted ...]", *tail])


def extraction_request(
    record: EpisodeRecord,
    profile: EnvProfile,
    max_hints: int,
    sampling: SamplingConfig | None = None,
    max_chars: int = 120,
    constrain_hint_text: bool = False,
) -> GenerationRequest:
    """The extractor's request for one failed episode of ``profile``'s environment."""
    style = profile.hints
    count = max(1, min(max_hints, style.max_hints))
    sampling = sampling or SamplingConfig(max_tokens=600)
    placeholders = ", ".join("{" + name + "}" for name in style.placeholders)
    examples = "\n".join(f"- {example}" for example in style.examples)
    user = (
        f"Environment: {style.description}\n"
        f"{profile.group_label}: {record.task_type}\n"
        f"Goal: {record.instruction}\n\n"
        'The agent failed. Its trajectory (each action starts with ">" and is followed by what the '
        "environment answered):\n"
        f"{format_trajectory(record.steps, think_syntax=profile.agent.think_syntax)}\n\n"
        f"Write 1 to {count} hints that would help an agent succeed at other tasks of this type.\n"
        "Each hint:\n"
        '- is one imperative sentence that starts with a verb ("Open", "Check", "Ensure", ...);\n'
        f"- is general: {style.generality_rule};\n"
        f"- uses only these placeholders: {placeholders};\n"
        f"- is at most {max_chars} characters long.\n"
        f"Examples of good hints:\n{examples}\n\n"
        'Reply with JSON only, in exactly this shape: {"hints": [{"text": "..."}]}'
    )
    return GenerationRequest.sampled(
        [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", user)],
        sampling,
        json_schema=hints_json_schema(count, (style, max_chars) if constrain_hint_text else None),
    )


@dataclass
class MinedEpisode:
    """What the extractor answered about one failed episode, validated: one entry of the mining ledger.

    Only episodes whose request was answered are entries; an answer lost to an infrastructure fault is
    not, so the episode is sent again next time."""

    episode_id: str
    env: str
    task_type: str
    hints: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(text, reason code) of every hint validation refused."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cut_at_max_tokens: bool = False
    without_json: bool = False
    salvaged: bool = False
    error: str | None = None
    """The extractor could not serve this request (e.g. the trajectory is over its context window)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected"] = [list(item) for item in self.rejected]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinedEpisode:
        fields = dict(data)
        fields["rejected"] = [(str(text), str(reason)) for text, reason in data.get("rejected", [])]
        return cls(**fields)


@dataclass
class MiningResult:
    """Every accepted hint (one per mention, not yet deduplicated: the bank does that), counts by
    outcome and rejection reason, and each rejection as (episode id, text, reason)."""

    hints: list[Hint] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


def select_failures(
    records: Iterable[EpisodeRecord], max_failures: int | None = None
) -> tuple[list[EpisodeRecord], Counter[str]]:
    """The failed episodes worth mining, in order, and how many of each kind were skipped. Episodes
    that ended in an error are skipped: their trajectory shows an infrastructure or input fault, not
    the agent's mistake."""
    counts: Counter[str] = Counter()
    failures: list[EpisodeRecord] = []
    for record in records:
        counts["episodes"] += 1
        if not is_failure(record):
            counts["skipped_success"] += 1
        elif record.stop_reason == "error":
            counts["skipped_error"] += 1
        elif not record.steps:
            counts["skipped_no_steps"] += 1
        elif max_failures is not None and len(failures) >= max_failures:
            counts["skipped_over_max_failures"] += 1
        else:
            failures.append(record)
    counts["failures"] = len(failures)
    return failures, counts


def extract_hints(
    failures: list[EpisodeRecord],
    backend: Backend,
    *,
    max_hints: int = 4,
    max_chars: int = 120,
    sampling: SamplingConfig | None = None,
    constrain_hint_text: bool = False,
) -> list[MinedEpisode]:
    """One batched generate call for ``failures``; an entry per answered request, in order.

    A request lost to an infrastructure fault has no entry (it is sent again next time); when every
    request was lost, :class:`ExtractorUnreachableError` says so with the first cause."""
    if not failures:
        return []
    profiles = {env: get_profile(env) for env in {record.env for record in failures}}
    requests = [
        extraction_request(r, profiles[r.env], max_hints, sampling, max_chars, constrain_hint_text)
        for r in failures
    ]
    generations = backend.generate(requests)
    if len(generations) != len(requests):
        raise RuntimeError(
            f"backend {backend.name!r} returned {len(generations)} answers for {len(requests)} requests"
        )
    lost = [generation.error for generation in generations if generation.error_kind == "transient"]
    if len(lost) == len(generations):
        raise ExtractorUnreachableError(
            f"the extractor (backend {backend.name!r}) answered none of {len(lost)} request(s) after its "
            f"retries; first cause: {lost[0]}. Answers committed so far are kept: run the mining stage "
            "again once the extractor answers (models.extractor.backend)"
        )
    mined: list[MinedEpisode] = []
    for record, generation in zip(failures, generations, strict=True):
        entry = MinedEpisode(episode_id(record), record.env, record.task_type)
        if generation.error is not None:
            if generation.error_kind == "transient":
                continue
            entry.error = generation.error
            mined.append(entry)
            continue
        parsed = parse_hints(generation.text, profiles[record.env].hints, max_hints, max_chars)
        entry.hints = list(parsed.hints)
        entry.rejected = [(rejection.text, rejection.reason) for rejection in parsed.rejected]
        entry.prompt_tokens, entry.completion_tokens = generation.prompt_tokens, generation.completion_tokens
        entry.cut_at_max_tokens = generation.finish_reason == "length"
        entry.without_json, entry.salvaged = parsed.error is not None, parsed.salvaged
        mined.append(entry)
    return mined


def summarize(mined: Iterable[MinedEpisode], counts: Counter[str] | None = None) -> MiningResult:
    """The hints, rejections and outcome counts of ledger entries (added to ``counts``)."""
    counts = Counter(counts or {})
    result = MiningResult()
    for entry in mined:
        counts["extractor_prompt_tokens"] += entry.prompt_tokens
        counts["extractor_completion_tokens"] += entry.completion_tokens
        counts["answers_cut_at_max_tokens"] += int(entry.cut_at_max_tokens)
        counts["answers_without_json"] += int(entry.without_json)
        counts["answers_salvaged"] += int(entry.salvaged)
        counts["extractor_errors"] += int(entry.error is not None)
        for text in entry.hints:
            result.hints.append(Hint.create(text, entry.env, entry.task_type, [entry.episode_id]))
        for text, reason in entry.rejected:
            counts[f"rejected_{reason}"] += 1
            result.rejected.append((entry.episode_id, text, reason))
    counts["hints_accepted"] = len(result.hints)
    counts["hints_rejected"] = len(result.rejected)
    result.counts = {
        name: value for name, value in counts.items() if value or not name.startswith("answers_")
    }
    return result


def mine_hints(
    records: Iterable[EpisodeRecord],
    backend: Backend,
    *,
    max_hints: int = 4,
    max_chars: int = 120,
    sampling: SamplingConfig | None = None,
    max_failures: int | None = None,
    constrain_hint_text: bool = False,
) -> MiningResult:
    """Extract hints from every failed episode in one call (the keyword settings mirror
    :class:`~ragdistill.config.HintRules`). The mining stage does the same chunk by chunk."""
    failures, counts = select_failures(records, max_failures)
    mined = extract_hints(
        failures,
        backend,
        max_hints=max_hints,
        max_chars=max_chars,
        sampling=sampling,
        constrain_hint_text=constrain_hint_text,
    )
    return summarize(mined, counts)


def extraction_options(mining: HintRules, sampling: SamplingConfig) -> dict[str, Any]:
    """:func:`extract_hints` keyword settings from the ``mining`` section and the extractor's sampling."""
    return {
        "max_hints": mining.max_hints_per_failure,
        "max_chars": mining.max_hint_chars,
        "sampling": sampling,
        "constrain_hint_text": mining.constrain_hint_text,
    }


def mine_hints_from_config(
    records: Iterable[EpisodeRecord], backend: Backend, mining: HintRules, sampling: SamplingConfig
) -> MiningResult:
    """:func:`mine_hints` with the ``mining`` section and the extractor role's sampling."""
    return mine_hints(
        records, backend, max_failures=mining.max_failures, **extraction_options(mining, sampling)
    )
