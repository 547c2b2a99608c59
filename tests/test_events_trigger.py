"""Failure events fire the retrain deployment through a real server's trigger and a real process worker.

The scenario runs in a child process with a Prefect home of its own, so its own ``prefect server start``:
once Prefect's session-wide test harness (``prefect_server`` in conftest.py) has run in a process, events
emitted from that process never reach another server's triggers, even with that server's URL in a
settings context (measured: the run never appears). In the pytest process the outcome would depend on
which tests ran before; in a fresh one it does not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config.stages import PipelineSettings
from ragdistill.orchestration.server import API_URL_ENV, HOME_ENV
from ragdistill.stages.retrain import LAST_DECISION_FILE, WATERMARK_FILE
from ragdistill.store import ArtifactStore
from test_retrain import collect, collect_config
from test_stages import PolicyDouble

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCENARIO_CHILD = """
import sys
from pathlib import Path
from test_events_trigger import failure_events_trigger_one_retrain
failure_events_trigger_one_retrain(Path(sys.argv[1]))
print("SCENARIO PASSED")
"""


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def flow_runs(deployment_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )


@pytest.mark.slow
def test_failure_events_trigger_one_retrain_which_skips_below_the_threshold(tmp_path: Path) -> None:
    """Three failure events inside the window start one retrain run (two do not); three more inside the
    window start no second one; the run reads storage and records a skip below retrain.min_failures."""
    environment = {key: value for key, value in os.environ.items() if key != API_URL_ENV}
    environment[HOME_ENV] = str(tmp_path / "prefect-home")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH")])
    )
    child = subprocess.run(
        [sys.executable, "-c", SCENARIO_CHILD, str(tmp_path / "scenario")],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    output = f"{child.stdout[-3000:]}\n{child.stderr[-6000:]}"
    assert child.returncode == 0 and "SCENARIO PASSED" in child.stdout, output


def failure_events_trigger_one_retrain(tmp_path: Path) -> None:
    """The scenario, run in a child process whose Prefect home is empty (see the module docstring)."""
    from ragdistill.deployments.register import register_deployments
    from ragdistill.deployments.specs import DEPLOYMENT_NAME
    from ragdistill.events import emit_failures_recorded
    from ragdistill.orchestration.server import prefect_api, stop_server
    from ragdistill.orchestration.worker import start_worker, stop_worker

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = collect_config(
        tmp_path, **{"retrain.min_failures": 50, "retrain.trigger_events": 3, "retrain.trigger_window_s": 600}
    )
    ctx = PipelineSettings.from_experiment(config).ctx
    batch, _ = collect(config, PolicyDouble("wait"))
    config_path = tmp_path / "retrain.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    retrain = f"retrain/{DEPLOYMENT_NAME}"
    worker_log = tmp_path / "worker.log"

    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with prefect_api(timeout_s=600) as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
            register_deployments(str(config_path), working_dir=REPO)
            with worker_log.open("wb") as log:
                worker = start_worker(api_url, output=log, environment={"PREFECT_WORKER_QUERY_SECONDS": "1"})
                try:
                    for _ in range(2):
                        emit_failures_recorded(ctx.run_root, ctx.run_name, batch.stage, 2)
                    time.sleep(5)
                    assert flow_runs(retrain) == [], "two events are below the trigger's threshold of three"
                    emit_failures_recorded(ctx.run_root, ctx.run_name, batch.stage, 2)
                    (run,) = wait_for(lambda: flow_runs(retrain), 240, "the triggered retrain run")
                    for _ in range(3):  # a second batch inside the window
                        emit_failures_recorded(ctx.run_root, ctx.run_name, batch.stage, 2)
                    wait_for(
                        lambda: all(r.state is not None and r.state.is_final() for r in flow_runs(retrain)),
                        300,
                        "the retrain run to finish",
                    )
                    time.sleep(5)
                    runs = flow_runs(retrain)
                finally:
                    stop_worker(worker)
    finally:
        stop_server()
    log_tail = worker_log.read_text(errors="replace")[-4000:]
    assert len(runs) == 1, f"exactly one retrain for both batches of events: {runs}\n{log_tail}"
    (run,) = runs
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log_tail}"
    assert run.parameters["run_root"] == ArtifactStore(config.run.run_root).root_url
    decision = ArtifactStore(config.run.run_root).read_json(LAST_DECISION_FILE)
    assert decision["new_failures"] == 2 and "fewer than retrain.min_failures (50)" in decision["skipped"]
    assert not ArtifactStore(config.run.run_root).exists(WATERMARK_FILE), "a skip never moves the watermark"
