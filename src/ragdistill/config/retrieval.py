"""Stages B and C: mining hints from failures and retrieving them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ragdistill.config.base import StrictModel

Retriever = Literal["faiss", "bm25", "llm-rerank"]
AblatedMethod = Literal["rag", "distill"]


class HintRules(StrictModel):
    """What mining keeps of the extractor's answers (stage B's settings, without how work is committed)."""

    max_hints_per_failure: int = Field(
        4, gt=0, description="At most this many hints per failure, capped by the environment's hint style."
    )
    max_hint_chars: int = Field(120, gt=0)
    dedupe: Literal["fuzzy", "embedding"] = "fuzzy"
    fuzzy_threshold: float = Field(0.85, gt=0, le=1, description="Paper: ratio > 0.85 is a duplicate.")
    embedding_threshold: float = Field(0.9, gt=0, le=1)
    max_failures: int | None = Field(None, gt=0, description="Mine at most this many failures in all.")
    constrain_hint_text: bool = Field(
        False,
        description="Constrain each hint's text in the JSON schema: it starts with an imperative verb of the "
        "environment's list, holds no digits, ends with a period and stays within max_hint_chars. Small "
        "extractors (the demo's 135M model) produce valid hints only this way. vLLM's structured outputs "
        "honour it; keep it off for APIs whose strict mode rejects pattern/maxLength.",
    )


class MiningConfig(HintRules):
    chunk_size: int = Field(
        32,
        gt=0,
        description="Failures sent to the extractor per commit: a crash loses at most one chunk's answers.",
    )


class RetrievalConfig(StrictModel):
    retriever: Retriever = "faiss"
    k: int = Field(3, gt=0, description="Hints per episode (paper: 3; ablation 1, 3, 6, 9).")
    embedding_model: str = Field("all-minilm-l6-v2", description="Short name or sentence-transformers id.")
    exact_index_max: int = Field(50_000, gt=0, description="Above this many hints, an approximate index.")
    query: Literal["instruction", "instruction+observation"] = "instruction+observation"
    group: Literal["task", "embedding", "llm"] = Field(
        "task",
        description="Which hint group an episode retrieves from. task: the task's own (ALFWorld's task type "
        "is stated by the game); embedding: the nearest centroid of training-task instructions "
        "(group_examples of them); llm: the reranker model picks one, its tokens counted as retrieval "
        "tokens (the paper's WebShop category classifier).",
    )
    group_examples: int = Field(
        500, gt=0, description="Labelled training tasks the embedding group classifier learns from."
    )


class AblationConfig(StrictModel):
    """The retrieval ablation (``ragdistill ablate``; the paper's k ablation and its BM25 one): the RAG
    teacher, and what learns from it, at each grid point of hints per episode (k) and retriever. Every
    stage before the teacher is the pipeline's own, shared by all points."""

    k: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 3, 6, 9],
        min_length=1,
        description="Hints per episode to try (the paper: 1, 3, 6, 9).",
    )
    retrievers: list[Retriever] = Field(
        default_factory=lambda: ["faiss", "bm25", "llm-rerank"],
        min_length=1,
        description="Retrievers to try: FAISS over embeddings, BM25 over the hint texts, the LLM re-ranker.",
    )
    design: Literal["axes", "cross"] = Field(
        "axes",
        description="axes: each k with the config's retriever, and each retriever with the config's k (one "
        "setting varied at a time, as the paper's ablations); cross: every k with every retriever.",
    )
    methods: list[AblatedMethod] = Field(
        default_factory=lambda: ["rag", "distill"],
        min_length=1,
        description="What each point evaluates: rag, the RAG teacher on the evaluation tasks; distill, a "
        "student distilled from the point's teacher (a teacher rollout on the training tasks and a LoRA "
        "training per point), then evaluated.",
    )

    @field_validator("k", "retrievers", "methods")
    @classmethod
    def _each_value_once(cls, values: list[Any]) -> list[Any]:
        repeated = sorted({str(value) for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; name each value once")
        return values
