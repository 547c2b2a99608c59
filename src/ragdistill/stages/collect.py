"""The collect stage: the current student plays a batch of new tasks into ``rollouts/collect-NNNN``.

The player is the adapter registry's current adapter (``adapter_registry.current_adapter``) on the
agent's model, or the base model before anything was promoted. Batch ``n`` plays the tasks at positions
``start + n·batch_size`` up to ``start + (n+1)·batch_size`` of the ``collect.split`` task list (see
:class:`ragdistill.config.CollectConfig`). The cursor is the run root itself: the next batch is the
lowest number without a finished manifest, so a killed batch is resumed (through the rollout machinery,
episode by episode) before a new one starts, and successive batches never replay a task.

Each batch is an ordinary rollout stage folder with its manifest; ``stages.retrain`` reads their failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ragdistill.adapter_registry import current_adapter
from ragdistill.config import ExperimentConfig
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend
from ragdistill.rollout import ProgressCallback
from ragdistill.stages.lifecycle import StageError
from ragdistill.stages.rollout import RolloutPlan, list_env_tasks, run_rollout_plan
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_manifest, read_records

COLLECT_PREFIX = "collect-"
ROLLOUTS_DIR = "rollouts"
_BATCH_PATTERN = re.compile(rf"^{ROLLOUTS_DIR}/{COLLECT_PREFIX}(\d{{4,}})/")


def collect_stage(batch: int) -> str:
    """The rollout stage name of collect batch ``batch`` (``collect-0003``)."""
    return f"{COLLECT_PREFIX}{batch:04d}"


def batch_numbers(store: ArtifactStore) -> list[int]:
    """Every collect batch with a folder under ``rollouts/``, finished or not, in order."""
    found = {
        int(match.group(1)) for path in store.list(ROLLOUTS_DIR) if (match := _BATCH_PATTERN.match(path))
    }
    return sorted(found)


def finished_batches(store: ArtifactStore) -> list[str]:
    """The stage names of the collect batches whose manifest is written, in order."""
    finished = []
    for number in batch_numbers(store):
        try:
            read_manifest(store, f"{ROLLOUTS_DIR}/{collect_stage(number)}")
        except ArtifactError:
            continue
        finished.append(collect_stage(number))
    return finished


def next_batch(store: ArtifactStore) -> int:
    """The lowest batch number without a finished manifest: an interrupted batch first, else a new one."""
    done = {int(stage.removeprefix(COLLECT_PREFIX)) for stage in finished_batches(store)}
    number = 0
    while number in done:
        number += 1
    return number


def first_position(config: ExperimentConfig) -> int:
    if config.collect.start is not None:
        return config.collect.start
    return (config.env.limit or 0) if config.collect.split == config.env.split else 0


@dataclass(frozen=True)
class CollectBatch:
    number: int
    plan: RolloutPlan
    adapter: str | None
    """The registry's current adapter the batch plays with (None: the base model)."""

    @property
    def stage(self) -> str:
        return self.plan.stage


def collect_plan(config: ExperimentConfig, number: int | None = None) -> CollectBatch:
    """Batch ``number`` (default: :func:`next_batch`) as a rollout plan for the current student."""
    store = ArtifactStore(config.run.run_root)
    number = next_batch(store) if number is None else number
    begin = first_position(config) + number * config.collect.batch_size
    end = begin + config.collect.batch_size
    env = config.env.model_copy(update={"split": config.collect.split, "limit": end})
    tasks = list_env_tasks(env)[begin:end]
    if not tasks:
        raise StageError(
            f"collect batch {number} would start at task {begin} of split {config.collect.split!r}, which has "
            f"only {len(list_env_tasks(env.model_copy(update={'limit': None})))} tasks: no new tasks are left; "
            "set collect.split to another split or collect.start to replay from an earlier position"
        )
    adapter = current_adapter(store)
    role = config.models.agent
    if adapter is not None:
        role = role.model_copy(update={"model": role.model.model_copy(update={"adapter": adapter})})
    plan = RolloutPlan(stage=collect_stage(number), env=env, role=role, tasks=tasks)
    return CollectBatch(number, plan, adapter)


def run_collect(
    config: ExperimentConfig,
    number: int | None = None,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[CollectBatch, Manifest]:
    """Play one collect batch (resuming it when it was interrupted); the batch and its manifest."""
    batch = collect_plan(config, number)
    return batch, run_rollout_plan(config, batch.plan, backend=backend, progress=progress)


def recorded_failures(store: ArtifactStore, stage: str) -> list[EpisodeRecord]:
    """The failures of a finished rollout stage that mining would send to the extractor (not won, not
    ended by an error, with at least one step)."""
    from ragdistill.retrieval.mining import select_failures

    prefix = f"{ROLLOUTS_DIR}/{stage}"
    manifest = read_manifest(store, prefix)
    records = (EpisodeRecord.from_dict(item) for item in read_records(store, prefix, manifest))
    failures, _ = select_failures(records)
    return failures
