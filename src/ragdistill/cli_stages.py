"""`ragdistill warm-start|rollout|mine|index|teach|expert|build-datasets|train|evaluate|report`: one stage
each.

Each builds its stage's settings and the run context from the config (``config.stages``), checks that
the run root holds this experiment (``stages.experiment``), hands the stage the content digests of its
upstream folders as the run root holds them now, and ends with one JSON line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ragdistill.cli_common import fail, load_or_exit, print_json_line
from ragdistill.layout import METHODS, STUDENTS, name_problem

if TYPE_CHECKING:
    from ragdistill.config.run_context import RunContext
    from ragdistill.config.stage_models import StageSettings
    from ragdistill.config.stages import PipelineSettings

stages_app = typer.Typer(no_args_is_help=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Experiment YAML under configs/.")]
RunRootOption = Annotated[str | None, typer.Option("--run-root", help="Override run.run_root (fsspec URL).")]
SplitOption = Annotated[str | None, typer.Option("--split", help="Override env.split.")]
LimitOption = Annotated[int | None, typer.Option("--limit", help="Override env.limit.")]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Run even when a stage folder holds files ragdistill did not write; they are left in place, "
        "never deleted (run.allow_unknown_files).",
    ),
]
ReplaceOption = Annotated[
    bool,
    typer.Option(
        "--replace-experiment",
        help="Let this run take over a run root that records another experiment (run.replace_experiment).",
    ),
]


def switches(force: bool, replace_experiment: bool) -> dict[str, Any]:
    """The overrides of the one-run switches given on the command line (None: the config's value)."""
    return {
        "run.allow_unknown_files": force or None,
        "run.replace_experiment": replace_experiment or None,
    }


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


def load_stages(
    path: Path,
    run_root: str | None,
    force: bool,
    replace_experiment: bool,
    overrides: dict[str, Any] | None = None,
) -> PipelineSettings:
    """Every stage's settings and the run context of the config at ``path`` with the command line's
    ``--run-root``, one-run switches and ``overrides``, once the run root is known to hold this
    experiment (or to hold none yet)."""
    from ragdistill.config.stages import PipelineSettings

    given = {**(overrides or {}), "run.run_root": run_root, **switches(force, replace_experiment)}
    stages = PipelineSettings.from_experiment(load_or_exit(path, given), experiment_check=True)
    check_run_root(stages.ctx)
    return stages


def check_run_root(ctx: RunContext) -> None:
    """Exit 2 naming both experiments when the run root holds another one (nothing is written)."""
    from ragdistill.stages.experiment import ExperimentConflict, check_experiment
    from ragdistill.store import ArtifactStore

    if ctx.experiment is None:
        return
    try:
        check_experiment(ArtifactStore(ctx.run_root), ctx.experiment, replace=ctx.replace_experiment)
    except ExperimentConflict as error:
        fail(str(error))


def upstream(ctx: RunContext, settings: StageSettings) -> dict[str, str]:
    """The content digests of the folders a stage reads, as the run root holds them now."""
    from ragdistill.stages.lifecycle import upstream_inputs
    from ragdistill.store import ArtifactStore

    return upstream_inputs(ArtifactStore(ctx.run_root), settings)


def run_stage(
    stage: Callable[..., Any], ctx: RunContext, settings: StageSettings, progress: str | None = None
) -> Any:
    """``stage(ctx, settings, inputs)`` on the digests of its upstream folders as the run root holds them
    now; ``progress``: a bar of that name, fed by a rollout-family stage's finished episodes."""
    inputs = upstream(ctx, settings)
    if progress is None:
        return stage(ctx, settings, inputs)
    bar = progress_bar(progress)
    try:
        return stage(ctx, settings, inputs, progress=bar)
    finally:
        bar.close()


@stages_app.command("warm-start")
def warm_start(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage 0: LoRA on expert demonstrations of training tasks, merged into the agent's base checkpoint
    (warm_start.enabled); every later stage plays on it."""
    stages = load_stages(config, run_root, force, replace_experiment)
    if not stages.config.warm_start.enabled:
        fail(
            f"warm_start.enabled is false in {config}: no later stage would play on the warm start's "
            "checkpoint; set warm_start.enabled: true there"
        )
    from ragdistill.stages.warm_start import run_warm_start

    ctx, settings = stages.ctx, stages.warm_start
    manifest = run_warm_start(ctx, settings, upstream(ctx, settings), reserved=stages.warm_start_reserved())
    typer.echo(f"base = {manifest.extra['description']}: {ctx.run_root}/{settings.stage_dir()}/model")
    report_manifest("warm-start", ctx.run_root, manifest)


@stages_app.command()
def rollout(
    config: ConfigOption,
    split: SplitOption = None,
    limit: LimitOption = None,
    run_root: RunRootOption = None,
    stage: Annotated[str, typer.Option(help="Folder under rollouts/ (resumes when it exists).")] = "base",
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage A: play the agent on the config's tasks; re-running resumes where it stopped."""
    problem = name_problem(stage)
    if problem is not None:
        fail(f"--stage {problem}")
    stages = load_stages(
        config, run_root, force, replace_experiment, {"env.split": split, "env.limit": limit}
    )
    from ragdistill.stages.rollout import run_rollout

    ctx, settings = stages.ctx, stages.rollout(stage)
    counts = run_stage(run_rollout, ctx, settings, progress=f"rollout {stage}").counts
    typer.echo(
        f"{counts['episodes']} episodes in {ctx.run_root}/{settings.stage_dir()} ({counts['won']} won)"
    )
    print_json_line({"stage": stage, "run_root": ctx.run_root, **counts})


def report_manifest(stage: str, run_root: str, manifest: Any) -> None:
    counts = ", ".join(f"{name}={value}" for name, value in sorted(manifest.counts.items()))
    typer.echo(f"{stage}: {counts}")
    print_json_line({"stage": stage, "run_root": run_root, **manifest.counts})


@stages_app.command()
def mine(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage B: extract hints from the base rollout's failures and merge them into the hint bank."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.mining import run_mining

    report_manifest("mine", stages.ctx.run_root, run_stage(run_mining, stages.ctx, stages.mining))


@stages_app.command()
def index(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage C: embed the hint bank and build the FAISS index."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.indexing import run_indexing

    report_manifest("index", stages.ctx.run_root, run_stage(run_indexing, stages.ctx, stages.indexing))


@stages_app.command()
def teach(
    config: ConfigOption,
    split: SplitOption = None,
    limit: LimitOption = None,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage C: the RAG teacher, retrieving hints once per episode; resumes like rollout."""
    stages = load_stages(
        config, run_root, force, replace_experiment, {"env.split": split, "env.limit": limit}
    )
    from ragdistill.stages.teaching import run_teacher

    manifest = run_stage(run_teacher, stages.ctx, stages.teacher, progress="teacher")
    report_manifest("teach", stages.ctx.run_root, manifest)


@stages_app.command()
def expert(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage D: the expert teacher, demonstrations of training tasks recorded as the agent's episodes."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.expert import run_expert_teacher

    manifest = run_stage(run_expert_teacher, stages.ctx, stages.expert, progress="expert")
    report_manifest("expert", stages.ctx.run_root, manifest)


@stages_app.command("build-datasets")
def build_datasets(
    config: ConfigOption,
    run_root: RunRootOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage D: the sft and distill training sets (parquet + dataset card) under datasets/."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.datasets import run_dataset

    ctx = stages.ctx
    for name in STUDENTS:
        report_manifest(f"dataset {name}", ctx.run_root, run_stage(run_dataset, ctx, stages.dataset(name)))


StudentOption = Annotated[
    list[str] | None, typer.Option("--student", help="sft and/or distill (default both).")
]


def chosen(values: list[str] | None, allowed: tuple[str, ...], option: str) -> list[str] | None:
    """The values given for a repeatable option, each checked against ``allowed``."""
    unknown = [value for value in values or [] if value not in allowed]
    if unknown:
        fail(f"unknown {option} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return values


@stages_app.command()
def train(
    config: ConfigOption,
    run_root: RunRootOption = None,
    student: StudentOption = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage D: LoRA-train the students through accelerate; a killed training resumes from its checkpoint."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.training import run_training

    ctx = stages.ctx
    for name in chosen(student, STUDENTS, "--student") or STUDENTS:
        manifest = run_stage(run_training, ctx, stages.training(name))
        if manifest.extra.get("skipped"):
            typer.echo(f"{name}: not trained: {manifest.extra['skipped']}")
        report_manifest(f"train {name}", ctx.run_root, manifest)


@stages_app.command()
def evaluate(
    config: ConfigOption,
    run_root: RunRootOption = None,
    method: Annotated[list[str] | None, typer.Option("--method", help="base, rag, sft, distill.")] = None,
    seed: Annotated[
        list[int] | None, typer.Option("--seed", help="Only these of evaluation.seeds (default: every one).")
    ] = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage E: every method on the pinned evaluation tasks under each evaluation seed, into
    rollouts/eval-<method> (the agent's own seed) and rollouts/eval-<method>-seed<S> (the others)."""
    stages = load_stages(config, run_root, force, replace_experiment)
    from ragdistill.stages.evaluation import SkippedMethod, run_evaluation

    ctx = stages.ctx
    seeds = stages.evaluation_seeds.seeds
    unknown = [value for value in seed or [] if value not in seeds]
    if unknown:
        fail(
            f"--seed {', '.join(map(str, unknown))} is not in evaluation.seeds ({', '.join(map(str, seeds))}); "
            "add it to the config's evaluation.seeds first"
        )
    for name in chosen(method, METHODS, "--method") or stages.config.evaluation.methods:
        for evaluation_seed in seed or seeds:
            settings = stages.evaluation(name, evaluation_seed)
            outcome = run_stage(run_evaluation, ctx, settings, progress=f"eval {settings.label}")
            if isinstance(outcome, SkippedMethod):
                typer.echo(f"{settings.label}: not evaluated: {outcome.reason}")
            else:
                report_manifest(f"eval {settings.label}", ctx.run_root, outcome)


@stages_app.command()
def report(
    run_roots: Annotated[list[str], typer.Argument(help="One run root, or several (one agent format each).")],
    out: Annotated[str | None, typer.Option("--out", help="Where several run roots' report goes.")] = None,
    force: ForceOption = False,
    replace_experiment: ReplaceOption = False,
) -> None:
    """Stage E: reports/report.md and the accuracy-vs-tokens figure from finished evaluations."""
    from ragdistill.config import validate_stored_config
    from ragdistill.config.stages import PipelineSettings
    from ragdistill.stages.report import REPORT_FILE, RUN_FILE, render_run_reports, run_report
    from ragdistill.store import ArtifactStore

    stores = [ArtifactStore(root) for root in run_roots]
    if len(stores) == 1 and out is None:
        run = stores[0].read_json(RUN_FILE) if stores[0].exists(RUN_FILE) else None
        if run is None:
            fail(f"{stores[0].uri(RUN_FILE)} is missing: {run_roots[0]} is not a ragdistill run root")
        experiment = validate_stored_config(run["config"], source=stores[0].uri(RUN_FILE))
        here = {"run_root": stores[0].root_url, "allow_unknown_files": force}
        experiment = experiment.model_copy(
            update={
                "run": experiment.run.model_copy(update={**here, "replace_experiment": replace_experiment})
            }
        )
        stages = PipelineSettings.from_experiment(experiment, experiment_check=True)
        ctx, settings = stages.ctx, stages.report(run.get("config_name"))
        check_run_root(ctx)
        run_stage(run_report, ctx, settings)
        target = stores[0].child("reports")
    else:
        target = ArtifactStore(out or f"{stores[0].root_url}/reports-combined")
        render_run_reports(stores, target)
    typer.echo(f"report: {target.uri(REPORT_FILE)}")
    print_json_line({"stage": "report", "report": target.uri(REPORT_FILE)})
