"""A collect's retrain-due event fires the retrain deployment through a real server's trigger and a real
process worker, and the triggered retrain runs with its run root's config, not the deployed one.

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
from ragdistill.orchestration.server import API_URL_ENV, HOME_ENV
from ragdistill.stages.retrain import LAST_DECISION_FILE, WATERMARK_FILE
from test_loop import collect_config, inject_agent, made_by_a_pipeline
from test_stages import PolicyDouble

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCENARIO_CHILD = """
import sys
from pathlib import Path
from test_events_trigger import a_collect_triggers_one_retrain
a_collect_triggers_one_retrain(Path(sys.argv[1]))
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
def test_the_collect_that_reaches_the_threshold_triggers_one_retrain_with_the_run_roots_config(
    tmp_path: Path,
) -> None:
    """Two collect flows (2 failures each, threshold 3) on a run root whose deployments were made from
    another config: the first starts no retrain, the second's retrain-due event starts exactly one, which
    runs with the run root's stored config and reads the failures from storage."""
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


def a_collect_triggers_one_retrain(tmp_path: Path) -> None:
    """The scenario, run in a child process whose Prefect home is empty (see the module docstring).

    The deployments are registered from a config with another ``agent.max_calls`` (a stage setting) on
    the same run root, as a deploy-time default that the run root was not made with: a retrain run with
    it would stop with RunRootMismatch. Between the due event and the triggered run, the run root's
    stored config raises ``retrain.min_failures`` to 50 (as a pipeline re-run with that setting would), so
    the run completes without loading a model, and its decision shows which config and failures it read."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ragdistill.config import with_overrides
    from ragdistill.deployments.register import register_deployments
    from ragdistill.deployments.specs import DEPLOYMENT_NAME, DeploymentPlan
    from ragdistill.flows.retrain import collect_flow
    from ragdistill.orchestration.server import prefect_api, stop_server
    from ragdistill.orchestration.worker import start_worker, stop_worker

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = collect_config(tmp_path)
    store = made_by_a_pipeline(config)
    deployed = with_overrides(config, {"agent.max_calls": 5})
    deployed_path = tmp_path / "deployed.yaml"
    deployed_path.write_text(yaml.safe_dump(deployed.model_dump(mode="json")))
    retrain = f"retrain/{DEPLOYMENT_NAME}"
    worker_log = tmp_path / "worker.log"
    try:
        with prefect_api(timeout_s=600) as api_url, temporary_settings(updates={PREFECT_API_URL: api_url}):
            register_deployments(DeploymentPlan(str(deployed_path)), working_dir=REPO)
            with worker_log.open("wb") as log:
                worker = start_worker(api_url, output=log, environment={"PREFECT_WORKER_QUERY_SECONDS": "1"})
                try:
                    inject_agent(config, PolicyDouble("wait"))
                    first = collect_flow(run_root=config.run.run_root)
                    assert first["loop"]["pending_failures"] == 2 and not first["loop"]["retrain_due"]
                    time.sleep(5)
                    assert flow_runs(retrain) == [], "2 stored failures are below retrain.min_failures (3)"
                    inject_agent(config, PolicyDouble("wait"))
                    second = collect_flow(run_root=config.run.run_root)
                    assert second["loop"]["retrain_due"] is True
                    made_by_a_pipeline(with_overrides(config, {"retrain.min_failures": 50}))
                    wait_for(lambda: flow_runs(retrain), 240, "the triggered retrain run")
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
    assert len(runs) == 1, f"exactly one retrain for one due event: {runs}\n{log_tail}"
    (run,) = runs
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log_tail}"
    assert run.parameters == {"config_name": None, "run_root": store.root_url}
    decision = store.read_json(LAST_DECISION_FILE)
    assert decision["new_failures"] == 4 and decision["min_failures"] == 50, decision
    assert "fewer than retrain.min_failures (50)" in decision["skipped"]
    assert not store.exists(WATERMARK_FILE), "a skip never moves the watermark"
