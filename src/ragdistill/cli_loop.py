"""`ragdistill collect`, `ragdistill retrain`, `ragdistill loop status` and `ragdistill loop run`: the
retraining loop of a run root.

``collect`` and ``retrain`` run their flows as ``ragdistill pipeline`` does (through
``orchestration.server.prefect_api``), with the config that made the run root (``flows.loop_config``):
``--run-root`` alone uses the one its pipeline stored, ``-c`` must compute the same stage settings. Bad
input (no pipeline on the run root, another config, a collect batch on the pipeline's or evaluation's
tasks) stops with one line, before a Prefect server is started or anything is written.

``loop run`` (``make loop``) drives one round through the served deployments instead
(``ragdistill.loop_round``): two collect deployment runs, the retrain their event triggers, the table of
generations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragdistill.cli_common import fail, print_json_line, stop_on_sigterm
from ragdistill.errors import UserFacingError
from ragdistill.orchestration.server import DEFAULT_START_TIMEOUT_S

if TYPE_CHECKING:
    from ragdistill.config.stages import PipelineSettings

loop_commands = typer.Typer(no_args_is_help=True)
loop_app = typer.Typer(no_args_is_help=True, help="Where a run root's retraining loop stands.")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Experiment YAML under configs/ (its run.run_root is the run root); its stage settings must be "
        "the run root's. Optional with --run-root: the run root's stored config is used.",
    ),
]
RunRootOption = Annotated[
    str | None, typer.Option("--run-root", help="The run root (fsspec URL); overrides the config's.")
]


def _loop_stages(config: Path | None, run_root: str | None) -> PipelineSettings:
    """The stages of the run root's loop, checked (exit 2 with the reason otherwise)."""
    from ragdistill.config.stages import PipelineSettings
    from ragdistill.flows.loop_config import loop_config

    if config is None and run_root is None:
        fail("which run root? give --config CONFIG (its run.run_root) or --run-root RUN_ROOT")
    try:
        checked = loop_config(str(config) if config is not None else None, run_root)
    except UserFacingError as error:
        fail(str(error))
        raise
    return PipelineSettings.from_experiment(checked, experiment_check=True)


@loop_commands.command()
def collect(config: ConfigOption = None, run_root: RunRootOption = None) -> None:
    """The champion (the registry's current adapter, else the base model) plays the next batch of fresh
    tasks; a retrain-due event follows when the stored failures reach retrain.min_failures."""
    from ragdistill.stages.collect import check_fresh_tasks, next_batch
    from ragdistill.store import ArtifactStore

    stages = _loop_stages(config, run_root)
    ctx = stages.ctx
    settings = stages.collect(next_batch(ArtifactStore(ctx.run_root)))
    try:
        check_fresh_tasks(ctx, settings, stages.reserved_tasks())
    except UserFacingError as error:
        fail(str(error))
    from ragdistill.flows.retrain import collect_flow
    from ragdistill.orchestration.server import prefect_api

    with prefect_api():
        result = collect_flow(str(config) if config is not None else None, ctx.run_root)
    loop = result["loop"]
    counts = result["counts"]
    typer.echo(
        f"{result['batch']}: {counts['episodes']} episodes, {counts['won']} won, {result['failures']} "
        f"failure(s) recorded; {loop['pending_failures']} pending of retrain.min_failures "
        f"{loop['min_failures']}" + ("; retrain due" if loop["retrain_due"] else "")
    )
    print_json_line(
        {
            "stage": "collect",
            "batch": result["batch"],
            "failures": result["failures"],
            **{key: loop[key] for key in ("champion", "pending_failures", "min_failures", "retrain_due")},
            **counts,
        }
    )


@loop_commands.command()
def retrain(config: ConfigOption = None, run_root: RunRootOption = None) -> None:
    """Retrain generation k on every collect failure stored since the last retrain (mine → … → promote
    through the gate), or record why not (fewer than retrain.min_failures, or a retrain already running)."""
    stages = _loop_stages(config, run_root)
    from ragdistill.flows.retrain import retrain_flow
    from ragdistill.orchestration.server import prefect_api

    with prefect_api():
        summary = retrain_flow(str(config) if config is not None else None, stages.ctx.run_root)
    line: dict[str, Any] = {
        "stage": "retrain",
        **{key: summary.get(key) for key in ("generation", "new_failures", "skipped")},
    }
    if summary.get("skipped"):
        typer.echo(f"no retrain: {summary['skipped']}")
    else:
        promotion = summary["counts"]["promotion"]
        verdict = "promoted" if promotion.get("promoted") else "not promoted"
        typer.echo(
            f"generation {summary['generation']} trained on {summary['new_failures']} new failure(s); "
            f"its candidate {verdict}"
        )
        line["promoted"] = promotion.get("promoted", 0)
    print_json_line(line)


@loop_app.command("status")
def status(
    run_root: Annotated[str, typer.Argument(help="The run root (a folder or fsspec URL).")],
) -> None:
    """The champion, the failures pending since the last retrain, the threshold, the generation and the
    last decision; then one JSON line (champion, pending_failures, min_failures, generation, …)."""
    from ragdistill.flows.loop_config import recorded_config
    from ragdistill.stages.loop_status import loop_status
    from ragdistill.store import ArtifactStore

    try:
        config = recorded_config(run_root)
    except UserFacingError as error:
        fail(str(error))
        raise
    current = loop_status(ArtifactStore(run_root), config.retrain.min_failures)
    for text in current.lines():
        typer.echo(text)
    print_json_line(current.summary())


@loop_app.command("run")
def run(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="The config `make demo` ran (its run.run_root is the run root; the deployments are registered "
            "from it); its stage settings must be the run root's.",
        ),
    ],
    run_root: RunRootOption = None,
    batches: Annotated[
        int, typer.Option("--batches", min=1, help="Collect deployment runs, one batch of fresh tasks each.")
    ] = 2,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a Prefect server this command starts.")
    ] = DEFAULT_START_TIMEOUT_S,
) -> None:
    """One round of the loop through Prefect: serve the deployments (server, trigger, automations, a
    process worker), run the collect deployment once per batch, wait for the retrain that the
    retrain-due event triggers, then print base / generation 1 / generation 2 side by side (also
    loop/generations.md under the run root and the Prefect artifact loop-generations). Ctrl-C stops
    the worker and a server this command started; finished work is kept."""
    from ragdistill.loop_round import plan_loop_round, run_loop_round

    try:
        plan = plan_loop_round(str(config), run_root, batches)
    except UserFacingError as error:
        fail(str(error))
        raise
    for note in plan.notes:
        typer.echo(f"note: {note}")
    typer.echo(
        f"{plan.run_root}: {plan.batches} collect batch(es) of {plan.batch_size} tasks from "
        f"{plan.first_batch}, {plan.pending_failures} failure(s) pending, retrain.min_failures "
        f"{plan.min_failures}"
    )
    stop_on_sigterm()
    try:
        round_ = run_loop_round(plan, typer.echo, timeout_s=timeout)
    except KeyboardInterrupt:
        typer.secho(
            "interrupted: the worker and a server this command started are stopped; finished collect "
            "batches and retrain stages are kept, and `make loop` resumes from them",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(130) from None
    except UserFacingError as error:
        fail(str(error), code=1)
        raise
    typer.echo("")
    typer.echo(round_.table.markdown())
    typer.echo(f"table: {round_.table_uri} (Prefect artifact loop-generations)")
    print_json_line(round_.summary())
