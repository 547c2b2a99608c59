"""The retrain deployment's event trigger: a ``ragdistill.retrain.due`` event (``ragdistill.events``) starts
one retrain of the event's run root.

The collect that brings the failures stored since the watermark to the run root's ``retrain.min_failures``
emits that event (why the collect decides and not the trigger: ``ragdistill.events``), so the trigger
fires on every event (threshold 1, no window, one bucket per run root). A second event while a retrain
runs queues a run behind it (the deployment's concurrency limit 1), which reads storage afresh and
retrains the failures the first one did not consume, or records why not. The run gets the event's run
root and no config (``config_name`` null over any deployment default), so it uses the config stored in
that run root (``flows.loop_config``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ragdistill.events import LOOP_RESOURCE_PREFIX, RETRAIN_DUE, RUN_ROOT_LABEL


def retrain_trigger() -> Any:
    """The trigger described in the module docstring."""
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.automations import Posture

    return DeploymentEventTrigger(
        name="retrain-due",
        expect={RETRAIN_DUE},
        match={"prefect.resource.id": f"{LOOP_RESOURCE_PREFIX}*"},
        for_each={RUN_ROOT_LABEL},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
        parameters={"config_name": None, "run_root": "{{ event.resource['" + RUN_ROOT_LABEL + "'] }}"},
    )
