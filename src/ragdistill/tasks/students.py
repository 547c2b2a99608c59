"""Prefect tasks for stages D and E: expert demonstrations, datasets, training, evaluation, report.

Thin wrappers over the stage functions; each task's cache key is its stage's identity (``tasks.common``).
"""

from __future__ import annotations

import base64
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ragdistill.config import ExperimentConfig
from ragdistill.errors import UserFacingError
from ragdistill.orchestration.runners import prefect_shard_runner
from ragdistill.stages.datasets import dataset_dir, dataset_identity, run_dataset
from ragdistill.stages.evaluation import SkippedMethod, adapter_folder, eval_plan, eval_stage, run_evaluation
from ragdistill.stages.expert import expert_identity, expert_tasks, run_expert_teacher
from ragdistill.stages.layout import EXPERT_STAGE, REPORTS_DIR, rollout_prefix
from ragdistill.stages.lifecycle import StageIdentity
from ragdistill.stages.report import FIGURE_FILE, METRICS_FILE, report_identity, run_report
from ragdistill.stages.rollout import plan_identity
from ragdistill.stages.shards import use_shard_runner
from ragdistill.stages.training import adapter_dir, run_training, training_identity
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import TASK_RUN_SUFFIX, publish_manifest, send_progress, stage_cache_policy
from ragdistill.tasks.rollout import progress_reporter
from ragdistill.training.progress import ProgressListener, TrainingProgress, use_training_progress


def _store(config: ExperimentConfig) -> ArtifactStore:
    return ArtifactStore(config.run.run_root)


def _expert(config: ExperimentConfig, _: dict[str, Any]) -> tuple[str, StageIdentity]:
    return rollout_prefix(EXPERT_STAGE), expert_identity(config, _store(config), expert_tasks(config))


def _dataset(config: ExperimentConfig, parameters: dict[str, Any]) -> tuple[str, StageIdentity]:
    return dataset_dir(parameters["name"]), dataset_identity(config, _store(config), parameters["name"])


def _training(config: ExperimentConfig, parameters: dict[str, Any]) -> tuple[str, StageIdentity]:
    return adapter_dir(parameters["name"]), training_identity(config, _store(config), parameters["name"])


def _evaluation(config: ExperimentConfig, parameters: dict[str, Any]) -> tuple[str, StageIdentity]:
    plan = eval_plan(config, parameters["method"])
    if isinstance(plan, SkippedMethod):
        raise _Skipped(plan.reason)
    return rollout_prefix(eval_stage(parameters["method"])), plan_identity(config, plan)


def _report(config: ExperimentConfig, _: dict[str, Any]) -> tuple[str, StageIdentity]:
    return REPORTS_DIR, report_identity(_store(config))


class _Skipped(UserFacingError):
    """A method that cannot be evaluated has no identity: the task runs and records the reason."""


@task(
    name="expert",
    task_run_name="expert-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_expert, __name__),
    result_serializer="json",
)
def expert_task(config: ExperimentConfig, hints_digest: str) -> dict[str, Any]:
    manifest = run_expert_teacher(config, progress=progress_reporter(EXPERT_STAGE))
    return publish_manifest(manifest, key="rollout-expert", description=f"{config.run.name}: rollouts/expert")


@task(
    name="dataset",
    task_run_name="dataset-{name}-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_dataset, __name__),
    result_serializer="json",
)
def dataset_task(config: ExperimentConfig, name: str, source_digests: list[str]) -> dict[str, Any]:
    manifest = run_dataset(config, name)
    return publish_manifest(
        manifest, key=f"dataset-{name}", description=f"{config.run.name}: datasets/{name}"
    )


@task(
    name="train",
    task_run_name="train-{name}-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_training, __name__),
    result_serializer="json",
)
def train_task(config: ExperimentConfig, name: str, dataset_digest: str) -> dict[str, Any]:
    from prefect.artifacts import create_link_artifact

    with use_training_progress(training_progress_reporter(name)):
        manifest = run_training(config, name)
    if manifest.counts.get("trained"):
        folder = _store(config).uri(adapter_folder(name))
        create_link_artifact(
            key=f"adapter-{name}-link", link=folder, link_text=folder, description="the adapter"
        )
    return publish_manifest(
        manifest, key=f"adapter-{name}", description=f"{config.run.name}: adapters/{name}"
    )


def training_progress_reporter(name: str) -> ProgressListener:
    """A progress artifact in the Prefect UI, created at the training's first logged optimizer step (a
    skipped training makes none) and moved at every one after it (best effort: :func:`send_progress`)."""
    artifact: list[UUID] = []

    def on_step(progress: TrainingProgress) -> None:
        description = (
            f"adapters/{name}: step {progress.step} of {progress.max_steps}, "
            f"epoch {progress.epoch:.2f}, loss {progress.loss:.4f}"
        )
        if not artifact:
            send_progress(
                f"adapters/{name}",
                lambda: artifact.append(
                    create_progress_artifact(progress=progress.percent, description=description)
                ),
            )
        else:
            send_progress(
                f"adapters/{name}",
                lambda: update_progress_artifact(
                    artifact[0], progress=progress.percent, description=description
                ),
            )

    return on_step


@task(
    name="evaluate",
    task_run_name="evaluate-{method}-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_evaluation, __name__),
    result_serializer="json",
)
def evaluate_task(config: ExperimentConfig, method: str, upstream_digests: list[str]) -> dict[str, Any]:
    with use_shard_runner(prefect_shard_runner(config.orchestration)):
        outcome = run_evaluation(config, method, progress=progress_reporter(eval_stage(method)))
    if isinstance(outcome, SkippedMethod):
        return {"method": method, "skipped": outcome.reason, "counts": {}, "digest": None}
    return publish_manifest(
        outcome, key=f"eval-{method}", description=f"{config.run.name}: {method} on the eval split"
    )


@task(
    name="report",
    task_run_name="report-" + TASK_RUN_SUFFIX,
    cache_policy=stage_cache_policy(_report, __name__),
    result_serializer="json",
)
def report_task(config: ExperimentConfig, upstream_digests: list[str | None]) -> dict[str, Any]:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    manifest = run_report(config)
    store = _store(config)
    create_markdown_artifact(
        key="report",
        markdown=report_with_inline_figure(store),
        description=f"{config.run.name}: report ({store.uri(REPORTS_DIR)})",
    )
    create_table_artifact(
        key="metrics",
        table=metrics_rows(store.read_json(f"{REPORTS_DIR}/{METRICS_FILE}")),
        description=f"{config.run.name}: every method on the pinned eval tasks",
    )
    create_link_artifact(
        key="run-root", link=store.uri(""), link_text=config.run.run_root, description="the run's artifacts"
    )
    return publish_manifest(manifest, key="report-counts", description=f"{config.run.name}: report")


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
    """The report's metrics as UI table rows: one per method × agent, skipped ones with their reason."""
    rows = []
    for result in metrics["results"]:
        values = result.get("metrics") or {}
        rows.append(
            {
                "method": result["method"],
                "agent": result["agent"],
                "episodes": values.get("episodes", 0),
                "success %": values.get("success_percent"),
                "score": values.get("score_percent"),
                "invalid actions %": values.get("invalid_action_percent"),
                "tokens / episode": values.get("total_tokens_per_episode"),
                "not run": result.get("not_run_reason"),
            }
        )
    return rows
