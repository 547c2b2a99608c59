"""Prefect tasks of the collect and retrain flows: play a collect batch, announce its failures and, when the
stored failures reach the threshold, that a retrain is due; decide whether a retrain runs; make a
generation's root ready (``stages.collect``, ``stages.retrain``). Both flows keep one Prefect artifact,
``loop-status``, up to date (``stages.loop_status``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ragdistill.adapter_registry import AdapterRegistry
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import CollectSettings, RetrainSettings, TaskSelection
from ragdistill.events import emit_failures_recorded, emit_retrain_due
from ragdistill.stages.collect import recorded_failures, run_collect
from ragdistill.stages.loop_status import LoopStatus, loop_status
from ragdistill.stages.retrain import (
    PendingFailures,
    Watermark,
    pending_failures,
    prepare_generation,
    read_watermark,
    record_decision,
    skip_reason,
)
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import TASK_RUN_SUFFIX, publish_manifest
from ragdistill.tasks.rollout import progress_reporter

LOOP_STATUS_KEY = "loop-status"


@task(name="collect", task_run_name="collect-" + TASK_RUN_SUFFIX, result_serializer="json")
def collect_task(
    ctx: RunContext,
    settings: CollectSettings,
    retrain: RetrainSettings,
    reserved: dict[str, TaskSelection],
) -> dict[str, Any]:
    """Play one collect batch (never a task of ``reserved``); emit its failures event, and the retrain-due
    event when the stored failures since the watermark reach ``retrain.min_failures``; update the loop
    status. Not cached by Prefect: which batch is next depends on the run root (the flow picks it), and
    the rollout stage itself skips finished work."""
    store = ArtifactStore(ctx.run_root)
    planned, manifest = run_collect(
        ctx, settings, reserved=reserved, progress=progress_reporter(settings.stage)
    )
    failures = len(recorded_failures(store, planned.stage))
    emit_failures_recorded(ctx.run_root, ctx.run_name, planned.stage, failures)
    status = publish_loop_status(ctx, retrain)
    if status.retrain_due:
        emit_retrain_due(
            ctx.run_root, ctx.run_name, status.pending_failures, status.min_failures, status.champion
        )
    result = publish_manifest(
        manifest, key=f"rollout-{planned.stage}", description=f"{ctx.run_name}: rollouts/{planned.stage}"
    )
    return {
        **result,
        "batch": planned.stage,
        "failures": failures,
        "adapter": planned.adapter,
        "loop": status.summary(),
    }


def publish_loop_status(ctx: RunContext, retrain: RetrainSettings) -> LoopStatus:
    """The run root's loop status, shown as the ``loop-status`` markdown artifact (one key: the UI keeps
    its versions, the latest on top)."""
    status = loop_status(ArtifactStore(ctx.run_root), retrain.min_failures)
    create_markdown_artifact(
        key=LOOP_STATUS_KEY, markdown=status.markdown(), description=f"{ctx.run_name}: {status.run_root}"
    )
    return status


@task(name="retrain-decision", task_run_name="retrain-decision-" + TASK_RUN_SUFFIX, result_serializer="json")
def retrain_decision_task(ctx: RunContext, settings: RetrainSettings) -> dict[str, Any]:
    """Read the watermark and the stored failures; record a skip (with its reason) when there are too few."""
    store = ArtifactStore(ctx.run_root)
    watermark = read_watermark(store)
    pending = pending_failures(store, watermark)
    reason = skip_reason(settings, pending)
    decision = {
        "generation": watermark.generation + 1,
        "new_failures": pending.total,
        "by_batch": {stage: len(ids) for stage, ids in pending.by_stage.items()},
        "min_failures": settings.min_failures,
        "champion": pointer.version if (pointer := AdapterRegistry(store).pointer()) else None,
        "skipped": reason,
    }
    if reason is not None:
        record_decision(store, decision)
        create_markdown_artifact(
            key="retrain-decision", markdown=f"**Retrain skipped**: {reason}", description=ctx.run_name
        )
    return {**decision, "watermark": _as_dict(watermark), "pending": pending.by_stage}


@task(
    name="prepare-generation",
    task_run_name="prepare-generation-{generation}-" + TASK_RUN_SUFFIX,
    result_serializer="json",
)
def prepare_generation_task(ctx: RunContext, generation: int, stages: list[str]) -> dict[str, Any]:
    manifest = prepare_generation(ctx, generation, stages)
    return publish_manifest(
        manifest,
        key=f"generation-{generation}-base",
        description=f"{ctx.run_name}: generation {generation}",
    )


def watermark_from(decision: dict[str, Any]) -> tuple[Watermark, PendingFailures]:
    recorded = decision["watermark"]
    watermark = Watermark(recorded["generation"], recorded["consumed"], recorded.get("updated_at"))
    return watermark, PendingFailures(decision["pending"])


def _as_dict(watermark: Watermark) -> dict[str, Any]:
    return {
        "generation": watermark.generation,
        "consumed": watermark.consumed,
        "updated_at": watermark.updated_at,
    }
