"""The Prefect server process: launched as ``prefect server start``, waited for until it answers,
recognised by its pid, and stopped with its process group.

The server listens on 127.0.0.1 only, whatever the environment says (``PREFECT_SERVER_API_HOST``), and
runs under an owner-only umask, so the database and log it creates are the owner's alone. Where its
state is recorded and who may start or stop it is ``orchestration.server``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ragdistill.errors import UserFacingError
from ragdistill.orchestration.api_access import API_URL_ENV, OWNER_ONLY_UMASK, client_credentials, http_status
from ragdistill.processes import process_alive

HOME_ENV = "PREFECT_HOME"
ANALYTICS_ENV = "PREFECT_SERVER_ANALYTICS_ENABLED"
SERVER_HOST_ENV = "PREFECT_SERVER_API_HOST"
SERVER_PORT_ENV = "PREFECT_SERVER_API_PORT"
LOG_FILE = "server.log"
HOST = "127.0.0.1"
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 20

logger = logging.getLogger(__name__)

# Servers this process started, so that their exit is reaped (a zombie still answers os.kill(pid, 0)).
_started_here: dict[int, subprocess.Popen[bytes]] = {}


class PrefectServerError(UserFacingError, RuntimeError):
    """The Prefect server could not be reached, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class ServerState:
    """A server started for this project, as recorded in ``server.json``."""

    api_url: str
    pid: int
    port: int
    keep: bool
    """True: stays up until ``server.stop_server``; False: the last ``server.prefect_api`` block stops it."""

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def health_status(api_url: str, timeout_s: float) -> int | None:
    """The HTTP status of ``<api_url>/health`` (which Prefect serves without credentials)."""
    return http_status(api_url.rstrip("/") + "/health", timeout_s, client_credentials())


def api_answers(api_url: str, timeout_s: float = 5.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url`` (which ends in ``/api``)."""
    return health_status(api_url, timeout_s) == 200


def _process_alive(pid: int) -> bool:
    child = _started_here.get(pid)
    if child is not None:
        return child.poll() is None
    return process_alive(pid)


def is_prefect_server(pid: int) -> bool:
    """Guards every signal against a pid that the system has since given to another program."""
    if not _process_alive(pid):
        return False
    if not Path("/proc").is_dir():
        return True
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"prefect" in command_line and b"server" in command_line


def _wait_gone(pid: int, timeout_s: float) -> bool:
    child = _started_here.get(pid)
    if child is not None:
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while _process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def terminate_server(pid: int) -> None:
    """SIGTERM to the server's process group (it leads its own session), SIGKILL if it lingers."""
    for signal_number, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, signal_number)
        except ProcessLookupError:
            break
        if _wait_gone(pid, wait_s):
            break
    if _process_alive(pid):
        raise PrefectServerError(f"the Prefect server (pid {pid}) did not stop: end it with `kill -9 {pid}`")
    _started_here.pop(pid, None)


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_until_answering(
    process: subprocess.Popen[bytes], api_url: str, log_path: Path, timeout_s: float
) -> None:
    started = time.monotonic()
    while not api_answers(api_url, timeout_s=2.0):
        if process.poll() is not None:
            raise PrefectServerError(
                f"the Prefect server exited with code {process.returncode} while starting; "
                f"the end of {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() - started > timeout_s:
            raise PrefectServerError(
                f"the Prefect server did not answer at {api_url} within {timeout_s:.0f} s (a first start "
                "creates and migrates its database, which a busy machine makes slow): retry with a longer "
                f"wait (`ragdistill server start --timeout 900`); the end of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.25)
    logger.info("the Prefect server answered at %s after %.1f s", api_url, time.monotonic() - started)


def launch_server(home: Path, port: int | None, timeout_s: float, keep: bool) -> ServerState:
    """Start ``prefect server start`` for ``home`` on ``port`` (a free one when None), its output
    appended to the home's log, and return once it answers (stopping it when it does not in time)."""
    port = port or _free_port()
    api_url = f"http://{HOST}:{port}/api"
    log_path = home / LOG_FILE
    # The UI's API address derives from these settings, not from --host/--port: without them the UI
    # served on any port but Prefect's default 4200 calls an API that is not there.
    env = {**os.environ, HOME_ENV: str(home), SERVER_HOST_ENV: HOST, SERVER_PORT_ENV: str(port)}
    env.pop(API_URL_ENV, None)
    env.setdefault(ANALYTICS_ENV, "false")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    log_descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(log_descriptor, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} ragdistill: {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=OWNER_ONLY_UMASK,
        )
    _started_here[process.pid] = process
    try:
        _wait_until_answering(process, api_url, log_path, timeout_s)
    except BaseException:
        if process.poll() is None:
            terminate_server(process.pid)
        raise
    return ServerState(api_url=api_url, pid=process.pid, port=port, keep=keep)
