"""Episode control: when to stop calling the model, and how to fit a long history into the context."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ragdistill.messages import Segment

ModelStopReason = Literal["max_calls", "repeated_output"]


@dataclass
class StopRules:
    """The paper's episode caps: at most ``max_calls`` model calls (a ``think:`` call counts) and an
    early stop once the same output came ``repeat_stop`` times in a row.

    Call :meth:`update` once after every model call with that call's output. The output is still
    carried out; a returned reason means no further call should be made (an episode that the
    environment ended on the same step ends as "done"). Outputs are compared after stripping
    surrounding whitespace.
    """

    max_calls: int = 100
    repeat_stop: int = 5
    calls: int = field(default=0, init=False)
    _last: str | None = field(default=None, init=False, repr=False)
    _run: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_calls < 1:
            raise ValueError(f"max_calls must be at least 1, got {self.max_calls}")
        if self.repeat_stop < 2:
            raise ValueError(f"repeat_stop must be at least 2, got {self.repeat_stop}")

    def update(self, output: str) -> ModelStopReason | None:
        self.calls += 1
        normalised = output.strip()
        self._run = self._run + 1 if normalised == self._last else 1
        self._last = normalised
        if self._run >= self.repeat_stop:
            return "repeated_output"
        if self.calls >= self.max_calls:
            return "max_calls"
        return None


class ContextBudgetError(ValueError):
    """Even with every history turn dropped, the fixed prompt (system, hints, few-shot, task) is too long."""


def _history_turns(segments: Sequence[Segment]) -> tuple[int, list[int]]:
    """Index of the first history segment and the start index of each turn (an assistant segment
    with the observation segments after it). History must be the tail of the prompt."""
    first = next((i for i, segment in enumerate(segments) if segment.kind == "history"), len(segments))
    if any(segment.kind != "history" for segment in segments[first:]):
        raise ValueError("history segments must come after every system/hints/fewshot/task segment")
    starts = [i for i in range(first, len(segments)) if segments[i].role == "assistant" or i == first]
    return first, starts


def fit_to_budget(
    segments: Sequence[Segment], count_tokens: Callable[[list[Segment]], int], budget: int
) -> tuple[list[Segment], int]:
    """Drop the oldest history turns until the prompt counts at most ``budget`` tokens.

    Only ``history`` segments are ever dropped, a whole turn (the model's output and its observation)
    at a time, oldest first; the result keeps as many recent turns as fit. ``count_tokens`` is called
    O(log turns) times (binary search; token counts grow with every kept turn). Returns the segments
    and the number of turns dropped. Raises :class:`ContextBudgetError` when even no history fits.
    """
    segments = list(segments)
    if count_tokens(segments) <= budget:
        return segments, 0
    first, starts = _history_turns(segments)
    fixed = segments[:first]

    def fits(dropped: int) -> bool:
        cut = starts[dropped] if dropped < len(starts) else len(segments)
        return count_tokens(fixed + segments[cut:]) <= budget

    if not fits(len(starts)):
        raise ContextBudgetError(
            f"the prompt without any history needs {count_tokens(fixed)} tokens but the budget is {budget}: "
            "raise models.agent.model.max_model_len, lower sampling.max_tokens, or use fewer few-shot "
            "examples (agent.fewshot_count) or hints (retrieval.k)"
        )
    low, high = 1, len(starts)
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    cut = starts[low] if low < len(starts) else len(segments)
    return fixed + segments[cut:], low
