"""What every `ragdistill` command module shares: one-line errors, config loading and the JSON line."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

from ragdistill.config import ConfigError, ExperimentConfig, load_config


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_or_exit(path: Path, overrides: dict[str, Any]) -> ExperimentConfig:
    """The config a command runs with, checked against this machine (``preflight``); exit 2 naming every
    setting at fault otherwise."""
    from ragdistill.preflight import check_runnable

    try:
        config = load_config(path, {key: value for key, value in overrides.items() if value is not None})
        return check_runnable(config, path)
    except ConfigError as error:
        fail(str(error))
        raise  # unreachable; keeps type checkers calm


def print_json_line(payload: dict[str, Any]) -> None:
    """The last line a command prints is one JSON object, for scripts and CI to read."""
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def stop_on_sigterm() -> None:
    """A SIGTERM (e.g. from a container runtime) ends a long-running command the way Ctrl-C does, so its
    clean-up (the worker, a server it started) runs."""

    def interrupt(_signal: int, _frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
