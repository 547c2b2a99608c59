"""Stage C (index): embed the hint bank and build the FAISS index, one sub-index per task type.

Identity: the embedding model, the exact/approximate threshold, the library versions of FAISS and
sentence-transformers, the hint bank's content digest and the index code.
"""

from __future__ import annotations

import time

from ragdistill.config import ExperimentConfig
from ragdistill.identity import code_fingerprint, library_versions
from ragdistill.stages.layout import HINTS_DIR, INDEX_DIR
from ragdistill.stages.lifecycle import StageIdentity, StageRun, recorded_input_digest, verified_input
from ragdistill.store import ArtifactStore, Manifest


def indexing_identity(config: ExperimentConfig, store: ArtifactStore) -> StageIdentity:
    return StageIdentity(
        stage="index",
        settings={
            "embedding_model": config.retrieval.embedding_model,
            "exact_index_max": config.retrieval.exact_index_max,
            "libraries": library_versions("faiss-cpu", "faiss-gpu", "sentence-transformers"),
        },
        code=code_fingerprint("ragdistill.stages.indexing"),
        inputs={HINTS_DIR: recorded_input_digest(store, HINTS_DIR)},
    )


def run_indexing(config: ExperimentConfig) -> Manifest:
    """Stage C (index); see the module docstring."""
    from ragdistill.retrieval.bank import load_nonempty_bank
    from ragdistill.retrieval.embed import get_embedder
    from ragdistill.retrieval.index import HintIndex, IndexParams

    store = ArtifactStore(config.run.run_root)
    identity = indexing_identity(config, store)
    with StageRun(
        store, INDEX_DIR, identity, label=f"{config.run.name}: index", lease_wait_s=config.run.lease_wait_s
    ) as run:
        if run.current is not None:
            return run.current
        started = time.perf_counter()
        verified_input(store, HINTS_DIR)
        bank = load_nonempty_bank(store)
        embedder = get_embedder(config.retrieval.embedding_model)
        index = HintIndex.build(bank, embedder, IndexParams(exact_max=config.retrieval.exact_index_max))
        run.clear()
        index.save(store, INDEX_DIR)
        counts = {f"hints_{task_type}": index.size(task_type) for task_type in index.task_types()}
        return run.finish(
            counts={"hints": len(bank), **counts},
            extra={"kinds": {task_type: index.kind(task_type) for task_type in index.task_types()}},
            run_stats={"seconds": round(time.perf_counter() - started, 2)},
        )
