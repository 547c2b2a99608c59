"""The retrain deployment's event trigger: failure events (``ragdistill.events``) start a retrain."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ragdistill.config import config_file, load_config
from ragdistill.events import FAILURES_RECORDED, RESOURCE_PREFIX, RUN_ROOT_LABEL


def retrain_trigger(config_name: str) -> Any:
    """``retrain.trigger_events`` failure events of one run root within ``retrain.trigger_window_s`` (of
    the config ``config_name``) start one run on that run root. The trigger is reactive: after firing it
    ignores further events until its window ends, so the retrain reads every failure from storage rather
    than counting events."""
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    settings = load_config(config_file(config_name)).retrain
    return DeploymentEventTrigger(
        name="failures-recorded",
        expect={FAILURES_RECORDED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        for_each={RUN_ROOT_LABEL},
        posture=Posture.Reactive,
        threshold=settings.trigger_events,
        within=timedelta(seconds=settings.trigger_window_s),
        parameters={"config_name": config_name, "run_root": "{{ event.resource['" + RUN_ROOT_LABEL + "'] }}"},
    )
