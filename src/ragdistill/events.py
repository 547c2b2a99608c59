"""The Prefect event a rollout emits when it has recorded failures: what starts a retrain.

One event per batch of recorded failures, ``ragdistill.failures.recorded``, on a resource naming the run
root and the rollout stage (``ragdistill.rollout.<run root>/rollouts/<stage>``), with the count, the
stage and the run name in its payload. The retrain deployment's trigger
(``deployments.triggers``) counts these events; the retrain itself reads the failures from storage
(``stages.retrain``), so a dropped or repeated event changes when a retrain starts, never what it learns
from. The emitter (a Prefect task) and the trigger share this module, which imports neither.
"""

from __future__ import annotations

from typing import Any

from ragdistill.store import ArtifactStore

FAILURES_RECORDED = "ragdistill.failures.recorded"
RESOURCE_PREFIX = "ragdistill.rollout."
RUN_ROOT_LABEL = "ragdistill.run-root"


def failures_resource_id(run_root: str, stage: str) -> str:
    return f"{RESOURCE_PREFIX}{ArtifactStore(run_root).uri(f'rollouts/{stage}')}"


def emit_failures_recorded(run_root: str, run_name: str, stage: str, failures: int) -> Any:
    """Emit one ``ragdistill.failures.recorded`` event for ``failures`` > 0 recorded failures of ``stage``
    (nothing for none); the emitted event, or None."""
    if failures <= 0:
        return None
    from prefect.events import emit_event

    return emit_event(
        event=FAILURES_RECORDED,
        resource={
            "prefect.resource.id": failures_resource_id(run_root, stage),
            "prefect.resource.name": f"{run_name}: rollouts/{stage}",
            RUN_ROOT_LABEL: ArtifactStore(run_root).root_url,
        },
        payload={"count": failures, "stage": stage, "run_name": run_name},
    )
