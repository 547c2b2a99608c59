"""The retrieval ablation (``ragdistill ablate``): each grid point's run root made ready, and the table.

A grid point other than the config's own setting runs in a run root of its own,
``ablation/k<k>-<retriever>/`` under the run root, as a retrain generation does (``stages.retrain``).
Its ``hints/`` (and, for a faiss point, ``index/``) are copies of the run root's, file for file, so their
content digests, which is all a teacher's identity takes from them, are the pipeline's; the point's
teacher, datasets, student and evaluations then live beside them with identities computed there. A
re-run of the ablation finds every point's stages current, and a point added to the grid runs only its
own stages. The config's own point is the pipeline's own folders.

The table (:class:`~ragdistill.config.stages.AblationTableSettings`) reads the finished evaluations of
every point and of the base agent, and each point's teacher counts, and writes
``ablation/table/ablation.md`` and ``ablation/table/ablation.json``. A point whose evaluation has not
finished is shown as not run, with the reason when its student was skipped.
"""

from __future__ import annotations

from ragdistill.config.ablation import AblationPoint, AblationTableSettings
from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import Inputs
from ragdistill.episodes import EpisodeRecord
from ragdistill.evaluation.ablation import AblationRow, MethodCell, render_ablation_table
from ragdistill.evaluation.metrics import compute_metrics
from ragdistill.identity import code_fingerprint
from ragdistill.layout import HINTS_DIR, INDEX_DIR, eval_stage
from ragdistill.stages import indexing, mining
from ragdistill.stages.lifecycle import (
    StageIdentity,
    StageRun,
    rerun_remedy,
    stage_identity,
    stage_inputs,
    verified_input,
)
from ragdistill.store import ArtifactError, ArtifactStore, Manifest, read_listed, read_manifest, read_records

TABLE_FILE = "ablation.md"
DATA_FILE = "ablation.json"
OUTPUTS = (TABLE_FILE, DATA_FILE)
COPIED_OUTPUTS: dict[str, tuple[str, ...]] = {HINTS_DIR: mining.OUTPUTS, INDEX_DIR: indexing.OUTPUTS}
"""The folders a point's run root takes from the run root, with the files their stages write."""


def point_root(run_root: str, point: AblationPoint) -> str:
    """The run root ``point`` runs in (``run_root`` itself for the config's own setting)."""
    store = ArtifactStore(run_root)
    return store.uri(point.root) if point.root else store.root_url


def prepare_point(parent: RunContext, ctx: RunContext, folders: list[str]) -> dict[str, Manifest]:
    """Copy the finished ``folders`` (``hints``, ``index``) of the run root of ``parent`` into the point's
    run root (``ctx``) unless their copies there are current; their manifests there, by folder."""
    unknown = sorted(set(folders) - set(COPIED_OUTPUTS))
    if unknown:
        raise ValueError(f"a grid point copies only {sorted(COPIED_OUTPUTS)}, not {unknown}")
    source, target = ArtifactStore(parent.run_root), ArtifactStore(ctx.run_root)
    if source.root_url == target.root_url:
        raise ValueError("the config's own grid point is the run root itself: it copies nothing")
    return {folder: _copy_stage(source, target, folder, ctx) for folder in folders}


def _copy_stage(source: ArtifactStore, target: ArtifactStore, folder: str, ctx: RunContext) -> Manifest:
    manifest = verified_input(source, folder)
    identity = StageIdentity(
        stage=folder,
        settings={"copy_of": folder},
        code=code_fingerprint("ragdistill.stages.ablation"),
        inputs={folder: manifest.digest},
    )
    label = f"{ctx.run_name}: {folder}"
    with StageRun(target, folder, identity, ctx, label=label, outputs=COPIED_OUTPUTS[folder]) as run:
        if run.current is not None:
            return run.current
        run.clear()
        for name, entry in sorted(manifest.files.items()):
            target.write_bytes(f"{folder}/{name}", read_listed(source, f"{folder}/{name}", entry))
        return run.finish(
            sorted(manifest.files),
            counts=manifest.counts,
            extra={**manifest.extra, "copied_from": source.uri(folder)},
        )


def ablation_table_identity(
    ctx: RunContext, settings: AblationTableSettings, inputs: Inputs
) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs))


def run_ablation_table(ctx: RunContext, settings: AblationTableSettings, inputs: Inputs) -> Manifest:
    """The comparison table of the finished grid points (``inputs``: the folders of
    ``settings.input_dirs()`` that finished)."""
    from ragdistill.environments.registry import get_profile

    store = ArtifactStore(ctx.run_root)
    identity = ablation_table_identity(ctx, settings, inputs)
    folder = settings.stage_dir()
    profile = get_profile(settings.env)
    with StageRun(store, folder, identity, ctx, label=f"{ctx.run_name}: {folder}", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        run.clear()
        read = _Reader(store, inputs, profile.invalid_observation)
        rows: list[AblationRow] = []
        for point in settings.points:
            folders = settings.point_dirs(point)
            row = AblationRow(point.retriever, point.k, point.is_pipeline)
            for method in settings.methods:
                row.cells[method] = read.method(folders[eval_stage(method)], folders.get("adapter-distill"))
            if "distill" in settings.methods:
                row.teacher_wins = read.wins([folders[stage] for stage in settings.teacher_stages])
            rows.append(row)
        base = read.method(settings.base_dir())
        markdown = render_ablation_table(
            rows,
            settings.methods,
            run_name=ctx.run_name,
            env=settings.env,
            eval_split=settings.eval_split,
            headline=profile.headline,
            base=base,
            grid=describe_grid(settings),
        )
        store.write_text(f"{folder}/{TABLE_FILE}", markdown)
        store.write_json(
            f"{folder}/{DATA_FILE}",
            {
                "env": settings.env,
                "eval_split": settings.eval_split,
                "headline": profile.headline,
                "base": {"metrics": base.metrics.to_dict() if base.metrics else None},
                "points": [
                    {"label": point.label, **row.to_dict()}
                    for point, row in zip(settings.points, rows, strict=True)
                ],
            },
        )
        evaluated = sum(cell.metrics is not None for row in rows for cell in row.cells.values())
        return run.finish(counts={"points": len(rows), "evaluated": evaluated})


def describe_grid(settings: AblationTableSettings) -> str:
    """The grid as configured, in words: ``k 1, 3 × faiss, bm25 (cross); evaluated: rag``."""
    grid = settings.grid
    design = "every pair" if grid.design == "cross" else "one setting varied at a time"
    return (
        f"k {', '.join(map(str, grid.k))} × {', '.join(grid.retrievers)} ({grid.design}: {design}); "
        f"evaluated: {', '.join(grid.methods)}"
    )


class _Reader:
    """Reads the table's inputs: only the folders handed as finished, each checked against its digest."""

    def __init__(self, store: ArtifactStore, inputs: Inputs, invalid_observation: str) -> None:
        self.store, self.inputs, self.invalid = store, inputs, invalid_observation

    def method(self, folder: str, adapter: str | None = None) -> MethodCell:
        if folder not in self.inputs:
            return MethodCell(not_run_reason=self._skipped(adapter) or "not evaluated")
        manifest = verified_input(self.store, folder, self.inputs[folder])
        records = [EpisodeRecord.from_dict(data) for data in read_records(self.store, folder, manifest)]
        return MethodCell(compute_metrics(records, invalid_observation=self.invalid))

    def wins(self, folders: list[str]) -> tuple[int, int] | None:
        counts = [read_manifest(self.store, folder).counts for folder in folders if folder in self.inputs]
        if not counts:
            return None
        return sum(c.get("won", 0) for c in counts), sum(c.get("episodes", 0) for c in counts)

    def _skipped(self, adapter: str | None) -> str | None:
        if adapter is None:
            return None
        try:
            return read_manifest(self.store, adapter, rerun_remedy(adapter)).extra.get("skipped")
        except ArtifactError:
            return None
