"""Failure events fire the retrain deployment through a real server's trigger and a real process worker.

Its own file, named to run before any test that starts Prefect's session-wide test harness
(`prefect_server` in conftest.py): once the harness ran in this process, events emitted here never reach
another server's triggers, even with that server's URL in a settings context (measured: the run never
appears). Run alone, or before test_pipeline_flow.py, it passes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config.stages import PipelineSettings
from ragdistill.stages.retrain import LAST_DECISION_FILE, WATERMARK_FILE
from ragdistill.store import ArtifactStore
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_retrain import collect, collect_config
from test_stages import PolicyDouble

REPO = Path(__file__).resolve().parents[1]


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
def test_failure_events_trigger_one_retrain_which_skips_below_the_threshold(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from ragdistill.deployments.register import register_deployments
    from ragdistill.deployments.specs import DEPLOYMENT_NAME
    from ragdistill.events import emit_failures_recorded
    from ragdistill.orchestration.server import prefect_api
    from ragdistill.orchestration.worker import start_worker, stop_worker

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
    log_tail = worker_log.read_text(errors="replace")[-4000:]
    assert len(runs) == 1, f"exactly one retrain for both batches of events: {runs}\n{log_tail}"
    (run,) = runs
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log_tail}"
    assert run.parameters["run_root"] == ArtifactStore(config.run.run_root).root_url
    decision = ArtifactStore(config.run.run_root).read_json(LAST_DECISION_FILE)
    assert decision["new_failures"] == 2 and "fewer than retrain.min_failures (50)" in decision["skipped"]
    assert not ArtifactStore(config.run.run_root).exists(WATERMARK_FILE), "a skip never moves the watermark"
