"""The Prefect events of the loop: failures recorded by a collect batch, and a retrain due.

- ``ragdistill.failures.recorded``: one per collect batch with failures, on a resource naming the run root
  and the rollout stage (``ragdistill.rollout.<run root>/rollouts/<stage>``), with the count, the stage and
  the run name in its payload. What happened; nothing is triggered by it.
- ``ragdistill.retrain.due``: emitted by a collect when the failures stored since the retrain watermark
  number at least the run root's ``retrain.min_failures``, on the resource ``ragdistill.loop.<run root>``,
  with that count, the threshold and the champion in its payload. The retrain deployment's trigger
  (``deployments.triggers``) starts one retrain per such event.

Why the collect decides, not the trigger: a Prefect event trigger counts events, never a number in their
payload, and its threshold would be the deploy-time config's. The collect reads the stored count (what
the retrain will read) against the run root's own threshold, so a retrain starts on the number of
failures, however they were split into batches, and the retrain itself reads its failures from storage
(``stages.retrain``): a dropped or repeated event changes when a retrain starts, never what it learns from.
The emitter (a Prefect task) and the trigger share this module, which imports neither.
"""

from __future__ import annotations

from typing import Any

from ragdistill.store import ArtifactStore

FAILURES_RECORDED = "ragdistill.failures.recorded"
RETRAIN_DUE = "ragdistill.retrain.due"
RESOURCE_PREFIX = "ragdistill.rollout."
LOOP_RESOURCE_PREFIX = "ragdistill.loop."
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


def loop_resource_id(run_root: str) -> str:
    return f"{LOOP_RESOURCE_PREFIX}{ArtifactStore(run_root).root_url}"


def emit_retrain_due(
    run_root: str, run_name: str, pending_failures: int, min_failures: int, champion: str | None
) -> Any:
    """Emit one ``ragdistill.retrain.due`` event for the run root (the caller checked that
    ``pending_failures`` reached ``min_failures``); the emitted event, or None when events are off."""
    from prefect.events import emit_event

    return emit_event(
        event=RETRAIN_DUE,
        resource={
            "prefect.resource.id": loop_resource_id(run_root),
            "prefect.resource.name": f"{run_name}: retrain",
            RUN_ROOT_LABEL: ArtifactStore(run_root).root_url,
        },
        payload={
            "pending_failures": pending_failures,
            "min_failures": min_failures,
            "champion": champion,
            "run_name": run_name,
        },
    )
