"""`ragdistill adapters …`: read and move the adapter registry of a run root (``ragdistill.adapter_registry``).

Every command takes the run root as an argument (a folder or fsspec URL) or from a config (``-c``,
``--run-root`` overriding it). Errors that explain themselves (an unknown version, nothing to roll back
to, a worse version without ``--force``) print as one line through ``ragdistill.cli.main``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ragdistill.errors import UserFacingError

adapters_app = typer.Typer(
    no_args_is_help=True,
    help="The adapter registry: every trained student with its lineage and evaluation, and the current one.",
)

RunRootArgument = Annotated[
    str | None, typer.Argument(help="The run root (a folder or fsspec URL); or give --config.")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Experiment YAML whose run.run_root to use.")
]
RunRootOption = Annotated[str | None, typer.Option("--run-root", help="Override the config's run.run_root.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the registry's history.")]


class RunRootError(UserFacingError, ValueError):
    """The command was not told which run root to use."""


def _print_json_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def _run_root(run_root: str | None, config: Path | None, override: str | None) -> str:
    if run_root and config:
        raise RunRootError("give a run root or --config, not both")
    if run_root:
        return run_root
    if config is None:
        raise RunRootError("which run root? give it as an argument (e.g. runs/demo) or pass --config CONFIG")
    from ragdistill.config import load_config

    return load_config(config, {"run.run_root": override} if override else None).run.run_root


def _registry(run_root: str | None, config: Path | None, override: str | None) -> Any:
    from ragdistill.adapter_registry import AdapterRegistry
    from ragdistill.store import ArtifactStore

    return AdapterRegistry(ArtifactStore(_run_root(run_root, config, override)), label="ragdistill adapters")


def _created(stamp: str) -> str:
    return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M")


@adapters_app.command("list")
def list_versions(
    run_root: RunRootArgument = None,
    config: ConfigOption = None,
    override: RunRootOption = None,
    events: Annotated[bool, typer.Option("--events", help="Also print the registry's history.")] = False,
) -> None:
    """Every registered version: when, which student, its evaluation headline and its status."""
    from ragdistill.adapter_registry import version_statuses

    registry = _registry(run_root, config, override)
    entries, pointer, history = registry.entries(), registry.pointer(), registry.events()
    statuses = version_statuses(entries, pointer, history)
    if not entries:
        typer.echo(f"no adapter versions in {registry.store.uri('registry')} yet")
    else:
        typer.echo(f"{'version':<8} {'created (UTC)':<16} {'student':<8} {'status':<11} evaluation")
    for entry in entries:
        evaluation = entry.evaluation.describe() if entry.evaluation else "not evaluated"
        tokens = entry.evaluation.tokens_per_episode if entry.evaluation else None
        if tokens is not None:
            evaluation += f", {tokens:,.0f} tokens/episode"
        typer.echo(
            f"{entry.version:<8} {_created(entry.created_at):<16} {entry.student:<8} "
            f"{statuses[entry.version]:<11} {evaluation}"
        )
    if events:
        for event in history:
            source = f" (from {event.from_version})" if event.from_version else ""
            typer.echo(
                f"#{event.sequence} {event.at} {event.kind} {event.version}{source} by {event.by}: {event.reason}"
            )
    _print_json_line(
        {
            "current": pointer.version if pointer else None,
            "versions": [
                {
                    "version": entry.version,
                    "student": entry.student,
                    "created_at": entry.created_at,
                    "status": statuses[entry.version],
                    "evaluation": asdict(entry.evaluation) if entry.evaluation else None,
                    "adapter": registry.store.uri(entry.adapter.path),
                }
                for entry in entries
            ],
        }
    )


@adapters_app.command("promote")
def promote(
    version: Annotated[str, typer.Argument(help="The version to make current, e.g. v0003.")],
    run_root: RunRootArgument = None,
    config: ConfigOption = None,
    override: RunRootOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even if it is worse than the current one, or not comparable."),
    ] = False,
    reason: ReasonOption = "",
) -> None:
    """Make a version current by hand (recorded as manual)."""
    registry = _registry(run_root, config, override)
    event = registry.promote(version, by="cli", reason=reason, force=force)
    source = f" (was {event.from_version})" if event.from_version else ""
    typer.echo(f"{event.version} is current{source}: {event.reason}")
    _print_json_line({"current": event.version, "previous": event.from_version, "event": event.sequence})


@adapters_app.command("rollback")
def rollback(
    run_root: RunRootArgument = None,
    config: ConfigOption = None,
    override: RunRootOption = None,
    reason: ReasonOption = "",
) -> None:
    """Make the previously current version current again."""
    registry = _registry(run_root, config, override)
    event = registry.rollback(by="cli", reason=reason)
    typer.echo(f"{event.version} is current again (rolled back from {event.from_version})")
    _print_json_line({"current": event.version, "previous": event.from_version, "event": event.sequence})


@adapters_app.command("register")
def register(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")],
    override: RunRootOption = None,
) -> None:
    """Register the trained, evaluated students and run the promotion gate (the pipeline's promote step)."""
    from ragdistill.config import load_config
    from ragdistill.config.stages import PipelineSettings
    from ragdistill.stages.lifecycle import upstream_inputs
    from ragdistill.stages.promotion import run_promotion
    from ragdistill.store import ArtifactStore

    experiment = load_config(config, {"run.run_root": override} if override else None)
    stages = PipelineSettings.from_experiment(experiment, experiment_check=True)
    ctx, settings = stages.ctx, stages.promotion()
    manifest = run_promotion(ctx, settings, upstream_inputs(ArtifactStore(ctx.run_root), settings), by="cli")
    decision = manifest.extra.get("decision", {})
    verdict = "promoted" if decision.get("promoted") else "not promoted"
    typer.echo(f"{decision.get('version') or 'no candidate'} {verdict}: {decision.get('reason')}")
    _print_json_line({"stage": "promote", **manifest.counts, "version": decision.get("version")})
