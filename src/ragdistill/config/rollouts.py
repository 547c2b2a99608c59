"""Where and how episodes are played: the environment, the agent, rollouts and their orchestration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ragdistill.config.base import NAME_MAX_CHARS, StrictModel


class EnvConfig(StrictModel):
    name: str = Field(
        "alfworld",
        max_length=NAME_MAX_CHARS,
        description="A registered environment (see `environments.registry`).",
    )
    split: str = Field(
        "train",
        max_length=NAME_MAX_CHARS,
        description="alfworld: train | valid_seen | valid_unseen; webshop: train | eval | test | human.",
    )
    limit: int | None = Field(None, gt=0, description="Play the first N tasks of the split (None: all).")
    balanced: bool | None = Field(
        None,
        description="Order tasks round-robin over task types before `limit` applies, so a small limit covers "
        "every type; false: the environment's own order (ALFWorld: by game path; WebShop: the upstream goal "
        "order, whose first 100 test goals the paper evaluates); None: the environment's default (ALFWorld "
        "balances, WebShop does not).",
    )
    shuffle_seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        description="Order the tasks (each task type's, when balanced) by a hash of their id under this seed "
        "before `limit` applies: a fixed random sample of the split that a larger limit only extends. None: "
        "the environment's own order (ALFWorld: by game path, so a limit takes each type's games of the "
        "alphabetically first objects). Only for environments whose task lister takes it (ALFWorld).",
    )
    task_types: list[str] | None = Field(None, description="Keep only these task types (None: all).")
    data_dir: Path = Field(Path("data"), description="Where `ragdistill data setup` installed the data.")
    workers: int = Field(2, gt=0, description="Environment worker processes.")
    max_games_per_worker: int = Field(
        200,
        gt=0,
        description="Games one worker process loads before a fresh process replaces it (TextWorld keeps "
        "~5 MB of every game it loaded).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the environment's constructor (WebShop: page_size 3 for the "
        "paper's top-3 view, max_steps 15). Part of every rollout's identity.",
    )


class AgentConfig(StrictModel):
    format: Literal["react", "act", "stateact"] = "react"
    fewshot_source: Literal["react", "expert", "none"] = Field(
        "react",
        description="react: ReAct's original transcripts (react/act formats only); "
        "expert: built from walkthroughs of training games, any format.",
    )
    fewshot_count: int = Field(2, ge=0, description="Examples of the episode's task type.")
    max_calls: int = Field(100, gt=0, description="Model calls per episode; a think call counts.")
    repeat_stop: int = Field(5, gt=1, description="Stop after this many identical outputs in a row.")

    @model_validator(mode="after")
    def _react_prompts_have_no_stateact(self) -> AgentConfig:
        if self.format == "stateact" and self.fewshot_source == "react":
            raise ValueError("fewshot_source 'react' has no StateAct transcripts; use 'expert' or 'none'")
        return self


class RolloutConfig(StrictModel):
    batch_size: int = Field(
        16,
        gt=0,
        description="Episodes in flight at once: under `schedule: lockstep`, the episodes of one generate "
        "call per turn.",
    )
    schedule: Literal["continuous", "lockstep"] = Field(
        "continuous",
        description="continuous: each episode sends its next request as soon as its environment step "
        "returns and the backend batches whatever is pending, while environment steps run beside "
        "generation; lockstep: one generate call per turn for every episode in flight, then every "
        "environment step. The same records either way (only their order in the files differs), so not "
        "part of any identity.",
    )
    shard_size: int = Field(50, gt=0, description="Episode records per JSONL shard.")
    max_error_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A rollout stage fails when more than this share of its episodes ended in an error "
        "(a request the backend could not serve, a game that would not load, a crashed worker); the "
        "records are kept, and a re-run plays the infrastructure failures again.",
    )
    transient_retries: int = Field(
        1,
        ge=0,
        description="Within one run, how often episodes ended by an infrastructure fault (a crashed "
        "worker, a lost HTTP call) are played again before the stage ends.",
    )
    shards: int = Field(
        1,
        gt=0,
        description="Split each rollout's task list into this many shards (round-robin over the pinned "
        "task list), played as parallel Prefect tasks on ``orchestration.task_runner``; each shard keeps "
        "its own records and resumes on its own. Not part of any identity: the merged records are the same.",
    )


class OrchestrationConfig(StrictModel):
    """Where rollout shards run. Never part of a stage's identity: the same shards on another runner
    produce the same records."""

    task_runner: Literal["in-process", "ray"] = Field(
        "in-process",
        description="in-process: shards run as threads of this process and share its model engines; "
        "ray: each shard is a Ray task (prefect-ray's RayTaskRunner) with its own engine.",
    )
    ray_address: str | None = Field(
        None,
        description="An existing Ray cluster (e.g. ray://head:10001 or auto); None: start a local Ray "
        "instance for the rollout.",
    )
    gpus_per_shard: float = Field(0.0, ge=0, description="GPUs each Ray shard asks for (num_gpus).")
    cpus_per_shard: float = Field(1.0, ge=0, description="CPUs each Ray shard asks for (num_cpus).")
