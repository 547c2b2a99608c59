"""`ragdistill …`: thin commands over the library; heavy imports happen inside each command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ragdistill.cli_adapters import adapters_app
from ragdistill.cli_deploy import deploy_app
from ragdistill.cli_server import server_app
from ragdistill.config import ConfigError, ExperimentConfig, load_config
from ragdistill.errors import UserFacingError
from ragdistill.preflight import check_runnable
from ragdistill.preload import reexec_with_preload

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
data_app = typer.Typer(
    no_args_is_help=True, help="Install the offline data (ALFWorld games, WebShop, prompts)."
)
models_app = typer.Typer(no_args_is_help=True, help="Prepare local model checkpoints.")
env_app = typer.Typer(no_args_is_help=True, help="Check an environment end to end.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(env_app, name="env")
app.add_typer(server_app, name="server")
app.add_typer(adapters_app, name="adapters")
app.add_typer(deploy_app)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")]
RunRootOption = Annotated[str | None, typer.Option("--run-root", help="Override run.run_root (fsspec URL).")]


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_or_exit(path: Path, overrides: dict[str, Any]) -> ExperimentConfig:
    """The config a command runs with, checked against this machine (``preflight``); exit 2 naming every
    setting at fault otherwise."""
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


@data_app.command("setup")
def data_setup(
    mirror: Annotated[
        Path | None,
        typer.Option("--mirror", help="A local folder holding the data files (e.g. ../shared/data)."),
    ] = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where to install the data.")] = Path("data"),
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Install only this group (alfworld, webshop, react).")
    ] = None,
) -> None:
    """Install ALFWorld games, the WebShop catalogue and ReAct prompts (checksummed, idempotent)."""
    from ragdistill.data import DataSetupError, setup_data

    try:
        summary = setup_data(data_dir, mirror, only=only)
    except DataSetupError as error:
        fail(str(error))
        raise
    for relpath, info in summary["files"].items():
        games = info.get("games")
        suffix = f" ({sum(games.values())} games: {games})" if games else ""
        typer.echo(f"{info['status']:>9}  {relpath} -> {info['path']}{suffix}")
    print_json_line(summary)


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str, typer.Argument(help="A chat model short name (see `ragdistill models list`).")],
    dtype: Annotated[str, typer.Option("--dtype", help="bf16 or fp32.")] = "bf16",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Folder for checkpoints (default: $RAGDISTILL_CACHE/models or .cache/ragdistill/models).",
        ),
    ] = None,
) -> None:
    """Build a plain HF checkpoint (weights + tokenizer + chat template) from a packaged model; idempotent."""
    import time

    from ragdistill.models import ModelError, prepare_model

    if dtype not in ("bf16", "fp32"):
        fail(f"--dtype must be bf16 or fp32, got {dtype!r}")
    started = time.monotonic()
    try:
        path = prepare_model(name, dtype, cache_dir)  # type: ignore[arg-type]
    except ModelError as error:
        fail(str(error))
        raise
    seconds = round(time.monotonic() - started, 1)
    typer.echo(f"{name} ({dtype}) ready at {path} ({seconds} s)")
    print_json_line({"name": name, "dtype": dtype, "path": str(path), "seconds": seconds})


@models_app.command("list")
def models_list(
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Folder `models prepare` wrote to, if not the default.")
    ] = None,
) -> None:
    """Short model names, where each comes from, and whether its checkpoint is prepared."""
    from ragdistill.models import list_models

    rows = list_models(cache_dir)
    for row in rows:
        state = "ready" if row["prepared"] else ("not prepared" if row["kind"] == "chat" else "not installed")
        typer.echo(f"{row['name']:<18} {row['kind']:<9} {row['dtype']:<5} {state:<13} {row['description']}")
    print_json_line({"models": rows})


@env_app.command("check")
def env_check(
    env: Annotated[str, typer.Argument(help="A registered environment, e.g. alfworld.")],
    split: Annotated[str, typer.Option("--split", help="Which split's tasks to play.")] = "valid_unseen",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Play N tasks (default: all).")] = None,
    policy: Annotated[str, typer.Option("--policy", help="expert (walkthrough) or random.")] = "expert",
    workers: Annotated[int, typer.Option("--workers", min=1, help="Environment worker processes.")] = 2,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where `data setup` installed the data.")
    ] = Path("data"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random policy.")] = 42,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, help="Step cap per episode.")] = 50,
    balanced: Annotated[
        bool | None,
        typer.Option(
            "--balanced/--no-balanced",
            help="Pick tasks round-robin over task types (default: the environment's own order; "
            "alfworld balances, webshop keeps goal order).",
        ),
    ] = None,
) -> None:
    """Play N tasks with a scripted policy through the worker pool; per-type results, then one JSON line."""
    if policy not in ("expert", "random"):
        fail(f"unknown --policy {policy!r}; choose expert or random")
    from ragdistill.environments.base import EnvError
    from ragdistill.environments.check import check_env

    try:
        summary = check_env(
            env,
            split=split,
            limit=limit,
            policy=policy,  # type: ignore[arg-type]
            workers=workers,
            data_dir=data_dir,
            seed=seed,
            max_steps=max_steps,
            balanced=balanced,
        )
    except EnvError as error:
        fail(str(error))
        raise
    for task_type, stats in summary["by_task_type"].items():
        typer.echo(
            f"{task_type:>10}: {stats['won']}/{stats['episodes']} won, mean steps {stats['mean_steps']}"
            + (f", {stats['errors']} errors" if stats["errors"] else "")
        )
    for message in summary["error_messages"]:
        typer.echo(f"error: {message}", err=True)
    typer.echo(
        f"{env} {split} {policy}: success {summary['success_rate']:.2%} over {summary['episodes']} episodes "
        f"in {summary['seconds']} s"
    )
    for label, value in summary.get("report", {}).items():
        typer.echo(f"{label}: {value}")
    print_json_line(summary)


SplitOption = Annotated[str | None, typer.Option("--split", help="Override env.split.")]
LimitOption = Annotated[int | None, typer.Option("--limit", help="Override env.limit.")]


def progress_bar(description: str) -> Any:
    """A tqdm bar driven by the rollout engine's per-episode callback."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="episode", dynamic_ncols=True)

    def update(record: Any, finished: int, total: int) -> None:
        bar.total = total
        bar.set_postfix(won=f"{record.task_type}:{int(record.success)}")
        bar.update(finished - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


@app.command()
def rollout(
    config: ConfigOption,
    split: SplitOption = None,
    limit: LimitOption = None,
    run_root: RunRootOption = None,
    stage: Annotated[str, typer.Option(help="Folder under rollouts/ (resumes when it exists).")] = "base",
) -> None:
    """Stage A: play the agent on the config's tasks; re-running resumes where it stopped."""
    experiment = load_or_exit(config, {"env.split": split, "env.limit": limit, "run.run_root": run_root})
    from ragdistill.stages import run_rollout

    bar = progress_bar(f"rollout {stage}")
    try:
        manifest = run_rollout(experiment, stage, progress=bar)
    finally:
        bar.close()
    counts = manifest.counts
    typer.echo(
        f"{counts['episodes']} episodes in {experiment.run.run_root}/rollouts/{stage} ({counts['won']} won)"
    )
    print_json_line({"stage": stage, "run_root": experiment.run.run_root, **counts})


def _report_manifest(stage: str, run_root: str, manifest: Any) -> None:
    counts = ", ".join(f"{name}={value}" for name, value in sorted(manifest.counts.items()))
    typer.echo(f"{stage}: {counts}")
    print_json_line({"stage": stage, "run_root": run_root, **manifest.counts})


@app.command()
def mine(config: ConfigOption, run_root: RunRootOption = None) -> None:
    """Stage B: extract hints from the base rollout's failures and merge them into the hint bank."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages import run_mining

    _report_manifest("mine", experiment.run.run_root, run_mining(experiment))


@app.command()
def index(config: ConfigOption, run_root: RunRootOption = None) -> None:
    """Stage C: embed the hint bank and build the FAISS index."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages import run_indexing

    _report_manifest("index", experiment.run.run_root, run_indexing(experiment))


@app.command()
def teach(
    config: ConfigOption,
    split: SplitOption = None,
    limit: LimitOption = None,
    run_root: RunRootOption = None,
) -> None:
    """Stage C: the RAG teacher, retrieving hints once per episode; resumes like rollout."""
    experiment = load_or_exit(config, {"env.split": split, "env.limit": limit, "run.run_root": run_root})
    from ragdistill.stages import run_teacher

    bar = progress_bar("teacher")
    try:
        manifest = run_teacher(experiment, progress=bar)
    finally:
        bar.close()
    _report_manifest("teach", experiment.run.run_root, manifest)


@app.command()
def expert(config: ConfigOption, run_root: RunRootOption = None) -> None:
    """Stage D: the expert teacher, demonstrations of training tasks recorded as the agent's episodes."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages.expert import run_expert_teacher

    bar = progress_bar("expert")
    try:
        manifest = run_expert_teacher(experiment, progress=bar)
    finally:
        bar.close()
    _report_manifest("expert", experiment.run.run_root, manifest)


@app.command("build-datasets")
def build_datasets(config: ConfigOption, run_root: RunRootOption = None) -> None:
    """Stage D: the sft and distill training sets (parquet + dataset card) under datasets/."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages.datasets import run_datasets

    for name, manifest in run_datasets(experiment).items():
        _report_manifest(f"dataset {name}", experiment.run.run_root, manifest)


StudentOption = Annotated[
    list[str] | None, typer.Option("--student", help="sft and/or distill (default both).")
]


@app.command()
def train(config: ConfigOption, run_root: RunRootOption = None, student: StudentOption = None) -> None:
    """Stage D: LoRA-train the students through accelerate; a killed training resumes from its checkpoint."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages.training import run_training

    for name in student or ["sft", "distill"]:
        manifest = run_training(experiment, name)
        if manifest.extra.get("skipped"):
            typer.echo(f"{name}: not trained: {manifest.extra['skipped']}")
        _report_manifest(f"train {name}", experiment.run.run_root, manifest)


@app.command()
def evaluate(
    config: ConfigOption,
    run_root: RunRootOption = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="base, rag, sft, distill.")] = None,
) -> None:
    """Stage E: every method on the pinned evaluation tasks, into rollouts/eval-<method>."""
    experiment = load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.stages.evaluation import SkippedMethod, run_evaluation

    for name in method or experiment.evaluation.methods:
        bar = progress_bar(f"eval {name}")
        try:
            outcome = run_evaluation(experiment, name, progress=bar)
        finally:
            bar.close()
        if isinstance(outcome, SkippedMethod):
            typer.echo(f"{name}: not evaluated: {outcome.reason}")
        else:
            _report_manifest(f"eval {name}", experiment.run.run_root, outcome)


@app.command()
def report(
    run_roots: Annotated[list[str], typer.Argument(help="One run root, or several (one agent format each).")],
    out: Annotated[str | None, typer.Option("--out", help="Where several run roots' report goes.")] = None,
) -> None:
    """Stage E: reports/report.md and the accuracy-vs-tokens figure from finished evaluations."""
    from ragdistill.config import validate_config
    from ragdistill.stages.report import REPORT_FILE, RUN_FILE, render_run_reports, run_report
    from ragdistill.store import ArtifactStore

    stores = [ArtifactStore(root) for root in run_roots]
    if len(stores) == 1 and out is None:
        run = stores[0].read_json(RUN_FILE) if stores[0].exists(RUN_FILE) else None
        if run is None:
            fail(f"{stores[0].uri(RUN_FILE)} is missing: {run_roots[0]} is not a ragdistill run root")
        experiment = validate_config(run["config"], source=stores[0].uri(RUN_FILE))
        experiment = experiment.model_copy(
            update={"run": experiment.run.model_copy(update={"run_root": stores[0].root_url})}
        )
        run_report(experiment)
        target = stores[0].child("reports")
    else:
        target = ArtifactStore(out or f"{stores[0].root_url}/reports-combined")
        render_run_reports(stores, target)
    typer.echo(f"report: {target.uri(REPORT_FILE)}")
    print_json_line({"stage": "report", "report": target.uri(REPORT_FILE)})


@app.command()
def pipeline(config: ConfigOption, run_root: RunRootOption = None) -> None:
    """Every stage in order as one Prefect flow, reported to PREFECT_API_URL when set, else to the
    project's Prefect server (`ragdistill server start`), else to one started for this run."""
    load_or_exit(config, {"run.run_root": run_root})
    from ragdistill.orchestration.server import prefect_api

    with prefect_api():
        from ragdistill.flows.pipeline import pipeline_flow

        summary = pipeline_flow(str(config), run_root)
    print_json_line(
        {"stage": "pipeline", **{f"{k}_{n}": v for k, counts in summary.items() for n, v in counts.items()}}
    )


def main() -> None:
    """The console entry point: errors that explain themselves are printed without a traceback. On a
    CPU machine it first restarts itself once with tcmalloc and Intel OpenMP preloaded when they are
    installed (:mod:`ragdistill.preload`), so vLLM engines in it and in the processes it starts get them."""
    reexec_with_preload()
    try:
        app()
    except UserFacingError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
