"""The collect stage: the current student plays a batch of new tasks into ``rollouts/collect-NNNN``.

The player is the adapter registry's current adapter (``adapter_registry.current_adapter``) on the
agent's model (the warm start's checkpoint when it is on), or that model alone before anything was
promoted. Batch ``n``
(:meth:`~ragdistill.config.stages.PipelineSettings.collect`) plays the tasks at positions
``start + n·batch_size`` up to ``start + (n+1)·batch_size`` of the ``collect.split`` task list (see
:class:`ragdistill.config.CollectConfig`). The cursor is the run root itself: callers play batch
:func:`next_batch`, the lowest number without a finished manifest, so a killed batch is resumed (through
the rollout machinery, episode by episode) before a new one starts, and successive batches never replay
a task.

Identity: a rollout's (``stages.rollout``) under :class:`~ragdistill.config.stages.CollectSettings`,
whole (the rollout settings and the batch number); inputs: the environment's data version, the
content digest of the registry's current adapter (``adapter``), resolved when the identity is made, and
the warm start's when it is on (read from the run root's manifest unless handed); growable: the batch's
task list.

A batch never plays a task the pipeline plays or evaluates on (:func:`check_fresh_tasks`, given the
pipeline's selections by ``PipelineSettings.reserved_tasks``): its failures must be new, and the
evaluation tasks must stay unseen by every generation's training data.

Each batch is an ordinary rollout stage folder with its manifest; ``stages.retrain`` reads their failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ragdistill.adapter_registry import current_adapter
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import CollectSettings, Inputs, TaskSelection
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend
from ragdistill.layout import COLLECT_PREFIX, ROLLOUTS_DIR, collect_stage, rollout_prefix
from ragdistill.rollout.collaborators import ProgressCallback
from ragdistill.rollout.plan import resolve_adapter, select_tasks
from ragdistill.stages.lifecycle import StageError, StageIdentity, recorded_inputs
from ragdistill.stages.rollout import agent_role, identity_for, play_settings, warm_start_store
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_manifest, read_records

_BATCH_PATTERN = re.compile(rf"^{ROLLOUTS_DIR}/{COLLECT_PREFIX}(\d{{4,}})/")
MAX_LISTED_TASKS = 5


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
            read_manifest(store, rollout_prefix(collect_stage(number)))
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


@dataclass(frozen=True)
class CollectBatch:
    number: int
    stage: str
    adapter: str | None
    """The registry's current adapter the batch plays with (None: the base model)."""


def _batch_tasks(ctx: RunContext, settings: CollectSettings) -> list[TaskInfo]:
    tasks = select_tasks(ctx, settings.env, settings.tasks)
    if not tasks:
        selection = settings.tasks
        whole = select_tasks(ctx, settings.env, selection.model_copy(update={"start": 0, "limit": None}))
        raise StageError(
            f"collect batch {settings.batch} would start at task {selection.start} of split "
            f"{selection.split!r}, which has only {len(whole)} tasks: no new tasks are left; set "
            "collect.split to another split or collect.start to replay from an earlier position"
        )
    return tasks


def check_fresh_tasks(ctx: RunContext, settings: CollectSettings, reserved: dict[str, TaskSelection]) -> None:
    """:class:`StageError` naming the folder and the tasks when collect batch ``settings.batch`` would play
    a task of one of the ``reserved`` selections (by the folder that plays them); a task is its split and
    its id. Reads the environment's task lists only."""
    playing = {(task.split, task.task_id) for task in _batch_tasks(ctx, settings)}
    for folder, selection in reserved.items():
        taken_tasks = {(task.split, task.task_id) for task in select_tasks(ctx, settings.env, selection)}
        shared = sorted(task_id for _, task_id in playing & taken_tasks)
        if not shared:
            continue
        listed = ", ".join(shared[:MAX_LISTED_TASKS]) + (" …" if len(shared) > MAX_LISTED_TASKS else "")
        tasks = settings.tasks
        taken = (
            "every task" if selection.limit is None else f"positions {selection.start}–{selection.limit - 1}"
        )
        raise StageError(
            f"collect batch {settings.batch} (positions {tasks.start}–{_last(tasks)} of split {tasks.split!r}) "
            f"would play {len(shared)} task(s) that {folder} plays too ({listed}): collected failures must "
            "come from new tasks, and the evaluation tasks must stay unseen. That folder plays "
            f"{taken} of split {selection.split!r}: set collect.start past them, or collect.split to a split "
            "the pipeline does not play"
        )


def _last(selection: TaskSelection) -> str:
    return "the end" if selection.limit is None else str(selection.limit - 1)


def _player(store: ArtifactStore, settings: CollectSettings) -> str | None:
    """The adapter the batch plays with: the registry's current one, else the agent's own (if any)."""
    return current_adapter(store) or settings.role.model.adapter


def _inputs(ctx: RunContext, settings: CollectSettings, inputs: Inputs | None) -> Inputs:
    """``inputs``, else the digests of what the batch reads as the run root holds them now (the warm start,
    when the agent plays on its checkpoint)."""
    if inputs is not None:
        return inputs
    return recorded_inputs(warm_start_store(ctx), settings.input_dirs())


def collect_identity(
    ctx: RunContext, settings: CollectSettings, inputs: Inputs | None = None
) -> StageIdentity:
    """See the module docstring."""
    store = ArtifactStore(ctx.run_root)
    adapter = resolve_adapter(store, _player(store, settings), settings.role.model)
    tasks = _batch_tasks(ctx, settings)
    return identity_for(ctx, settings, _inputs(ctx, settings, inputs), tasks, adapter.digest)


def run_collect(
    ctx: RunContext,
    settings: CollectSettings,
    inputs: Inputs | None = None,
    *,
    reserved: dict[str, TaskSelection] | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[CollectBatch, Manifest]:
    """Play collect batch ``settings.batch`` (resuming it when it was interrupted); the batch and its
    manifest. ``reserved``: the selections it must not overlap (:func:`check_fresh_tasks`), checked before
    anything is written."""
    store = ArtifactStore(ctx.run_root)
    if reserved:
        check_fresh_tasks(ctx, settings, reserved)
    tasks = _batch_tasks(ctx, settings)
    inputs = _inputs(ctx, settings, inputs)
    registered = current_adapter(store)
    role = agent_role(ctx, settings.role, inputs)
    if registered is not None:
        role = role.model_copy(update={"model": role.model.model_copy(update={"adapter": registered})})
    manifest = play_settings(
        ctx, settings, inputs, role=role, tasks=tasks, backend=backend, progress=progress
    )
    return CollectBatch(settings.batch, settings.stage, registered), manifest


def recorded_failures(store: ArtifactStore, stage: str) -> list[EpisodeRecord]:
    """The failures of a finished rollout stage that mining would send to the extractor (not won, not
    ended by an error, with at least one step)."""
    from ragdistill.retrieval.mining import select_failures

    prefix = rollout_prefix(stage)
    manifest = read_manifest(store, prefix)
    records = (EpisodeRecord.from_dict(item) for item in read_records(store, prefix, manifest))
    failures, _ = select_failures(records)
    return failures
