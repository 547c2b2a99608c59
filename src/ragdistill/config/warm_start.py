"""Stage 0, the warm start: behaviour cloning on expert demonstrations before the base rollout, and the
task positions every selection of an experiment takes, so the warm start's tasks are checked to be its
own before any work."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from ragdistill.config.base import NAME_MAX_CHARS, StrictModel


class WarmStartConfig(StrictModel):
    """Stage 0, before the base rollout (off by default): LoRA on the expert's demonstrations of training
    tasks, rendered in the agent's own format, merged into a derived base checkpoint under the run root
    (``warm-start/model``). That checkpoint then is the agent role's model in every later stage: the base
    rollout, the teacher, the students' base, every evaluation, collect and retrain. Behaviour cloning
    before self-improvement is how ETO and AgentTuning start agents that cannot yet act in an environment.

    Its tasks are positions ``start`` to ``start + limit`` of ``split``, in the order the base rollout
    uses (``env.balanced``, ``env.task_types``); they must be disjoint from the base rollout's, the
    collect batches' and the evaluation's (checked when the config loads, and by the stage on the task
    ids). Training uses the ``training:`` section except for its length: ``epochs`` and
    ``learning_rate`` here (``training.max_steps`` does not apply)."""

    enabled: bool = Field(
        False, description="Run the warm start and play every later stage on its checkpoint."
    )
    split: str = Field(
        "train", max_length=NAME_MAX_CHARS, description="The split whose tasks are demonstrated."
    )
    limit: int = Field(40, gt=0, description="Training tasks demonstrated (those the expert wins train).")
    start: int | None = Field(
        None,
        ge=0,
        description="Position of the first task; empty: right after the base rollout's tasks (env.limit) when "
        "split is env.split, else 0.",
    )
    epochs: float | None = Field(None, gt=0, description="Training epochs; empty: training.epochs.")
    learning_rate: float | None = Field(
        None, gt=0, description="Learning rate; empty: training.learning_rate."
    )
    fewshot: bool = Field(
        False,
        description="Keep the few-shot examples in the training prompts; false: drop them, as both students' "
        "training sets do (shorter examples, faster training).",
    )
    hint_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the demonstrations whose prompt carries a hint block (retrieval.k of the "
        "environment's example hints, the ones shown to the hint extractor), chosen per task by the agent's "
        "seed. The hint block stays in their training prompts, so the warm-started agent has seen one "
        "before the RAG teacher's prompt carries mined hints; 0: no hint blocks.",
    )


@dataclass(frozen=True)
class TaskRange:
    """Positions ``first`` up to ``end`` (exclusive; None: to the end of the split) of one split's task
    list, taken by ``who`` (a sentence subject)."""

    who: str
    split: str
    first: int
    end: int | None

    def overlap(self, other: TaskRange) -> tuple[int, int | None] | None:
        """The positions both ranges take (same split, same order), or None."""
        if self.split != other.split:
            return None
        first = max(self.first, other.first)
        ends = [end for end in (self.end, other.end) if end is not None]
        end = min(ends) if ends else None
        return None if end is not None and end <= first else (first, end)

    def describe(self) -> str:
        return describe_positions(self.first, self.end)


def describe_positions(first: int, end: int | None) -> str:
    if end is None:
        return f"positions {first} to the end"
    return f"position {first}" if end == first + 1 else f"positions {first}–{end - 1}"
