"""The project's Prefect server: a first run on a machine that never ran Prefect, reuse, the CLI, errors.

The slow tests start real ``prefect server start`` processes on an empty Prefect home (a first start
creates and migrates the SQLite database: 8–30 s on 2 cores) and run real flows against them.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragdistill.cli_server import server_app
from ragdistill.orchestration.server import (
    ANALYTICS_ENV,
    API_URL_ENV,
    HOME_ENV,
    STATE_FILE,
    PrefectServerError,
    api_answers,
    configure_prefect_home,
    prefect_api,
    project_prefect_home,
    start_server,
    stop_server,
)

# Run as a user would: a second process that finds the running server through the Prefect home alone,
# importing prefect inside the block as `ragdistill pipeline` does.
SECOND_PROCESS_RUN = textwrap.dedent(
    """
    import json, sys
    from ragdistill.orchestration.server import prefect_api

    with prefect_api() as api_url:
        from prefect import flow

        @flow(name="second-process", log_prints=True)
        def second_process(marker: str) -> str:
            print(marker)
            return marker

        state = second_process(sys.argv[1], return_state=True)
    print(json.dumps({"api_url": api_url, "flow_run_id": str(state.state_details.flow_run_id)}))
    """
)


@pytest.fixture
def fresh_prefect_home(tmp_path: Path) -> Iterator[Path]:
    """An empty Prefect home and no PREFECT_API_URL, as on a machine that never ran Prefect. Afterwards any
    server left in it is stopped and the environment and Prefect's global settings (if imported) restored."""
    saved = {key: os.environ.get(key) for key in (HOME_ENV, API_URL_ENV)}
    home = tmp_path / "prefect-home"
    os.environ[HOME_ENV] = str(home)
    os.environ.pop(API_URL_ENV, None)
    try:
        yield home
    finally:
        stop_server()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if "prefect.context" in sys.modules:
            sys.modules["prefect.context"].refresh_global_settings_context()


def flow_run_and_logs(flow_run_id: str) -> tuple[Any, list[str]]:
    """The flow run as the current API records it, and its log messages (through Prefect's own client)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(flow_run_id))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return run, [log.message for log in logs]


def current_client_api_url() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_first_run_starts_a_server_records_every_run_and_stops_it(fresh_prefect_home: Path) -> None:
    from prefect import flow

    @flow(name="in-process", log_prints=True)
    def in_process(marker: str) -> str:
        print(marker)
        return marker

    started = time.monotonic()
    with prefect_api(timeout_s=600) as api_url:
        first_start_s = time.monotonic() - started
        state = json.loads((fresh_prefect_home / STATE_FILE).read_text())
        assert state["api_url"] == api_url and state["keep"] is False
        assert api_answers(api_url) and (fresh_prefect_home / "prefect.db").is_file()
        assert os.environ[API_URL_ENV] == api_url and current_client_api_url() == api_url

        second_marker = f"second process {uuid.uuid4()}"
        env = {key: value for key, value in os.environ.items() if key != API_URL_ENV}
        second = subprocess.run(
            [sys.executable, "-c", SECOND_PROCESS_RUN, second_marker],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=fresh_prefect_home.parent,
        )
        assert second.returncode == 0, second.stderr[-3000:]
        reported = json.loads(second.stdout.strip().splitlines()[-1])
        assert reported["api_url"] == api_url, "the second process must reuse the running server"
        assert process_exists(state["pid"]) and api_answers(api_url), "still in use here: must stay up"
        run, messages = flow_run_and_logs(reported["flow_run_id"])
        assert run.flow_id and run.state is not None and run.state.is_completed()
        assert second_marker in messages

        in_process_marker = f"in process {uuid.uuid4()}"
        in_process_run_id = str(in_process(in_process_marker, return_state=True).state_details.flow_run_id)

    assert not process_exists(state["pid"]), "the server a run started must stop with the last user"
    assert not (fresh_prefect_home / STATE_FILE).exists() and not api_answers(api_url)
    assert API_URL_ENV not in os.environ
    print(f"first start with migrations: {first_start_s:.1f} s")

    # The database outlives the server: a later run sees the last run, down to its last log line, which
    # was still queued in this process when the block ended.
    with prefect_api(timeout_s=600):
        run, messages = flow_run_and_logs(in_process_run_id)
        assert run.state is not None and run.state.is_completed()
        assert in_process_marker in messages


@pytest.mark.slow
def test_cli_server_stays_up_between_runs_until_stopped(fresh_prefect_home: Path) -> None:
    runner = CliRunner()
    started = runner.invoke(server_app, ["start", "--timeout", "600"])
    assert started.exit_code == 0, started.output
    summary = json.loads(started.output.strip().splitlines()[-1])
    assert "started" in started.output and summary["ui_url"] in started.output
    assert summary["running"] and summary["prefect_home"] == str(fresh_prefect_home)

    again = runner.invoke(server_app, ["start"])
    assert again.exit_code == 0 and "already running" in again.output
    assert json.loads(again.output.strip().splitlines()[-1])["pid"] == summary["pid"]

    with prefect_api() as api_url:
        assert api_url == summary["api_url"]
    assert api_answers(api_url), "a run must leave a server started by `server start` running"

    status = runner.invoke(server_app, ["status"])
    assert status.exit_code == 0 and summary["ui_url"] in status.output

    stopped = runner.invoke(server_app, ["stop"])
    assert stopped.exit_code == 0 and "stopped" in stopped.output
    assert not process_exists(summary["pid"]) and not api_answers(api_url)
    status = runner.invoke(server_app, ["status"])
    assert status.exit_code == 1 and "no Prefect server" in status.output
    assert "no Prefect server" in runner.invoke(server_app, ["stop"]).output


@pytest.mark.slow
def test_a_server_that_dies_while_starting_is_reported_with_its_log(fresh_prefect_home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PrefectServerError) as error:
            start_server(timeout_s=300, port=port)
    message = str(error.value)
    assert "exited with code" in message and f"Port {port} is already in use" in message
    assert str(fresh_prefect_home / "server.log") in message
    assert not (fresh_prefect_home / STATE_FILE).exists()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_configured_url_where_nothing_listens_is_a_clear_error(
    fresh_prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_url = f"http://127.0.0.1:{unused_port()}/api"
    monkeypatch.setenv(API_URL_ENV, api_url)
    with pytest.raises(PrefectServerError) as error, prefect_api(timeout_s=5):
        pytest.fail("the block must not run")
    message = str(error.value)
    assert api_url in message and "nothing answers" in message and "unset PREFECT_API_URL" in message
    assert not (fresh_prefect_home / STATE_FILE).exists(), "no server may be started instead"


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with 404, like a web server that is not a Prefect API."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_configured_url_that_is_not_a_prefect_api_names_the_http_status(
    fresh_prefect_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFoundHandler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        api_url = f"http://127.0.0.1:{web.server_address[1]}"
        monkeypatch.setenv(API_URL_ENV, api_url)
        try:
            with pytest.raises(PrefectServerError, match="answered HTTP 404") as error, prefect_api():
                pytest.fail("the block must not run")
        finally:
            web.shutdown()
    assert "ends in /api" in str(error.value)


def test_prefect_home_is_the_users_else_the_projects_else_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "configs").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.delenv(ANALYTICS_ENV, raising=False)

    monkeypatch.chdir(elsewhere)
    assert project_prefect_home() == elsewhere / ".prefect"
    monkeypatch.chdir(project / "configs")
    assert project_prefect_home() == project / ".prefect"

    home = configure_prefect_home()
    assert home == project / ".prefect" and home.is_dir()
    assert os.environ[HOME_ENV] == str(home) and os.environ[ANALYTICS_ENV] == "false"
    monkeypatch.chdir(elsewhere)
    assert configure_prefect_home() == home, "a second call keeps the home the first one chose"

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv(ANALYTICS_ENV, "true")
    assert configure_prefect_home() == tmp_path / "mine" and os.environ[ANALYTICS_ENV] == "true"
