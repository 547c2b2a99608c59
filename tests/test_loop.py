"""The retraining loop's inputs and outputs: which config a collect or retrain runs with, the refusals
(no pipeline, another config, a collect on the pipeline's or evaluation's tasks), the retrain-due event
on the stored failure count, the ``loop-status`` artifact and ``ragdistill loop status``.

Counter-double environment and policy doubles (tests/test_stages.py); the flow-level tests run on the
session's Prefect test server, with the double as the agent's shared backend, as tests/test_retrain.py
does.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import (
    ConfigError,
    ExperimentConfig,
    validate_config,
    validate_stored_config,
    with_overrides,
)
from ragdistill.config.run_root_match import settings_differences
from ragdistill.config.stages import PipelineSettings
from ragdistill.flows.loop_config import LoopInputError, RunRootMismatch, loop_config
from ragdistill.flows.run_requests import RUN_ROOT_PREFIX_ENV
from ragdistill.stages.collect import check_fresh_tasks, next_batch, run_collect
from ragdistill.stages.lifecycle import StageError
from ragdistill.stages.loop_status import loop_status
from ragdistill.stages.report import write_run_file
from ragdistill.stages.retrain import LAST_DECISION_FILE, RETRAIN_DIR
from ragdistill.store import ArtifactStore
from test_adapter_registry import evaluate, promote, student, write_upstream
from test_containment import audited
from test_operator_settings import REPO, create_run, finished, project_pool
from test_retrain import collect
from test_retrain import collect_config as retrain_config
from test_stages import PolicyDouble


def collect_config(tmp_path: Path, **overrides: object) -> ExperimentConfig:
    """tests/test_retrain.py's collect config, evaluated on its first two tasks: the counter double has the
    same tasks in every split, so an evaluation of all of them would leave a collect no fresh task."""
    return retrain_config(tmp_path, **{"evaluation.limit": 2, **overrides})


def made_by_a_pipeline(config: ExperimentConfig) -> ArtifactStore:
    """The run root of ``config`` as the pipeline leaves it for the loop: ``run.json`` holds the config."""
    store = ArtifactStore(config.run.run_root)
    write_run_file(store, "made-it", config.model_dump(mode="json"))
    return store


def config_file(tmp_path: Path, config: ExperimentConfig, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_a_loop_runs_with_its_run_roots_config_and_refuses_one_with_other_stage_settings(
    tmp_path: Path,
) -> None:
    made = collect_config(tmp_path)
    made_by_a_pipeline(made)
    root = made.run.run_root

    stored = loop_config(None, root)
    assert stored.model_dump(exclude={"run"}) == made.model_dump(exclude={"run"})
    assert stored.run.run_root == root

    elsewhere = with_overrides(made, {"env.workers": 2, "rollout.batch_size": 8, "retrain.min_failures": 9})
    how = loop_config(str(config_file(tmp_path, elsewhere, "how")), None)
    assert (how.env.workers, how.retrain.min_failures) == (2, 9), "where, how and the threshold may differ"

    deployed = with_overrides(made, {"agent.max_calls": 5, "env.limit": 3, "env.workers": 2})
    with pytest.raises(RunRootMismatch) as mismatch:
        loop_config(str(config_file(tmp_path, deployed, "deployed")), None)
    message = str(mismatch.value)
    assert "2 setting(s) differ" in message and "env.workers" not in message
    assert "agent.max_calls: 4 on the run root, 5 here (changes rollouts/base" in message
    assert "env.limit: 2 on the run root, 3 here" in message and "rollouts/collect-*" in message

    from ragdistill.flows.parameters import ExperimentOverrides

    overrides = ExperimentOverrides.model_validate({"agent": {"max_calls": 6}})
    with pytest.raises(RunRootMismatch, match=r"agent\.max_calls: 4 on the run root, 6 here"):
        loop_config(None, root, overrides)
    assert (
        loop_config(None, root, ExperimentOverrides.model_validate({"env": {"workers": 2}})).env.workers == 2
    )


def test_settings_differences_name_only_what_changes_a_stage() -> None:
    made = validate_config({})
    assert (
        settings_differences(made, with_overrides(made, {"retrain.min_failures": 2, "env.workers": 7})) == []
    )
    (line,) = settings_differences(made, with_overrides(made, {"collect.batch_size": 3}))
    assert line.startswith("collect.batch_size: 8 on the run root, 3 here (changes rollouts/collect-*)")
    (line,) = settings_differences(made, with_overrides(made, {"promotion.margin": 2.5}))
    assert line.endswith("(changes promotion)")


def test_a_collect_or_retrain_on_a_run_root_without_a_pipeline_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    from ragdistill.cli import app

    config = collect_config(tmp_path)
    with pytest.raises(LoopInputError, match="no pipeline has run on the run root"):
        loop_config(None, config.run.run_root)
    with pytest.raises(LoopInputError, match="which run root"):
        loop_config(None, None)
    for command in (
        ["collect", "--run-root", config.run.run_root],
        ["retrain", "-c", str(config_file(tmp_path, config, "c"))],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert (
            "no pipeline has run on the run root" in result.output and "ragdistill pipeline" in result.output
        )
    assert not Path(tmp_path / "run").exists(), "nothing is written"


def test_a_collect_batch_never_plays_the_pipelines_or_the_evaluations_tasks(tmp_path: Path) -> None:
    on_base = collect_config(tmp_path, **{"collect.start": 1})
    stages = PipelineSettings.from_experiment(on_base)
    with pytest.raises(StageError, match=r"would play 1 task\(s\) that rollouts/base plays too \(t1\)"):
        check_fresh_tasks(stages.ctx, stages.collect(0), stages.reserved_tasks())

    on_eval = collect_config(tmp_path, **{"evaluation.limit": 5})
    stages = PipelineSettings.from_experiment(on_eval)
    assert set(stages.reserved_tasks()) == {"rollouts/base", "rollouts/eval-*"}
    with pytest.raises(StageError, match=r"rollouts/eval-\* plays too \(t2, t3\)") as error:
        run_collect(stages.ctx, stages.collect(0), reserved=stages.reserved_tasks(), backend=PolicyDouble())
    assert "collect.start" in str(error.value) and "collect.split" in str(error.value)
    assert not ArtifactStore(on_eval.run.run_root).list("rollouts"), "refused before anything is written"

    expert = PipelineSettings.from_experiment(collect_config(tmp_path, **{"distill.teacher": "expert"}))
    assert "rollouts/expert" in expert.reserved_tasks()
    fresh = PipelineSettings.from_experiment(collect_config(tmp_path))
    check_fresh_tasks(fresh.ctx, fresh.collect(0), fresh.reserved_tasks())


def test_loop_status_reports_the_champion_the_pending_failures_and_the_threshold(tmp_path: Path) -> None:
    from ragdistill.cli import app

    config = collect_config(tmp_path)
    store = made_by_a_pipeline(config)
    collect(config, PolicyDouble("wait"))
    status = loop_status(store, 3)
    assert (status.champion, status.pending_failures, status.retrain_due) == (None, 2, False)

    write_upstream(store)
    evaluate(store, "base", 3)
    student(store, b"first-pipeline", wins=5)
    promote(config)
    collect(config, PolicyDouble("wait"))
    result = CliRunner().invoke(app, ["loop", "status", config.run.run_root])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert {key: summary[key] for key in ("champion", "pending_failures", "min_failures", "generation")} == {
        "champion": "v0001",
        "pending_failures": 4,
        "min_failures": 3,
        "generation": 0,
    }
    assert summary["retrain_due"] is True and summary["pending_by_batch"] == {
        "collect-0000": 2,
        "collect-0001": 2,
    }
    assert "champion: v0001 (distill student of the first pipeline" in result.output
    assert "last decision: none yet" in result.output

    empty = CliRunner().invoke(app, ["loop", "status", f"file://{tmp_path}/nothing"])
    assert empty.exit_code == 2 and "no pipeline has run" in empty.output


def test_a_config_stored_before_a_setting_retired_still_loads_and_a_file_naming_it_is_told_why(
    tmp_path: Path,
) -> None:
    stored = validate_config({}).model_dump(mode="json")
    stored["retrain"].update({"trigger_events": 3, "trigger_window_s": 3600.0})
    assert validate_stored_config(stored, "run.json").retrain.min_failures == 8
    with pytest.raises(
        ConfigError, match=r"retrain\.trigger_events: no longer a setting: the retrain trigger"
    ):
        validate_config(stored, "old.yaml")


def inject_agent(config: ExperimentConfig, double: PolicyDouble) -> None:
    """The double as the shared backend of the agent's engine, which the flows' stages reuse."""
    from ragdistill.inference import shared

    shared._BACKENDS[shared._key(config.models.agent)] = double


def loop_status_markdown(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["loop-status"]),
            )
        )
    return str(artifact.data)


def test_collect_emits_retrain_due_once_the_stored_failures_reach_the_threshold_and_updates_the_status(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two collects of 2 failures each with retrain.min_failures 3: the first emits no retrain-due event,
    the second one with the stored count (4); each updates the loop-status artifact. A retrain with another
    config is refused before it records anything; one given only the run root uses the config stored there
    (its threshold, 50, after the run root's config changed it)."""
    from ragdistill.flows.retrain import collect_flow, retrain_flow

    config = collect_config(tmp_path)
    store = made_by_a_pipeline(config)
    due: list[tuple[Any, ...]] = []
    monkeypatch.setattr("ragdistill.tasks.collect.emit_retrain_due", lambda *args: due.append(args))
    states = []
    for _ in range(2):
        inject_agent(config, PolicyDouble("wait"))
        states.append(collect_flow(run_root=config.run.run_root, return_state=True))
    first, second = (state.result() for state in states)
    assert (first["batch"], first["failures"], first["loop"]["pending_failures"]) == ("collect-0000", 2, 2)
    assert second["loop"]["retrain_due"] is True and next_batch(store) == 2
    assert due == [(config.run.run_root, config.run.name, 4, 3, None)], "one event, carrying the stored count"
    assert "| failures pending | 2 |" in loop_status_markdown(states[0].state_details.flow_run_id)
    assert "| retrain due | yes |" in loop_status_markdown(states[1].state_details.flow_run_id)

    refused = with_overrides(config, {"agent.max_calls": 5})
    with pytest.raises(RunRootMismatch):
        retrain_flow(str(config_file(tmp_path, refused, "refused")))
    assert not store.exists(RETRAIN_DIR), "a refused retrain records nothing"

    with_threshold = with_overrides(config, {"retrain.min_failures": 50})
    made_by_a_pipeline(with_threshold)
    skipped = retrain_flow(run_root=config.run.run_root)
    assert "fewer than retrain.min_failures (50)" in skipped["skipped"] and skipped["champion"] is None
    assert store.read_json(LAST_DECISION_FILE)["min_failures"] == 50


def test_the_collect_and_retrain_commands_run_their_flows_on_the_run_roots_config(
    prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ragdistill collect` and `ragdistill retrain` as a user runs them, reporting to the session's test
    server through PREFECT_API_URL as `ragdistill pipeline` would; a config with other stage settings
    stops with exit 2 and the settings named, before any flow runs."""
    from prefect.settings import PREFECT_API_URL

    from ragdistill.cli import app
    from ragdistill.orchestration.server import API_URL_ENV

    config = collect_config(tmp_path)
    store = made_by_a_pipeline(config)
    monkeypatch.setenv(API_URL_ENV, str(PREFECT_API_URL.value()))
    monkeypatch.setattr("ragdistill.tasks.collect.emit_retrain_due", lambda *args: None)
    inject_agent(config, PolicyDouble("wait"))
    collected = CliRunner().invoke(app, ["collect", "--run-root", config.run.run_root])
    assert collected.exit_code == 0, collected.output
    line = json.loads(collected.output.splitlines()[-1])
    assert {key: line[key] for key in ("stage", "batch", "failures", "pending_failures", "min_failures")} == {
        "stage": "collect",
        "batch": "collect-0000",
        "failures": 2,
        "pending_failures": 2,
        "min_failures": 3,
    }

    retrained = CliRunner().invoke(app, ["retrain", "--run-root", config.run.run_root])
    assert retrained.exit_code == 0, retrained.output
    line = json.loads(retrained.output.splitlines()[-1])
    assert line["stage"] == "retrain" and "fewer than retrain.min_failures (3)" in line["skipped"]

    other = config_file(tmp_path, with_overrides(config, {"agent.max_calls": 7}), "other")
    decisions = store.list(f"{RETRAIN_DIR}/decisions")
    refused = CliRunner().invoke(app, ["retrain", "-c", str(other)])
    assert refused.exit_code == 2 and "agent.max_calls: 4 on the run root, 7 here" in refused.output
    assert store.list(f"{RETRAIN_DIR}/decisions") == decisions and next_batch(store) == 1


def test_a_loop_run_from_the_api_names_a_config_by_name_only_and_a_run_root_inside_the_operators_prefix(
    prefect_server: None,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop deployment defaults to no config, yet its runs are bounded as every deployment run is
    (``flows.run_requests``, issue 19): the server refuses a config path in its schema, and the flow,
    started past that check, refuses a config path or a run root outside the operator's prefix before it
    reads anything there (that run root's run.json least of all). The trigger's shape (config_name null,
    the event's run root inside) runs with the run root's stored config."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.exceptions import PrefectHTTPStatusError

    from ragdistill.flows.retrain import retrain_flow

    monkeypatch.chdir(REPO)
    monkeypatch.delenv(RUN_ROOT_PREFIX_ENV, raising=False)
    config = collect_config(tmp_path)
    made_by_a_pipeline(config)
    outside = tmp_path_factory.mktemp("outside-the-prefix")
    elsewhere = collect_config(outside)
    made_by_a_pipeline(elsewhere)
    deployment_id = RunnerDeployment.from_flow(
        retrain_flow,
        name=f"loop-{uuid.uuid4().hex[:8]}",
        parameters={"run_root": config.run.run_root},
        work_pool_name=project_pool(REPO),
    ).apply()

    with pytest.raises(PrefectHTTPStatusError, match="Validation failed"):
        create_run(deployment_id, parameters={"config_name": str(config_file(outside, config, "by-path"))})
    hostile = [
        {"config_name": str(outside / "by-path.yaml")},
        {"config_name": None, "run_root": elsewhere.run.run_root},
    ]
    with audited(outside) as touched:
        states = [finished(retrain_flow, create_run(deployment_id, False, parameters=p)) for p in hostile]
    messages = [str(state.message) for state in states]
    assert all(state.is_failed() for state in states), messages
    assert "is not a config under" in messages[0], messages[0]
    assert "lies outside the folders holding the run roots" in messages[1], messages[1]
    assert touched == [], "nothing the run named was read"
    assert not ArtifactStore(elsewhere.run.run_root).exists(RETRAIN_DIR)

    triggered = create_run(deployment_id, parameters={"config_name": None})
    state = finished(retrain_flow, triggered)
    assert state.is_completed(), state.message
    assert "fewer than retrain.min_failures (3)" in state.result()["skipped"]
