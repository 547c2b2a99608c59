"""Stage A and every other rollout (the RAG teacher, evaluations): play tasks into ``rollouts/<stage>``.

A rollout's identity (``stages.lifecycle``) is made of what changes its episodes and nothing else:

- settings: the environment (name), the agent section (format, few-shot source and count, call cap,
  repeat stop), the model (name, dtype, context window, the adapter's content digest), the backend kind
  (and served model name for ``openai``), the sampling settings, the inference library versions, and
  what a plan adds (the teacher: retrieval settings);
- inputs: content digests of upstream artifacts (the teacher: hint bank and index);
- growable: the task list (a larger ``env.limit`` keeps every finished episode and plays the rest);
- code: the rollout engine, agents, environments and backends.

Never: run names, worker and batch counts, shard size, data folder paths, mining or training settings,
the number of rollout shards (``rollout.shards``) or where they run (``orchestration``).

With ``rollout.shards`` > 1 the pending tasks are split round-robin over the pinned task list and played
as parallel shards, each into ``<stage>/shards/<k>/`` under its own lease; every run merges the shard
folders it finds into the stage's records first and last, so a killed run resumes per shard and the
finished stage has the same files as an unsharded one (``stages.shards``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragdistill.config import AgentConfig, EnvConfig, ExperimentConfig, RoleConfig
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord, EpisodeSource
from ragdistill.identity import code_fingerprint, digest
from ragdistill.inference.base import Backend
from ragdistill.inference.shared import shared_backend
from ragdistill.leases import StageLease
from ragdistill.rollout import EngineSettings, HintSource, ProgressCallback, RolloutEngine, RolloutStats
from ragdistill.stages.layout import BASE_STAGE, rollout_prefix
from ragdistill.stages.lifecycle import StageError, StageIdentity, StageRun
from ragdistill.stages.roles import ResolvedAdapter, resolve_adapter, role_settings
from ragdistill.stages.shards import (
    ShardJob,
    combined_progress,
    current_shard_runner,
    merge_shards,
    shard_dir,
    split_round_robin,
    total_stats,
)
from ragdistill.store import ArtifactStore, Manifest, RecordLog, read_records

if TYPE_CHECKING:
    from ragdistill.environments.pool import EnvPool

log = logging.getLogger("ragdistill.stages")


@dataclass
class RolloutPlan:
    """One rollout stage: where it goes, who plays, on which tasks, with which hints."""

    stage: str
    env: EnvConfig
    role: RoleConfig
    source: EpisodeSource = "agent"
    settings: dict[str, Any] = field(default_factory=dict)
    """Settings a plan adds to the identity (the teacher's retrieval section)."""
    inputs: dict[str, str] = field(default_factory=dict)
    hint_source: Callable[[], HintSource] | None = None
    """Built only when episodes are played (a retriever loads an embedder)."""
    tasks: Sequence[TaskInfo] | None = None
    """A pinned task list (evaluation); None: the environment's tasks for ``env``."""
    code: str = field(default_factory=lambda: code_fingerprint("ragdistill.stages.rollout"))
    agent: AgentConfig | None = None
    """The agent section this plan plays with (None: the config's)."""
    record_adapter: str | None = None
    """The adapter digest records name when the weights already hold it (a merged student checkpoint)."""


def base_plan(config: ExperimentConfig, stage: str = BASE_STAGE) -> RolloutPlan:
    """Stage A: the base agent on the configured tasks."""
    return RolloutPlan(stage=stage, env=config.env, role=config.models.agent)


def list_env_tasks(env: EnvConfig) -> list[TaskInfo]:
    from ragdistill.environments.registry import list_tasks

    order = {} if env.balanced is None else {"balanced": env.balanced}
    return list_tasks(
        env.name, data_dir=env.data_dir, split=env.split, limit=env.limit, task_types=env.task_types, **order
    )


def rollout_identity(
    config: ExperimentConfig, plan: RolloutPlan, tasks: Sequence[TaskInfo], adapter: ResolvedAdapter
) -> StageIdentity:
    return StageIdentity(
        stage=f"rollout:{plan.stage}",
        settings={
            "env": {"name": plan.env.name, "version": env_version(plan.env), "options": plan.env.options},
            "agent": (plan.agent or config.agent).model_dump(mode="json"),
            "role": role_settings(plan.role, adapter),
            "source": plan.source,
            "record_adapter": plan.record_adapter,
            **plan.settings,
        },
        code=plan.code,
        inputs=dict(plan.inputs),
        growable={"tasks": digest([task.task_id for task in tasks]), "task_count": len(tasks)},
    )


def plan_identity(config: ExperimentConfig, plan: RolloutPlan) -> StageIdentity:
    """The identity a plan would run under (used by cache keys before anything runs)."""
    store = ArtifactStore(config.run.run_root)
    tasks = list(plan.tasks) if plan.tasks is not None else list_env_tasks(plan.env)
    return rollout_identity(
        config, plan, tasks, resolve_adapter(store, plan.role.model.adapter, plan.role.model)
    )


def run_rollout(
    config: ExperimentConfig,
    stage: str = BASE_STAGE,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Stage A: play the base agent on the config's tasks into ``rollouts/<stage>``."""
    return run_rollout_plan(config, base_plan(config, stage), backend=backend, progress=progress)


def run_rollout_plan(
    config: ExperimentConfig,
    plan: RolloutPlan,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Play a plan's tasks, keeping every finished episode already in its folder; see the module doc."""
    store = ArtifactStore(config.run.run_root)
    tasks = list(plan.tasks) if plan.tasks is not None else list_env_tasks(plan.env)
    adapter = resolve_adapter(store, plan.role.model.adapter, plan.role.model)
    identity = rollout_identity(config, plan, tasks, adapter)
    prefix = rollout_prefix(plan.stage)
    label = f"{config.run.name}: rollouts/{plan.stage}"
    with StageRun(store, prefix, identity, label=label, lease_wait_s=config.run.lease_wait_s) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        records = episode_log(store, prefix, config)
        merge_shards(records)
        if config.rollout.shards > 1:
            stats = _play_in_shards(config, plan, tasks, records, backend, progress, label)
        else:
            stats = _play(config, plan, tasks, adapter, records, backend, progress)
        wanted = {task.task_id for task in tasks}
        shards = records.compact(keep=lambda record: record["task_id"] in wanted)
        shards.append(write_task_list(store, prefix, plan.env, tasks))
        played = [EpisodeRecord.from_dict(item) for item in read_records(store, prefix)]
        counts = episode_counts(played)
        _check_error_share(store.uri(prefix), played, config.rollout.max_error_share)
        return run.finish(
            shards,
            counts=counts,
            run_stats={
                "played_now": stats.finished,
                "skipped_finished": len(tasks) - len(set(stats.started_task_ids)),
                "model_calls": stats.model_calls,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )


def _play_in_shards(
    config: ExperimentConfig,
    plan: RolloutPlan,
    tasks: Sequence[TaskInfo],
    records: RecordLog,
    backend: Backend | None,
    progress: ProgressCallback | None,
    label: str,
) -> RolloutStats:
    """Play the tasks without a finished record as ``rollout.shards`` shards on the current runner
    (``stages.shards``), then merge the shards' records into ``records``."""
    finished = {item["task_id"] for item in records.records() if not _is_transient(item)}
    count = config.rollout.shards
    pending = [
        [task for task in part if task.task_id not in finished] for part in split_round_robin(tasks, count)
    ]
    total = sum(len(part) for part in pending)
    on_episode = combined_progress(progress, total)
    jobs = [
        ShardJob(config, plan, index, count, part, backend=backend, progress=on_episode)
        for index, part in enumerate(pending)
        if part
    ]
    if not jobs:
        return RolloutStats()
    log.info("%s: %d episode(s) in %d shard(s)", label, total, len(jobs))
    try:
        return total_stats(current_shard_runner()(jobs))
    finally:
        merge_shards(records)


def play_shard(job: ShardJob) -> RolloutStats:
    """Play one shard into ``<stage>/shards/<k>`` under that folder's lease; the records stay there until
    the stage merges them. Runs in any process that can import ragdistill and the environment."""
    config, plan = job.config, job.plan
    store = ArtifactStore(config.run.run_root)
    folder = shard_dir(rollout_prefix(plan.stage), job.index)
    adapter = resolve_adapter(store, plan.role.model.adapter, plan.role.model)
    label = f"{config.run.name}: {folder}"
    with StageLease(store, folder, label=label, wait_s=config.run.lease_wait_s):
        records = RecordLog(
            store, folder, key=lambda record: record["task_id"], shard_size=config.rollout.shard_size
        )
        return _play(config, plan, job.tasks, adapter, records, job.backend, job.progress)


def _is_transient(record: dict[str, Any]) -> bool:
    return record["stop_reason"] == "error" and record.get("error_kind") == "transient"


def _play(
    config: ExperimentConfig,
    plan: RolloutPlan,
    tasks: Sequence[TaskInfo],
    adapter: ResolvedAdapter,
    records: RecordLog,
    backend: Backend | None,
    progress: ProgressCallback | None,
) -> RolloutStats:
    """Play every task without a finished record; then, up to ``rollout.transient_retries`` times, the
    episodes an infrastructure fault ended."""
    from ragdistill.agents.formats import get_format
    from ragdistill.environments.registry import get_profile

    agent = plan.agent or config.agent
    fmt = get_format(agent.format, get_profile(plan.env.name))
    settings = EngineSettings(
        agent=agent,
        role=plan.role,
        batch_size=config.rollout.batch_size,
        adapter_path=adapter.path,
        adapter_digest=plan.record_adapter or adapter.digest,
        prompt_version=prompt_version(plan.env.name),
    )
    examples_for = examples_provider(agent, plan.env)
    total = RolloutStats()
    hint_source = None
    for attempt in range(1 + config.rollout.transient_retries):
        finished = {item["task_id"] for item in records.records() if not _is_transient(item)}
        pending = [task for task in tasks if task.task_id not in finished]
        if not pending:
            break
        if attempt:
            log.warning(
                "%s: playing %d episode(s) again after infrastructure faults", plan.stage, len(pending)
            )
        if hint_source is None and plan.hint_source is not None:
            hint_source = plan.hint_source()
        backend = backend or shared_backend(plan.role)
        env = plan.env
        with open_pool(env, len(pending)) as pool:
            engine = RolloutEngine(
                settings, backend, pool, fmt, examples_for, records,
                source=plan.source, hint_source=hint_source, progress=progress,
            )  # fmt: skip
            stats = engine.run(pending)
        total.finished += stats.finished
        total.model_calls += stats.model_calls
        total.started_task_ids.extend(stats.started_task_ids)
        if not stats.transient_errors:
            break
    return total


def examples_provider(agent: AgentConfig, env: EnvConfig) -> Callable[[TaskInfo], list[str]]:
    """The few-shot examples for a task, built once per task type. An expert example is a solved
    training game: never the game being played."""
    from ragdistill.agents.fewshot import build_examples

    examples: dict[tuple[str, str | None], list[str]] = {}

    def examples_for(task: TaskInfo) -> list[str]:
        key = (task.task_type, task.task_id if task.split == "train" else None)
        if key not in examples:
            examples[key] = build_examples(
                agent.fewshot_source,
                agent.format,
                task.task_type,
                agent.fewshot_count,
                env.data_dir,
                exclude_task_id=key[1],
                env_name=env.name,
            )
        return examples[key]

    return examples_for


TASKS_FILE = "tasks.json"


def env_version(env: EnvConfig) -> dict[str, str]:
    from ragdistill.environments.registry import environment_version

    return environment_version(env.name, env.data_dir)


def write_task_list(store: ArtifactStore, prefix: str, env: EnvConfig, tasks: Sequence[TaskInfo]) -> str:
    """``<stage>/tasks.json``: the tasks the stage played, in order, and the environment's version, so
    two runs (or two methods) can be checked to compare the same games."""
    relative = f"{prefix}/{TASKS_FILE}"
    store.write_json(
        relative,
        {
            "env": env.name,
            "split": env.split,
            "environment_version": env_version(env),
            "task_ids": [task.task_id for task in tasks],
        },
    )
    return relative


def episode_log(store: ArtifactStore, prefix: str, config: ExperimentConfig) -> RecordLog:
    """A rollout folder's episodes, one per task id (the last record of a task wins)."""
    return RecordLog(
        store, prefix, key=lambda record: record["task_id"], shard_size=config.rollout.shard_size
    )


def open_pool(env: EnvConfig, tasks: int) -> EnvPool:
    """Worker processes for ``tasks`` episodes of ``env`` (never more workers than tasks)."""
    from ragdistill.environments.pool import EnvPool

    return EnvPool(
        env.name,
        env.options,
        workers=min(env.workers, tasks),
        data_dir=env.data_dir,
        recycle_after=env.max_games_per_worker,
    )


def prompt_version(env_name: str) -> str:
    """A short fingerprint of what writes an environment's prompts: the formats and few-shot code, the
    registry with the built-in profiles, and the environment's agent style (for a profile registered
    at run time, whose module the registry does not import)."""
    from ragdistill.environments.registry import get_profile

    code = code_fingerprint(
        "ragdistill.agents.formats", "ragdistill.agents.fewshot", "ragdistill.environments.registry"
    )
    return digest([code, repr(get_profile(env_name).agent)])[:16]


def episode_counts(records: Iterable[EpisodeRecord]) -> dict[str, int]:
    """Counts derived from the records alone (they go into the manifest)."""
    counts = {"episodes": 0, "won": 0, "errors": 0, "transient_errors": 0}
    for record in records:
        counts["episodes"] += 1
        counts["won"] += int(record.success)
        counts["errors"] += int(record.stop_reason == "error")
        counts["transient_errors"] += int(record.is_transient_failure)
    return counts


def _check_error_share(where: str, records: list[EpisodeRecord], limit: float) -> None:
    errors = [record for record in records if record.stop_reason == "error"]
    if records and len(errors) / len(records) > limit:
        causes = "\n  ".join(f"{record.task_id}: {record.error}" for record in errors[:3])
        raise StageError(
            f"{len(errors)} of {len(records)} episodes in {where} ended in an error, more than "
            f"rollout.max_error_share ({limit:.0%}). First causes:\n  {causes}\nThe records are kept there: "
            "fix the cause and run again (episodes ended by an infrastructure fault are played again)"
        )
