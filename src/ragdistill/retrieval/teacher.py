"""The RAG teacher's hint source: one retrieval per episode, at its start, for a batch of episodes.

:func:`build_hint_source` makes it from the retrieval settings and what the stage hands over (the hint
bank, the index, the engines, the environment's profile and training tasks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from ragdistill.config.stage_models import RetrievalSettings, RoleSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.profile import EnvProfile
from ragdistill.retrieval.bank import HintBank
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.retrieval.groups import GroupClassifier, GroupPrediction, make_group_classifier
from ragdistill.retrieval.hints import Hint, unsafe_for_prompt
from ragdistill.retrieval.index import HintIndex
from ragdistill.retrieval.retrievers import RetrievalQuery, Retriever, make_retriever, query_text
from ragdistill.rollout import RetrievedHints

log = logging.getLogger(__name__)


class RetrieverHintSource:
    """Adapts a :class:`Retriever` to the rollout engine's ``HintSource``.

    Each episode queries the hints of one group: the task's own (``classifier`` None: ALFWorld's task
    type is stated by the game), or the group a classifier reads off the instruction (WebShop's
    category, which the environment does not reveal). A classifier's model tokens count as retrieval
    tokens, and its prediction is named in the episode's retrieval note.

    Hints are data: a retrieved hint that could act on the prompt (:func:`unsafe_for_prompt`: a bank
    edited by hand, or mined before mining checked for it) is left out, and the note names it."""

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
        retrieved: list[RetrievedHints] = []
        for result, group in zip(results, groups, strict=True):
            safe, refused = _prompt_safe_hints(result.hints)
            notes = [_note(result.reason, group, self.classifier), refused]
            retrieved.append(
                RetrievedHints(
                    [hint.text for hint in safe],
                    [hint.id for hint in safe],
                    result.tokens + group.tokens,
                    "; ".join(note for note in notes if note) or None,
                )
            )
        return retrieved


def build_hint_source(
    retrieval: RetrievalSettings,
    reranker: RoleSettings | None,
    *,
    bank: HintBank,
    index: HintIndex | None,
    engines: RetrievalEngines,
    profile: EnvProfile,
    training_tasks: Callable[[int | None], Sequence[TaskInfo]],
) -> RetrieverHintSource:
    """The hint source ``retrieval`` describes: its retriever over ``bank`` (and ``index``) and its group
    classifier, with the models they use from ``engines`` (the re-ranker role's backend, the embedder);
    ``training_tasks(n)``: the first ``n`` training tasks, balanced over groups (the embedding
    classifier learns from them)."""
    retriever = make_retriever(
        retrieval, bank, engines, reranker=reranker, index=index, group_label=profile.group_label
    )
    classifier = make_group_classifier(retrieval, engines, profile, training_tasks, reranker)
    return RetrieverHintSource(retriever, retrieval.k, retrieval.query, classifier)


def _prompt_safe_hints(hints: Sequence[Hint]) -> tuple[list[Hint], str | None]:
    """The hints fit to paste into a prompt, and a note naming the ones left out (None when none was)."""
    safe: list[Hint] = []
    refused: list[str] = []
    for hint in hints:
        reason = unsafe_for_prompt(hint.text)
        if reason is None:
            safe.append(hint)
        else:
            refused.append(f"{hint.id} ({reason})")
    if not refused:
        return safe, None
    log.warning("left out hint(s) that could act on the prompt: %s", ", ".join(refused))
    return safe, f"left out hint(s) that could act on the prompt: {', '.join(refused)}"


def _note(reason: str | None, group: GroupPrediction, classifier: GroupClassifier | None) -> str | None:
    if classifier is None:
        return reason
    parts = [f"group {group.group} predicted by the {classifier.name} classifier"]
    parts += [text for text in (group.note, reason) if text]
    return "; ".join(parts)
