"""What a flow run created through the Prefect UI or API may ask for, and what stays the operator's.

Tried as a hostile API client would (issue 19): a run that points ``models.*.backend.base_url`` at its own
listener with ``api_key_env: AWS_SECRET_ACCESS_KEY``, turns on ``trust_remote_code``, moves ``env.data_dir``
or ``orchestration.ray_address``, names ``/etc/passwd`` or a credentials file as its config, puts its run
root anywhere, or sets the process pool's ``command``, ``working_dir`` or ``env``. Each is refused when the
run is created (a real Prefect server, the deployment as ``ragdistill deploy`` registers it) and again
when the flow starts on the worker, for a client that turned the server's parameter check off.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ragdistill.flows.parameters import (
    OPERATOR_SETTINGS,
    ConfigName,
    ExperimentOverrides,
    experiment_config,
)
from ragdistill.flows.run_requests import RUN_ROOT_PREFIX_ENV, RunRequestRefused, check_run_root
from ragdistill.inference.base import BackendError, GenerationRequest
from ragdistill.inference.openai_backend import OpenAIBackend
from ragdistill.messages import ChatMessage
from test_containment import audited

REPO = Path(__file__).resolve().parents[1]
PLANTED_KEY_ENV = "RAGDISTILL_TEST_PLANTED_SECRET"

OPERATOR_OVERRIDES = {
    "models.agent.backend.base_url": "http://127.0.0.1:9/v1",
    "models.extractor.backend.api_key_env": "AWS_SECRET_ACCESS_KEY",
    "models.reranker.model.trust_remote_code": True,
    "env.data_dir": "/etc",
    "orchestration.ray_address": "ray://203.0.113.7:10001",
    "training.launch.main_process_ip": "203.0.113.7",
}
CONFIG_PATHS = [
    "/etc/passwd",
    "../x.yaml",
    "configs/demo-alfworld.yaml",
    str(REPO / "configs" / "demo-alfworld.yaml"),
]


def nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``, the shape of the ``overrides`` parameter."""
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def test_the_override_schema_has_no_operator_setting_and_names_each_one_it_refuses() -> None:
    schema = json.dumps(ExperimentOverrides.model_json_schema())
    for dotted in OPERATOR_OVERRIDES:
        leaf = dotted.rsplit(".", 1)[1]
        assert f'"{leaf}"' not in schema, f"{dotted} is in the run form"
        with pytest.raises(ValidationError) as refused:
            ExperimentOverrides.model_validate(nested({dotted: OPERATOR_OVERRIDES[dotted]}))
        message = str(refused.value)
        assert f"{leaf} is the operator's setting" in message and "config file on the worker" in message
    assert {name for names in OPERATOR_SETTINGS.values() for name in names} == {
        dotted.rsplit(".", 1)[1] for dotted in OPERATOR_OVERRIDES
    }
    kept = ExperimentOverrides.model_validate(nested({"models.agent.backend.kind": "openai", "env.limit": 2}))
    assert kept.models.agent.backend.kind == "openai"  # type: ignore[union-attr]
    backend_doc = ExperimentOverrides.model_json_schema()["$defs"]["BackendOverrides"]["description"]
    assert "Not overridable (the operator's): api_key_env, base_url." in backend_doc


def test_a_deployment_runs_root_must_lie_inside_the_operators_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_ROOT_PREFIX_ENV, raising=False)
    configured = ["file://./runs/demo", None]
    for inside in ("file://./runs/other", "runs/other", str(tmp_path / "runs" / "a" / "b"), "runs/demo"):
        check_run_root(inside, configured)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "escape").symlink_to(tmp_path.parent)
    outside = ["/etc", "runs/../../x", "file://./elsewhere", "runs/escape/x", "s3://bucket/runs/x", "/"]
    for root in outside:
        with pytest.raises(RunRequestRefused, match="lies outside the folders holding the run roots"):
            check_run_root(root, configured)

    s3 = ["s3://bucket/runs/demo", "file:///x"]
    check_run_root("s3://bucket/runs/other/deep", s3)
    check_run_root("file:///x/sub", s3)  # a root at the top of its file system allows only itself
    for root in ("s3://other/runs/x", "s3://bucket/elsewhere", "s3://bucket/runs/../../other", "file:///y"):
        with pytest.raises(RunRequestRefused):
            check_run_root(root, s3)

    monkeypatch.setenv(RUN_ROOT_PREFIX_ENV, "s3://bucket/team/")
    check_run_root("s3://bucket/team/run-1", configured)
    with pytest.raises(RunRequestRefused, match=f"outside {RUN_ROOT_PREFIX_ENV}"):
        check_run_root("file://./runs/other", configured)


@contextmanager
def listener(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on loopback that records each request's path and headers and answers with
    ``answer``; its base URL and the records."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append({"path": self.path, **{key.lower(): value for key, value in self.headers.items()}})
            answer(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def chat_completion(handler: BaseHTTPRequestHandler) -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"role": "assistant", "content": "look"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    ).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def one_call(backend: OpenAIBackend) -> None:
    backend.generate([GenerationRequest(messages=[ChatMessage("user", "hello")], max_tokens=4)])


def test_the_api_key_goes_only_to_the_configured_host_never_through_a_redirect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragdistill.config import RoleConfig

    secret = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv(PLANTED_KEY_ENV, secret)
    with listener(chat_completion) as (elsewhere, taken):

        def redirect(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(307)
            handler.send_header("location", f"{elsewhere}/v1/chat/completions")
            handler.send_header("content-length", "0")
            handler.end_headers()

        with listener(redirect) as (configured, asked):
            role = RoleConfig.model_validate(
                {
                    "backend": {
                        "kind": "openai",
                        "base_url": f"{configured}/v1",
                        "api_key_env": PLANTED_KEY_ENV,
                    }
                }
            )
            with pytest.raises(BackendError, match="redirects"):
                one_call(OpenAIBackend(role, tokenizer_path=str(tmp_path / "no-tokenizer")))
    assert asked and asked[0]["authorization"] == f"Bearer {secret}", "the configured host gets the key"
    assert taken == [], "the host a redirect names gets nothing, the key least of all"


# ---- a real Prefect server: the deployment's schema at run creation, the flow's checks at start ----


def probe_flow_function(
    config_name: ConfigName, run_root: str | None = None, overrides: ExperimentOverrides | None = None
) -> str:
    """What every stage flow does first (``experiment_config``), then one call of the agent's backend when
    the run's config makes it an OpenAI-compatible one, as a rollout would."""
    config, _ = experiment_config(config_name, overrides, {"run.run_root": run_root}, run_root_check=False)
    role = config.models.agent
    if role.backend.kind == "openai":
        one_call(OpenAIBackend(role, tokenizer_path=os.devnull))
    return config.run.run_root


@pytest.fixture(scope="module")
def probe_flow() -> Any:
    from prefect import flow

    return flow(name="operator-probe", validate_parameters=True)(probe_flow_function)


def project_pool(working_dir: Path) -> str:
    from ragdistill.deployments.register import ensure_work_pool

    name = f"operator-{uuid.uuid4().hex[:8]}"
    assert ensure_work_pool(name, working_dir) is True
    return name


def create_run(deployment_id: uuid.UUID, enforce_schema: bool = True, **fields: Any) -> Any:
    """A flow run of the deployment created by a plain API request (``enforce_parameter_schema`` off is
    what a client may ask for); the run, or the server's refusal as ``PrefectHTTPStatusError``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun

    body = {"state": {"type": "SCHEDULED"}, "enforce_parameter_schema": enforce_schema, **fields}
    with get_client(sync_client=True) as client:
        response = client.request(
            "POST", "/deployments/{id}/create_flow_run", path_params={"id": deployment_id}, json=body
        )
    return FlowRun.model_validate(response.json())


def test_operator_settings_config_paths_and_job_variables_are_refused_when_a_run_is_created(
    prefect_server: None, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

    from ragdistill.deployments.register import ensure_work_pool, runner_deployments
    from ragdistill.deployments.specs import DeploymentPlan
    from ragdistill.orchestration.worker import project_job_template

    pool = project_pool(REPO)
    own_config = tmp_path / "operators-own.yaml"
    own_config.write_text((REPO / "configs" / "demo-alfworld.yaml").read_text())
    ids = {}
    for config_name in ("demo-alfworld", str(own_config)):
        deployments = runner_deployments(DeploymentPlan(config_name, work_pool=pool, gpu_work_pool=pool))
        (index,) = [d for d in deployments if d.full_name.startswith("index/")]
        index.name = f"operator-{uuid.uuid4().hex[:8]}"
        ids[config_name] = index.apply()
    named = ids["demo-alfworld"]

    refused: list[dict[str, Any]] = [
        {"overrides": nested({key: value})} for key, value in OPERATOR_OVERRIDES.items()
    ]
    refused += [{"config_name": path} for path in [*CONFIG_PATHS, str(own_config)]]
    for parameters in refused:
        with pytest.raises(PrefectHTTPStatusError) as error:
            create_run(named, parameters=parameters)
        assert error.value.response.status_code == 409, parameters  # Prefect's answer to a parameter
        assert "Error creating flow run: Validation failed" in error.value.response.text, parameters
    for job_variables in (
        {"command": "touch /tmp/pwned"},
        {"working_dir": "/etc"},
        {"env": {"BROWSER": "x"}},
    ):
        with pytest.raises(PrefectHTTPStatusError) as error:
            create_run(named, parameters={}, job_variables=job_variables)
        assert error.value.response.status_code == 422, job_variables
        assert "Additional properties are not allowed" in error.value.response.text, job_variables

    accepted = create_run(
        named, parameters={"overrides": {"env": {"limit": 2}}}, job_variables={"labels": {}}
    )
    assert accepted.parameters == {"config_name": "demo-alfworld", "overrides": {"env": {"limit": 2}}}
    own = create_run(ids[str(own_config)], parameters={})
    assert own.parameters == {"config_name": str(own_config)}, "a deployment's own config file is accepted"
    with pytest.raises(PrefectHTTPStatusError, match="Validation failed"):
        create_run(ids[str(own_config)], parameters={"config_name": "/etc/passwd"})

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(pool).base_job_template
        prefects_own = (
            f"operator-{uuid.uuid4().hex[:8]}"  # as `prefect work-pool create` or a worker makes it
        )
        client.create_work_pool(
            WorkPoolCreate(
                name=prefects_own,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
        assert ensure_work_pool(prefects_own, REPO) is False
        assert client.read_work_pool(prefects_own).base_job_template == template == project_job_template(REPO)
    forced = {"command": "touch /tmp/pwned", "working_dir": "/etc", "env": {"BROWSER": "x"}, "env.PATH": "/x"}
    job = asyncio.run(ProcessJobConfiguration.from_template_and_values(template, forced))
    assert (job.command, job.working_dir, job.env) == (None, REPO, {}), (
        "variables stored past the server's check are ignored: the worker runs Prefect's own command in "
        "the pool's folder with its own environment"
    )


def finished(flow: Any, flow_run: Any) -> Any:
    """Run a created flow run in this process, as the worker's flow-run process does; its final state."""
    from prefect.flow_engine import run_flow

    return run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")


def test_a_run_past_the_servers_check_is_refused_when_its_flow_starts_before_it_reads_or_sends_anything(
    prefect_server: None, probe_flow: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.deployments.runner import RunnerDeployment

    monkeypatch.chdir(REPO)
    monkeypatch.delenv(RUN_ROOT_PREFIX_ENV, raising=False)
    secret = f"planted-{uuid.uuid4().hex}"
    monkeypatch.setenv(PLANTED_KEY_ENV, secret)
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_secret_access_key = {secret}\n")

    pool = project_pool(REPO)
    deployment = RunnerDeployment.from_flow(
        probe_flow,
        name=f"operator-{uuid.uuid4().hex[:8]}",
        parameters={"config_name": "demo-alfworld"},
        work_pool_name=pool,
    )
    deployment_id = deployment.apply()

    with listener(chat_completion) as (url, requests), audited(tmp_path) as touched:
        hostile = [
            {"overrides": nested({"models.agent.backend.kind": "openai", **{
                "models.agent.backend.base_url": f"{url}/v1", "models.agent.backend.api_key_env": PLANTED_KEY_ENV}})},
            {"overrides": nested({"models.agent.model.trust_remote_code": True})},
            {"overrides": nested({"env.data_dir": str(tmp_path)})},
            {"config_name": str(credentials)},
            {"config_name": "../x.yaml"},
            {"run_root": str(tmp_path / "run")},
            {"overrides": nested({"run.run_root": "file://./runs/../../outside"})},
        ]  # fmt: skip
        states = [finished(probe_flow, create_run(deployment_id, False, parameters=p)) for p in hostile]
    for parameters, state in zip(hostile, states, strict=True):
        assert state.is_failed(), (parameters, state)
        assert secret not in str(state.message) and secret not in repr(state.data)
    messages = [str(state.message) for state in states]
    assert all("the operator's setting" in message for message in messages[:3]), messages[:3]
    assert all("is not a config under" in message for message in messages[3:5]), messages[3:5]
    assert all("lies outside the folders holding the run roots" in message for message in messages[5:]), (
        messages
    )
    assert requests == [], "no request reached the run's own server, the key least of all"
    assert touched == [], "nothing the run named was read, the credentials file least of all"

    inside = create_run(deployment_id, False, parameters={"run_root": "file://./runs/operator-probe"})
    state = finished(probe_flow, inside)
    assert state.is_completed() and state.result() == "file://./runs/operator-probe", state.message
