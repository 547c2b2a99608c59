"""Stage A and every other rollout (the RAG teacher, evaluations, collect batches): play tasks into
``rollouts/<stage>``.

A rollout's identity (``stages.lifecycle.stage_identity``) is made of what changes its episodes and
nothing else:

- settings: the stage's settings model, whole (:class:`~ragdistill.config.stages.RolloutSettings`: the
  stage name, the environment and its options, the agent section, the agent role's model, sampling and
  backend kind, the records' source; a teacher or evaluation adds its retrieval settings and re-ranker
  role, an evaluation its method and student weights);
- inputs: the content digests of the upstream folders the stage reads (``settings.input_dirs()``: the
  teacher's hint bank and index, a student's training folder, the warm start whose checkpoint the agent
  plays on when it is on), the environment's data version
  (``environment``) and the content digest of the adapter the agent plays with (``adapter``, when it has
  one);
- growable: the task selection, the task list's digest and its length (a larger list keeps every
  finished episode and plays the rest);
- code: this module and everything it imports (the engine, agents, environments, backends), and the
  versions of the inference libraries of the roles it uses.

Never: run names, worker and batch counts, shard size and count, data folder paths, where shards run
(``RunContext``), or any other stage's settings.

With ``rollout.shards`` > 1 the pending tasks are split round-robin over the pinned task list and played
as parallel shards, each into ``<stage>/shards/<k>/`` under its own lease; every run merges the shard
folders it finds into the stage's records first and last, so a killed run resumes per shard and the
finished stage has the same files as an unsharded one (``rollout.shards``).

The agent plays on its configured model, or with ``warm_start.enabled`` on the warm start's checkpoint:
the agent role's settings then say ``warm_start: true`` (``config.stages``), every stage that plays or
trains the agent lists ``warm-start/`` among the folders it reads and its identity holds that folder's
content digest. :func:`agent_role` (and, for training, :func:`agent_model`) swaps the configured
``model.name`` for a local folder holding ``warm-start/model`` of the digest the stage was handed
(``stages.lifecycle.local_input_folder``: the run root's own folder, or a checked copy of an object
store's). The warm start lives in ``ctx.warm_start_root`` when set (a retrain generation plays on its
parent's), else in the run root. Every other field of the model spec stays as configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ragdistill.config import ModelSpec, RoleConfig
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, RoleSettings, RolloutSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.episodes import EpisodeRecord
from ragdistill.inference.base import Backend
from ragdistill.inference.factory import BACKEND_LIBRARIES
from ragdistill.layout import ROLLOUT_OUTPUTS, WARM_START_DIR, WARM_START_MODEL
from ragdistill.rollout.collaborators import HintSource, ProgressCallback
from ragdistill.rollout.plan import (
    ResolvedAdapter,
    RolloutPlan,
    environment_digest,
    plan_rollout,
    resolve_adapter,
    select_tasks,
    task_list_facts,
)
from ragdistill.rollout.play import episode_counts, episode_log, play_pending, settle_records
from ragdistill.stages.lifecycle import (
    StageError,
    StageIdentity,
    StageRun,
    handed,
    local_input_folder,
    role_config,
    stage_identity,
)
from ragdistill.store import ArtifactStore, Manifest


def rollout_libraries(settings: RolloutSettings) -> list[str]:
    """The libraries whose versions are part of the identity: those of the agent's backend, and the
    re-ranker's where the settings name one."""
    roles = [settings.role, getattr(settings, "reranker", None)]
    return sorted({name for role in roles if role is not None for name in BACKEND_LIBRARIES[role.backend]})


def identity_for(
    ctx: RunContext,
    settings: RolloutSettings,
    inputs: Inputs,
    tasks: list[TaskInfo],
    adapter_digest: str | None,
) -> StageIdentity:
    """The identity of ``settings`` playing ``tasks`` with the adapter of ``adapter_digest`` (see the
    module docstring)."""
    facts = {"environment": environment_digest(settings.env.name, ctx.data_dir)}
    if adapter_digest is not None:
        facts["adapter"] = adapter_digest
    return stage_identity(
        settings,
        {**handed(inputs, *settings.input_dirs()), **facts},
        libraries=rollout_libraries(settings),
        growable=task_list_facts(tasks),
    )


def rollout_identity(
    ctx: RunContext, settings: RolloutSettings, inputs: Inputs | None = None
) -> StageIdentity:
    """The identity ``run_rollout(ctx, settings, inputs)`` runs under (for cache keys, before anything
    runs); see the module docstring."""
    store = ArtifactStore(ctx.run_root)
    model = settings.role.model
    adapter = resolve_adapter(store, model.adapter, model)
    return identity_for(
        ctx, settings, inputs or {}, select_tasks(ctx, settings.env, settings.tasks), adapter.digest
    )


def run_rollout(
    ctx: RunContext,
    settings: RolloutSettings,
    inputs: Inputs | None = None,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Play the agent on the settings' tasks into ``rollouts/<stage>``, keeping every finished episode
    already there; see the module docstring."""
    return play_settings(ctx, settings, inputs or {}, backend=backend, progress=progress)


def play_settings(
    ctx: RunContext,
    settings: RolloutSettings,
    inputs: Inputs,
    *,
    role: RoleConfig | None = None,
    tasks: list[TaskInfo] | None = None,
    hint_source: Callable[[], HintSource] | None = None,
    record_adapter: str | None = None,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """The rollout stage of ``settings`` (``role``: instead of the agent role as :func:`agent_role` loads
    it, on the warm start's checkpoint when it is on; ``record_adapter``: the adapter digest of
    weights that already hold it). Its identity is :func:`identity_for` of the tasks and the adapter it
    plays."""
    store = ArtifactStore(ctx.run_root)
    plan = plan_rollout(
        ctx,
        settings,
        role=role or agent_role(ctx, settings.role, inputs),
        tasks=tasks,
        hint_source=hint_source,
        record_adapter=record_adapter,
    )
    adapter = resolve_adapter(store, plan.role.model.adapter, plan.role.model)
    identity = identity_for(ctx, settings, inputs, plan.tasks, record_adapter or adapter.digest)
    return run_plan(ctx, plan, identity, adapter, backend=backend, progress=progress)


def run_plan(
    ctx: RunContext,
    plan: RolloutPlan,
    identity: StageIdentity,
    adapter: ResolvedAdapter,
    *,
    backend: Backend | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Hold the plan's folder under ``identity``; play what is missing; write the manifest."""
    store = ArtifactStore(ctx.run_root)
    prefix = identity.stage
    label = f"{ctx.run_name}: {prefix}"
    with StageRun(store, prefix, identity, ctx, label=label, outputs=ROLLOUT_OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        records = episode_log(store, prefix, ctx.rollout.shard_size)
        stats = play_pending(ctx, plan, adapter, records, backend=backend, progress=progress)
        files, played = settle_records(ctx, store, prefix, plan, records)
        check_error_share(store.uri(prefix), played, ctx.rollout.max_error_share)
        return run.finish(
            files,
            counts=episode_counts(played),
            run_stats={
                "played_now": stats.finished,
                "skipped_finished": len(plan.tasks) - len(set(stats.started_task_ids)),
                "model_calls": stats.model_calls,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )


def check_error_share(where: str, records: list[EpisodeRecord], limit: float) -> None:
    """Stop when more than ``limit`` of the episodes ended in an error (the records are kept)."""
    errors = [record for record in records if record.stop_reason == "error"]
    if records and len(errors) / len(records) > limit:
        causes = "\n  ".join(f"{record.task_id}: {record.error}" for record in errors[:3])
        raise StageError(
            f"{len(errors)} of {len(records)} episodes in {where} ended in an error, more than "
            f"rollout.max_error_share ({limit:.0%}). First causes:\n  {causes}\nThe records are kept there: "
            "fix the cause and run again (episodes ended by an infrastructure fault are played again)"
        )


@dataclass(frozen=True)
class AgentModel:
    """The weights the agent plays or trains on, and where they come from (None: the configured model)."""

    model: ModelSpec
    lineage: dict[str, Any] | None = None


def agent_role(ctx: RunContext, role: RoleSettings, inputs: Inputs, **backend_update: Any) -> RoleConfig:
    """:func:`role_config` with the warm start's checkpoint as its model when ``role.warm_start``."""
    config = role_config(ctx, role, **backend_update)
    if not role.warm_start:
        return config
    return config.model_copy(update={"model": agent_model(ctx, role.model, True, inputs).model})


def agent_model(ctx: RunContext, model: ModelSpec, warm_start: bool, inputs: Inputs) -> AgentModel:
    """``model``, or with ``warm_start`` the spec of the warm start's checkpoint of the digest handed in
    ``inputs`` and its lineage (see the module docstring)."""
    if not warm_start:
        return AgentModel(model)
    expected = handed(inputs, WARM_START_DIR)[WARM_START_DIR]
    store = warm_start_store(ctx)
    manifest, folder = local_input_folder(store, WARM_START_DIR, expected, WARM_START_MODEL)
    lineage = {
        "model": model.name,
        "warm_start": {
            "folder": WARM_START_DIR,
            "run_root": store.root_url,
            "digest": manifest.digest,
            "games": manifest.counts.get("examples", 0),
        },
        "description": manifest.extra.get("description"),
    }
    return AgentModel(model.model_copy(update={"name": str(folder)}), lineage)


def warm_start_store(ctx: RunContext) -> ArtifactStore:
    """The run root holding the warm start: ``ctx.warm_start_root``, else the run root."""
    return ArtifactStore(ctx.warm_start_root or ctx.run_root)
