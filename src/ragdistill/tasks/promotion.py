"""The Prefect task of the promotion stage: register the students, let the gate decide (``stages.promotion``)."""

from __future__ import annotations

from typing import Any

from prefect import task

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs, PromotionSettings
from ragdistill.stages.promotion import run_promotion
from ragdistill.tasks.common import STAGE_CACHE, TASK_RUN_SUFFIX, publish_manifest


@task(
    name="promote",
    task_run_name="promote-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def promote_task(ctx: RunContext, settings: PromotionSettings, inputs: Inputs) -> dict[str, Any]:
    """Promote into this run root's registry, or (a retrain generation) into ``settings.registry_root``'s."""
    manifest = run_promotion(ctx, settings, inputs, by="pipeline")
    decision = manifest.extra.get("decision", {})
    description = f"{ctx.run_name}: promotion: {decision.get('reason', '')}"
    return publish_manifest(manifest, key="promotion", description=description[:500])
