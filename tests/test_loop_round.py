"""`make loop` (``ragdistill loop run``, ``ragdistill.loop_round``): one round of the loop through Prefect, and
its table of generations (``stages.generations_table``).

The fast tests build the table from stage folders written as the stages leave them (tests/test_adapter_registry.py's
helpers), and check the refusals before any server starts. The slow test is the round itself on a real
``prefect server start`` with a real process worker: the served collect and retrain deployments run this
module's flows, which are the project's collect and retrain flows with the policy double (tests/test_stages.py)
as every model and the counter-double environment (a double reaches the flow-run process a worker starts only
through a flow of the test's own, as in tests/test_crashed_runs.py); the retrain deployment carries the
project's real trigger and automations.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect import flow
from typer.testing import CliRunner

import env_doubles  # noqa: F401  (registers the counter-double environment)
from ragdistill.config import ExperimentConfig, with_overrides
from ragdistill.deployments.specs import FlowDeployment
from ragdistill.flows.loop_config import LoopInputError
from ragdistill.loop_round import plan_loop_round, run_loop_round
from ragdistill.orchestration.server import API_URL_ENV, STATE_FILE, api_answers
from ragdistill.orchestration.worker import start_worker
from ragdistill.stages.generations_table import GENERATIONS_TABLE_FILE, generations_table
from ragdistill.stages.retrain import LAST_DECISION_FILE, WATERMARK_FILE, generation_root, read_watermark
from ragdistill.store import ArtifactStore
from test_adapter_registry import (
    evaluate,
    make_config,
    promote,
    skip_training,
    student,
    write_stage,
    write_upstream,
)
from test_loop import collect_config, config_file, made_by_a_pipeline
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)
from test_retrain import base_rollout
from test_stages import PolicyDouble

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EVAL_TASKS = ["t0", "t1", "t2", "t3", "t4"]


def a_promoted_pipeline(config: ExperimentConfig) -> ArtifactStore:
    """The run root as a pipeline leaves it: base 1 of 5 won, the distilled student 3 (promoted), no SFT."""
    store = made_by_a_pipeline(config)
    write_upstream(store)
    evaluate(store, "base", 1, tasks=EVAL_TASKS)
    student(store, b"generation-1", wins=3, tasks=EVAL_TASKS)
    skip_training(store, "sft")
    promote(config)
    return store


def a_finished_retrain(store: ArtifactStore, wins: int, promoted: bool) -> None:
    """Retrain 1 as it leaves generations/1: its distilled student trained on 7 examples and evaluated,
    the gate's decision, and the watermark of generation 1."""
    generation = ArtifactStore(generation_root(store.root_url, 1))
    write_stage(generation, "datasets/distill", {"data.parquet": b"rows"}, counts={"examples": 7})
    write_stage(generation, "datasets/sft", {}, counts={"examples": 0})
    student(generation, b"generation-2", wins=wins, tasks=EVAL_TASKS)
    skip_training(generation, "sft")
    decision = {"promoted": promoted, "version": "v0002", "reason": "4 of 5 against 3 of 5"}
    write_stage(
        generation, "promotion", {"decision.json": json.dumps({"candidate": "distill"}).encode()},
        extra={"decision": decision},
    )  # fmt: skip
    store.write_json(WATERMARK_FILE, {"generation": 1, "consumed": {"collect-0000": ["e1"]}})


def test_the_table_shows_base_and_each_generations_students_with_their_training_sets_and_gate(
    tmp_path: Path,
) -> None:
    config = make_config(f"file://{tmp_path}/run", **{"evaluation.limit": 5})
    store = a_promoted_pipeline(config)
    a_finished_retrain(store, wins=4, promoted=False)

    table = generations_table(store)
    assert [row.label for row in table.rows] == [
        "Base",
        "Generation 1 · SFT",
        "Generation 1 · Distilled",
        "Generation 2 · SFT",
        "Generation 2 · Distilled",
    ]
    success = {row.label: (row.figures or {}).get("success_percent") for row in table.rows}
    assert success == {
        "Base": 20.0,
        "Generation 1 · SFT": None,
        "Generation 1 · Distilled": 60.0,
        "Generation 2 · SFT": None,
        "Generation 2 · Distilled": 80.0,
    }
    by_label = {row.label: row for row in table.rows}
    assert by_label["Generation 1 · SFT"].reason == "the sft training set is empty: no successes"
    assert by_label["Generation 2 · Distilled"].trained_on == "retrain 1: 7 examples"
    assert by_label["Generation 1 · Distilled"].trained_on == "the pipeline: 5 examples"
    assert [gate.generation for gate in table.gates] == [1, 2]
    assert table.gates[0].promoted and table.gates[0].version == "v0001"
    assert table.champion == "v0001"

    markdown = table.markdown()
    assert "| agent | trained on | success % | invalid actions % (per action call) |" in markdown
    assert "score %" not in markdown, "ALFWorld's headline is success"
    assert "| Generation 2 · Distilled | retrain 1: 7 examples | 80.0 |" in markdown
    assert "| Generation 1 · SFT | the pipeline: 3 examples | — |" in markdown
    assert (
        "- Generation 2 (retrain 1, candidate distill): v0002 not promoted: 4 of 5 against 3 of 5" in markdown
    )
    assert "Champion now: v0001" in markdown
    assert json.loads(json.dumps(table.summary()))["rows"][4]["figures"]["episodes"] == 5


def test_the_table_adds_the_score_for_webshop_and_shows_only_finished_retrains(tmp_path: Path) -> None:
    config = make_config(f"file://{tmp_path}/run", **{"env.name": "webshop", "evaluation.limit": 5})
    store = a_promoted_pipeline(config)
    assert [row.generation for row in generations_table(store).rows] == [None, 1, 1]
    a_finished_retrain(store, wins=2, promoted=False)
    store.delete(WATERMARK_FILE)
    assert generations_table(store).generations == 1, "a retrain that did not finish is not shown"

    a_finished_retrain(store, wins=2, promoted=False)
    markdown = generations_table(store).markdown()
    assert "| success % | score % | invalid actions % (per action call) |" in markdown
    assert "| Generation 2 · Distilled | retrain 1: 7 examples | 40.0 | 40.0 |" in markdown


def test_a_round_on_a_run_root_without_a_pipeline_is_refused_before_a_server_starts(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from ragdistill.cli import app

    config = collect_config(tmp_path)
    result = CliRunner().invoke(app, ["loop", "run", "-c", str(config_file(tmp_path, config, "demo"))])
    assert result.exit_code == 2, result.output
    assert "no pipeline has run on the run root" in result.output and "ragdistill pipeline" in result.output
    assert not (fresh_prefect_home / STATE_FILE).exists(), "no server was started"
    assert not (tmp_path / "run").exists(), "nothing is written"


def test_a_round_whose_batches_cannot_reach_the_threshold_is_refused_with_the_numbers(tmp_path: Path) -> None:
    config = collect_config(tmp_path)
    made_by_a_pipeline(with_overrides(config, {"retrain.min_failures": 5}))
    path = config_file(tmp_path, config, "demo")
    with pytest.raises(LoopInputError, match=r"record at most 4 failure\(s\); with 0 pending") as refused:
        plan_loop_round(str(path))
    assert "retrain.min_failures (5) cannot be reached" in str(refused.value)
    assert "at most 4" in str(refused.value) and "make demo" in str(refused.value)

    plan = plan_loop_round(str(path), batches=3)
    assert (plan.first_batch, plan.batch_size, plan.min_failures, plan.pending_failures) == (0, 2, 5, 0)
    assert plan.notes == [
        f"{path} sets retrain.min_failures 3, the run root stores 5: the loop's runs use the run root's (run "
        "the pipeline again to store the new one)"
    ]


def test_leaving_the_served_deployments_stops_the_worker_then_the_server_also_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `serve` and a round share: however the block ends, the worker is stopped before the server
    block is left (which stops a server it started)."""
    from ragdistill.deployments import serving
    from ragdistill.deployments.specs import ActiveSchedules

    events: list[str] = []

    @contextmanager
    def server(timeout_s: float) -> Iterator[str]:
        events.append("server up")
        try:
            yield "http://127.0.0.1:1/api"
        finally:
            events.append("server left")

    monkeypatch.setattr(serving, "prefect_api", server)
    monkeypatch.setattr(serving, "register_deployments", lambda *a, **k: ["collect/ragdistill"])
    monkeypatch.setattr(serving, "start_worker", lambda *a, **k: events.append("worker up") or "worker")
    monkeypatch.setattr(serving, "stop_worker", lambda worker: events.append(f"{worker} stopped") or 0)
    with (
        pytest.raises(KeyboardInterrupt),
        serving.served_deployments("demo-alfworld", ActiveSchedules()) as served,
    ):
        assert served.ui_url == "http://127.0.0.1:1" and served.deployments == ["collect/ragdistill"]
        raise KeyboardInterrupt
    assert events == ["server up", "worker up", "worker stopped", "server left"]


class FakeClient:
    """Prefect's sync client as the watcher uses it, over a fixed list of flow runs."""

    def __init__(self, runs: list[SimpleNamespace]) -> None:
        self.runs = runs

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read_flow_run(self, flow_run_id: uuid.UUID) -> SimpleNamespace:
        return next(run for run in self.runs if run.id == flow_run_id)

    def read_deployment_by_name(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(id=uuid.uuid4(), name=name)

    def read_flow_runs(self, **filters: Any) -> list[SimpleNamespace]:
        return self.runs


def flow_run(name: str, state: str | None, created: datetime, *, automation: bool = False) -> SimpleNamespace:
    """A flow run as the API returns one; ``state`` None: still scheduled."""
    final = state is not None
    return SimpleNamespace(
        id=uuid.uuid4(),
        name=name,
        created=created,
        start_time=created if final else None,
        auto_scheduled=False,
        created_by=SimpleNamespace(type="AUTOMATION", display_value="retrain-due") if automation else None,
        state=SimpleNamespace(
            type=SimpleNamespace(value=state or "SCHEDULED"),
            message=f"{name} {state}",
            is_final=lambda: final,
            is_scheduled=lambda: not final,
            is_pending=lambda: False,
        ),
    )


def test_the_watcher_picks_the_triggered_runs_and_names_a_dead_worker_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.client.orchestration

    from ragdistill.deployments.run_watch import DeploymentRunError, RunWatcher

    now = datetime.now(UTC)
    log = tmp_path / "worker.log"
    log.write_text("starting\nTraceback: the flow run's process died\n")
    alive = SimpleNamespace(poll=lambda: None)
    earlier = flow_run("earlier-retrain", "COMPLETED", now - timedelta(hours=1), automation=True)
    by_hand = flow_run("by-hand", "COMPLETED", now - timedelta(hours=1))
    triggered = flow_run("triggered", "COMPLETED", now + timedelta(seconds=5), automation=True)
    runs = [earlier, by_hand, triggered]
    monkeypatch.setattr(prefect.client.orchestration, "get_client", lambda sync_client: FakeClient(runs))
    said: list[str] = []
    ended = RunWatcher(alive, log).wait_triggered("retrain/ragdistill", now, now, 5, said.append)  # type: ignore[arg-type]
    assert [(run.name, run.started_by) for run in ended] == [("triggered", "trigger retrain-due")]
    assert said == ["retrain/ragdistill: run triggered, started by trigger retrain-due"]

    runs.append(flow_run("crashed", "CRASHED", now + timedelta(seconds=6), automation=True))
    with pytest.raises(DeploymentRunError, match="the run crashed ended CRASHED: crashed CRASHED"):
        RunWatcher(alive, log).wait_triggered("retrain/ragdistill", now, now, 5, said.append)  # type: ignore[arg-type]

    waiting = flow_run("collect", None, now)
    runs.append(waiting)
    dead = SimpleNamespace(poll=lambda: 3)
    with pytest.raises(DeploymentRunError) as died:
        RunWatcher(dead, log).wait(waiting.id, "the collect run", "the round")  # type: ignore[arg-type]
    assert "the worker exited with code 3 while waiting for the collect run" in str(died.value)
    assert "the flow run's process died" in str(died.value), "with the end of its log"


def with_doubles() -> None:
    """The policy double (it never wins) as every engine this process loads: the agent's, the champion's
    (its adapter enables LoRA, another engine) and the extractor's."""
    from ragdistill.inference import shared

    shared.make_backend = lambda role: PolicyDouble("wait")


@flow(name="collect")
def collect_with_doubles(config_name: str | None = None, run_root: str | None = None) -> dict[str, Any]:
    """The project's collect flow, the policy double playing."""
    from ragdistill.flows.retrain import collect_flow

    with_doubles()
    return collect_flow.fn(config_name=config_name, run_root=run_root)  # type: ignore[no-any-return]


@flow(name="retrain")
def retrain_with_doubles(config_name: str | None = None, run_root: str | None = None) -> dict[str, Any]:
    """The project's retrain flow, the policy double as every model."""
    from ragdistill.flows.retrain import retrain_flow

    with_doubles()
    return retrain_flow.fn(config_name=config_name, run_root=run_root)  # type: ignore[no-any-return]


DEPLOYMENTS_WITH_DOUBLES = (
    FlowDeployment(f"{__name__}.collect_with_doubles", loop=True),
    FlowDeployment(f"{__name__}.retrain_with_doubles", loop=True, retrain_trigger=True, retry_crashed=True),
)
"""The project's two loop deployments (same names, trigger, tags), running the flows above."""


@pytest.mark.slow
def test_a_round_runs_two_collect_deployments_and_the_retrain_their_event_triggers_then_shows_the_table(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two collect deployment runs of 2 failures each (threshold 3) on a run root whose pipeline promoted
    its distilled student, with the project's server already running (`ragdistill server start`): the
    second collect brings the stored failures to the threshold, its event triggers the retrain deployment
    (a run an automation created, never the round), generation 2 is built from the 4 failures and gated,
    and the table, its artifact and the JSON line show it; the round's worker is stopped at the end and
    the server it reused keeps running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ragdistill.deployments import serving
    from ragdistill.orchestration.server import start_server

    config = collect_config(tmp_path, **{"retrieval.retriever": "bm25"})
    store = a_promoted_pipeline(config)
    base_rollout(config, PolicyDouble("wait"))
    path = config_file(tmp_path, config, "demo")
    python_path = os.pathsep.join(filter(None, [str(REPO / "src"), str(TESTS), os.environ.get("PYTHONPATH")]))
    workers: list[Any] = []
    monkeypatch.setattr(
        serving, "start_worker", lambda *a, **k: workers.append(start_worker(*a, **k)) or workers[-1]
    )
    server, _ = start_server(timeout_s=600)
    messages: list[str] = []

    plan = plan_loop_round(str(path))
    result = run_loop_round(
        plan,
        messages.append,
        working_dir=REPO,
        worker_environment={"PYTHONPATH": python_path, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        deployments=DEPLOYMENTS_WITH_DOUBLES,
    )
    output = "\n".join(messages)
    summary = json.loads(json.dumps(result.summary()))

    assert [(c["batch"], c["state"], c["failures"], c["started_by"]) for c in summary["collects"]] == [
        ("collect-0000", "COMPLETED", 2, "the round"),
        ("collect-0001", "COMPLETED", 2, "the round"),
    ], output
    triggered = summary["retrains"]
    assert [(run["state"], run["started_by"]) for run in triggered] == [
        ("COMPLETED", "trigger retrain-due")
    ], output
    decision = store.read_json(LAST_DECISION_FILE)
    assert decision["skipped"] is None and decision["generation"] == 1 and decision["new_failures"] == 4
    assert decision["counts"]["promotion"]["candidate"] == 0, "the double wins nothing: no student to gate"
    assert read_watermark(store).generation == 1
    assert summary["retrain_generation"] == 1 and summary["student_generation"] == 2
    assert summary["gate"]["promoted"] is False and "no candidate" in summary["gate"]["reason"]
    assert summary["champion"] == "v0001" and summary["pending_failures"] == 0

    stored_table = store.read_text(GENERATIONS_TABLE_FILE)
    assert stored_table == result.table.markdown()
    assert "| Generation 1 · Distilled | the pipeline: 5 examples | 60.0 |" in stored_table
    assert "| Generation 2 · Distilled | retrain 1: 0 examples | — |" in stored_table
    assert "- Generation 2 (retrain 1, candidate distill): nothing promoted: no candidate" in stored_table
    assert "reached the threshold: waiting for the retrain its event triggers" in output

    assert len(workers) == 1 and workers[0].poll() is not None, "the round's worker is stopped"
    assert summary["ui_url"] == server.ui_url and api_answers(server.api_url), "a reused server keeps running"
    with (
        temporary_settings(updates={PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        (retrain,) = [client.read_flow_run(uuid.UUID(run["id"])) for run in triggered]
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["loop-generations"]))
        )
    assert retrain.parameters == {"config_name": None, "run_root": store.root_url}
    assert retrain.created_by is not None and retrain.created_by.type == "AUTOMATION"
    assert artifact.flow_run_id == retrain.id and artifact.data == stored_table
    assert API_URL_ENV not in os.environ
