"""Who can reach the Prefect API and read the project's server's files (issue 19, item 6).

Prefect's open-source server lets anyone who reaches its API start runs and change deployments and work
pools. The project's server listens on loopback only and keeps its home, database and log to their owner;
a ``PREFECT_API_URL`` beyond this machine is used only when that server turned on basic auth
(``PREFECT_SERVER_API_AUTH_STRING``) and this process holds the string (``PREFECT_API_AUTH_STRING``).
The API tests serve Prefect's own API app (its auth middleware, no database needed for the probe)
on a loopback port, reached as ``0.0.0.0`` where it must count as beyond this machine.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ragdistill.orchestration import server, server_process
from ragdistill.orchestration.api_access import (
    API_URL_ENV,
    AUTH_STRING_ENV,
    OpenApiError,
    check_protected_api,
    is_loopback_host,
)

AUTH_STRING = "operator:correct-horse-battery"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_an_existing_prefect_home_and_its_database_become_the_owners_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A home or database made before (or by Prefect under a loose umask) was readable by every local
    user: run parameters, logs and block documents."""
    home = tmp_path / "prefect-home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    for name in ("prefect.db", "prefect.db-wal", "server.log", "profiles.toml"):
        (home / name).write_text("x")
        (home / name).chmod(0o644)
    elsewhere = tmp_path / "not-prefects.txt"
    elsewhere.write_text("x")
    elsewhere.chmod(0o644)
    (home / "prefect.db-shm").symlink_to(elsewhere)
    monkeypatch.setenv(server.HOME_ENV, str(home))

    assert server.configure_prefect_home() == home
    assert mode(home) == 0o700
    assert {
        name: mode(home / name) for name in ("prefect.db", "prefect.db-wal", "server.log", "profiles.toml")
    } == {
        "prefect.db": 0o600,
        "prefect.db-wal": 0o600,
        "server.log": 0o600,
        "profiles.toml": 0o600,
    }
    assert mode(elsewhere) == 0o644, "a link is never followed out of the home"


def test_the_projects_server_listens_on_loopback_and_makes_its_files_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the environment asks (``PREFECT_SERVER_API_HOST=0.0.0.0``), the server binds 127.0.0.1; it
    runs under umask 077, so the SQLite database it creates is the owner's alone, and so is its log."""
    started: dict[str, Any] = {}

    class RecordedServer:
        pid = 4242

        def __init__(self, command: list[str], **options: Any) -> None:
            started.update(command=command, **options)

        def poll(self) -> int | None:
            return None

    monkeypatch.setenv("PREFECT_SERVER_API_HOST", "0.0.0.0")
    monkeypatch.setattr(server_process.subprocess, "Popen", RecordedServer)
    monkeypatch.setattr(server_process, "_wait_until_answering", lambda *args: None)
    previous = os.umask(0o022)
    try:
        state = server_process.launch_server(tmp_path, port=4999, timeout_s=1.0, keep=False)
    finally:
        os.umask(previous)
        server_process._started_here.pop(RecordedServer.pid, None)
    command = started["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert started["env"][server_process.SERVER_HOST_ENV] == "127.0.0.1"
    assert state.api_url == "http://127.0.0.1:4999/api"
    assert started["umask"] == 0o077
    assert mode(tmp_path / server_process.LOG_FILE) == 0o600


def test_a_process_under_the_servers_umask_creates_owner_only_files(tmp_path: Path) -> None:
    """What ``umask=0o077`` on Popen means for the files the server creates (its SQLite database)."""
    subprocess.run(
        [sys.executable, "-c", f"open({str(tmp_path / 'prefect.db')!r}, 'w').close()"],
        check=True,
        umask=server_process.OWNER_ONLY_UMASK,
    )
    assert mode(tmp_path / "prefect.db") == 0o600


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("prefect-server", False),
        ("10.0.0.5", False),
        ("localhost.example.com", False),
        (None, False),
    ],
)
def test_only_loopback_addresses_count_as_this_machine(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@contextmanager
def prefect_api_app(auth_string: str | None) -> Iterator[int]:
    """Prefect's own API app (``create_api_app``) served on a loopback port, with basic auth when
    ``auth_string`` is given; the port. No lifespan: the probe's paths need no database."""
    import uvicorn
    from prefect.server.api.server import create_api_app
    from prefect.settings import PREFECT_SERVER_API_AUTH_STRING, temporary_settings

    with temporary_settings(updates={PREFECT_SERVER_API_AUTH_STRING: auth_string}):
        app = create_api_app(ignore_cache=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    api = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    thread = threading.Thread(target=api.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not api.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        api.should_exit = True
        thread.join(timeout=10)


def test_an_api_beyond_this_machine_is_used_only_with_basic_auth_turned_on_and_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(AUTH_STRING_ENV, raising=False)
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    with prefect_api_app(auth_string=None) as port:
        check_protected_api(f"http://127.0.0.1:{port}", "127.0.0.1")  # the project's own kind: loopback
        monkeypatch.setenv(API_URL_ENV, f"http://0.0.0.0:{port}")
        with (
            pytest.raises(OpenApiError, match="answers requests without credentials") as open_api,
            server.prefect_api(),
        ):
            pytest.fail("a run must not reach an open API beyond this machine")
        assert "PREFECT_SERVER_API_AUTH_STRING=USER:PASSWORD" in str(open_api.value)
        monkeypatch.setenv(AUTH_STRING_ENV, AUTH_STRING)
        with pytest.raises(OpenApiError, match="without credentials"):
            check_protected_api(f"http://0.0.0.0:{port}", "127.0.0.1")

    with prefect_api_app(auth_string=AUTH_STRING) as port:
        url = f"http://0.0.0.0:{port}"
        monkeypatch.delenv(AUTH_STRING_ENV)
        with pytest.raises(OpenApiError, match=f"{AUTH_STRING_ENV} is not set"):
            check_protected_api(url, "127.0.0.1")
        monkeypatch.setenv(AUTH_STRING_ENV, "operator:wrong")
        with pytest.raises(OpenApiError, match="refuses this process's credentials"):
            check_protected_api(url, "127.0.0.1")
        monkeypatch.setenv(AUTH_STRING_ENV, AUTH_STRING)
        check_protected_api(url, "127.0.0.1")
