"""Retrievers: faiss, bm25 and llm-rerank behind one batched interface, never crossing task types."""

from __future__ import annotations

import json
import random
import re

import pytest

from conftest import installed, require
from ragdistill.config import RetrievalConfig, SamplingConfig
from ragdistill.config.stages import retrieval_settings
from ragdistill.retrieval.bank import HintBank
from ragdistill.retrieval.hints import Hint
from ragdistill.retrieval.index import HintIndex, HintIndexError
from ragdistill.retrieval.retrievers import (
    BM25Retriever,
    FaissRetriever,
    LLMRerankRetriever,
    RetrievalQuery,
    make_retriever,
    parse_indices,
    query_text,
)
from retrieval_doubles import RERANKER_ROLE, EnginesDouble, HashingEmbedderDouble, ScriptedExtractorDouble

HEAT = [
    "Heat {object} in the microwave before placing it.",
    "Take {object} before going to the microwave.",
    "Open {container} before looking for {object}.",
    "Go to {location} and look around first.",
    "Put {object} in {container} only after heating it.",
]
COOL = ["Cool {object} in the fridge.", "Close the fridge after cooling {object}."]
PUT = ["Find {object} on {location} first."]
RETRIEVERS = ("faiss", "bm25", "llm-rerank")


def make_bank() -> HintBank:
    bank = HintBank()
    for task_type, texts in (("heat", HEAT), ("cool", COOL), ("put", PUT)):
        bank.add_all(Hint.create(text, "alfworld", task_type, ["run/1"]) for text in texts)
    return bank


def faiss_retriever(bank: HintBank) -> FaissRetriever:
    embedder = HashingEmbedderDouble()
    return FaissRetriever(bank, HintIndex.build(bank, embedder), embedder)


def test_faiss_returns_k_nearest_hints_of_the_type_with_reasons_when_short() -> None:
    bank = make_bank()
    retriever = faiss_retriever(bank)
    queries = [
        RetrievalQuery("heat", "heat the object with the microwave"),
        RetrievalQuery("cool", "cool an apple"),
        RetrievalQuery("examine", "look at the book under the lamp"),
        RetrievalQuery("put", "put a mug on the shelf"),
    ]
    heat, cool, examine, put = retriever.retrieve(queries, 3)
    assert len(heat.hints) == 3 and heat.reason is None and heat.tokens == 0
    assert heat.hints[0].text == HEAT[0] and heat.scores == sorted(heat.scores, reverse=True)
    assert {h.text for h in cool.hints} == set(COOL) and cool.reason == "only 2 hints for type cool"
    assert examine.hints == [] and examine.reason == "no hints for type examine"
    assert put.reason == "only 1 hint for type put"


def test_faiss_embeds_a_whole_batch_in_one_call_and_keeps_query_order() -> None:
    bank = make_bank()
    embedder = HashingEmbedderDouble()
    retriever = FaissRetriever(bank, HintIndex.build(bank, embedder), embedder)
    calls_before = embedder.calls
    queries = [RetrievalQuery(t, f"query {i}") for i, t in enumerate(["heat", "cool", "heat", "put", "cool"])]
    results = retriever.retrieve(queries, 2)
    assert embedder.calls == calls_before + 1
    assert [r.hints[0].task_type for r in results] == [q.task_type for q in queries]


def test_faiss_refuses_an_index_from_another_bank_or_model() -> None:
    bank = make_bank()
    embedder = HashingEmbedderDouble()
    index = HintIndex.build(bank, embedder)
    bank.add(Hint.create("Check {location} twice.", "alfworld", "heat"))
    with pytest.raises(HintIndexError, match="does not match the hint bank for type 'heat'"):
        FaissRetriever(bank, index, embedder)
    other = HashingEmbedderDouble(dim=32)
    with pytest.raises(HintIndexError, match="rebuild the index"):
        FaissRetriever(make_bank(), HintIndex.build(make_bank(), other), embedder)


@pytest.mark.parametrize("kind", ["faiss", "bm25", "llm-rerank"])
def test_no_retriever_ever_returns_a_hint_of_another_type(kind: str) -> None:
    rng = random.Random(0)
    bank = HintBank()
    words = [
        "open",
        "heat",
        "cool",
        "take",
        "microwave",
        "fridge",
        "drawer",
        "shelf",
        "lamp",
        "sink",
        "clean",
        "object",
        "place",
    ]
    for task_type in ("heat", "cool", "clean", "put"):
        texts = {" ".join(["Check", *rng.sample(words, 4)]) for _ in range(rng.randint(0, 12))}
        bank.add_all(Hint.create(text, "alfworld", task_type) for text in texts)
    answer = lambda _: json.dumps({"indices": [rng.randint(0, 14) for _ in range(4)]})  # noqa: E731
    retrieval = retrieval_settings(RetrievalConfig(retriever=kind))
    engines = EnginesDouble(ScriptedExtractorDouble(answer))
    index = HintIndex.build(bank, engines.embedder(retrieval.embedding_model))
    retriever = make_retriever(retrieval, bank, engines, reranker=RERANKER_ROLE, index=index)
    queries = [
        RetrievalQuery(
            rng.choice(["heat", "cool", "clean", "put", "examine"]), " ".join(rng.sample(words, 3))
        )
        for _ in range(60)
    ]
    for k in (1, 3, 6):
        results = retriever.retrieve(queries, k)
        assert len(results) == len(queries)
        for query, result in zip(queries, results, strict=True):
            assert len(result.hints) <= k
            assert all(h.task_type == query.task_type for h in result.hints)
            assert len(result.hints) == k or result.reason


def test_bm25_indexes_hint_texts_not_the_category_name() -> None:
    retriever = BM25Retriever(make_bank())
    by_text, by_type_name = retriever.retrieve(
        [RetrievalQuery("heat", "use the microwave"), RetrievalQuery("heat", "heat")], 3
    )
    assert [h.text for h in by_text.hints][:2] == [HEAT[0], HEAT[1]] or by_text.hints[0].text in HEAT[:2]
    assert all("microwave" in h.text for h in by_text.hints)
    assert by_text.reason == "only 2 of 5 hints for type heat share a word with the query"
    assert [h.text for h in by_type_name.hints] == [HEAT[0]], (
        "'heat' matches only the hint whose text says it"
    )


def test_bm25_handles_empty_queries_unknown_types_and_stopword_only_hints() -> None:
    bank = make_bank()
    bank.add(Hint.create("Do it.", "alfworld", "heat"))
    retriever = BM25Retriever(bank)
    empty, unknown = retriever.retrieve(
        [RetrievalQuery("heat", "the a of"), RetrievalQuery("examine", "lamp")], 3
    )
    assert empty.hints == [] and "share a word" in (empty.reason or "")
    assert unknown.hints == [] and unknown.reason == "no hints for type examine"


def test_llm_rerank_shows_the_whole_numbered_list_and_returns_the_chosen_hints_in_order() -> None:
    bank = make_bank()
    backend = ScriptedExtractorDouble(
        ['{"indices": [5, 1]}', 'Sure: ```json\n{"indices": [2, 2, 9, "4"]}\n```']
    )
    retriever = LLMRerankRetriever(bank, backend, SamplingConfig(max_tokens=32))
    queries = [
        RetrievalQuery("heat", "heat a mug"),
        RetrievalQuery("cool", "cool an apple"),
        RetrievalQuery("heat", "heat an egg"),
    ]
    first, cool, second = retriever.retrieve(queries, 3)
    assert backend.calls == 1 and len(backend.requests) == 2, "one batched call; cool has <= k hints"
    prompt = backend.requests[0].messages[-1].content
    assert all(f"{i}. {text}" in prompt for i, text in enumerate(HEAT, start=1))
    assert not any(text in prompt for text in COOL)
    assert backend.requests[0].max_tokens == 32 and backend.requests[0].json_schema is not None
    assert [h.text for h in first.hints] == [HEAT[4], HEAT[0]]
    assert first.reason == "model returned 2 valid indices" and first.tokens > 0
    assert [h.text for h in second.hints] == [HEAT[1], HEAT[3]]
    assert second.reason == "model returned 2 valid indices (2 invalid)"
    assert cool.tokens == 0 and cool.reason == "only 2 hints for type cool" and len(cool.hints) == 2


@pytest.mark.parametrize(
    ("answer", "chosen", "invalid"),
    [
        ('{"indices": [3, 1, 2]}', [2, 0, 1], 0),
        ("[4]", [3], 0),
        ("I pick rule 2 and rule 5.", [1, 4], 0),
        ('{"indices": [0, 6, -1, true, "x", 2]}', [1], 5),
        ('{"indices": [1, 2, 3, 4, 5]}', [0, 1, 2], 0),
        ('{"index": 2}', [1], 0),
        ("", [], 0),
        ("no idea", [], 0),
    ],
)
def test_parse_indices_is_tolerant_and_validates_range(answer: str, chosen: list[int], invalid: int) -> None:
    assert parse_indices(answer, count=5, k=3) == (chosen, invalid)


def test_make_retriever_builds_each_kind_loading_only_the_model_it_uses() -> None:
    bank = make_bank()
    faiss, bm25, rerank = (retrieval_settings(RetrievalConfig(retriever=kind)) for kind in RETRIEVERS)
    engines = EnginesDouble(ScriptedExtractorDouble(["{}"]))
    index = HintIndex.build(bank, engines.embedder(faiss.embedding_model))
    engines.embedders.clear()

    retriever = make_retriever(faiss, bank, engines, index=index)
    assert isinstance(retriever, FaissRetriever) and retriever.index is index
    assert engines.embedders == [faiss.embedding_model] and engines.roles == []
    assert isinstance(make_retriever(bm25, bank, engines, reranker=RERANKER_ROLE), BM25Retriever)
    reranking = make_retriever(rerank, bank, engines, reranker=RERANKER_ROLE, group_label="Product category")
    assert isinstance(reranking, LLMRerankRetriever)
    assert reranking.sampling == RERANKER_ROLE.sampling and reranking.group_label == "Product category"
    assert engines.embedders == [faiss.embedding_model] and engines.roles == ["reranker"]


def test_make_retriever_names_what_a_kind_is_missing() -> None:
    faiss, _, rerank = (retrieval_settings(RetrievalConfig(retriever=kind)) for kind in RETRIEVERS)
    with pytest.raises(ValueError, match="needs the index built from this hint bank"):
        make_retriever(faiss, make_bank(), EnginesDouble())
    with pytest.raises(ValueError, match="needs the re-ranker role"):
        make_retriever(rerank, make_bank(), EnginesDouble())


def test_query_text_follows_the_configured_mode() -> None:
    assert query_text(" Heat a mug. ", "You are in a kitchen.", "instruction") == "Heat a mug."
    assert query_text("Heat a mug.", "You are in a kitchen.") == "Heat a mug.\nYou are in a kitchen."
    assert query_text("Heat a mug.", "  ") == "Heat a mug."
    assert query_text("", " Your task is to: heat a mug. ", "instruction") == "Your task is to: heat a mug."


@pytest.mark.slow
def test_faiss_with_the_real_embedder_prefers_the_relevant_hint() -> None:
    import torch

    torch.set_num_threads(1)
    from ragdistill.retrieval.embed import get_embedder

    bank, embedder = make_bank(), get_embedder()
    retriever = FaissRetriever(bank, HintIndex.build(bank, embedder), embedder)
    (result,) = retriever.retrieve(
        [RetrievalQuery("cool", "Your task is to: cool some apple and put it in the fridge.")], 1
    )
    assert result.hints[0].text in COOL and 0 < result.scores[0] <= 1


@pytest.mark.slow
def test_llm_rerank_with_the_real_tiny_model_through_vllm() -> None:
    require(installed("vllm"), "vLLM is not installed (`make setup` installs the cpu extra)")
    import torch

    from ragdistill.config import BackendConfig, ModelSpec, RoleConfig
    from ragdistill.inference.vllm_backend import VLLMBackend

    torch.set_num_threads(1)
    role = RoleConfig(
        model=ModelSpec(name="smollm2-135m", max_model_len=2048),
        backend=BackendConfig(kind="vllm", kv_cache_gib=1, enable_lora=False),
        sampling=SamplingConfig(max_tokens=48),
    )
    backend = VLLMBackend(role)
    try:
        retriever = LLMRerankRetriever(make_bank(), backend, role.sampling)
        queries = [RetrievalQuery("heat", "Your task is to: heat some egg and put it in the countertop.")] * 2
        results = retriever.retrieve(queries, 3)
    finally:
        backend.close()
    for result in results:
        assert result.tokens > 100, "the numbered list alone is over 100 tokens"
        assert len(result.hints) <= 3 and all(h.task_type == "heat" for h in result.hints)
        assert len(result.hints) == 3 or re.fullmatch(
            r"model returned \d valid ind(ex|ices)( \(\d+ invalid\))?", result.reason or ""
        )
