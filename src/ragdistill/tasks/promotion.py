"""The Prefect task of the promotion stage: register the students, let the gate decide (``stages.promotion``)."""

from __future__ import annotations

from typing import Any

from prefect import task

from ragdistill.config import ExperimentConfig
from ragdistill.stages.layout import PROMOTION_DIR
from ragdistill.stages.lifecycle import StageIdentity
from ragdistill.stages.promotion import promotion_identity, run_promotion
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import TASK_RUN_SUFFIX, publish_manifest, stage_cache_policy


def _promotion(config: ExperimentConfig, parameters: dict[str, Any]) -> tuple[str, StageIdentity]:
    store = ArtifactStore(config.run.run_root)
    return PROMOTION_DIR, promotion_identity(
        config, store, _registry_store(parameters.get("registry_root")), parameters.get("generation")
    )


def _registry_store(registry_root: str | None) -> ArtifactStore | None:
    return ArtifactStore(registry_root) if registry_root is not None else None


@task(
    name="promote",
    task_run_name="promote-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_promotion, __name__),
    result_serializer="json",
)
def promote_task(
    config: ExperimentConfig,
    upstream_digests: list[str | None],
    registry_root: str | None = None,
    generation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promote into this run root's registry, or (a retrain generation) into ``registry_root``'s."""
    manifest = run_promotion(
        config, by="pipeline", registry_store=_registry_store(registry_root), generation=generation
    )
    decision = manifest.extra.get("decision", {})
    description = f"{config.run.name}: promotion: {decision.get('reason', '')}"
    return publish_manifest(manifest, key="promotion", description=description[:500])
