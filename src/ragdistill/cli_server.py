"""`ragdistill server …`: the project's Prefect server, kept running between runs for history and the UI."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from ragdistill.orchestration.server import (
    DEFAULT_START_TIMEOUT_S,
    LOG_FILE,
    ServerState,
    api_answers,
    project_prefect_home,
    server_status,
    start_server,
    stop_server,
)

server_app = typer.Typer(
    no_args_is_help=True,
    help="The project's Prefect server (state in .prefect/ or $PREFECT_HOME); `ragdistill pipeline` uses it.",
)


def _print_json_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def _summary(state: ServerState | None, answers: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"prefect_home": str(project_prefect_home()), "running": state is not None}
    if state is not None:
        payload.update(api_url=state.api_url, ui_url=state.ui_url, pid=state.pid, answers=answers)
    return payload


@server_app.command("start")
def start(
    port: Annotated[
        int | None, typer.Option("--port", help="Port to listen on (default: a free one).")
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Seconds to wait for it to answer; a first start migrates its database."
        ),
    ] = DEFAULT_START_TIMEOUT_S,
) -> None:
    """Start the server in the background, or report the one already running."""
    state, started = start_server(timeout_s=timeout, port=port, keep=True)
    verb = "started" if started else "already running"
    typer.echo(f"Prefect server {verb} (pid {state.pid}): UI at {state.ui_url}")
    if not started and port is not None and port != state.port:
        typer.echo(f"note: --port {port} ignored; stop the running server first to move it")
    typer.echo(f"log: {project_prefect_home() / LOG_FILE}; stop it with `ragdistill server stop`")
    _print_json_line(_summary(state, answers=True))


@server_app.command("stop")
def stop() -> None:
    """Stop the server (also one that a run in progress is using)."""
    state = stop_server()
    if state is None:
        typer.echo(f"no Prefect server was running for {project_prefect_home()}")
    else:
        typer.echo(f"stopped the Prefect server (pid {state.pid}, {state.ui_url})")
    _print_json_line(_summary(None, answers=False))


@server_app.command("status")
def status() -> None:
    """Report the server; exits 1 unless it is running and answers."""
    state = server_status()
    answers = state is not None and api_answers(state.api_url)
    if state is None:
        typer.echo(f"no Prefect server is running for {project_prefect_home()}")
    elif answers:
        typer.echo(f"Prefect server running (pid {state.pid}): UI at {state.ui_url}")
    else:
        typer.echo(f"Prefect server process {state.pid} runs but does not answer at {state.api_url}")
    _print_json_line(_summary(state, answers))
    if not answers:
        raise typer.Exit(1)
