"""`ragdistill serve` and `ragdistill deploy`: the flows as Prefect deployments, started from the UI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ragdistill.cli_common import stop_on_sigterm
from ragdistill.config import DEFAULT_CONFIG
from ragdistill.deployments.specs import (
    COLLECT_CRON,
    DEPLOYMENTS,
    NIGHTLY_CRON,
    NIGHTLY_ENV,
    NIGHTLY_TIMEZONE,
    RETRAIN_CHECK_CRON,
    ActiveSchedules,
    DeploymentPlan,
)
from ragdistill.orchestration.server import DEFAULT_START_TIMEOUT_S
from ragdistill.orchestration.worker import GPU_WORK_POOL, WORK_POOL

deploy_app = typer.Typer()

ConfigNameOption = Annotated[
    str,
    typer.Option(
        "--config", "-c", help="The config deployment runs default to: a name under configs/ or a YAML path."
    ),
]
NightlyOption = Annotated[
    bool | None,
    typer.Option(
        "--nightly/--no-nightly",
        help=f"Activate the pipeline's nightly schedule ({NIGHTLY_CRON} {NIGHTLY_TIMEZONE}); "
        f"default: on when {NIGHTLY_ENV}=1.",
    ),
]
RetrainCheckOption = Annotated[
    bool | None,
    typer.Option(
        "--retrain-check/--no-retrain-check",
        help=f"Activate the retrain deployment's schedule ({RETRAIN_CHECK_CRON} UTC), which retrains the run "
        "root once its stored failures reach retrain.min_failures even when no trigger fired; default: on "
        "for serve, off for deploy.",
    ),
]
CollectScheduleOption = Annotated[
    bool,
    typer.Option(
        "--collect-schedule/--no-collect-schedule",
        help=f"Activate the collect deployment's schedule ({COLLECT_CRON} UTC): the champion plays the next "
        "batch of fresh tasks of the run root.",
    ),
]
PoolOption = Annotated[
    str,
    typer.Option(
        "--pool",
        help="The work pool of every deployment, which this command's worker serves (created if missing).",
    ),
]
CpuPoolOption = Annotated[
    str,
    typer.Option(
        "--pool", help="The CPU process work pool (created if missing): flows the config runs on CPUs."
    ),
]
GpuPoolOption = Annotated[
    str,
    typer.Option(
        "--gpu-pool",
        help="The GPU process work pool (created if missing): flows whose inference or training the "
        "config runs on GPUs (e.g. rollouts and training of the paper configs).",
    ),
]
RUN_ROOT_ENV = "RAGDISTILL_RUN_ROOT"
RunRootOption = Annotated[
    str | None,
    typer.Option(
        "--run-root",
        envvar=RUN_ROOT_ENV,
        help="The run root deployment runs default to (e.g. s3://bucket/runs/demo), instead of the config's.",
    ),
]
WritePrefectYamlOption = Annotated[
    Path | None,
    typer.Option(
        "--write-prefect-yaml",
        metavar="PATH",
        help="Write the prefect.yaml for `prefect deploy --all` (same deployments, same --config, schedule flags, "
        "--pool, --gpu-pool and --run-root) to PATH, a file or a folder, and exit without contacting a server.",
    ),
]


def _print_json_line(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    sys.stdout.flush()


def _register(plan: DeploymentPlan) -> list[str]:
    from ragdistill.config import config_file
    from ragdistill.deployments.register import register_deployments

    config_file(plan.config_name)  # an unknown config fails here, not in every run
    return register_deployments(plan)


def _schedules(nightly: bool | None, retrain_check: bool, collect: bool) -> ActiveSchedules:
    from ragdistill.deployments.specs import nightly_requested

    return ActiveSchedules(nightly_requested(nightly), retrain_check, collect)


def _schedule_states(schedules: ActiveSchedules) -> dict[str, bool]:
    return {spec.schedule.slug: schedules.active(spec.schedule) for spec in DEPLOYMENTS if spec.schedule}


def _write_prefect_yaml(path: Path, plan: DeploymentPlan) -> None:
    from ragdistill.config import config_file
    from ragdistill.deployments.prefect_yaml import write_prefect_yaml

    config_file(plan.config_name)
    written = write_prefect_yaml(path, plan)
    typer.echo(f"wrote {written}: register it with `prefect --no-prompt deploy --all` from its folder")
    _print_json_line(
        {"prefect_yaml": str(written), "work_pool": plan.work_pool, "gpu_work_pool": plan.gpu_work_pool}
    )


def _echo_deployments(names: list[str], schedules: ActiveSchedules) -> None:
    typer.echo("deployments:")
    by_flow = {spec.load().name: spec.schedule for spec in DEPLOYMENTS}
    for name in names:
        schedule = by_flow.get(name.split("/")[0])
        state = "on" if schedule is not None and schedules.active(schedule) else "off"
        suffix = f" (schedule {schedule.slug} {schedule.cron} UTC: {state})" if schedule is not None else ""
        typer.echo(f"  {name}{suffix}")


@deploy_app.command()
def deploy(
    config: ConfigNameOption = DEFAULT_CONFIG,
    nightly: NightlyOption = None,
    retrain_check: RetrainCheckOption = None,
    collect_schedule: CollectScheduleOption = False,
    pool: CpuPoolOption = WORK_POOL,
    gpu_pool: GpuPoolOption = GPU_WORK_POOL,
    run_root: RunRootOption = None,
    write_prefect_yaml: WritePrefectYamlOption = None,
) -> None:
    """Register the work pools and one deployment per flow with the Prefect server, then exit (workers
    started elsewhere run them: `prefect worker start --pool ragdistill-process` on a CPU machine,
    `--pool ragdistill-gpu` on a GPU machine)."""
    from ragdistill.orchestration.server import prefect_api

    schedules = _schedules(nightly, bool(retrain_check), collect_schedule)
    plan = DeploymentPlan(config, schedules, pool, gpu_pool, run_root)
    if write_prefect_yaml is not None:
        _write_prefect_yaml(write_prefect_yaml, plan)
        return
    with prefect_api() as api_url:
        names = _register(plan)
    _echo_deployments(names, schedules)
    typer.echo(f"registered on {api_url} in work pools {pool!r} (CPU) and {gpu_pool!r} (GPU)")
    _print_json_line(
        {
            "api_url": api_url,
            "deployments": names,
            "nightly": schedules.nightly,
            "schedules": _schedule_states(schedules),
            "work_pool": pool,
            "gpu_work_pool": gpu_pool,
        }
    )


@deploy_app.command()
def serve(
    config: ConfigNameOption = DEFAULT_CONFIG,
    nightly: NightlyOption = None,
    retrain_check: RetrainCheckOption = None,
    collect_schedule: CollectScheduleOption = False,
    pool: PoolOption = WORK_POOL,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Flow runs the worker runs at once (each loads its models).")
    ] = 1,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for a server this command starts.")
    ] = DEFAULT_START_TIMEOUT_S,
) -> None:
    """Start (or reuse) the project's Prefect server, register the deployments and run a process worker
    until Ctrl-C, which stops the worker and the server if this command started it. Every deployment
    goes to the one pool this worker serves, CPU and GPU work alike: this machine runs them all."""
    from ragdistill.deployments.serving import served_deployments

    stop_on_sigterm()
    schedules = _schedules(nightly, retrain_check is not False, collect_schedule)
    with served_deployments(config, schedules, pool, limit=limit, timeout_s=timeout) as served:
        _echo_deployments(served.deployments, schedules)
        typer.echo(f"Prefect UI: {served.ui_url}  (Deployments → pipeline/ragdistill → Run → Custom run)")
        typer.echo(f"a process worker runs on pool {pool!r}; Ctrl-C stops it")
        _print_json_line(
            {
                "api_url": served.api_url,
                "ui_url": served.ui_url,
                "deployments": served.deployments,
                "nightly": schedules.nightly,
                "schedules": _schedule_states(schedules),
                "work_pool": pool,
            }
        )
        try:
            code: int | None = served.worker.wait()
        except KeyboardInterrupt:
            typer.echo("stopping the worker")
            code = None
    if code is not None:
        typer.secho(f"error: the worker exited with code {code}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
