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

This module decides when a server is started, reused and stopped, and points the client at it; the
process itself (launch, health check, stop) is ``orchestration.server_process``.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

from ragdistill.orchestration.api_access import API_URL_ENV, check_protected_api, keep_owner_only
from ragdistill.orchestration.server_process import (
    ANALYTICS_ENV,
    HOME_ENV,
    HOST,
    LOG_FILE,
    PrefectServerError,
    ServerState,
    api_answers,
    health_status,
    is_prefect_server,
    launch_server,
    terminate_server,
)
from ragdistill.paths import project_root

MEMO_STORE_ENV = "PREFECT_SERVER_MEMO_STORE_PATH"
EXTRA_LOGGERS_ENV = "PREFECT_LOGGING_EXTRA_LOGGERS"
LOGS_OUTSIDE_FLOWS_ENV = "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"
STATE_FILE = "server.json"
START_LOCK_FILE = "server.lock"
USERS_LOCK_FILE = "server.users.lock"
HOME_FILES = ("prefect.db", "prefect.db-wal", "prefect.db-shm", "prefect.db-journal", "profiles.toml")
"""Files Prefect keeps in its home that hold run history, logs or settings: the owner's alone."""
DEFAULT_START_TIMEOUT_S = 300.0

logger = logging.getLogger(__name__)


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


def _ensure_server(home: Path, timeout_s: float, port: int | None, keep: bool) -> tuple[ServerState, bool]:
    """The running server or a new one (True when started here); the caller holds the start lock."""
    state = _read_state(home)
    if state is not None and is_prefect_server(state.pid):
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
    state = launch_server(home, port, timeout_s, keep)
    _write_state(home, state)
    return state, True


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
        running = state is not None and is_prefect_server(state.pid)
        if state is not None and running:
            terminate_server(state.pid)
        (home / STATE_FILE).unlink(missing_ok=True)
        return state if running else None


def server_status() -> ServerState | None:
    """The project's server when its process is running (check :func:`api_answers` for its health)."""
    state = _read_state(project_prefect_home())
    return state if state is not None and is_prefect_server(state.pid) else None


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
    status = health_status(api_url, timeout_s=10.0)
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
            if is_prefect_server(state.pid):
                terminate_server(state.pid)
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
