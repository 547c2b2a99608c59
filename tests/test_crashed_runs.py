"""A run whose worker died is marked Crashed through its heartbeats, and a crashed retrain is retried.

The fast tests check the heartbeat settings, which events the two automations of ``deployments.crashes``
answer (Prefect's own server-side trigger matching, on events built the way Prefect's engine and server
build them), their registration on the test server (idempotent, in place), the retrain deployment's tag
and the worker's environment. The slow test is the killed-worker scenario on a real ``prefect server
start`` with real process workers: a retrain deployment run is SIGKILLed with its worker, the crash
automation marks it Crashed, the retry automation schedules it again and a second worker completes it.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prefect import flow

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.deployments.crashes import (
    CRASH_AUTOMATION,
    CRASH_RETRIES,
    RETRY_AUTOMATION,
    RETRY_STATE_NAME,
    crash_automation,
    crashed_message,
    register_crash_automations,
    retried_message,
    retry_automation,
)
from ragdistill.deployments.register import runner_deployments
from ragdistill.deployments.specs import DEPLOYMENTS, RETRY_CRASHED_TAG, TAGS, deployment_tags
from ragdistill.orchestration.heartbeats import (
    CRASH_AFTER_ENV,
    HEARTBEAT_FREQUENCY_ENV,
    LEGACY_HEARTBEAT_FREQUENCY_ENV,
    HeartbeatSettingError,
    HeartbeatSettings,
)
from ragdistill.stages.retrain import LAST_DECISION_FILE, read_watermark
from test_loop import made_by_a_pipeline
from test_orchestration_faults import collect, kill_process_tree, wait_until
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_retrain import base_rollout, collect_config
from test_stages import PolicyDouble

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SOURCES = REPO / "src"


def test_heartbeat_settings_default_to_prefects_and_refuse_a_silence_shorter_than_two_heartbeats() -> None:
    assert HeartbeatSettings.from_environment({}) == HeartbeatSettings(180, 540)
    assert HeartbeatSettings.from_environment({HEARTBEAT_FREQUENCY_ENV: "30"}) == HeartbeatSettings(30, 90)
    assert HeartbeatSettings.from_environment({LEGACY_HEARTBEAT_FREQUENCY_ENV: "60"}) == HeartbeatSettings(
        60, 180
    )
    tuned = HeartbeatSettings.from_environment({HEARTBEAT_FREQUENCY_ENV: "30", CRASH_AFTER_ENV: "60"})
    assert tuned == HeartbeatSettings(30, 60)
    assert tuned.worker_environment() == {HEARTBEAT_FREQUENCY_ENV: "30"}
    with pytest.raises(
        HeartbeatSettingError, match=f"{HEARTBEAT_FREQUENCY_ENV} must be .* at least 30, not '10'"
    ):
        HeartbeatSettings.from_environment({HEARTBEAT_FREQUENCY_ENV: "10"})
    with pytest.raises(
        HeartbeatSettingError, match=f"{CRASH_AFTER_ENV} must be a whole number .* not 'soon'"
    ):
        HeartbeatSettings.from_environment({CRASH_AFTER_ENV: "soon"})
    for frequency, crash_after in (("60", "60"), ("30", "45")):
        with pytest.raises(
            HeartbeatSettingError,
            match=f"{CRASH_AFTER_ENV} \\({crash_after} s\\) must be at least 2 heartbeat",
        ):
            HeartbeatSettings.from_environment(
                {HEARTBEAT_FREQUENCY_ENV: frequency, CRASH_AFTER_ENV: crash_after}
            )


def server_trigger(automation: Any) -> Any:
    """The automation's trigger as Prefect's server evaluates it."""
    from prefect.server.events.schemas.automations import EventTrigger

    return EventTrigger.model_validate(automation.trigger.model_dump(mode="json"))


def deployment_run(tags: list[str], deployed: bool = True) -> SimpleNamespace:
    """A flow run as Prefect's server and engine read one: a run of a deployment carries its tags."""
    flow_ = SimpleNamespace(id=uuid.uuid4(), name="retrain", tags=[])
    deployment = SimpleNamespace(id=uuid.uuid4(), name="ragdistill", tags=tags) if deployed else None
    return SimpleNamespace(
        id=uuid.uuid4(),
        name="crimson-fox",
        tags=tags,
        flow=flow_,
        flow_id=flow_.id,
        deployment=deployment,
        deployment_id=deployment.id if deployment else None,
    )


def heartbeat(run: SimpleNamespace) -> Any:
    """The heartbeat event Prefect's flow engine sends for ``run``."""
    from prefect.flow_engine import FlowRunEngine
    from prefect.server.events.schemas.events import ReceivedEvent

    engine = SimpleNamespace(flow_run=run, flow=run.flow)
    resource, related = FlowRunEngine._build_heartbeat_event_template(engine)  # type: ignore[arg-type]
    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event="prefect.flow-run.heartbeat",
        resource=resource,
        related=[dict(item) for item in related],
        id=uuid.uuid4(),
    )


def state_change(run: SimpleNamespace, state_type: str, state_name: str, run_count: int) -> Any:
    """The state-change event Prefect's server emits for ``run``."""
    from prefect.server.events.schemas.events import ReceivedEvent
    from prefect.server.models.events import _as_resource_data, _resource_data_as_related_resources

    data = _as_resource_data(run, run.flow, run.deployment, None, None)  # type: ignore[arg-type]
    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event=f"prefect.flow-run.{state_name}",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run.id}",
            "prefect.resource.name": run.name,
            "prefect.run-count": str(run_count),
            "prefect.state-name": state_name,
            "prefect.state-type": state_type,
        },
        related=_resource_data_as_related_resources(data, excluded_kinds=["flow-run"]),
        id=uuid.uuid4(),
    )


def test_the_crash_automation_watches_the_heartbeats_of_the_projects_runs_as_prefects_guide_does() -> None:
    settings = HeartbeatSettings(30, 75)
    automation = crash_automation(settings)
    trigger = server_trigger(automation)
    assert trigger.posture == "Proactive" and trigger.threshold == 1
    assert trigger.within == timedelta(seconds=75) and trigger.for_each == {"prefect.resource.id"}
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    (action,) = automation.actions
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"
    assert action.message == crashed_message(settings) and "75 s" in action.message

    project_run = deployment_run(list(TAGS))
    assert trigger.starts_after(heartbeat(project_run).event) and trigger.covers(heartbeat(project_run))
    for state_type, name in (("RUNNING", "Running"), ("COMPLETED", "Completed"), ("FAILED", "Failed")):
        assert trigger.covers(state_change(project_run, state_type, name, 1)), f"{name} ends the silence"
    other_project = deployment_run(["etl"])
    assert not trigger.covers(heartbeat(other_project)), "another project's runs are not its to judge"


def test_the_retry_automation_reschedules_a_crashed_run_of_a_tagged_deployment_at_most_twice() -> None:
    automation = retry_automation()
    trigger = server_trigger(automation)
    assert trigger.posture == "Reactive" and trigger.immediate
    (action,) = automation.actions
    assert (action.state.value, action.name) == ("SCHEDULED", RETRY_STATE_NAME)
    assert action.message == retried_message() and not action.force

    retrain_run = deployment_run([*TAGS, RETRY_CRASHED_TAG])
    for count in range(1, CRASH_RETRIES + 1):
        assert trigger.covers(state_change(retrain_run, "CRASHED", "Crashed", count))
    assert not trigger.covers(state_change(retrain_run, "CRASHED", "Crashed", CRASH_RETRIES + 1)), (
        "retries spent"
    )
    assert not trigger.covers(state_change(retrain_run, "CRASHED", "Crashed", 0)), (
        "never started: not a crash of it"
    )
    assert not trigger.covers(state_change(retrain_run, "FAILED", "Failed", 1)), "a failure is not retried"
    assert not trigger.covers(state_change(deployment_run(list(TAGS)), "CRASHED", "Crashed", 1)), "untagged"
    in_process = deployment_run([*TAGS, RETRY_CRASHED_TAG], deployed=False)
    assert not trigger.covers(state_change(in_process, "CRASHED", "Crashed", 1)), "no deployment to run it"


def test_only_the_retrain_deployment_carries_the_retry_tag() -> None:
    tagged = {spec.flow for spec in DEPLOYMENTS if RETRY_CRASHED_TAG in deployment_tags(spec)}
    assert tagged == {"ragdistill.flows.retrain.retrain_flow"}
    by_name = {deployment.flow_name: deployment.tags for deployment in runner_deployments()}
    assert by_name["retrain"] == [*TAGS, RETRY_CRASHED_TAG] and by_name["collect"] == TAGS


def test_the_worker_gives_its_flow_runs_the_heartbeat_period_the_automation_was_sized_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ragdistill.orchestration import worker

    started: list[dict[str, str]] = []
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setattr(worker.subprocess, "Popen", lambda command, **kwargs: started.append(kwargs["env"]))
    monkeypatch.delenv(HEARTBEAT_FREQUENCY_ENV, raising=False)
    worker.start_worker("http://127.0.0.1:1/api")
    monkeypatch.setenv(HEARTBEAT_FREQUENCY_ENV, "45")
    worker.start_worker("http://127.0.0.1:1/api")
    assert [env[HEARTBEAT_FREQUENCY_ENV] for env in started] == ["180", "45"]


def automations_named(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def test_registering_the_crash_automations_again_updates_them_in_place_and_keeps_a_pause(
    prefect_server: None,
) -> None:
    from prefect.client.orchestration import get_client

    for name in (CRASH_AUTOMATION, RETRY_AUTOMATION):
        for automation in automations_named(name):
            with get_client(sync_client=True) as client:
                client.delete_automation(automation.id)
    first = register_crash_automations(HeartbeatSettings(30, 75))
    assert first == {CRASH_AUTOMATION: "created", RETRY_AUTOMATION: "created"}
    assert register_crash_automations(HeartbeatSettings(30, 75)) == {
        CRASH_AUTOMATION: "unchanged",
        RETRY_AUTOMATION: "unchanged",
    }
    (crash,) = automations_named(CRASH_AUTOMATION)
    with get_client(sync_client=True) as client:
        client.pause_automation(crash.id)
        client.create_automation(retry_automation())  # a duplicate, e.g. from a racing registration
    again = register_crash_automations(HeartbeatSettings(60, 180))
    assert again == {CRASH_AUTOMATION: "updated", RETRY_AUTOMATION: "updated"}
    (updated,) = automations_named(CRASH_AUTOMATION)
    assert updated.id == crash.id and updated.trigger.within == timedelta(seconds=180)
    assert not updated.enabled, "an automation the operator paused stays paused"
    assert len(automations_named(RETRY_AUTOMATION)) == 1


class GatedAgentDouble(PolicyDouble):
    """The policy double; every request is logged to ``log`` (its kind and process) and an agent's
    request (hint extraction asks for JSON, an agent does not) waits until the file ``gate`` exists."""

    def __init__(self, gate: str, log: str) -> None:
        super().__init__("wait")
        self.gate, self.log = Path(gate), Path(log)

    def generate(self, requests: list[Any]) -> list[Any]:
        with self.log.open("a") as out:
            for request in requests:
                kind = "extract" if request.json_schema is not None else "act"
                out.write(json.dumps({"pid": os.getpid(), "kind": kind}) + "\n")
        if any(request.json_schema is None for request in requests):
            while not self.gate.exists():
                time.sleep(0.2)
        return super().generate(requests)


@flow(name="retrain-with-gated-doubles")
def retrain_with_gated_doubles(run_root: str, gate: str, request_log: str) -> dict[str, Any]:
    """The retrain flow's body, with the run root's models replaced by the gated double: a double reaches
    the flow-run process a worker starts only through a flow of the test's own."""
    from ragdistill.flows.loop_config import recorded_config
    from ragdistill.flows.retrain import retrain_flow
    from ragdistill.inference import shared

    config = recorded_config(run_root)
    double = GatedAgentDouble(gate, request_log)
    for role in (config.models.agent, config.models.extractor):
        shared._BACKENDS[shared._key(role)] = double
    return retrain_flow.fn(run_root=run_root)  # type: ignore[no-any-return]


def logged_requests(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_history(flow_run_id: uuid.UUID) -> tuple[Any, list[Any]]:
    """The flow run and its states, oldest first."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
        return client.read_flow_run(flow_run_id), sorted(states, key=lambda state: state.timestamp)


HEARTBEAT_S = 30
"""Prefect's shortest heartbeat period: the fastest the crash can be seen."""
CRASH_AFTER_S = 3 * HEARTBEAT_S
"""The product's default margin, three periods. One and a half (45 s) once marked a live run Crashed on a
loaded CI machine: a heartbeat came late, the retry automation scheduled the run again and a worker had it
Pending while its first process still asked the model."""


@pytest.mark.slow
def test_a_retrain_killed_with_its_worker_is_marked_crashed_by_its_heartbeats_and_retried_to_completion(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The project's deployments and automations registered on a real server (heartbeat every 30 s, a
    run silent for 90 s is crashed); a deployment tagged like the retrain, with its concurrency limit,
    runs the retrain flow's body (models: the gated double) on a process worker. Once its mining is done
    and its teacher waits on the model, the worker and the run's process are SIGKILLed. Nobody touches
    the run's state: the crash automation marks it Crashed, the retry automation schedules it again, a
    second worker runs it to Completed. The retried process asks the extractor nothing (mining resumed
    from what it stored) and generation 1 consumes every stored failure once."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments import run_deployment
    from prefect.deployments.runner import RunnerDeployment

    from ragdistill.deployments.register import register_deployments
    from ragdistill.deployments.specs import RETRAIN_CONCURRENCY_LIMIT, DeploymentPlan
    from ragdistill.orchestration.server import prefect_api
    from ragdistill.orchestration.worker import WORK_POOL, start_worker, stop_worker

    monkeypatch.setenv(HEARTBEAT_FREQUENCY_ENV, str(HEARTBEAT_S))
    monkeypatch.setenv(CRASH_AFTER_ENV, str(CRASH_AFTER_S))
    config = collect_config(
        tmp_path, **{"retrieval.retriever": "bm25", "evaluation.limit": 2, "evaluation.split": "test"}
    )
    config_path = tmp_path / "retrain.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store = made_by_a_pipeline(config)
    base_rollout(config, PolicyDouble("wait"))
    for _ in range(2):
        collect(config, PolicyDouble("wait"))
    gate, request_log = tmp_path / "gate", tmp_path / "requests.jsonl"
    python_path = os.pathsep.join([str(SOURCES), str(TESTS), os.environ.get("PYTHONPATH", "")])
    worker_environment = {"PREFECT_WORKER_QUERY_SECONDS": "1", "PYTHONPATH": python_path}
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    (retrain_spec,) = [spec for spec in DEPLOYMENTS if spec.retry_crashed]

    with prefect_api(timeout_s=600) as api_url:
        register_deployments(DeploymentPlan(str(config_path)), working_dir=REPO)
        deployment = RunnerDeployment.from_flow(
            retrain_with_gated_doubles,
            name="killed-worker",
            parameters={"run_root": store.root_url, "gate": str(gate), "request_log": str(request_log)},
            work_pool_name=WORK_POOL,
            tags=deployment_tags(retrain_spec),
            concurrency_limit=ConcurrencyLimitConfig(
                limit=RETRAIN_CONCURRENCY_LIMIT, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        )
        deployment.apply(work_pool_name=WORK_POOL)
        run = run_deployment(deployment.full_name, timeout=0)
        with logs[0].open("wb") as out:
            worker = start_worker(api_url, output=out, environment=worker_environment)
        try:
            wait_until(
                lambda: (
                    any(r["kind"] == "act" for r in logged_requests(request_log)) or worker.poll() is not None
                ),
                300,
                "the retrain's teacher to ask the model",
            )
            assert worker.poll() is None, logs[0].read_text(errors="replace")[-4000:]
            killed_at = datetime.now(UTC)
            assert kill_process_tree(worker.pid) >= 2, "the worker and the run's process"
        finally:
            if worker.poll() is None:
                stop_worker(worker)
            worker.wait()
        first_attempt = logged_requests(request_log)
        assert {r["kind"] for r in first_attempt} == {"extract", "act"}, first_attempt
        flow_run, states = run_history(run.id)
        assert flow_run.state.type.value == "RUNNING", (
            "the server still believes it runs",
            [(state.type.value, state.name, state.timestamp.isoformat()) for state in states],
        )

        gate.touch()
        with logs[1].open("wb") as out:
            worker = start_worker(api_url, output=out, environment=worker_environment)
        try:
            finished = ("COMPLETED", "FAILED", "CANCELLED")
            wait_until(
                lambda: run_history(run.id)[0].state.type.value in finished, 420, "the retried run to end"
            )
        finally:
            stop_worker(worker)
        flow_run, states = run_history(run.id)
        runs_of_deployment = run_deployment_runs(deployment.full_name)

    history = [(state.type.value, state.name) for state in states]
    worker_log = logs[1].read_text(errors="replace")[-4000:]
    assert flow_run.state.type.value == "COMPLETED", (history, worker_log)
    assert flow_run.run_count == 2 and runs_of_deployment == [run.id], "the same run, retried once"
    crashed_index = history.index(("CRASHED", "Crashed"))
    crashed, retried = states[crashed_index], states[crashed_index + 1]
    assert history[crashed_index - 1] == ("RUNNING", "Running"), history
    assert crashed.message == crashed_message(HeartbeatSettings(HEARTBEAT_S, CRASH_AFTER_S)), crashed.message
    assert crashed.timestamp > killed_at, "marked Crashed after the kill, not before"
    assert (retried.type.value, retried.name, retried.message) == (
        "SCHEDULED",
        RETRY_STATE_NAME,
        retried_message(),
    )
    assert history[crashed_index + 2 :][-2:] == [("RUNNING", "Running"), ("COMPLETED", "Completed")], history
    print(
        f"crashed {(crashed.timestamp - killed_at).total_seconds():.0f} s after the kill; states: {history}"
    )

    retried_requests = logged_requests(request_log)[len(first_attempt) :]
    first_pids = {r["pid"] for r in first_attempt}
    assert retried_requests and all(r["pid"] not in first_pids for r in retried_requests)
    assert {r["kind"] for r in retried_requests} == {"act"}, "mining resumed from what it stored"
    decision = store.read_json(LAST_DECISION_FILE)
    assert decision["generation"] == 1 and decision["new_failures"] == 4, decision
    watermark = read_watermark(store)
    assert watermark.generation == 1 and sum(len(ids) for ids in watermark.consumed.values()) == 4


def run_deployment_runs(deployment_name: str) -> list[uuid.UUID]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    name = deployment_name.split("/")[1]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        )
    return [flow_run.id for flow_run in runs]
