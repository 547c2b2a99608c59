"""Waiting for deployment runs through the Prefect API while a served worker runs them
(``deployments.serving``): one run this process started, or the runs a trigger started.

A run started by an event trigger is found, never started here: Prefect records the automation that
created a flow run (``created_by``, type ``AUTOMATION``, named after the trigger), so the runs of a
deployment that an automation created after a given moment are the ones the event caused. Every wait
checks that the worker still runs, and an error ends with the tail of the worker's log.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.errors import UserFacingError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

START_WAIT_S = 600.0
"""How long a deployment run may wait for the worker to start it."""
POLL_S = 1.0
LOG_TAIL_CHARS = 3000
AUTOMATION = "AUTOMATION"
COMPLETED = "COMPLETED"

Progress = Callable[[str], None]


class DeploymentRunError(UserFacingError, RuntimeError):
    """A deployment run did not end as it must, or its worker died; the message says what and shows the
    end of the worker's log."""


@dataclass(frozen=True)
class RunOutcome:
    """A deployment run as the API recorded it when it ended."""

    name: str
    flow_run_id: str
    state: str
    """The final state's type (``COMPLETED``, ``FAILED``, ``CRASHED``, …)."""
    message: str | None
    started_by: str
    """Who made the run: the given starter, ``trigger <automation>``, ``schedule`` or ``a user``."""
    created: datetime
    """When the server created the run (its clock)."""

    def summary(self) -> dict[str, Any]:
        return {
            "flow_run": self.name,
            "id": self.flow_run_id,
            "state": self.state,
            "started_by": self.started_by,
        }


class RunWatcher:
    """Waits for deployment runs that ``worker`` (a process worker, its output in ``log_path``) runs."""

    def __init__(self, worker: subprocess.Popen[bytes], log_path: Path) -> None:
        self.worker, self.log_path = worker, log_path

    def failure(self, message: str) -> DeploymentRunError:
        """``message`` with the end of the worker's log."""
        try:
            tail = self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            tail = "(no log)"
        return DeploymentRunError(f"{message}\nthe end of the worker's log {self.log_path}:\n{tail}")

    def _check_worker(self, what: str) -> None:
        code = self.worker.poll()
        if code is not None:
            raise self.failure(f"the worker exited with code {code} while waiting for {what}")

    def wait(self, flow_run_id: uuid.UUID, what: str, started_by: str) -> RunOutcome:
        """Wait until the run ends (in any final state); an error when the worker dies or has not started
        it within :data:`START_WAIT_S`."""
        from prefect.client.orchestration import get_client

        waited = time.monotonic()
        with get_client(sync_client=True) as client:
            while True:
                current = client.read_flow_run(flow_run_id)
                state = current.state
                if state is not None and state.is_final():
                    return outcome(current, started_by)
                self._check_worker(what)
                not_started = state is None or state.is_scheduled() or state.is_pending()
                if not_started and time.monotonic() - waited > START_WAIT_S:
                    raise self.failure(f"the worker did not start {what} within {START_WAIT_S:.0f} s")
                time.sleep(POLL_S)

    def wait_triggered(
        self, deployment_name: str, after: datetime, since: datetime, wait_s: float, progress: Progress
    ) -> list[RunOutcome]:
        """The runs of ``deployment_name`` that an automation created after ``after`` (at least one must
        appear within ``wait_s``) and any other started since ``since`` (one queued behind it, a scheduled
        one), oldest first, once all ended; an error naming each that did not complete."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + wait_s
        announced: set[uuid.UUID] = set()
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(deployment_name)
            while True:
                runs = _runs_since(client, deployment.id, after, since)
                for run in runs:
                    if run.id not in announced:
                        announced.add(run.id)
                        progress(f"{deployment_name}: run {run.name}, started by {started_by(run)}")
                if not any(_by_automation(run) for run in runs):
                    self._check_worker(f"a run of {deployment_name} started by its trigger")
                    if time.monotonic() > deadline:
                        raise self.failure(
                            f"no run of {deployment_name} was triggered within {wait_s:.0f} s: see the "
                            "deployment's trigger and the automations in the UI (Automations)"
                        )
                elif all(run.state is not None and run.state.is_final() for run in runs):
                    ended = [outcome(run, started_by(run)) for run in runs]
                    failed = [run for run in ended if run.state != COMPLETED]
                    if failed:
                        raise self.failure(
                            "; ".join(
                                f"the run {run.name} ended {run.state}: {run.message}" for run in failed
                            )
                        )
                    return ended
                else:
                    self._check_worker(f"the runs of {deployment_name}")
                time.sleep(POLL_S)


def _by_automation(run: FlowRun) -> bool:
    return run.created_by is not None and run.created_by.type == AUTOMATION


def _runs_since(client: Any, deployment_id: uuid.UUID, after: datetime, since: datetime) -> list[FlowRun]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    chosen = [
        run
        for run in runs
        if (_by_automation(run) and run.created >= after)
        or (run.start_time is not None and run.start_time >= since)
    ]
    return sorted(chosen, key=lambda run: run.created)


def started_by(run: FlowRun) -> str:
    """``trigger <automation name>``, ``schedule`` or ``a user`` (the API, the UI, ``run_deployment``)."""
    if _by_automation(run):
        return f"trigger {run.created_by.display_value}"  # type: ignore[union-attr]
    return "schedule" if run.auto_scheduled else "a user"


def outcome(run: FlowRun, starter: str) -> RunOutcome:
    state = run.state
    return RunOutcome(
        name=run.name,
        flow_run_id=str(run.id),
        state=state.type.value if state is not None else "UNKNOWN",
        message=state.message if state is not None else None,
        started_by=starter,
        created=run.created,  # type: ignore[arg-type]
    )
