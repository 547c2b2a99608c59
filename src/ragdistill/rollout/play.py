"""Playing a :class:`~ragdistill.rollout.plan.RolloutPlan` into a rollout folder's record log.

:func:`play_pending` plays every task of the plan without a finished record, in one engine or as
``ctx.rollout.shards`` parallel shards (``rollout.shards``), merging shard folders left by earlier runs
first and the new ones last; episodes an infrastructure fault ended are played again up to
``ctx.rollout.transient_retries`` times. :func:`settle_records` then keeps only the plan's tasks in the
folder's shard files and writes the task list beside them. The stage around it (``stages.rollout``)
holds the folder, checks the error share and writes the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ragdistill.agents.formats import AgentFormat
from ragdistill.config.run_context import RunContext
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend
from ragdistill.inference.shared import shared_backend
from ragdistill.layout import rollout_prefix
from ragdistill.leases import StageLease
from ragdistill.rollout.collaborators import HintSource, ProgressCallback, RolloutStats
from ragdistill.rollout.continuous import ContinuousRolloutEngine
from ragdistill.rollout.engine import EngineSettings, RolloutEngine
from ragdistill.rollout.plan import (
    ResolvedAdapter,
    RolloutPlan,
    examples_provider,
    open_pool,
    open_pools,
    prompt_version,
    resolve_adapter,
)
from ragdistill.rollout.shards import (
    ShardJob,
    ShardRunner,
    combined_progress,
    for_threads,
    installed_shard_runner,
    merge_shards,
    shard_dir,
    split_round_robin,
    total_stats,
)
from ragdistill.store import ArtifactStore, RecordLog, read_records

log = logging.getLogger("ragdistill.stages")

TASKS_FILE = "tasks.json"


def episode_log(store: ArtifactStore, prefix: str, shard_size: int) -> RecordLog:
    """A rollout folder's episodes, one per task id (the last record of a task wins)."""
    return RecordLog(store, prefix, key=lambda record: record["task_id"], shard_size=shard_size)


def is_transient(record: dict[str, Any]) -> bool:
    """Whether a stored episode was ended by an infrastructure fault (it is played again)."""
    return record["stop_reason"] == "error" and record.get("error_kind") == "transient"


def play_pending(
    ctx: RunContext,
    plan: RolloutPlan,
    adapter: ResolvedAdapter,
    records: RecordLog,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> RolloutStats:
    """Play the plan's tasks without a finished record into ``records`` (see the module docstring)."""
    merge_shards(records)
    if ctx.rollout.shards > 1:
        return _play_in_shards(ctx, plan, records, backend, progress)
    return play(ctx, plan, plan.tasks, adapter, records, backend, progress)


def _play_in_shards(
    ctx: RunContext,
    plan: RolloutPlan,
    records: RecordLog,
    backend: Backend | None,
    progress: ProgressCallback | None,
) -> RolloutStats:
    """Play the tasks without a finished record as ``rollout.shards`` shards on the current runner, then
    merge the shards' records into ``records``."""
    finished = {item["task_id"] for item in records.records() if not is_transient(item)}
    count = ctx.rollout.shards
    pending = [
        [task for task in part if task.task_id not in finished]
        for part in split_round_robin(plan.tasks, count)
    ]
    total = sum(len(part) for part in pending)
    on_episode = combined_progress(progress, total)
    jobs = [
        ShardJob(ctx, plan, index, count, part, backend=backend, progress=on_episode)
        for index, part in enumerate(pending)
        if part
    ]
    if not jobs:
        return RolloutStats()
    label = f"{ctx.run_name}: {rollout_prefix(plan.stage)}"
    log.info("%s: %d episode(s) in %d shard(s)", label, total, len(jobs))
    try:
        return total_stats(current_shard_runner()(jobs))
    finally:
        merge_shards(records)


def play_shard(job: ShardJob) -> RolloutStats:
    """Play one shard into ``<stage>/shards/<k>`` under that folder's lease; the records stay there until
    the stage merges them. Runs in any process that can import ragdistill and the environment."""
    ctx, plan = job.ctx, job.plan
    store = ArtifactStore(ctx.run_root)
    folder = shard_dir(rollout_prefix(plan.stage), job.index)
    adapter = resolve_adapter(store, plan.role.model.adapter, plan.role.model)
    with StageLease(store, folder, label=f"{ctx.run_name}: {folder}", wait_s=ctx.lease_wait_s):
        records = episode_log(store, folder, ctx.rollout.shard_size)
        return play(ctx, plan, job.tasks, adapter, records, job.backend, job.progress)


def run_in_threads(jobs: list[ShardJob]) -> list[RolloutStats]:
    """The default shard runner: every shard as a thread of this process."""
    jobs = for_threads(jobs)
    if len(jobs) <= 1:
        return [play_shard(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="rollout-shard") as pool:
        return list(pool.map(play_shard, jobs))


def current_shard_runner() -> ShardRunner:
    """The runner installed with ``rollout.shards.use_shard_runner``, else :func:`run_in_threads`."""
    return installed_shard_runner() or run_in_threads


def play(
    ctx: RunContext,
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

    fmt = get_format(plan.agent.format, get_profile(plan.env.name))
    settings = EngineSettings(
        agent=plan.agent,
        role=plan.role,
        batch_size=ctx.rollout.batch_size,
        adapter_path=adapter.path,
        adapter_digest=plan.record_adapter or adapter.digest,
        prompt_version=prompt_version(plan.env.name),
    )
    examples_for = examples_provider(plan.agent, plan.env.name, ctx.data_dir)
    total = RolloutStats()
    hint_source = None
    for attempt in range(1 + ctx.rollout.transient_retries):
        finished = {item["task_id"] for item in records.records() if not is_transient(item)}
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
        stats = play_tasks(
            ctx, plan, pending, settings, backend, fmt, examples_for, records, hint_source, progress
        )
        total.finished += stats.finished
        total.model_calls += stats.model_calls
        total.started_task_ids.extend(stats.started_task_ids)
        if not stats.transient_errors:
            break
    return total


def play_tasks(
    ctx: RunContext,
    plan: RolloutPlan,
    tasks: Sequence[TaskInfo],
    settings: EngineSettings,
    backend: Backend,
    fmt: AgentFormat,
    examples_for: Callable[[TaskInfo], list[str]],
    records: RecordLog,
    hint_source: HintSource | None,
    progress: ProgressCallback | None,
) -> RolloutStats:
    """One engine run over ``tasks``, on the engine ``ctx.rollout.schedule`` names."""
    options: dict[str, Any] = {"source": plan.source, "hint_source": hint_source, "progress": progress}
    if ctx.rollout.schedule == "lockstep":
        with open_pool(ctx, plan.env, len(tasks)) as pool:
            engine = RolloutEngine(settings, backend, pool, fmt, examples_for, records, **options)
            return engine.run(tasks)
    with open_pools(ctx, plan.env, len(tasks)) as pools:
        continuous = ContinuousRolloutEngine(settings, backend, pools, fmt, examples_for, records, **options)
        return continuous.run(tasks)


def settle_records(
    ctx: RunContext, store: ArtifactStore, prefix: str, plan: RolloutPlan, records: RecordLog
) -> tuple[list[str], list[EpisodeRecord]]:
    """Compact the folder's records to the plan's tasks, in the plan's order (episodes finish in any
    order), and write its task list; the files the manifest lists and the episodes they hold."""
    position = {task.task_id: index for index, task in enumerate(plan.tasks)}
    files = records.compact(
        keep=lambda record: record["task_id"] in position, order=lambda r: position[r["task_id"]]
    )
    files.append(write_task_list(store, prefix, plan.env.name, plan.split, plan.tasks, ctx.data_dir))
    played = [EpisodeRecord.from_dict(item) for item in read_records(store, prefix)]
    return files, played


def write_task_list(
    store: ArtifactStore,
    prefix: str,
    env_name: str,
    split: str,
    tasks: Sequence[TaskInfo],
    data_dir: Path,
) -> str:
    """``<stage>/tasks.json``: the tasks the stage played, in order, and the environment's version, so
    two runs (or two methods) can be checked to compare the same games."""
    from ragdistill.environments.registry import environment_version

    relative = f"{prefix}/{TASKS_FILE}"
    store.write_json(
        relative,
        {
            "env": env_name,
            "split": split,
            "environment_version": environment_version(env_name, data_dir),
            "task_ids": [task.task_id for task in tasks],
        },
    )
    return relative


def episode_counts(records: Iterable[EpisodeRecord]) -> dict[str, int]:
    """Counts derived from the records alone (they go into the manifest)."""
    counts = {"episodes": 0, "won": 0, "errors": 0, "transient_errors": 0}
    for record in records:
        counts["episodes"] += 1
        counts["won"] += int(record.success)
        counts["errors"] += int(record.stop_reason == "error")
        counts["transient_errors"] += int(record.is_transient_failure)
    return counts
