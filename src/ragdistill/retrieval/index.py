"""FAISS over hint embeddings: one sub-index per task type, exact unless a type is very large.

Why one sub-index per task type rather than one index with an ``IDSelector`` filter: every query is
restricted to one type, so a per-type index searches only the candidates that may be returned and by
construction cannot return a hint of another type. A selector on a flat index still scans every
vector; on IVF or HNSW a selective filter costs recall (HNSW walks through nodes of other types) or
needs larger search parameters. Types have 50-240 hints in the paper, where exact search costs
microseconds.

Exact search is ``IndexFlatIP`` on unit-length vectors (inner product = cosine). A type with more than
``exact_max`` hints (``RetrievalConfig.exact_index_max``, 50k) gets ``IndexIVFFlat`` (inner product),
``nlist = sqrt(n)`` lists trained on ``40·nlist`` sampled vectors, ``nprobe = 16``. IVF was chosen over
HNSW by measuring both on this 2-core CPU, one thread, 384 dimensions (``benchmarks/retrieval.py``,
synthetic clustered vectors): at 100k, IVF built in 0.9 s (p50 0.5 ms, recall@3 0.96 vs exact) and
HNSW (M=32, efConstruction=40, efSearch=64) in 23 s (p50 0.2 ms, recall 0.99); at 1M, IVF built in
17 s (p50 1.7 ms, recall 1.00) where HNSW is on course for several minutes; exact search there is
86 ms per query. On uniformly random vectors, the no-structure worst case, both lose recall alike
(100k: IVF 0.44, HNSW 0.48), so build time decides. Query time is negligible next to one model call.

Saved form: each sub-index goes through ``faiss.serialize_index`` to bytes (so ``file://`` and
``s3://`` stores take the same path), plus ``meta.json`` with the hint ids in index order, the
embedding model, the dimension and each file's sha256, checked on load.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ragdistill.errors import UserFacingError

if TYPE_CHECKING:
    from ragdistill.retrieval.bank import HintBank, TextEmbedder
    from ragdistill.store import ArtifactStore

INDEX_PREFIX = "index"
META_NAME = "meta.json"
REBUILD = "rebuild the index with `ragdistill index -c CONFIG`"
FORMAT_VERSION = 1


class HintIndexError(UserFacingError, RuntimeError):
    """An index that cannot be built, loaded or used as asked; the message says which and why."""


@dataclass(frozen=True)
class IndexParams:
    """``exact_max``: largest type searched exactly. IVF: ``nlist = sqrt(n)`` lists, trained on
    ``train_per_list`` sampled vectors per list; ``nprobe`` lists searched per query."""

    exact_max: int = 50_000
    nprobe: int = 16
    train_per_list: int = 40
    seed: int = 0


def _faiss() -> Any:
    import faiss

    return faiss


def _build_one(vectors: np.ndarray, params: IndexParams) -> Any:
    faiss = _faiss()
    n, dim = vectors.shape
    if n <= params.exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index
    nlist = max(1, round(math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(params.seed)
    sample_size = min(n, nlist * params.train_per_list)
    sample = vectors if sample_size == n else vectors[np.sort(rng.choice(n, sample_size, replace=False))]
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(params.nprobe, nlist)
    return index


def _kind(index: Any) -> str:
    return "ivf" if hasattr(index, "nprobe") else "flat"


class HintIndex:
    """Sub-indexes by task type; row ``i`` of a type's index is hint ``ids[task_type][i]``."""

    def __init__(self, model_name: str, dim: int, params: IndexParams | None = None) -> None:
        self.model_name = model_name
        self.dim = dim
        self.params = params or IndexParams()
        self._indexes: dict[str, Any] = {}
        self._ids: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{t}={len(ids)}({self.kind(t)})" for t, ids in self._ids.items())
        return f"HintIndex({self.model_name!r}, dim={self.dim}, {sizes})"

    @classmethod
    def build(cls, bank: HintBank, embedder: TextEmbedder, params: IndexParams | None = None) -> HintIndex:
        """Embed every hint of the bank in one batch and index it by task type."""
        hints = bank.hints()
        vectors = embedder.encode([hint.text for hint in hints])
        index = cls(embedder.model_name, embedder.dim, params)
        rows: dict[str, list[int]] = {}
        for row, hint in enumerate(hints):
            rows.setdefault(hint.task_type, []).append(row)
        for task_type, positions in rows.items():
            index.add_type(task_type, [hints[p].id for p in positions], vectors[positions])
        return index

    def add_type(self, task_type: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index one task type (replacing it if present); ``vectors`` must be unit-length rows."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise HintIndexError(
                f"vectors for type {task_type!r} have shape {vectors.shape}, expected (n, {self.dim})"
            )
        if len(ids) != vectors.shape[0]:
            raise HintIndexError(f"type {task_type!r}: {len(ids)} ids for {vectors.shape[0]} vectors")
        self._indexes[task_type] = _build_one(vectors, self.params)
        self._ids[task_type] = list(ids)

    def task_types(self) -> list[str]:
        return list(self._ids)

    def ids(self, task_type: str) -> list[str]:
        return list(self._ids.get(task_type, []))

    def size(self, task_type: str) -> int:
        return len(self._ids.get(task_type, []))

    def kind(self, task_type: str) -> str:
        return _kind(self._indexes[task_type])

    def search(self, task_type: str, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-``k`` (hint id, cosine) per query row, best first, only among ``task_type``'s hints."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise HintIndexError(f"queries have shape {queries.shape}, expected (m, {self.dim})")
        if task_type not in self._indexes or k <= 0:
            return [[] for _ in range(len(queries))]
        ids = self._ids[task_type]
        scores, rows = self._indexes[task_type].search(queries, min(k, len(ids)))
        return [
            [(ids[r], float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
            for row_ids, row_scores in zip(rows, scores, strict=True)
        ]

    def save(self, store: ArtifactStore, prefix: str = INDEX_PREFIX) -> str:
        """Write each sub-index and ``meta.json`` (last) under ``prefix``; returns the meta URI."""
        faiss = _faiss()
        types: list[dict[str, Any]] = []
        for number, (task_type, index) in enumerate(self._indexes.items()):
            name = f"type-{number:03d}.faiss"
            data = faiss.serialize_index(index).tobytes()
            store.write_bytes(f"{prefix}/{name}", data)
            entry: dict[str, Any] = {
                "task_type": task_type,
                "file": name,
                "kind": _kind(index),
                "sha256": hashlib.sha256(data).hexdigest(),
                "ids": self._ids[task_type],
            }
            if entry["kind"] == "ivf":
                entry["nprobe"] = int(index.nprobe)
            types.append(entry)
        meta = {"format": FORMAT_VERSION, "model": self.model_name, "dim": self.dim, "types": types}
        store.write_json(f"{prefix}/{META_NAME}", meta)
        return store.uri(f"{prefix}/{META_NAME}")

    @classmethod
    def load(cls, store: ArtifactStore, prefix: str = INDEX_PREFIX) -> HintIndex:
        faiss = _faiss()
        meta_path = f"{prefix}/{META_NAME}"
        meta = store.read_json(meta_path)
        where = store.uri(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise HintIndexError(f"{where} is not a format-{FORMAT_VERSION} hint index; {REBUILD}")
        try:
            index = cls(str(meta["model"]), int(meta["dim"]))
            entries = list(meta["types"])
        except (KeyError, TypeError, ValueError) as error:
            raise HintIndexError(f"{where} is malformed ({error}); {REBUILD}") from None
        for entry in entries:
            try:
                task_type, name, ids = entry["task_type"], entry["file"], entry["ids"]
                expected_sha = entry["sha256"]
            except (KeyError, TypeError) as error:
                raise HintIndexError(f"{where}: a type entry lacks {error}; {REBUILD}") from None
            data = store.read_bytes(f"{prefix}/{name}")
            if hashlib.sha256(data).hexdigest() != expected_sha:
                raise HintIndexError(
                    f"{store.uri(f'{prefix}/{name}')} does not match its sha256 in {where}: corrupted or "
                    f"replaced; {REBUILD}"
                )
            try:
                sub = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            except RuntimeError as error:
                raise HintIndexError(
                    f"{store.uri(f'{prefix}/{name}')} is not a FAISS index ({str(error).splitlines()[0]}); "
                    f"{REBUILD}"
                ) from None
            if sub.d != index.dim or sub.ntotal != len(ids):
                raise HintIndexError(
                    f"{name}: {sub.ntotal} vectors of dim {sub.d}, meta lists {len(ids)} ids of dim "
                    f"{index.dim}; {REBUILD}"
                )
            if "nprobe" in entry:
                sub.nprobe = int(entry["nprobe"])
            index._indexes[task_type] = sub
            index._ids[task_type] = list(ids)
        return index
