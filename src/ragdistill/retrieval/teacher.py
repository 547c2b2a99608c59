"""The RAG teacher's hint source: one retrieval per episode, at its start, for a batch of episodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ragdistill.environments.base import TaskInfo
from ragdistill.retrieval.groups import GroupClassifier, GroupPrediction
from ragdistill.retrieval.retrievers import RetrievalQuery, Retriever, query_text
from ragdistill.rollout import RetrievedHints


class RetrieverHintSource:
    """Adapts a :class:`Retriever` to the rollout engine's ``HintSource``.

    Each episode queries the hints of one group: the task's own (``classifier`` None: ALFWorld's task
    type is stated by the game), or the group a classifier reads off the instruction (WebShop's
    category, which the environment does not reveal). A classifier's model tokens count as retrieval
    tokens, and its prediction is named in the episode's retrieval note."""

    def __init__(
        self,
        retriever: Retriever,
        k: int,
        query: Literal["instruction", "instruction+observation"] = "instruction+observation",
        classifier: GroupClassifier | None = None,
    ) -> None:
        self.retriever, self.k, self.query, self.classifier = retriever, k, query, classifier

    def _groups(self, tasks: Sequence[TaskInfo]) -> list[GroupPrediction]:
        if self.classifier is None:
            return [GroupPrediction(task.task_type) for task in tasks]
        return self.classifier.classify([task.instruction for task in tasks])

    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]:
        groups = self._groups([task for task, _ in starts])
        queries = [
            RetrievalQuery(group.group, query_text(task.instruction, observation, self.query))
            for (task, observation), group in zip(starts, groups, strict=True)
        ]
        results = self.retriever.retrieve(queries, self.k)
        return [
            RetrievedHints(
                [hint.text for hint in result.hints],
                result.hint_ids,
                result.tokens + group.tokens,
                _note(result.reason, group, self.classifier),
            )
            for result, group in zip(results, groups, strict=True)
        ]


def _note(reason: str | None, group: GroupPrediction, classifier: GroupClassifier | None) -> str | None:
    if classifier is None:
        return reason
    parts = [f"group {group.group} predicted by the {classifier.name} classifier"]
    parts += [text for text in (group.note, reason) if text]
    return "; ".join(parts)
