"""The RAG teacher's hint source: one retrieval per episode, at its start, for a batch of episodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from ragdistill.environments.base import TaskInfo
from ragdistill.retrieval.retrievers import RetrievalQuery, Retriever, query_text
from ragdistill.rollout import RetrievedHints


def own_group(task: TaskInfo) -> str:
    return task.task_type


class RetrieverHintSource:
    """Adapts a :class:`Retriever` to the rollout engine's ``HintSource``. ``group_of`` picks the hint
    group an episode queries (``EnvProfile.group_of``: the task's own, or one predicted from its
    instruction when the environment must not reveal it)."""

    def __init__(
        self,
        retriever: Retriever,
        k: int,
        query: Literal["instruction", "instruction+observation"] = "instruction+observation",
        group_of: Callable[[TaskInfo], str] = own_group,
    ) -> None:
        self.retriever, self.k, self.query, self.group_of = retriever, k, query, group_of

    def hints_for(self, starts: Sequence[tuple[TaskInfo, str]]) -> list[RetrievedHints]:
        queries = [
            RetrievalQuery(self.group_of(task), query_text(task.instruction, observation, self.query))
            for task, observation in starts
        ]
        results = self.retriever.retrieve(queries, self.k)
        return [
            RetrievedHints(
                [hint.text for hint in result.hints], result.hint_ids, result.tokens, result.reason
            )
            for result in results
        ]
