"""Prefect tasks of the ablation flow: make a grid point's run root ready, and write the comparison table
(``stages.ablation``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from ragdistill.config.ablation import AblationPoint, AblationTableSettings
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs
from ragdistill.stages.ablation import TABLE_FILE, prepare_point, run_ablation_table
from ragdistill.store import ArtifactStore
from ragdistill.tasks.common import STAGE_CACHE, TASK_RUN_SUFFIX, publish_manifest

ABLATION_ARTIFACT = "ablation"


@task(
    name="prepare-ablation-point",
    task_run_name="prepare-{point.label}-" + TASK_RUN_SUFFIX,
    result_serializer="json",
)
def prepare_point_task(
    ctx: RunContext, point_ctx: RunContext, point: AblationPoint, folders: list[str]
) -> dict[str, Any]:
    """Copy ``folders`` of the run root into ``point``'s run root; the content digest of each copy, by
    folder. Not cached by Prefect: the copy stage itself finds a current copy and returns at once."""
    manifests = prepare_point(ctx, point_ctx, folders)
    return {
        "digests": {folder: manifest.digest for folder, manifest in manifests.items()},
        "counts": {folder: len(manifest.files) for folder, manifest in manifests.items()},
    }


@task(
    name="ablation-table",
    task_run_name="ablation-table-" + TASK_RUN_SUFFIX,
    cache_policy=STAGE_CACHE,
    result_serializer="json",
)
def ablation_table_task(ctx: RunContext, settings: AblationTableSettings, inputs: Inputs) -> dict[str, Any]:
    manifest = run_ablation_table(ctx, settings, inputs)
    store = ArtifactStore(ctx.run_root)
    table = store.read_text(f"{settings.stage_dir()}/{TABLE_FILE}")
    create_markdown_artifact(
        key=ABLATION_ARTIFACT,
        markdown=table,
        description=f"{ctx.run_name}: {store.uri(settings.stage_dir())}",
    )
    return publish_manifest(
        manifest, key=ABLATION_ARTIFACT + "-table", description=f"{ctx.run_name}: ablation"
    )
