"""The rollout engine and what drives it: plans, playing with retries and shards, expert episodes.

A library layer: it imports the config, agents, inference, environments, episodes, the store and
leases, never the stages, tasks or flows (and nothing here imports Prefect).

- ``rollout.engine``: the batched lock-step engine (:class:`RolloutEngine`) and its protocols;
- ``rollout.continuous``: the continuous engine (:class:`ContinuousRolloutEngine`, the default
  ``rollout.schedule``), whose episodes never wait for each other, and ``rollout.env_driver``, the
  threads that run its environment steps beside generation;
- ``rollout.plan``: :class:`RolloutPlan`, built from a stage's settings and the run context;
- ``rollout.play``: playing a plan into a record log (transient retries, shards, the task list);
- ``rollout.shards``: splitting a rollout into shards, merging them, the shard runner;
- ``rollout.expert_episodes``: environment demonstrations recorded as the agent's episodes.
"""

from ragdistill.rollout.collaborators import (
    EpisodePool,
    HintSource,
    ProgressCallback,
    RecordSink,
    RetrievedHints,
    RolloutStats,
)
from ragdistill.rollout.continuous import ContinuousRolloutEngine
from ragdistill.rollout.engine import EngineSettings, RolloutEngine, call_segments, error_kind
from ragdistill.rollout.plan import (
    ResolvedAdapter,
    RolloutPlan,
    plan_rollout,
    prompt_version,
    resolve_adapter,
    select_tasks,
)
from ragdistill.rollout.play import episode_counts, play_pending, play_shard, settle_records
from ragdistill.rollout.shards import ShardJob, ShardRunner, split_round_robin, use_shard_runner

__all__ = [
    "ContinuousRolloutEngine",
    "EngineSettings",
    "EpisodePool",
    "HintSource",
    "ProgressCallback",
    "RecordSink",
    "ResolvedAdapter",
    "RetrievedHints",
    "RolloutEngine",
    "RolloutPlan",
    "RolloutStats",
    "ShardJob",
    "ShardRunner",
    "call_segments",
    "episode_counts",
    "error_kind",
    "plan_rollout",
    "play_pending",
    "play_shard",
    "prompt_version",
    "resolve_adapter",
    "select_tasks",
    "settle_records",
    "split_round_robin",
    "use_shard_runner",
]
