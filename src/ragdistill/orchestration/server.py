"""The project's Prefect server: one ``prefect server start`` process per Prefect home, reused by every run.

Why not Prefect's ephemeral mode (a flow called with no ``PREFECT_API_URL``): its temporary server must
answer within ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s), but a first start creates and
migrates the SQLite database, which takes 26–31 s on 2 busy cores; and it is stopped at interpreter exit
before the client has sent the last logs and events. Here the server is a separate process given minutes
to start, the client's queues are flushed before it is stopped, and a server that is already running
(``ragdistill server start``) is reused, so run history accumulates in one place.

Files under the Prefect home (:func:`project_prefect_home`):

- ``server.json``: the running server (API URL, pid, port, whether it stays up), written once it answers;
- ``server.log``: its output, appended at each start;
- ``server.lock``: held while a process looks for, starts or stops the server;
- ``server.users.lock``: held shared by every :func:`prefect_api` block using the server, so that the last
  block to leave stops a server that a run started, and none stops one that another run still talks to.

Who can reach it: the server listens on 127.0.0.1 only, whatever the environment says
(``PREFECT_SERVER_API_HOST``); its home, database and log are the owner's alone; a ``PREFECT_API_URL``
beyond this machine must require credentials (``orchestration.api_access``).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO

from ragdistill.errors import UserFacingError
from ragdistill.orchestration.api_access import (
    API_URL_ENV,
    OWNER_ONLY_UMASK,
    check_protected_api,
    client_credentials,
    http_status,
    keep_owner_only,
)
from ragdistill.paths import project_root
from ragdistill.processes import process_alive

HOME_ENV = "PREFECT_HOME"
MEMO_STORE_ENV = "PREFECT_SERVER_MEMO_STORE_PATH"
ANALYTICS_ENV = "PREFECT_SERVER_ANALYTICS_ENABLED"
EXTRA_LOGGERS_ENV = "PREFECT_LOGGING_EXTRA_LOGGERS"
LOGS_OUTSIDE_FLOWS_ENV = "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"
SERVER_HOST_ENV = "PREFECT_SERVER_API_HOST"
SERVER_PORT_ENV = "PREFECT_SERVER_API_PORT"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
START_LOCK_FILE = "server.lock"
USERS_LOCK_FILE = "server.users.lock"
HOST = "127.0.0.1"
HOME_FILES = ("prefect.db", "prefect.db-wal", "prefect.db-shm", "prefect.db-journal", "profiles.toml")
"""Files Prefect keeps in its home that hold run history, logs or settings: the owner's alone."""
DEFAULT_START_TIMEOUT_S = 300.0
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
    """True: stays up until :func:`stop_server`; False: the last :func:`prefect_api` block stops it."""

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def project_prefect_home() -> Path:
    """``$PREFECT_HOME`` when set, else ``.prefect`` at the root of the enclosing git work tree, else in
    the current directory (:func:`ragdistill.paths.project_root`)."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return project_root() / ".prefect"


def configure_prefect_home() -> Path:
    """Point Prefect at :func:`project_prefect_home` (and turn its server analytics off unless set).

    Call it before anything imports ``prefect``: Prefect reads its settings (home, profiles, database,
    result storage) from the environment when it is first imported, so a later change reaches only
    subprocesses and the settings :func:`prefect_api` refreshes. Calling it again is harmless: the
    second call finds ``PREFECT_HOME`` set and keeps it.
    """
    home = project_prefect_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    keep_owner_only(home, (*HOME_FILES, LOG_FILE, STATE_FILE))
    os.environ[HOME_ENV] = str(home)
    os.environ.setdefault(ANALYTICS_ENV, "false")
    # ragdistill's own INFO lines (stage progress, skips, retries) in each run's logs in the UI.
    os.environ.setdefault(EXTRA_LOGGERS_ENV, "ragdistill")
    os.environ.setdefault(LOGS_OUTSIDE_FLOWS_ENV, "ignore")  # a plain stage call logs to the console only
    # Prefect 3.7 derives this path from the home only in some code paths, else from ~/.prefect.
    os.environ.setdefault(MEMO_STORE_ENV, str(home / "memo_store.toml"))
    return home


def _health_status(api_url: str, timeout_s: float) -> int | None:
    """The HTTP status of ``<api_url>/health`` (which Prefect serves without credentials)."""
    return http_status(api_url.rstrip("/") + "/health", timeout_s, client_credentials())


def api_answers(api_url: str, timeout_s: float = 5.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url`` (which ends in ``/api``)."""
    return _health_status(api_url, timeout_s) == 200


def _process_alive(pid: int) -> bool:
    child = _started_here.get(pid)
    if child is not None:
        return child.poll() is None
    return process_alive(pid)


def _is_prefect_server(pid: int) -> bool:
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


def _terminate(pid: int) -> None:
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


def _read_state(home: Path) -> ServerState | None:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return ServerState(str(data["api_url"]), int(data["pid"]), int(data["port"]), bool(data["keep"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring an unreadable %s", home / STATE_FILE)
        return None


def _write_state(home: Path, state: ServerState) -> None:
    partial = home / f"{STATE_FILE}.partial"
    partial.write_text(json.dumps(asdict(state), indent=2) + "\n")
    partial.replace(home / STATE_FILE)


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[IO[str]]:
    with path.open("a") as handle:
        fcntl.flock(handle, mode)
        yield handle


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


def _launch(home: Path, port: int | None, timeout_s: float, keep: bool) -> ServerState:
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
            _terminate(process.pid)
        raise
    state = ServerState(api_url=api_url, pid=process.pid, port=port, keep=keep)
    _write_state(home, state)
    return state


def _ensure_server(home: Path, timeout_s: float, port: int | None, keep: bool) -> tuple[ServerState, bool]:
    """The running server or a new one (True when started here); the caller holds the start lock."""
    state = _read_state(home)
    if state is not None and _is_prefect_server(state.pid):
        if not api_answers(state.api_url, timeout_s=10.0):
            raise PrefectServerError(
                f"the project's Prefect server (pid {state.pid}, {state.api_url}) is running but does not "
                f"answer: stop it with `ragdistill server stop` and retry; its log is {home / LOG_FILE}"
            )
        if keep and not state.keep:
            state = replace(state, keep=True)
            _write_state(home, state)
        return state, False
    (home / STATE_FILE).unlink(missing_ok=True)
    return _launch(home, port, timeout_s, keep), True


def start_server(
    timeout_s: float = DEFAULT_START_TIMEOUT_S, port: int | None = None, keep: bool = True
) -> tuple[ServerState, bool]:
    """The project's server, started in the background unless one already runs (then ``port`` is
    ignored); the flag is True when this call started it. ``keep`` marks it to stay up until
    :func:`stop_server`, also when a run started it."""
    home = configure_prefect_home()
    with _locked(home / START_LOCK_FILE, fcntl.LOCK_EX):
        return _ensure_server(home, timeout_s, port, keep)


def stop_server() -> ServerState | None:
    """Stop the project's server, whoever started it; None when none was running."""
    home = configure_prefect_home()
    with _locked(home / START_LOCK_FILE, fcntl.LOCK_EX):
        state = _read_state(home)
        running = state is not None and _is_prefect_server(state.pid)
        if state is not None and running:
            _terminate(state.pid)
        (home / STATE_FILE).unlink(missing_ok=True)
        return state if running else None


def server_status() -> ServerState | None:
    """The project's server when its process is running (check :func:`api_answers` for its health)."""
    state = _read_state(project_prefect_home())
    return state if state is not None and _is_prefect_server(state.pid) else None


def _flush_client_queues(timeout_s: float = 30.0) -> None:
    """Send the logs and events that Prefect's background workers still hold (the ephemeral mode
    stops its server first and loses them)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        for worker in (APILogWorker, EventsWorker):
            pending = worker.drain_all(timeout=timeout_s, at_exit=False)
            if inspect.isawaitable(pending):
                await pending

    run_coro_as_sync(drain())


@contextmanager
def _client_pointed_at(api_url: str) -> Iterator[None]:
    """Point this process's Prefect client at ``api_url`` for the block, and subprocesses through
    ``PREFECT_API_URL``.

    Prefect reads the environment once, at import, into a global settings context that clients and
    the log and event workers consult whenever no context of their own is active; setting the variable
    alone would reach neither an already imported ``prefect`` nor an outer ``temporary_settings`` (such
    as ``prefect_test_harness``). So the global context is rebuilt from the environment on the way in
    and out, and ``temporary_settings`` overrides any outer context for this thread and what it spawns.
    """
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get(API_URL_ENV)
    os.environ[API_URL_ENV] = api_url
    try:
        prefect.context.refresh_global_settings_context()
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            try:
                yield
            finally:
                _flush_client_queues()
    finally:
        if saved is None:
            os.environ.pop(API_URL_ENV, None)
        else:
            os.environ[API_URL_ENV] = saved
        prefect.context.refresh_global_settings_context()


def _check_configured_api(api_url: str) -> None:
    status = _health_status(api_url, timeout_s=10.0)
    if status == 200:
        check_protected_api(api_url, HOST)
        return
    unset = "or unset PREFECT_API_URL (ragdistill then uses the project's own server, starting it if needed)"
    if status is None:
        raise PrefectServerError(
            f"PREFECT_API_URL is {api_url}, but nothing answers at {api_url.rstrip('/')}/health: start "
            f"that server {unset}"
        )
    raise PrefectServerError(
        f"PREFECT_API_URL is {api_url}, but {api_url.rstrip('/')}/health answered HTTP {status}: check the "
        f"URL (a Prefect API URL ends in /api, e.g. http://127.0.0.1:4200/api) {unset}"
    )


def _leave(home: Path, users: IO[str]) -> None:
    """Release this block's use of the server, stopping it when it is a run's server and no other
    block uses it."""
    try:
        with _locked(home / START_LOCK_FILE, fcntl.LOCK_EX):
            state = _read_state(home)
            if state is None or state.keep:
                return
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            if _is_prefect_server(state.pid):
                _terminate(state.pid)
            (home / STATE_FILE).unlink(missing_ok=True)
    finally:
        users.close()


@contextmanager
def prefect_api(timeout_s: float = DEFAULT_START_TIMEOUT_S, keep: bool = False) -> Iterator[str]:
    """The Prefect API URL for a run; flows called inside the block report to it.

    ``PREFECT_API_URL`` when set (it must answer), else the project's running server, else a server
    started now (waiting up to ``timeout_s`` for it: a first start migrates its database). A server
    started here is stopped when the last block using it leaves, unless ``keep``; one started by
    ``ragdistill server start`` stays up. Calls :func:`configure_prefect_home` first.
    """
    home = configure_prefect_home()
    configured = os.environ.get(API_URL_ENV)
    if configured:
        _check_configured_api(configured)
        with _client_pointed_at(configured):
            yield configured
        return
    with _locked(home / START_LOCK_FILE, fcntl.LOCK_EX):
        state, _ = _ensure_server(home, timeout_s, None, keep)
        users = (home / USERS_LOCK_FILE).open("a")
        fcntl.flock(users, fcntl.LOCK_SH)
    try:
        with _client_pointed_at(state.api_url):
            yield state.api_url
    finally:
        _leave(home, users)
