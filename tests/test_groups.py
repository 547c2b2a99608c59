"""Group classifiers: which hint group an instruction belongs to (WebShop's category)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ragdistill.config import RetrievalConfig
from ragdistill.config.stages import retrieval_settings
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.registry import get_profile
from ragdistill.retrieval.groups import (
    EmbeddingGroupClassifier,
    LLMGroupClassifier,
    agreement,
    make_group_classifier,
)
from retrieval_doubles import RERANKER_ROLE, EnginesDouble, HashingEmbedderDouble, ScriptedExtractorDouble

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


def labelled_tasks(asked: list[int | None]) -> Callable[[int | None], list[TaskInfo]]:
    """Training tasks from :data:`LABELLED`, recording each limit asked for."""

    def training_tasks(limit: int | None) -> list[TaskInfo]:
        asked.append(limit)
        return [
            TaskInfo("webshop", "train", f"t{number}", group, instruction)
            for number, (instruction, group) in enumerate(LABELLED[:limit])
        ]

    return training_tasks


def test_make_group_classifier_builds_what_retrieval_group_names_from_the_profile() -> None:
    profile, asked = get_profile("webshop"), []
    engines = EnginesDouble(ScriptedExtractorDouble(['{"group": "garden"}']))
    task = retrieval_settings(RetrievalConfig(group="task"))
    assert make_group_classifier(task, engines, profile, labelled_tasks(asked)) is None

    llm = make_group_classifier(
        retrieval_settings(RetrievalConfig(group="llm")),
        engines,
        profile,
        labelled_tasks(asked),
        RERANKER_ROLE,
    )
    assert isinstance(llm, LLMGroupClassifier) and llm.groups == list(profile.task_groups)
    assert [p.group for p in llm.classify(["a rake"])] == ["garden"] and engines.roles == ["reranker"]

    embedding = retrieval_settings(RetrievalConfig(group="embedding", group_examples=4))
    classifier = make_group_classifier(embedding, engines, profile, labelled_tasks(asked))
    assert isinstance(classifier, EmbeddingGroupClassifier)
    assert asked == [4] and classifier.groups == ["beauty", "electronics"]
    assert engines.embedders == [embedding.embedding_model]


def test_the_llm_group_classifier_needs_the_reranker_role() -> None:
    llm = retrieval_settings(RetrievalConfig(group="llm"))
    with pytest.raises(ValueError, match="needs the re-ranker role"):
        make_group_classifier(llm, EnginesDouble(), get_profile("webshop"), labelled_tasks([]))


def test_agreement() -> None:
    assert agreement(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    assert agreement([], []) == 1.0
    with pytest.raises(ValueError):
        agreement(["a"], [])
