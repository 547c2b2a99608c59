"""`ragdistill …`: thin commands over the library; heavy imports happen inside each command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ragdistill.cli_adapters import adapters_app
from ragdistill.cli_common import fail, load_or_exit, print_json_line
from ragdistill.cli_deploy import deploy_app
from ragdistill.cli_loop import loop_app, loop_commands
from ragdistill.cli_server import server_app
from ragdistill.cli_stages import ForceOption, ReplaceOption, check_run_root, stages_app, switches
from ragdistill.errors import UserFacingError
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
app.add_typer(stages_app)
app.add_typer(loop_commands)
app.add_typer(loop_app, name="loop")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")]
RunRootOption = Annotated[str | None, typer.Option("--run-root", help="Override run.run_root (fsspec URL).")]


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


@app.command()
def pipeline(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Every stage in order as one Prefect flow, reported to PREFECT_API_URL when set, else to the
    project's Prefect server (`ragdistill server start`), else to one started for this run."""
    from ragdistill.config.stages import PipelineSettings

    one_run = switches(force, replace_experiment)
    loaded = load_or_exit(config, {"run.run_root": run_root, **one_run})
    check_run_root(PipelineSettings.from_experiment(loaded, experiment_check=True).ctx)
    from ragdistill.orchestration.server import prefect_api

    with prefect_api():
        from ragdistill.flows.parameters import ExperimentOverrides
        from ragdistill.flows.pipeline import pipeline_flow

        run = {key.removeprefix("run."): value for key, value in one_run.items() if value is not None}
        summary = pipeline_flow(str(config), run_root, ExperimentOverrides(run=run) if run else None)
    print_json_line(
        {"stage": "pipeline", **{f"{k}_{n}": v for k, counts in summary.items() for n, v in counts.items()}}
    )


@app.command()
def ablate(
    config: ConfigOption,
    k: Annotated[
        list[int] | None, typer.Option("--k", min=1, help="A number of hints to try (repeat; ablation.k).")
    ] = None,
    retriever: Annotated[
        list[str] | None,
        typer.Option(
            "--retriever", help="A retriever to try: faiss, bm25, llm-rerank (repeat; ablation.retrievers)."
        ),
    ] = None,
    design: Annotated[
        str | None,
        typer.Option(
            "--design", help="axes (one setting varied at a time) or cross (every pair); ablation.design."
        ),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", help="What each point evaluates: rag, distill (repeat; ablation.methods)."),
    ] = None,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """The retrieval ablation as one Prefect flow: the RAG teacher (and a distilled student) at each grid
    point of k and retriever, every earlier stage shared with the pipeline; prints the comparison table
    (ablation/table/ablation.md under the run root)."""
    from ragdistill.config.stages import PipelineSettings

    grid = {"k": k, "retrievers": retriever, "design": design, "methods": method}
    grid = {key: value for key, value in grid.items() if value}
    one_run = switches(force, replace_experiment)
    dotted = {f"ablation.{key}": value for key, value in grid.items()}
    loaded = load_or_exit(config, {"run.run_root": run_root, **one_run, **dotted})
    check_run_root(PipelineSettings.from_experiment(loaded, experiment_check=True).ctx)
    from ragdistill.orchestration.server import prefect_api

    with prefect_api():
        from ragdistill.flows.ablation import ablation_flow
        from ragdistill.flows.parameters import ExperimentOverrides

        run = {key.removeprefix("run."): value for key, value in one_run.items() if value is not None}
        overrides = ExperimentOverrides.model_validate({"run": run or None, "ablation": grid or None})
        summary = ablation_flow(str(config), run_root, overrides)
    from ragdistill.layout import ABLATION_TABLE_DIR
    from ragdistill.stages.ablation import TABLE_FILE
    from ragdistill.store import ArtifactStore

    store = ArtifactStore(loaded.run.run_root)
    typer.echo(store.read_text(f"{ABLATION_TABLE_DIR}/{TABLE_FILE}"))
    print_json_line(
        {
            "stage": "ablation",
            "table": store.uri(f"{ABLATION_TABLE_DIR}/{TABLE_FILE}"),
            **{f"{name}_{key}": value for name, counts in summary.items() for key, value in counts.items()},
        }
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
