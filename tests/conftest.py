"""Shared fixtures: quiet, single-threaded torch (a bare ``pytest``; ``make test`` exports 2 threads), a real
local S3 server (s3rver) for s3:// tests, and :func:`require`, the one way a test leaves out work whose
prerequisite this machine lacks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_HOME", str(Path(__file__).resolve().parents[1] / ".prefect" / "tests"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault(
    "PREFECT_SERVER_MEMO_STORE_PATH", str(Path(os.environ["PREFECT_HOME"]) / "memo_store.toml")
)

REPO_ROOT = Path(__file__).resolve().parents[1]
S3RVER = REPO_ROOT / ".cache" / "s3rver" / "node_modules" / ".bin" / "s3rver"
S3_BUCKET = "ragdistill-test"


def running_in_ci() -> bool:
    """Whether ``CI`` is set to a true value (``.ci/run`` exports ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(condition: bool, reason: str) -> None:
    """Skip the calling test (or fixture) when ``condition`` is false, naming in ``reason`` what is missing
    and how to install it. Under ``CI=true`` fail instead: CI installs every prerequisite (``.ci/run``,
    ``make setup``), so a missing one there is a broken set-up that must not pass as a skip."""
    if condition:
        return
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the test instead of skipping it)")
    pytest.skip(reason)


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.requires(condition, reason)`` (or a module's ``pytestmark``): :func:`require` before
    the test's fixtures run."""
    for mark in item.iter_markers(name="requires"):
        condition, reason = mark.args
        require(bool(condition), reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


def require_s3rver() -> None:
    require(S3RVER.exists(), f"s3rver is not installed at {S3RVER}; run `make setup`")


def launch_s3rver(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """s3rver serving ``directory`` (with the test bucket) on 127.0.0.1:``port``, once it listens."""
    process = subprocess.Popen(
        [
            str(S3RVER),
            "-d",
            str(directory),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--configure-bucket",
            S3_BUCKET,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # s3rver 3.7 makes list continuation tokens with a cipher OpenSSL 3 only has in its legacy provider.
        env={**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"},
    )
    try:
        wait_for_port(port, timeout_s=30)
    except TimeoutError:
        process.kill()
        raise
    return process


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 HTTP API on loopback (s3rver, installed by `make setup`), with the AWS variables set."""
    require_s3rver()
    port = free_port()
    directory = tmp_path_factory.mktemp("s3rver")
    process = launch_s3rver(directory, port)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        key: os.environ.get(key) for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_root(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the test bucket for one test."""
    return f"s3://{S3_BUCKET}/{request.node.name}-{time.monotonic_ns()}"


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server (temporary database) for the flow-level tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


POSTGRES_URL_ENV = "RAGDISTILL_TEST_POSTGRES_URL"
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_USER = "prefect"


def _postgres_bin() -> Path | None:
    """The newest Debian ``postgresql`` server's bin directory, or None when the package is missing."""
    candidates = sorted(
        (path for path in Path("/").glob(POSTGRES_BIN_GLOB.lstrip("/")) if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run the command as the package's ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL (``postgresql+asyncpg://``) of an empty PostgreSQL database for Prefect's server.

    ``$RAGDISTILL_TEST_POSTGRES_URL`` when set; else a throwaway cluster of Debian's ``postgresql`` package
    (``.ci/run`` installs it), initialised in a temporary directory and listening on a free loopback port
    with trust authentication, stopped and deleted afterwards.
    """
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
        return
    bin_dir = _postgres_bin()
    require(
        bin_dir is not None,
        f"PostgreSQL is not installed (apt-get install postgresql; `.ci/run` installs it) and "
        f"{POSTGRES_URL_ENV} is unset",
    )
    assert bin_dir is not None
    # Not under pytest's tmp dir: its parents are private to the current user, whom postgres is not.
    cluster = Path(tempfile.mkdtemp(prefix="ragdistill-postgres-"))
    data_dir, socket_dir = cluster / "data", cluster / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (cluster, socket_dir):
            shutil.chown(path, user="postgres", group="postgres")
    port = free_port()
    log = cluster / "postgres.log"
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
    run = partial(subprocess.run, check=True, capture_output=True, text=True, timeout=120)
    run(_as_postgres_user([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", POSTGRES_USER, "-A", "trust"]))
    ctl = [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log)]
    run(_as_postgres_user([*ctl, "-o", options, "-w", "start"]))
    try:
        run(
            _as_postgres_user(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    POSTGRES_USER,
                    "prefect",
                ]
            )
        )
        yield f"postgresql+asyncpg://{POSTGRES_USER}@127.0.0.1:{port}/prefect"
    finally:
        run(_as_postgres_user([*ctl, "-m", "fast", "-w", "stop"]), check=False)
        shutil.rmtree(cluster, ignore_errors=True)
