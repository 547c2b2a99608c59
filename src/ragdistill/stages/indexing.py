"""Stage C (index): embed the hint bank and build the FAISS index, one sub-index per task type.

Identity (:class:`~ragdistill.config.stages.IndexingSettings`, whole): the embedding model and the
exact/approximate threshold, plus the library versions of FAISS and sentence-transformers, the hint
bank's content digest and the index code.
"""

from __future__ import annotations

import time

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import IndexingSettings, Inputs
from ragdistill.layout import HINTS_DIR, INDEX_DIR
from ragdistill.stages.lifecycle import StageIdentity, StageRun, stage_identity, stage_inputs, verified_input
from ragdistill.store import ArtifactStore, Manifest

LIBRARIES = ("faiss-cpu", "faiss-gpu", "sentence-transformers")
OUTPUTS = ("meta.json", "type-*.faiss")


def indexing_identity(ctx: RunContext, settings: IndexingSettings, inputs: Inputs) -> StageIdentity:
    return stage_identity(settings, stage_inputs(settings, inputs), libraries=LIBRARIES)


def run_indexing(ctx: RunContext, settings: IndexingSettings, inputs: Inputs) -> Manifest:
    """Stage C (index); see the module docstring."""
    from ragdistill.retrieval.bank import load_nonempty_bank
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.index import HintIndex, IndexParams

    store = ArtifactStore(ctx.run_root)
    identity = indexing_identity(ctx, settings, inputs)
    with StageRun(store, INDEX_DIR, identity, ctx, label=f"{ctx.run_name}: index", outputs=OUTPUTS) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        verified_input(store, HINTS_DIR, inputs[HINTS_DIR])
        bank = load_nonempty_bank(store)
        embedder = get_embedder(settings.embedding_model)
        index = HintIndex.build(bank, embedder, IndexParams(exact_max=settings.exact_index_max))
        run.clear()
        index.save(store, INDEX_DIR)
        counts = {f"hints_{task_type}": index.size(task_type) for task_type in index.task_types()}
        return run.finish(
            counts={"hints": len(bank), **counts},
            extra={"kinds": {task_type: index.kind(task_type) for task_type in index.task_types()}},
            run_stats={"seconds": round(time.perf_counter() - started, 2)},
        )
