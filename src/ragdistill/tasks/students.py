"""Prefect tasks for stage 0 and stages D and E: the warm start, expert demonstrations, datasets,
training, evaluation, report.

Thin wrappers over the stage functions; each task's cache key is its stage's identity (``tasks.common``).
"""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import (
    DatasetSettings,
    EvaluationSettings,
    ExpertSettings,
    Inputs,
    ReportSettings,
    TaskSelection,
    TrainingSettings,
    WarmStartSettings,
)
from ragdistill.layout import REPORTS_DIR, STUDENTS, adapter_dir, adapter_folder
from ragdistill.stages.datasets import run_dataset
from ragdistill.stages.evaluation import SkippedMethod, run_evaluation
from ragdistill.stages.expert import run_expert_teacher
from ragdistill.stages.report import FIGURE_FILE, METRICS_FILE, run_report
from ragdistill.stages.training import run_training
from ragdistill.stages.warm_start import run_warm_start
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import STAGE_CACHE, TASK_RUN_SUFFIX, publish_manifest, send_progress
from ragdistill.tasks.rollout import progress_reporter, shard_runner_for
from ragdistill.training.progress import ProgressListener, TrainingProgress, use_training_progress


@task(
    name="warm-start",
    task_run_name="warm-start-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def warm_start_task(
    ctx: RunContext,
    settings: WarmStartSettings,
    inputs: Inputs,
    reserved: dict[str, TaskSelection] | None = None,
) -> dict[str, Any]:
    """Stage 0; ``reserved``: the selections its tasks must not share (checked before any work; they
    change no output, so the cache key leaves them out). The UI shows the training's progress (the
    demonstrations take seconds: the expert needs no model)."""
    folder = settings.stage_dir()
    with use_training_progress(training_progress_reporter(folder)):
        manifest = run_warm_start(ctx, settings, inputs, reserved=reserved)
    return publish_manifest(manifest, key=folder, description=f"{ctx.run_name}: {folder}")


@task(
    name="expert",
    task_run_name="expert-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def expert_task(ctx: RunContext, settings: ExpertSettings, inputs: Inputs) -> dict[str, Any]:
    folder = settings.stage_dir()
    manifest = run_expert_teacher(ctx, settings, inputs, progress=progress_reporter(folder.split("/")[-1]))
    return publish_manifest(manifest, key="rollout-expert", description=f"{ctx.run_name}: {folder}")


@task(
    name="dataset",
    task_run_name="dataset-{settings.name}-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def dataset_task(ctx: RunContext, settings: DatasetSettings, inputs: Inputs) -> dict[str, Any]:
    manifest = run_dataset(ctx, settings, inputs)
    return publish_manifest(
        manifest, key=f"dataset-{settings.name}", description=f"{ctx.run_name}: {settings.stage_dir()}"
    )


@task(
    name="train",
    task_run_name="train-{settings.name}-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def train_task(ctx: RunContext, settings: TrainingSettings, inputs: Inputs) -> dict[str, Any]:
    from prefect.artifacts import create_link_artifact

    name = settings.name
    with use_training_progress(training_progress_reporter(name)):
        manifest = run_training(ctx, settings, inputs)
    if manifest.counts.get("trained"):
        folder = ArtifactStore(ctx.run_root).uri(adapter_folder(name))
        create_link_artifact(
            key=f"adapter-{name}-link", link=folder, link_text=folder, description="the adapter"
        )
    return publish_manifest(manifest, key=f"adapter-{name}", description=f"{ctx.run_name}: adapters/{name}")


def training_progress_reporter(name: str) -> ProgressListener:
    """A progress artifact in the Prefect UI, created at the training's first logged optimizer step (a
    skipped training makes none) and moved at every one after it (best effort: :func:`send_progress`).
    ``name``: a student (its folder is ``adapters/<name>``) or a folder under the run root."""
    artifact: list[UUID] = []
    folder = adapter_dir(name) if name in STUDENTS else name

    def on_step(progress: TrainingProgress) -> None:
        description = (
            f"{folder}: step {progress.step} of {progress.max_steps}, "
            f"epoch {progress.epoch:.2f}, loss {progress.loss:.4f}"
        )
        if not artifact:
            send_progress(
                folder,
                lambda: artifact.append(
                    create_progress_artifact(progress=progress.percent, description=description)
                ),
            )
        else:
            send_progress(
                folder,
                lambda: update_progress_artifact(
                    artifact[0], progress=progress.percent, description=description
                ),
            )

    return on_step


@task(
    name="evaluate",
    task_run_name="evaluate-{settings.label}-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def evaluate_task(ctx: RunContext, settings: EvaluationSettings, inputs: Inputs) -> dict[str, Any]:
    method = settings.method
    with shard_runner_for(ctx):
        outcome = run_evaluation(ctx, settings, inputs, progress=progress_reporter(settings.stage))
    if isinstance(outcome, SkippedMethod):
        return {"method": method, "skipped": outcome.reason, "counts": {}, "digest": None}
    return publish_manifest(
        outcome,
        key=settings.stage,
        description=f"{ctx.run_name}: {method} on the eval split (seed {settings.role.sampling.seed})",
    )


@task(
    name="report",
    task_run_name="report-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def report_task(ctx: RunContext, settings: ReportSettings, inputs: Inputs) -> dict[str, Any]:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    manifest = run_report(ctx, settings, inputs)
    store = ArtifactStore(ctx.run_root)
    create_markdown_artifact(
        key="report",
        markdown=report_with_inline_figure(store),
        description=f"{ctx.run_name}: report ({store.uri(REPORTS_DIR)})",
    )
    create_table_artifact(
        key="metrics",
        table=metrics_rows(store.read_json(f"{REPORTS_DIR}/{METRICS_FILE}")),
        description=f"{ctx.run_name}: every method on the pinned eval tasks",
    )
    create_link_artifact(
        key="run-root", link=store.uri(""), link_text=ctx.run_root, description="the run's artifacts"
    )
    return publish_manifest(manifest, key="report-counts", description=f"{ctx.run_name}: report")


def report_with_inline_figure(store: ArtifactStore) -> str:
    """The report's markdown with its figure inlined as a ``data:`` URI.

    A page served over http cannot load the run root's ``file://`` or ``s3://`` address, so a link would
    show as a broken image in the UI; the PNG is small (under 100 kB), so it travels inside the artifact.
    """
    markdown = store.read_text(f"{REPORTS_DIR}/report.md")
    figure_path = f"{REPORTS_DIR}/{FIGURE_FILE}"
    if not store.exists(figure_path):
        return markdown
    encoded = base64.b64encode(store.read_bytes(figure_path)).decode("ascii")
    return markdown.replace(f"]({FIGURE_FILE})", f"](data:image/png;base64,{encoded})")


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's metrics as UI table rows: one per method × agent × evaluation seed, skipped ones with
    their reason."""
    rows = []
    for result in metrics["results"]:
        values = result.get("metrics") or {}
        rows.append(
            {
                "method": result["method"],
                "agent": result["agent"],
                "seed": result.get("seed"),
                "episodes": values.get("episodes", 0),
                "success %": values.get("success_percent"),
                "score": values.get("score_percent"),
                "invalid actions %": values.get("invalid_action_percent"),
                "tokens / episode": values.get("total_tokens_per_episode"),
                "not run": result.get("not_run_reason"),
            }
        )
    return rows
