"""Retrievers: pick at most k hints of a query's task type, for a whole batch of episodes at once.

Three kinds share one interface. ``faiss`` (default): cosine over sentence embeddings. ``bm25``: BM25
over the hint *texts* of the type (the paper's ablation indexed category names instead, a bug).
``llm-rerank`` (the paper's retriever): a model reads the type's whole numbered hint list and answers
up to k numbers as JSON; its tokens are reported as retrieval tokens, apart from the policy's.

Every result carries ``reason`` when it holds fewer than k hints, so a short hint block is explained in
the episode record ("only 2 hints for type heat", "no hints for type examine", "model returned 1 valid
index"). A hint is only ever returned for a query of its own task type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from ragdistill.bm25 import import_bm25s
from ragdistill.config import SamplingConfig
from ragdistill.config.stage_models import RetrievalSettings, RoleSettings
from ragdistill.inference.base import Backend, ChatMessage, GenerationRequest
from ragdistill.retrieval.bank import HintBank, TextEmbedder
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.retrieval.hints import Hint, unsafe_for_prompt
from ragdistill.retrieval.index import HintIndex, HintIndexError
from ragdistill.retrieval.lenient_json import find_json


@dataclass(frozen=True)
class RetrievalQuery:
    task_type: str
    text: str


@dataclass
class RetrievalResult:
    hints: list[Hint] = field(default_factory=list)
    tokens: int = 0
    reason: str | None = None
    scores: list[float] = field(default_factory=list)

    @property
    def hint_ids(self) -> list[str]:
        return [hint.id for hint in self.hints]


class Retriever(Protocol):
    name: str

    def retrieve(self, queries: Sequence[RetrievalQuery], k: int) -> list[RetrievalResult]: ...


def query_text(
    instruction: str,
    observation: str = "",
    mode: Literal["instruction", "instruction+observation"] = "instruction+observation",
) -> str:
    """The retrieval query for an episode, per ``RetrievalConfig.query``; an episode without an
    instruction is queried by its first observation (where such environments state the goal)."""
    if not instruction.strip():
        return observation.strip()
    if mode == "instruction" or not observation.strip():
        return instruction.strip()
    return f"{instruction.strip()}\n{observation.strip()}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _shortfall(task_type: str, available: int, returned: int, k: int) -> str | None:
    if returned >= k:
        return None
    if available == 0:
        return f"no hints for type {task_type}"
    if returned == available:
        return f"only {_plural(available, 'hint')} for type {task_type}"
    return None


def _check_types(queries: Sequence[RetrievalQuery], results: list[RetrievalResult]) -> list[RetrievalResult]:
    for query, result in zip(queries, results, strict=True):
        for hint in result.hints:
            if hint.task_type != query.task_type:
                raise RuntimeError(
                    f"retriever returned a {hint.task_type!r} hint for a {query.task_type!r} query"
                )
    return results


class FaissRetriever:
    name = "faiss"

    def __init__(self, bank: HintBank, index: HintIndex, embedder: TextEmbedder) -> None:
        if index.model_name != embedder.model_name or index.dim != embedder.dim:
            raise HintIndexError(
                f"the index was built with {index.model_name!r} (dim {index.dim}) but queries would be "
                f"embedded with {embedder.model_name!r} (dim {embedder.dim}); rebuild the index or use its model"
            )
        for task_type in set(bank.task_types()) | set(index.task_types()):
            if set(index.ids(task_type)) != {hint.id for hint in bank.hints(task_type)}:
                raise HintIndexError(
                    f"the index does not match the hint bank for type {task_type!r} (built from another "
                    "version of the bank); rebuild the index from this bank"
                )
        self.bank, self.index, self.embedder = bank, index, embedder

    def retrieve(self, queries: Sequence[RetrievalQuery], k: int) -> list[RetrievalResult]:
        results = [RetrievalResult() for _ in queries]
        if not queries:
            return results
        vectors = self.embedder.encode([query.text for query in queries])
        positions: dict[str, list[int]] = {}
        for position, query in enumerate(queries):
            positions.setdefault(query.task_type, []).append(position)
        for task_type, rows in positions.items():
            found = self.index.search(task_type, vectors[rows], k)
            for row, matches in zip(rows, found, strict=True):
                results[row].hints = [self.bank.get(hint_id) for hint_id, _ in matches]
                results[row].scores = [score for _, score in matches]
        for query, result in zip(queries, results, strict=True):
            result.reason = _shortfall(
                query.task_type, self.index.size(query.task_type), len(result.hints), k
            )
        return _check_types(queries, results)


_WORD = re.compile(r"\b\w\w+\b")


def _bm25_tokens(text: str, stopwords: frozenset[str]) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in stopwords]


class BM25Retriever:
    """BM25 (bm25s) per task type over the hint texts. Hints sharing no word with the query score 0
    and are not returned: their order would be arbitrary. The bank is read once, at construction."""

    name = "bm25"

    def __init__(self, bank: HintBank) -> None:
        bm25s = import_bm25s()
        from bm25s.stopwords import STOPWORDS_EN

        self.bank = bank
        self._stopwords = frozenset(STOPWORDS_EN)
        self._models: dict[str, Any] = {}
        self._hints = {task_type: bank.hints(task_type) for task_type in bank.task_types()}
        for task_type, hints in self._hints.items():
            corpus = [_bm25_tokens(hint.text, self._stopwords) or ["\x00"] for hint in hints]
            model = bm25s.BM25()
            model.index(corpus, show_progress=False)
            self._models[task_type] = model

    def retrieve(self, queries: Sequence[RetrievalQuery], k: int) -> list[RetrievalResult]:
        results: list[RetrievalResult] = []
        for query in queries:
            hints = self._hints.get(query.task_type, [])
            tokens = _bm25_tokens(query.text, self._stopwords)
            result = RetrievalResult()
            if hints and tokens and k > 0:
                scores = np.asarray(self._models[query.task_type].get_scores(tokens), dtype=np.float64)
                order = np.argsort(-scores, kind="stable")[:k]
                kept = [int(i) for i in order if scores[i] > 0]
                result.hints = [hints[i] for i in kept]
                result.scores = [float(scores[i]) for i in kept]
            result.reason = _shortfall(query.task_type, len(hints), len(result.hints), k)
            if result.reason is None and len(result.hints) < k:
                result.reason = (
                    f"only {len(result.hints)} of {len(hints)} hints for type {query.task_type} "
                    "share a word with the query"
                )
            results.append(result)
        return _check_types(queries, results)


RERANK_SYSTEM = "You choose which rules will help an agent with its task. You answer with JSON only."


def rerank_request(
    query: RetrievalQuery, hints: list[Hint], k: int, sampling: SamplingConfig, group_label: str = "Task type"
) -> GenerationRequest:
    """The re-ranker's request; ``group_label`` names the hint group as the environment does
    (``EnvProfile.group_label``)."""
    numbered = "\n".join(f"{number}. {hint.text}" for number, hint in enumerate(hints, start=1))
    user = (
        f"{group_label}: {query.task_type}\nTask: {query.text}\n\nRules:\n{numbered}\n\n"
        f"Choose up to {k} rules that are most useful for this task, most useful first. "
        'Reply with JSON only: {"indices": [the numbers of the chosen rules]}'
    )
    schema = {
        "type": "object",
        "properties": {"indices": {"type": "array", "items": {"type": "integer"}, "maxItems": k}},
        "required": ["indices"],
        "additionalProperties": False,
    }
    return GenerationRequest.sampled(
        [ChatMessage("system", RERANK_SYSTEM), ChatMessage("user", user)], sampling, json_schema=schema
    )


def _accept_indices(value: Any) -> bool:
    if isinstance(value, dict):
        return isinstance(value.get("indices", value.get("index")), list | int)
    return isinstance(value, list)


def parse_indices(text: str, count: int, k: int) -> tuple[list[int], int]:
    """(valid 0-based positions, in the model's order, at most k; number of invalid entries).

    Takes ``{"indices": [...]}``, a bare list, or, with no JSON at all, the integers in the text.
    Valid: an integer (or integer string) from 1 to ``count``, not repeated. Never raises."""
    if not isinstance(text, str):
        return [], 0
    value = find_json(text, accept=_accept_indices)
    if isinstance(value, dict):
        value = value.get("indices", value.get("index"))
    items: list[Any] = value if isinstance(value, list) else [value] if value is not None else []
    if value is None:
        items = re.findall(r"-?\d+", text[:10_000])
    chosen: list[int] = []
    invalid = 0
    for item in items:
        number: int | None = None
        if isinstance(item, int) and not isinstance(item, bool):
            number = item
        elif isinstance(item, str) and item.strip().lstrip("-").isdigit() and len(item.strip()) < 10:
            number = int(item.strip())
        if number is None or not 1 <= number <= count or number - 1 in chosen:
            invalid += 1
            continue
        if len(chosen) < k:
            chosen.append(number - 1)
    return chosen, invalid


class LLMRerankRetriever:
    """The paper's retriever. A type with at most k hints returns them all without a model call."""

    name = "llm-rerank"

    def __init__(
        self,
        bank: HintBank,
        backend: Backend,
        sampling: SamplingConfig | None = None,
        group_label: str = "Task type",
    ) -> None:
        self.bank, self.backend, self.group_label = bank, backend, group_label
        self.sampling = sampling or SamplingConfig(max_tokens=64)

    def _candidates(self, task_type: str) -> list[Hint]:
        """The group's hints fit to show the re-ranker: hints are data, and one that could act on a
        prompt (:func:`unsafe_for_prompt`) never reaches the re-ranker's prompt either."""
        return [hint for hint in self.bank.hints(task_type) if unsafe_for_prompt(hint.text) is None]

    def retrieve(self, queries: Sequence[RetrievalQuery], k: int) -> list[RetrievalResult]:
        results = [RetrievalResult() for _ in queries]
        asked: list[int] = []
        requests: list[GenerationRequest] = []
        for position, query in enumerate(queries):
            hints = self._candidates(query.task_type)
            if len(hints) <= k or k <= 0:
                results[position].hints = hints[: max(k, 0)]
                results[position].reason = _shortfall(
                    query.task_type, len(hints), len(results[position].hints), k
                )
                continue
            asked.append(position)
            requests.append(rerank_request(query, hints, k, self.sampling, self.group_label))
        generations = self.backend.generate(requests) if requests else []
        if len(generations) != len(requests):
            raise RuntimeError(
                f"backend {self.backend.name!r} returned {len(generations)} answers for {len(requests)} requests"
            )
        for position, generation in zip(asked, generations, strict=True):
            hints = self._candidates(queries[position].task_type)
            result = results[position]
            if generation.failed:
                result.reason = f"the re-ranker failed: {generation.error}"
                continue
            chosen, invalid = parse_indices(generation.text, len(hints), k)
            result.hints = [hints[i] for i in chosen]
            result.tokens = generation.prompt_tokens + generation.completion_tokens
            if len(chosen) < k:
                note = f" ({invalid} invalid)" if invalid else ""
                word = "index" if len(chosen) == 1 else "indices"
                result.reason = f"model returned {len(chosen)} valid {word}{note}"
        return _check_types(queries, results)


def make_retriever(
    retrieval: RetrievalSettings,
    bank: HintBank,
    engines: RetrievalEngines,
    *,
    reranker: RoleSettings | None = None,
    index: HintIndex | None = None,
    group_label: str = "Task type",
) -> Retriever:
    """The retriever ``retrieval.retriever`` names over ``bank``, loading only the model it uses from
    ``engines``. ``faiss`` searches ``index`` (the index stage's, built from this bank) with queries
    embedded by ``retrieval.embedding_model``; ``llm-rerank`` asks the ``reranker`` role and names the
    hint group in its prompt with ``group_label``."""
    if retrieval.retriever == "faiss":
        if index is None:
            raise ValueError(
                "retrieval.retriever 'faiss' needs the index built from this hint bank; run the index "
                "stage first, or choose retriever 'bm25' or 'llm-rerank'"
            )
        embedder = engines.embedder(retrieval.embedding_model)
        return FaissRetriever(bank, index, embedder)
    if retrieval.retriever == "bm25":
        return BM25Retriever(bank)
    if retrieval.retriever == "llm-rerank":
        if reranker is None:
            raise ValueError(
                "retrieval.retriever 'llm-rerank' needs the re-ranker role (models.reranker); "
                "or choose retriever 'faiss' or 'bm25'"
            )
        return LLMRerankRetriever(bank, engines.backend(reranker), reranker.sampling, group_label)
    raise ValueError(f"unknown retriever {retrieval.retriever!r}; use faiss, bm25 or llm-rerank")
