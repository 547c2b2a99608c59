"""The hint bank: unique hints per task type, merged across failures, stored as one JSONL file.

Adding a hint that duplicates one already in its task type merges it into the existing one (mentions
add up, source episode ids are united, the first text and id stay). Duplicate means: the same
normalised text, or (``dedupe="fuzzy"``, the paper's rule) a rapidfuzz ratio above the threshold
(0.85) on normalised texts, or (``dedupe="embedding"``) a cosine similarity of the embeddings above
``embedding_threshold``. Hints of different task types are never merged. A bank holds one environment.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from rapidfuzz import fuzz, process

from ragdistill.errors import UserFacingError
from ragdistill.retrieval.hints import Hint, hint_id, normalise

if TYPE_CHECKING:
    from ragdistill.config import HintRules
    from ragdistill.store import ArtifactStore

BANK_PATH = "hints/bank.jsonl"


class TextEmbedder(Protocol):
    """What the bank and the index need from an embedder: unit-length float32 rows, one per text."""

    model_name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class BankFormatError(UserFacingError, ValueError):
    """A bank file line that is not a valid hint; the message names the source and line number."""


class HintBank:
    def __init__(
        self,
        dedupe: Literal["fuzzy", "embedding"] = "fuzzy",
        fuzzy_threshold: float = 0.85,
        embedder: TextEmbedder | None = None,
        embedding_threshold: float = 0.9,
    ) -> None:
        if dedupe == "embedding" and embedder is None:
            raise ValueError("dedupe='embedding' needs an embedder (ragdistill.retrieval.embed.Embedder)")
        if dedupe not in ("fuzzy", "embedding"):
            raise ValueError(f"unknown dedupe {dedupe!r}; use 'fuzzy' or 'embedding'")
        self.dedupe = dedupe
        self.fuzzy_threshold = fuzzy_threshold
        self.embedder = embedder
        self.embedding_threshold = embedding_threshold
        self.env: str | None = None
        self._hints: dict[str, Hint] = {}
        self._ids_by_type: dict[str, list[str]] = {}
        self._texts_by_type: dict[str, list[str]] = {}
        self._vectors_by_type: dict[str, list[np.ndarray]] = {}

    @classmethod
    def from_rules(cls, rules: HintRules, embedder: TextEmbedder | None = None) -> HintBank:
        return cls(rules.dedupe, rules.fuzzy_threshold, embedder, rules.embedding_threshold)

    def __len__(self) -> int:
        return len(self._hints)

    def __iter__(self) -> Iterator[Hint]:
        return iter(self._hints.values())

    def __contains__(self, hint_id_: object) -> bool:
        return hint_id_ in self._hints

    def get(self, hint_id_: str) -> Hint:
        try:
            return self._hints[hint_id_]
        except KeyError:
            raise KeyError(f"no hint with id {hint_id_!r} in the bank") from None

    def task_types(self) -> list[str]:
        return list(self._ids_by_type)

    def hints(self, task_type: str | None = None) -> list[Hint]:
        """The hints of one task type (in insertion order), or all of them."""
        if task_type is None:
            return list(self._hints.values())
        return [self._hints[i] for i in self._ids_by_type.get(task_type, [])]

    def counts_by_type(self) -> dict[str, int]:
        return {task_type: len(ids) for task_type, ids in self._ids_by_type.items()}

    def _check_env(self, hint: Hint) -> None:
        if self.env is None:
            self.env = hint.env
        elif hint.env != self.env:
            raise ValueError(
                f"hint {hint.id} is for env {hint.env!r} but this bank holds {self.env!r}; "
                "keep one bank per environment"
            )

    def _vectors(self, task_type: str) -> list[np.ndarray]:
        """This type's embeddings, computed on first use (e.g. after loading a bank from a file)."""
        vectors = self._vectors_by_type.setdefault(task_type, [])
        missing = self._texts_by_type[task_type][len(vectors) :]
        if missing:
            assert self.embedder is not None
            vectors.extend(np.asarray(self.embedder.encode(missing), dtype=np.float32))
        return vectors

    def _find_duplicate(self, task_type: str, text: str, vector: np.ndarray | None) -> str | None:
        texts = self._texts_by_type.get(task_type)
        if not texts:
            return None
        if self.dedupe == "fuzzy":
            match = process.extractOne(
                text, texts, scorer=fuzz.ratio, score_cutoff=self.fuzzy_threshold * 100
            )
            if match is not None and match[1] > self.fuzzy_threshold * 100:
                return self._ids_by_type[task_type][match[2]]
            return None
        assert vector is not None
        similarities = np.stack(self._vectors(task_type)) @ vector
        best = int(np.argmax(similarities))
        if similarities[best] > self.embedding_threshold:
            return self._ids_by_type[task_type][best]
        return None

    def _merge_into(self, target: Hint, hint: Hint) -> None:
        target.mentions += hint.mentions
        known = set(target.source_episode_ids)
        target.source_episode_ids.extend(s for s in hint.source_episode_ids if s not in known)

    def _add(self, hint: Hint, vector: np.ndarray | None) -> str:
        self._check_env(hint)
        if hint.id in self._hints:
            self._merge_into(self._hints[hint.id], hint)
            return "merged"
        text = normalise(hint.text)
        duplicate = self._find_duplicate(hint.task_type, text, vector)
        if duplicate is not None:
            self._merge_into(self._hints[duplicate], hint)
            return "merged"
        stored = Hint(
            hint.id, hint.text, hint.env, hint.task_type, list(hint.source_episode_ids), hint.mentions
        )
        if vector is not None:
            self._texts_by_type.setdefault(stored.task_type, [])
            self._vectors(stored.task_type).append(vector)
        self._hints[stored.id] = stored
        self._ids_by_type.setdefault(stored.task_type, []).append(stored.id)
        self._texts_by_type.setdefault(stored.task_type, []).append(text)
        return "added"

    def add(self, hint: Hint) -> str:
        """Add one hint; returns "added" or "merged"."""
        return "added" if self.add_all([hint])["added"] else "merged"

    def add_all(self, hints: Iterable[Hint]) -> Counter[str]:
        """Add hints in order (embeddings, if used, computed in one batch); counts "added"/"merged"."""
        hints = list(hints)
        vectors: list[np.ndarray | None] = [None] * len(hints)
        if self.dedupe == "embedding" and hints:
            assert self.embedder is not None
            encoded = np.asarray(self.embedder.encode([normalise(h.text) for h in hints]), dtype=np.float32)
            vectors = list(encoded)
        outcomes: Counter[str] = Counter(added=0, merged=0)
        for hint, vector in zip(hints, vectors, strict=True):
            outcomes[self._add(hint, vector)] += 1
        return outcomes

    def merge(self, other: HintBank) -> Counter[str]:
        """Fold another bank's hints into this one, with this bank's dedupe rule."""
        return self.add_all(other)

    def to_jsonl(self) -> str:
        return "".join(json.dumps(h.to_dict(), sort_keys=True, ensure_ascii=False) + "\n" for h in self)

    def fingerprint(self) -> str:
        """sha256 of the bank's JSONL, for manifests and cache keys."""
        return hashlib.sha256(self.to_jsonl().encode()).hexdigest()

    @classmethod
    def from_jsonl(cls, text: str, source: str = "<bank>", **options: object) -> HintBank:
        """Load a bank exactly as saved (no re-deduplication); malformed lines raise with their number."""
        bank = cls(**options)  # type: ignore[arg-type]
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                hint = Hint.from_dict(json.loads(line))
            except (ValueError, RecursionError) as error:
                raise BankFormatError(f"{source} line {number}: not a valid hint: {error}") from None
            if hint.id != hint_id(hint.text, hint.env, hint.task_type):
                raise BankFormatError(f"{source} line {number}: id {hint.id} does not match the hint's text")
            if hint.id in bank:
                raise BankFormatError(f"{source} line {number}: duplicate hint id {hint.id}")
            if bank.env is not None and hint.env != bank.env:
                raise BankFormatError(f"{source} line {number}: env {hint.env!r} in a {bank.env!r} bank")
            bank.env = hint.env
            bank._hints[hint.id] = hint
            bank._ids_by_type.setdefault(hint.task_type, []).append(hint.id)
            bank._texts_by_type.setdefault(hint.task_type, []).append(normalise(hint.text))
        return bank

    def save(self, store: ArtifactStore, path: str = BANK_PATH) -> str:
        """Write the bank atomically under the store; returns its URI."""
        store.write_text(path, self.to_jsonl())
        return store.uri(path)

    @classmethod
    def load(cls, store: ArtifactStore, path: str = BANK_PATH, **options: object) -> HintBank:
        return cls.from_jsonl(store.read_text(path), source=store.uri(path), **options)


def load_nonempty_bank(store: ArtifactStore, path: str = BANK_PATH) -> HintBank:
    """The mined bank, refusing an empty one: a teacher without hints is just the base agent again."""
    bank = HintBank.load(store, path)
    if len(bank) == 0:
        folder = path.rpartition("/")[0]
        raise BankFormatError(
            f"the hint bank {store.uri(path)} is empty: mining accepted no hints (the reasons are counted in "
            f"{store.uri(folder + '/manifest.json')} and listed in {store.uri(folder + '/rejected.jsonl')}). "
            "Mine more failures, use a stronger extractor (models.extractor), or set "
            "mining.constrain_hint_text for a small extractor on vLLM"
        )
    return bank
