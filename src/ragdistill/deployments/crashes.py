"""The crash automations, registered with the deployments: a run whose worker died is marked Crashed, and a
crashed run of a deployment that asks for it is retried.

- **Crash** (:data:`CRASH_AUTOMATION`): Prefect's documented pattern for "zombie" flow runs. Every flow
  run sends a ``prefect.flow-run.heartbeat`` event while it runs (``orchestration.heartbeats``); after each
  heartbeat of a run of a project deployment (tag ``ragdistill``), the server expects another event of that
  run (a heartbeat or a state change) within ``RAGDISTILL_CRASH_AFTER_S``; when none comes, it sets the
  run Crashed. Without it a run whose worker was SIGKILLed, or whose machine was lost, stays Running
  forever. Only the project's runs: on a server shared with other projects, runs that send heartbeats at
  another period are not this automation's to judge.
- **Retry** (:data:`RETRY_AUTOMATION`): when a run of a deployment tagged ``retry-crashed`` (the retrain,
  ``FlowDeployment.retry_crashed``) enters a Crashed state (set by the crash automation, or by a worker
  whose flow-run process died), it is set back to Scheduled, named ``AwaitingRetry``: what the UI's
  **Retry** does, so the same flow run runs again on a worker of its pool, its history showing the crash.
  Its stages resume from what they stored (a retrain's lease of a dead holder is stale, its watermark
  untouched: ``stages.retrain``). At most :data:`CRASH_RETRIES` times per run (the event's
  ``prefect.run-count``), so a run that kills its process every time (out of memory) stays Crashed.

Registering again updates both in place, by name (one automation per name, created when missing), and
leaves one that an operator paused in the UI (**Automations**) paused. ``prefect deploy --all`` cannot
create them (``prefect.yaml`` declares a deployment's own triggers only): ``ragdistill deploy`` does.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from ragdistill.deployments.specs import RETRY_CRASHED_TAG, TAGS
from ragdistill.orchestration.heartbeats import CRASH_AFTER_ENV, HEARTBEAT_FREQUENCY_ENV, HeartbeatSettings

if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore

CRASH_AUTOMATION = "ragdistill: mark runs without heartbeats Crashed"
RETRY_AUTOMATION = "ragdistill: retry crashed runs"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
FLOW_RUN_EVENTS = "prefect.flow-run.*"
PROJECT_TAG = TAGS[0]
CRASH_RETRIES = 2
"""Retries of one crashed run; a run crashed once more stays Crashed."""
RETRY_STATE_NAME = "AwaitingRetry"
"""The name Prefect's UI gives the Scheduled state of a retried run."""

Registration = Literal["created", "updated", "unchanged"]


def _tag(tag: str) -> dict[str, str]:
    """A related-resource match for runs that carry ``tag``."""
    return {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}


def crashed_message(settings: HeartbeatSettings) -> str:
    return (
        f"ragdistill: no heartbeat for {settings.crash_after_s} s (one is sent every {settings.frequency_s} s): "
        "the run's process is gone, e.g. its worker died"
    )


def retried_message(retries: int = CRASH_RETRIES) -> str:
    return f"ragdistill: retried after a crash (the {RETRY_AUTOMATION!r} automation; at most {retries} times)"


def crash_automation(settings: HeartbeatSettings) -> AutomationCore:
    """The crash automation described in the module docstring, for runs sending heartbeats as
    ``settings`` says."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            f"Marks a flow run of a ragdistill deployment Crashed when no event of it arrived for "
            f"{settings.crash_after_s} s after one of its heartbeats (sent every {settings.frequency_s} s): "
            f"its worker died with it. Prefect's pattern for zombie flow runs; `ragdistill deploy` and "
            f"`serve` size it from {HEARTBEAT_FREQUENCY_ENV} and {CRASH_AFTER_ENV}."
        ),
        tags=list(TAGS),
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            expect={FLOW_RUN_EVENTS},
            match={"prefect.resource.id": FLOW_RUN_EVENTS},
            match_related=_tag(PROJECT_TAG),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=settings.crash_after_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=crashed_message(settings))],
    )


def retry_automation(retries: int = CRASH_RETRIES) -> AutomationCore:
    """The retry automation described in the module docstring: at most ``retries`` retries per run."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=RETRY_AUTOMATION,
        description=(
            f"Retries a crashed run of a deployment tagged {RETRY_CRASHED_TAG!r} (the retrain), as the UI's "
            f"Retry does: the same flow run is scheduled again and its stages resume from what they stored; "
            f"at most {retries} times per run."
        ),
        tags=list(TAGS),
        trigger=EventTrigger(
            expect={FLOW_RUN_EVENTS},
            match={
                "prefect.resource.id": FLOW_RUN_EVENTS,
                "prefect.state-type": StateType.CRASHED.value,
                "prefect.run-count": [str(count) for count in range(1, retries + 1)],
            },
            match_related=[_tag(RETRY_CRASHED_TAG), {"prefect.resource.role": "deployment"}],
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED, name=RETRY_STATE_NAME, message=retried_message(retries)
            )
        ],
    )


def _definition(automation: AutomationCore) -> dict[str, Any]:
    """What registration sets: the trigger (without its server-given id), the actions, the description."""
    return {
        "description": automation.description,
        "tags": sorted(automation.tags),
        "trigger": automation.trigger.model_dump(mode="json", exclude={"id"}),
        "actions": [action.model_dump(mode="json") for action in automation.actions],
    }


def register_crash_automations(settings: HeartbeatSettings | None = None) -> dict[str, Registration]:
    """Create or update the crash and retry automations on the current Prefect API, sized by ``settings``
    (default: from the environment); what happened to each, by name."""
    from prefect.client.orchestration import get_client

    settings = settings or HeartbeatSettings.from_environment()
    outcome: dict[str, Registration] = {}
    with get_client(sync_client=True) as client:
        for automation in (crash_automation(settings), retry_automation()):
            existing = client.read_automations_by_name(automation.name)
            if not existing:
                client.create_automation(automation)
                outcome[automation.name] = "created"
                continue
            kept, *duplicates = existing
            for duplicate in duplicates:
                client.delete_automation(duplicate.id)
            if _definition(kept) == _definition(automation) and not duplicates:
                outcome[automation.name] = "unchanged"
                continue
            client.update_automation(kept.id, automation)
            outcome[automation.name] = "updated"
    return outcome
