"""Group classifiers: which hint group an instruction belongs to (WebShop's category)."""

from __future__ import annotations

import pytest

from ragdistill.retrieval.groups import EmbeddingGroupClassifier, LLMGroupClassifier, agreement
from retrieval_doubles import HashingEmbedderDouble, ScriptedExtractorDouble

LABELLED = [
    ("i need a moisturizing face cream for dry skin", "beauty"),
    ("find a shampoo for curly hair", "beauty"),
    ("buy a usb c charging cable", "electronics"),
    ("i want wireless bluetooth headphones", "electronics"),
    ("get a mens cotton t shirt in blue", "fashion"),
]


def test_embedding_classifier_picks_the_nearest_centroid() -> None:
    classifier = EmbeddingGroupClassifier(HashingEmbedderDouble(), LABELLED)
    predictions = classifier.classify(
        ["a face cream for skin", "bluetooth charging headphones", "cotton shirt"]
    )
    assert [p.group for p in predictions] == ["beauty", "electronics", "fashion"]
    assert all(p.tokens == 0 and p.note is None for p in predictions)
    assert classifier.classify([]) == []


def test_embedding_classifier_needs_labels() -> None:
    with pytest.raises(ValueError, match="labelled"):
        EmbeddingGroupClassifier(HashingEmbedderDouble(), [])


def test_llm_classifier_reads_the_json_answer_and_counts_tokens() -> None:
    answers = iter(['{"group": "electronics"}', '{"group": "Beauty"}'])
    backend = ScriptedExtractorDouble(lambda user: next(answers))
    classifier = LLMGroupClassifier(backend, ["beauty", "electronics"], "Product category", "a shop")
    predictions = classifier.classify(["buy a cable", "buy a cream"])
    assert [p.group for p in predictions] == ["electronics", "beauty"]
    assert all(p.tokens > 0 and p.note is None for p in predictions)
    request = backend.requests[0]
    assert request.json_schema is not None
    assert request.json_schema["properties"]["group"]["enum"] == ["beauty", "electronics"]
    assert "buy a cable" in request.messages[-1].content


@pytest.mark.parametrize("answer", ["no idea", '{"group": "toys"}', '{"other": 1}'])
def test_llm_classifier_falls_back_with_a_note(answer: str) -> None:
    classifier = LLMGroupClassifier(
        ScriptedExtractorDouble(lambda user: answer), ["beauty", "electronics"], "Product category", "a shop"
    )
    (prediction,) = classifier.classify(["buy something"])
    assert prediction.group == "beauty"
    assert prediction.note is not None and "used beauty" in prediction.note


def test_agreement() -> None:
    assert agreement(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    assert agreement([], []) == 1.0
    with pytest.raises(ValueError):
        agreement(["a"], [])
