"""Typed flow parameters, the deployments, and a deployment run by a real process worker.

The slow test starts a real ``prefect server start`` (SQLite, on an empty Prefect home) and a real
``prefect worker start`` subprocess, and runs the ``index`` deployment twice: its work is real (the
packaged all-MiniLM-L6-v2 embeds the hint bank, FAISS indexes it) and cheap. A rollout or mining run
needs a model, and a test double cannot reach the worker's flow-run subprocess, while the real 135M model
under vLLM would take minutes to load there on 2 shared cores. The hint bank it indexes is mined in this
process from a counter-double rollout with a policy double (tests/test_stages.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ragdistill.config import ConfigError, ExperimentConfig, config_file
from ragdistill.deployments.register import runner_deployments
from ragdistill.deployments.specs import (
    COLLECT_CRON,
    DEPLOYMENT_NAME,
    DEPLOYMENTS,
    NIGHTLY_CRON,
    NIGHTLY_ENV,
    RETRAIN_CHECK_CRON,
    ActiveSchedules,
    DeploymentPlan,
    gpu_work,
    nightly_requested,
    work_pools,
)
from ragdistill.flows.parameters import (
    OPERATOR_SETTINGS,
    ExperimentOverrides,
    OverridesModel,
    dotted_overrides,
    experiment_config,
)
from ragdistill.orchestration.server import API_URL_ENV
from ragdistill.orchestration.worker import GPU_WORK_POOL, WORK_POOL
from test_prefect_server import fresh_prefect_home  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def test_the_overrides_model_offers_every_setting_but_the_operators_optional_with_its_constraints_and_description() -> (
    None
):
    def compare(config_model: type[BaseModel], overrides_model: type[BaseModel], where: str) -> int:
        operator = OPERATOR_SETTINGS.get(config_model, frozenset())
        assert set(overrides_model.model_fields) == set(config_model.model_fields) - operator, where
        compared = 0
        for name, field in config_model.model_fields.items():
            if name in operator:
                continue
            mirror = overrides_model.model_fields[name]
            assert mirror.default is None, f"{where}.{name}"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested = next(arg for arg in mirror.annotation.__args__ if arg is not type(None))  # type: ignore[union-attr]
                assert issubclass(nested, OverridesModel)
                compared += compare(annotation, nested, f"{where}.{name}")
            else:
                assert mirror.description == field.description, f"{where}.{name}"
                compared += 1
        return compared

    assert compare(ExperimentConfig, ExperimentOverrides, "config") > 80
    with pytest.raises(ValidationError, match="greater than 0"):
        ExperimentOverrides.model_validate({"env": {"limit": 0}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ExperimentOverrides.model_validate({"env": {"limt": 2}})
    with pytest.raises(ValidationError, match="'react', 'act' or 'stateact'"):
        ExperimentOverrides.model_validate({"agent": {"format": "cot"}})


def test_a_config_is_named_or_a_path_and_overrides_change_only_what_they_set(tmp_path: Path) -> None:
    named, path = experiment_config("demo-alfworld")
    assert path == REPO / "configs" / "demo-alfworld.yaml" and config_file(str(path)) == path
    overrides = ExperimentOverrides.model_validate(
        {
            "env": {"limit": 2, "workers": 1, "balanced": None},
            "models": {"agent": {"sampling": {"seed": 7}}},
        }
    )
    assert dotted_overrides(overrides) == {
        "env.limit": 2,
        "env.workers": 1,
        "models.agent.sampling.seed": 7,
    }
    changed, _ = experiment_config(
        "demo-alfworld", overrides, {"run.run_root": "file:///tmp/x", "env.split": None}
    )
    assert changed.env.limit == 2 and changed.env.workers == 1
    assert changed.models.agent.sampling.seed == 7 and changed.run.run_root == "file:///tmp/x"
    unchanged = named.model_dump(exclude={"env", "models", "run"})
    assert changed.model_dump(exclude={"env", "models", "run"}) == unchanged
    assert changed.env.split == named.env.split and changed.models.extractor == named.models.extractor

    beats, _ = experiment_config("demo-alfworld", overrides, {"env.limit": 5})
    assert beats.env.limit == 5, "a flow's own parameter wins over the overrides"

    elsewhere = tmp_path / "mine.yaml"
    elsewhere.write_text(yaml.safe_dump({"env": {"limit": 3}}))
    assert experiment_config(str(elsewhere))[0].env.limit == 3

    with pytest.raises(ConfigError, match="demo-alfworld") as error:
        config_file("demo-alfwrld")
    assert "neither a YAML file nor a config" in str(error.value)
    with pytest.raises(ConfigError, match="no StateAct transcripts"):
        experiment_config(
            "demo-alfworld", ExperimentOverrides.model_validate({"agent": {"format": "stateact"}})
        )


def flow_schemas() -> dict[str, dict[str, Any]]:
    from prefect.utilities.callables import parameter_schema

    return {spec.flow: parameter_schema(spec.load()).model_dump_for_openapi() for spec in DEPLOYMENTS}


def test_every_deployed_flow_takes_a_config_name_and_typed_overrides_all_described() -> None:
    """A loop flow (collect, retrain) needs no config: it runs with the one its run root stores."""
    loop_flows = {spec.flow for spec in DEPLOYMENTS if spec.loop}
    assert loop_flows == {"ragdistill.flows.retrain.collect_flow", "ragdistill.flows.retrain.retrain_flow"}
    for flow, schema in flow_schemas().items():
        properties = schema["properties"]
        required = [] if flow in loop_flows else ["config_name"]
        assert next(iter(properties)) == "config_name" and schema.get("required", []) == required, flow
        if flow in loop_flows:
            assert "stored in the run root" in properties["config_name"]["description"]
        assert {"run_root", "overrides"} <= set(properties), flow
        for name, prop in properties.items():
            assert prop.get("description"), f"{flow}: {name} has no description"
        assert properties["overrides"]["anyOf"][0] == {"$ref": "#/definitions/ExperimentOverrides"}
        env = schema["definitions"]["EnvOverrides"]["properties"]
        assert (
            env["limit"]["description"]
            == ExperimentConfig.model_fields["env"].annotation.model_fields["limit"].description
        )


def test_one_deployment_per_flow_on_the_pool_its_work_needs_with_the_nightly_schedule_off_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployments = runner_deployments(DeploymentPlan("paper-alfworld-react"))
    names = [deployment.full_name for deployment in deployments]
    assert len(set(names)) == len(DEPLOYMENTS) and names[0] == f"pipeline/{DEPLOYMENT_NAME}"
    assert {f"{flow}/{DEPLOYMENT_NAME}" for flow in ("rollout", "mine", "index", "report")} <= set(names)
    pools = {deployment.full_name.split("/")[0]: deployment.work_pool_name for deployment in deployments}
    on_gpu = {
        "pipeline",
        "warm-start",
        "rollout",
        "mine",
        "teach",
        "expert",
        "train",
        "evaluate",
        "collect",
        "retrain",
        "ablation",
    }
    assert {flow for flow, pool in pools.items() if pool == GPU_WORK_POOL} == on_gpu
    assert {flow for flow, pool in pools.items() if pool == WORK_POOL} == {
        "index",
        "build-datasets",
        "report",
    }
    loop = {"collect", "retrain"}
    for deployment in deployments:
        assert not deployment.job_variables, "the pool's template sets the command, folder and environment"
        if deployment.full_name.split("/")[0] in loop:
            assert deployment.parameters == {"run_root": "file://./runs/paper-alfworld-react"}
        else:
            assert deployment.parameters == {"config_name": "paper-alfworld-react"}
        assert deployment.entrypoint is not None and ":" not in deployment.entrypoint, "a module path"
        assert deployment.description and "Args:" not in deployment.description
    schedules = {d.full_name.split("/")[0]: d.schedules for d in deployments if d.schedules}
    assert {
        flow: [(s.slug, s.schedule.cron, s.active) for s in found] for flow, found in schedules.items()
    } == {  # type: ignore[union-attr]
        "pipeline": [("nightly", NIGHTLY_CRON, False)],
        "retrain": [("retrain-check", RETRAIN_CHECK_CRON, False)],
        "collect": [("collect", COLLECT_CRON, False)],
    }, "every schedule is off unless asked for"
    demo = runner_deployments(DeploymentPlan(schedules=ActiveSchedules(nightly=True, retrain_check=True)))
    active = {d.full_name.split("/")[0]: [s.active for s in d.schedules or []] for d in demo if d.schedules}
    assert active == {"pipeline": [True], "retrain": [True], "collect": [False]}
    assert {d.work_pool_name for d in demo} == {WORK_POOL}, "the CPU demo needs no GPU worker"

    monkeypatch.delenv(NIGHTLY_ENV, raising=False)
    assert nightly_requested() is False and nightly_requested(True) is True
    monkeypatch.setenv(NIGHTLY_ENV, "1")
    assert nightly_requested() is True and nightly_requested(False) is False


def test_a_config_puts_on_gpus_the_training_its_accelerate_config_and_the_inference_its_engines_name(
    tmp_path: Path,
) -> None:
    from ragdistill.config import load_config

    def work(config: str = "demo-alfworld", **overrides: Any) -> frozenset[str]:
        return gpu_work(load_config(config_file(config), overrides))

    assert work() == frozenset()
    assert work("paper-alfworld-react") == {"inference", "training"}
    assert work(**{"training.accelerate_config": "ddp"}) == {"training"}
    assert work(**{"orchestration.gpus_per_shard": 1}) == {"inference"}
    assert work(**{"models.agent.backend.gpu_memory_utilization": 0.5}) == {"inference"}
    api_only = {f"models.{role}.backend.kind": "openai" for role in ("agent", "extractor", "reranker")}
    assert work("paper-alfworld-react", **api_only) == {"training"}, "API models need no GPU worker"

    own_file = tmp_path / "accelerate.yaml"
    own_file.write_text(yaml.safe_dump({"distributed_type": "NO", "use_cpu": True, "num_processes": 1}))
    assert work("paper-alfworld-react", **{"training.accelerate_config": str(own_file)}) == {"inference"}

    pools = work_pools("paper-alfworld-react", "cpus", "gpus")
    assert {spec.flow: pools[spec.flow] for spec in DEPLOYMENTS if not spec.uses} == {
        spec.flow: "cpus" for spec in DEPLOYMENTS if not spec.uses
    }
    assert pools["ragdistill.flows.standalone.train_flow"] == "gpus"


def task_states(flow_run_id: uuid.UUID) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: str(run.state_name) for run in runs}


def nightly_schedules() -> list[tuple[str, bool]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"pipeline/{DEPLOYMENT_NAME}")
        return [(s.schedule.cron, s.active) for s in client.read_deployment_schedules(deployment.id)]  # type: ignore[union-attr]


def mined_config_to_deploy(tmp_path: Path) -> tuple[ExperimentConfig, Path, dict[str, Any]]:
    """A counter-double run mined in this process (tests/test_stages.py), ready for the ``index``
    deployment: the config, its file, and the deployment run's parameters.

    The file names a run root with nothing in it: a run finds the hints only if the typed overrides
    given to the deployment run reach the flow in the worker's subprocess."""
    from ragdistill.config.stages import PipelineSettings
    from ragdistill.stages.lifecycle import upstream_inputs
    from ragdistill.stages.mining import run_mining
    from ragdistill.stages.rollout import run_rollout
    from ragdistill.store import ArtifactStore
    from test_stages import PolicyDouble, counter_config

    config = counter_config(tmp_path, **{"env.limit": 2, "env.workers": 1})
    stages = PipelineSettings.from_experiment(config)
    run_rollout(stages.ctx, stages.rollout(), {}, backend=PolicyDouble("wait"))
    mining = stages.mining
    inputs = upstream_inputs(ArtifactStore(stages.ctx.run_root), mining)
    run_mining(stages.ctx, mining, inputs, backend=PolicyDouble())
    data = config.model_dump(mode="json")
    data["run"]["run_root"] = f"file://{tmp_path}/empty"
    config_path = tmp_path / "deployed.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return config, config_path, {"overrides": {"run": {"run_root": config.run.run_root}}}


def index_runs_by_a_worker(
    api_url: str, parameters: dict[str, Any], worker_log: Path, count: int
) -> list[Any]:
    """Run the registered ``index`` deployment ``count`` times, one after another, by a real process worker
    (started for these runs, its output in ``worker_log``); the finished flow runs."""
    from prefect.deployments import run_deployment

    from ragdistill.orchestration.worker import start_worker, stop_worker

    with worker_log.open("wb") as log:
        worker = start_worker(api_url, output=log, environment={"PREFECT_WORKER_QUERY_SECONDS": "1"})
        try:
            return [
                run_deployment(
                    f"index/{DEPLOYMENT_NAME}", parameters=parameters, timeout=240, poll_interval=1
                )
                for _ in range(count)
            ]
        finally:
            stop_worker(worker)


@pytest.mark.slow
def test_a_deployment_run_by_a_process_worker_completes_and_a_rerun_is_cached(
    fresh_prefect_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client

    from ragdistill.deployments.register import register_deployments
    from ragdistill.orchestration.server import prefect_api
    from ragdistill.store import ArtifactStore, read_manifest

    config, config_path, parameters = mined_config_to_deploy(tmp_path)
    worker_log = tmp_path / "worker.log"
    with prefect_api(timeout_s=600) as api_url:
        names = register_deployments(
            DeploymentPlan(str(config_path), ActiveSchedules(nightly=True)), working_dir=REPO
        )
        assert nightly_schedules() == [(NIGHTLY_CRON, True)]
        assert register_deployments(DeploymentPlan(str(config_path)), working_dir=REPO) == names
        assert nightly_schedules() == [(NIGHTLY_CRON, False)], "registering again applies the flag"

        with get_client(sync_client=True) as client:
            pipeline = client.read_deployment_by_name(f"pipeline/{DEPLOYMENT_NAME}")
        schema = pipeline.parameter_openapi_schema or {}
        assert "experiment config" in schema["properties"]["config_name"]["description"]
        training = schema["definitions"]["TrainingOverrides"]["properties"]
        assert "QLoRA" in training["load_in_4bit"]["description"]
        assert pipeline.parameters == {"config_name": str(config_path)}

        runs = index_runs_by_a_worker(api_url, parameters, worker_log, count=2)
        log_tail = worker_log.read_text(errors="replace")[-4000:]
        for run in runs:
            assert run.state is not None and run.state.is_completed(), f"{run.state}\n{log_tail}"
        first, second = (task_states(run.id) for run in runs)

    index_run = f"index-{config.env.name}-{config.run.name}"
    assert first == {index_run: "Completed"}, log_tail
    assert second == {index_run: "Cached"}, log_tail
    assert runs[0].parameters["overrides"] == parameters["overrides"]
    manifest = read_manifest(ArtifactStore(config.run.run_root), "index")
    assert manifest.counts["hints"] >= 1
    assert not ArtifactStore(f"file://{tmp_path}/empty").exists("index/manifest.json")


@pytest.mark.slow
def interruptible() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background by a script (as `make test
    &` is) ignores SIGINT, and a child inherits that, so its Ctrl-C would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_starts_a_server_registers_runs_a_worker_and_stops_both_on_ctrl_c(
    fresh_prefect_home: Path,  # noqa: F811
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ragdistill.orchestration.server import api_answers

    env = {key: value for key, value in os.environ.items() if key != API_URL_ENV}
    serve = subprocess.Popen(
        [sys.executable, "-m", "ragdistill.cli", "serve", "--config", "demo-alfworld", "--timeout", "600"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        lines: list[str] = []
        assert serve.stdout is not None
        for line in serve.stdout:
            lines.append(line)
            if line.startswith("{"):
                break
        summary = json.loads(lines[-1])
        output = "".join(lines)
        assert summary["ui_url"] in output and f"pipeline/{DEPLOYMENT_NAME}" in output
        assert len(summary["deployments"]) == len(DEPLOYMENTS) and summary["nightly"] is False
        assert api_answers(summary["api_url"])

        online: list[Any] = []
        deadline = time.monotonic() + 120
        with temporary_settings(updates={PREFECT_API_URL: summary["api_url"]}):
            while not online and time.monotonic() < deadline:
                with get_client(sync_client=True) as client:
                    online = [w for w in client.read_workers_for_work_pool(WORK_POOL) if w.status == "ONLINE"]
                time.sleep(1)
        assert online, "the worker must come online in the work pool"

        serve.send_signal(signal.SIGINT)
        rest, _ = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == 0, rest[-3000:]
    assert "stopping the worker" in rest
    assert not api_answers(summary["api_url"]), "serve started the server, so Ctrl-C stops it"


def test_a_deploy_time_run_root_becomes_every_deployments_default() -> None:
    """The loop deployments default to the run root alone: their runs use the config stored there."""
    root = "s3://ragdistill/runs/demo-alfworld"
    deployments = runner_deployments(DeploymentPlan("demo-alfworld", run_root=root))
    loop = {f"{flow}/{DEPLOYMENT_NAME}" for flow in ("collect", "retrain")}
    assert {d.full_name: d.parameters for d in deployments} == {
        d.full_name: {"run_root": root}
        if d.full_name in loop
        else {"config_name": "demo-alfworld", "run_root": root}
        for d in deployments
    }


def read_prefect_yaml_configs(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The deployments and actions of a prefect.yaml, as ``prefect deploy`` loads and validates them."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    return _load_deploy_configs_and_actions(path, console=Console(stderr=True))


def test_the_committed_prefect_yaml_is_the_generated_one() -> None:
    from ragdistill.deployments.prefect_yaml import PREFECT_YAML, REGENERATE_COMMAND, prefect_yaml_text

    committed = (REPO / PREFECT_YAML).read_text()
    assert committed == prefect_yaml_text(), (
        f"{PREFECT_YAML} is out of date with DEPLOYMENTS: run `{REGENERATE_COMMAND}` at the repository root"
    )
    assert REGENERATE_COMMAND in committed.split("\n\n")[0], "the header says how to regenerate it"


def test_prefects_own_loader_reads_every_deployment_as_the_code_builds_it(tmp_path: Path) -> None:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.flows import load_flow_from_entrypoint

    from ragdistill.deployments.prefect_yaml import PROJECT_FOLDER, write_prefect_yaml

    configs, actions = read_prefect_yaml_configs(
        write_prefect_yaml(tmp_path, DeploymentPlan("paper-alfworld-react"))
    )
    assert len(configs) == len(DEPLOYMENTS), "every deployment passes Prefect's validation"
    ((build_step,),) = [list(step) for step in actions["build"]]
    assert build_step == "prefect.deployments.steps.run_shell_script"
    assert actions["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": PROJECT_FOLDER}}
    ]
    in_code = {d.full_name: d for d in runner_deployments(DeploymentPlan("paper-alfworld-react"))}
    in_yaml: dict[str, dict[str, Any]] = {}
    for config in configs:
        flow = load_flow_from_entrypoint(config["entrypoint"], use_placeholder_flow=False)
        in_yaml[f"{flow.name}/{config['name']}"] = config
        assert flow in {spec.load() for spec in DEPLOYMENTS}, config["entrypoint"]
    assert list(in_yaml) == list(in_code)

    for name, deployment in in_code.items():
        config = in_yaml[name]
        assert config["entrypoint"] == deployment.entrypoint, name
        assert config["work_pool"] == {"name": deployment.work_pool_name}, "no job variables"
        assert config["parameters"] == deployment.parameters, name
        assert config["description"] == deployment.description and config["tags"] == deployment.tags
        schedules = [_schedule_config_to_deployment_schedule(s) for s in config.get("schedules", [])]
        assert [(s["schedule"], s["active"], s["slug"]) for s in schedules] == [
            (s.schedule, s.active, s.slug) for s in deployment.schedules or []
        ], name
        triggers = _initialize_deployment_triggers(config["name"], config.get("triggers", []))
        assert [t.model_dump() for t in triggers] == [t.model_dump() for t in deployment.triggers], name
        limit = config.get("concurrency_limit")
        if deployment.concurrency_limit is None:
            assert limit is None, name
        else:
            assert deployment.concurrency_options is not None
            assert limit == {
                "limit": deployment.concurrency_limit,
                "collision_strategy": deployment.concurrency_options.collision_strategy.value,
            }, name
    assert sum(bool(d.triggers) for d in in_code.values()) == 1
    assert in_yaml[f"pipeline/{DEPLOYMENT_NAME}"]["schedules"][0]["active"] is False
    (trigger,) = in_code[f"retrain/{DEPLOYMENT_NAME}"].triggers
    assert trigger.parameters == {
        "config_name": None,
        "run_root": "{{ event.resource['ragdistill.run-root'] }}",
    }, "a triggered retrain uses the config of the event's run root, never the deployment's"
    assert {config["work_pool"]["name"] for config in configs} == {WORK_POOL, GPU_WORK_POOL}


def test_write_prefect_yaml_applies_the_deploy_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ragdistill.cli import app

    target = tmp_path / "custom.yaml"
    arguments = ["deploy", "--write-prefect-yaml", str(target), "--config", "paper-alfworld-react"]
    result = CliRunner().invoke(
        app,
        [*arguments, "--nightly", "--pool", "elsewhere", "--gpu-pool", "gpus", "--run-root", "s3://b/r"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary == {"prefect_yaml": str(target), "work_pool": "elsewhere", "gpu_work_pool": "gpus"}
    configs, _ = read_prefect_yaml_configs(target)
    pools = {c["entrypoint"].rsplit(".", 1)[1]: c["work_pool"]["name"] for c in configs}
    assert pools["train_flow"] == pools["rollout_flow"] == "gpus" and pools["report_flow"] == "elsewhere"
    header = target.read_text().split("\n\n")[0]
    (pools_line,) = [line for line in header.splitlines() if "must exist" in line]
    assert "elsewhere" in pools_line and "gpus" in pools_line and "`ragdistill deploy` creates" in header
    assert {json.dumps(c["parameters"]) for c in configs} == {
        json.dumps({"config_name": "paper-alfworld-react", "run_root": "s3://b/r"}),
        json.dumps({"run_root": "s3://b/r"}),
    }
    assert {s["slug"]: s["active"] for c in configs for s in c.get("schedules", [])} == {
        "nightly": True,
        "retrain-check": False,
        "collect": False,
    }

    unknown = CliRunner().invoke(app, ["deploy", "--write-prefect-yaml", str(tmp_path), "-c", "no-such"])
    assert unknown.exit_code != 0 and not (tmp_path / "prefect.yaml").exists()
    path = CliRunner().invoke(
        app,
        ["deploy", "--write-prefect-yaml", str(tmp_path), "-c", str(REPO / "configs" / "demo-alfworld.yaml")],
    )
    assert path.exit_code != 0 and "names its config by name under configs/" in str(path.exception)
    assert not (tmp_path / "prefect.yaml").exists(), "a file whose every run the server would refuse"


@pytest.mark.slow
def test_prefect_deploy_all_registers_the_committed_prefect_yaml(
    fresh_prefect_home: Path,  # noqa: F811
) -> None:
    from prefect.client.orchestration import get_client

    from ragdistill.deployments.register import ensure_work_pool
    from ragdistill.orchestration.server import prefect_api

    with prefect_api(timeout_s=600) as api_url:
        ensure_work_pool()
        deploy = subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env={**os.environ, API_URL_ENV: api_url},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        with get_client(sync_client=True) as client:
            deployments = {
                name: client.read_deployment_by_name(name)
                for name in (d.full_name for d in runner_deployments())
            }
            pipeline = deployments[f"pipeline/{DEPLOYMENT_NAME}"]
            retrain = deployments[f"retrain/{DEPLOYMENT_NAME}"]
            schedules = client.read_deployment_schedules(pipeline.id)
            automations = client.read_resource_related_automations(f"prefect.deployment.{retrain.id}")
    for deployment in deployments.values():
        assert deployment.work_pool_name == WORK_POOL
        assert not deployment.job_variables
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
    assert [(s.schedule.cron, s.active) for s in schedules] == [(NIGHTLY_CRON, False)]  # type: ignore[union-attr]
    assert retrain.global_concurrency_limit is not None and retrain.global_concurrency_limit.limit == 1
    assert retrain.concurrency_options is not None
    assert retrain.concurrency_options.collision_strategy.value == "ENQUEUE"
    (automation,) = automations
    assert automation.actions[0].parameters["run_root"] == "{{ event.resource['ragdistill.run-root'] }}"  # type: ignore[union-attr]
