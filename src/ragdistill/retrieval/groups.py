"""Which hint group an episode belongs to, read from its instruction alone.

The bank and the index are grouped (ALFWorld: task type, WebShop: product category). ALFWorld's task
type is stated by the game, so the teacher can use the task's own group. A WebShop instruction does not
name its category, and the paper had an LLM classify it; the true category is the environment's
secret. Two classifiers, one interface:

- ``embedding``: nearest centroid of sentence embeddings of labelled *training* instructions (the
  training split's tasks with their groups). No model calls, a few ms per batch.
- ``llm``: the model answers one group name as schema-constrained JSON; its tokens count as retrieval
  tokens, like the re-ranker's.

:func:`agreement` compares two classifiers' answers (and either with the truth) on the same tasks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ragdistill.config import SamplingConfig
from ragdistill.config.stage_models import RetrievalSettings, RoleSettings
from ragdistill.environments.base import TaskInfo
from ragdistill.environments.profile import EnvProfile
from ragdistill.inference.base import Backend, ChatMessage, GenerationRequest
from ragdistill.retrieval.bank import TextEmbedder
from ragdistill.retrieval.engines import RetrievalEngines
from ragdistill.retrieval.lenient_json import find_json


@dataclass(frozen=True)
class GroupPrediction:
    group: str
    tokens: int = 0
    """Model tokens spent (prompt + completion); 0 for the embedding classifier."""
    note: str | None = None
    """Why the prediction is a fallback (an unreadable model answer), else None."""


class GroupClassifier(Protocol):
    name: str

    def classify(self, instructions: Sequence[str]) -> list[GroupPrediction]: ...


class EmbeddingGroupClassifier:
    """Nearest centroid over unit-length embeddings of labelled instructions."""

    name = "embedding"

    def __init__(self, embedder: TextEmbedder, labelled: Sequence[tuple[str, str]]) -> None:
        """``labelled``: (instruction, group) pairs from the training split; every group needs one."""
        by_group: dict[str, list[str]] = {}
        for instruction, group in labelled:
            if instruction.strip():
                by_group.setdefault(group, []).append(instruction)
        if not by_group:
            raise ValueError("the embedding group classifier needs labelled instructions; got none")
        self.embedder = embedder
        self.groups = sorted(by_group)
        centroids = []
        for group in self.groups:
            mean = embedder.encode(by_group[group]).mean(axis=0)
            centroids.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        self._centroids = np.stack(centroids).astype(np.float32)

    def classify(self, instructions: Sequence[str]) -> list[GroupPrediction]:
        if not instructions:
            return []
        scores = self.embedder.encode(list(instructions)) @ self._centroids.T
        return [GroupPrediction(self.groups[int(row.argmax())]) for row in scores]


CLASSIFY_SYSTEM = "You sort tasks into groups. You answer with JSON only."


class LLMGroupClassifier:
    """The model picks one of ``groups`` for each instruction, constrained by a JSON schema enum.

    An answer that names no known group falls back to ``groups[0]`` with a note, so one bad answer
    never stops a rollout; the note goes into the episode's retrieval note."""

    name = "llm"

    def __init__(
        self,
        backend: Backend,
        groups: Sequence[str],
        group_label: str,
        environment: str,
        sampling: SamplingConfig | None = None,
    ) -> None:
        if not groups:
            raise ValueError("the LLM group classifier needs at least one group")
        self.backend, self.groups = backend, list(groups)
        self.group_label, self.environment = group_label, environment
        self.sampling = sampling or SamplingConfig(max_tokens=32, temperature=0.0)

    def request(self, instruction: str) -> GenerationRequest:
        label = self.group_label.lower()
        user = (
            f"Environment: {self.environment}\n"
            f"Task: {instruction.strip()}\n\n"
            f"Which {label} does this task belong to? Choose one of: {', '.join(self.groups)}.\n"
            f'Reply with JSON only, in exactly this shape: {{"group": "<one of the {label}s>"}}'
        )
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {"group": {"type": "string", "enum": self.groups}},
            "required": ["group"],
            "additionalProperties": False,
        }
        return GenerationRequest.sampled(
            [ChatMessage("system", CLASSIFY_SYSTEM), ChatMessage("user", user)],
            self.sampling,
            json_schema=schema,
        )

    def classify(self, instructions: Sequence[str]) -> list[GroupPrediction]:
        generations = self.backend.generate([self.request(text) for text in instructions])
        return [
            self._read(
                generation.text, generation.prompt_tokens + generation.completion_tokens, generation.error
            )
            for generation in generations
        ]

    def _read(self, text: str, tokens: int, error: str | None) -> GroupPrediction:
        fallback = self.groups[0]
        if error is not None:
            return GroupPrediction(fallback, tokens, f"group classifier failed ({error}); used {fallback}")
        answer = _group_of(text)
        if answer is None:
            return GroupPrediction(
                fallback, tokens, f"group classifier answered {text[:60]!r}; used {fallback}"
            )
        for group in self.groups:
            if group.lower() == answer.strip().lower():
                return GroupPrediction(group, tokens)
        return GroupPrediction(
            fallback, tokens, f"group classifier named unknown group {answer!r}; used {fallback}"
        )


def make_group_classifier(
    retrieval: RetrievalSettings,
    engines: RetrievalEngines,
    profile: EnvProfile,
    training_tasks: Callable[[int | None], Sequence[TaskInfo]],
    reranker: RoleSettings | None = None,
) -> GroupClassifier | None:
    """The classifier ``retrieval.group`` asks for (None: each task's own group), over ``profile``'s
    groups. The embedding one learns from ``training_tasks(retrieval.group_examples)`` (the training
    split, never the tasks it will classify); the LLM one asks the ``reranker`` role."""
    if retrieval.group == "task":
        return None
    if retrieval.group == "llm":
        if reranker is None:
            raise ValueError("retrieval.group 'llm' needs the re-ranker role (models.reranker)")
        return LLMGroupClassifier(
            engines.backend(reranker), profile.task_groups, profile.group_label, profile.hints.description
        )
    labelled = training_tasks(retrieval.group_examples)
    return EmbeddingGroupClassifier(
        engines.embedder(retrieval.embedding_model), [(task.instruction, task.task_type) for task in labelled]
    )


def _group_of(text: str) -> str | None:
    data = find_json(text)
    if isinstance(data, dict) and isinstance(data.get("group"), str):
        return data["group"]
    try:
        loaded = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return loaded if isinstance(loaded, str) else None


def agreement(left: Sequence[str], right: Sequence[str]) -> float:
    """The share of positions where two label lists agree (1.0 for two empty lists)."""
    if len(left) != len(right):
        raise ValueError(f"cannot compare {len(left)} labels with {len(right)}")
    if not left:
        return 1.0
    return sum(a == b for a, b in zip(left, right, strict=True)) / len(left)
