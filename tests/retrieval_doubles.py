"""Test doubles for stages B and C: a scripted extractor / re-ranker backend and a hashing embedder.

They stand in for a language model and for sentence-transformers so that parsing, validation, dedupe,
indexing and retrieval logic are tested fast and deterministically. The real components run in the
tests marked ``slow``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import numpy as np

from ragdistill.config import ModelSpec, SamplingConfig
from ragdistill.config.stage_models import RoleSettings
from ragdistill.episodes import EpisodeRecord, Step
from ragdistill.inference.base import Backend, ChatMessage, Generation, GenerationRequest
from ragdistill.messages import Segment


class ScriptedExtractorDouble:
    """A Backend that answers request ``i`` of each call with ``answer(user message)``, or the next
    scripted text. Counts calls and keeps every request; token counts are whitespace word counts."""

    name = "scripted-extractor-double"

    def __init__(self, answers: list[str] | Callable[[str], str]) -> None:
        self._answers = answers
        self._next = 0
        self.calls = 0
        self.requests: list[GenerationRequest] = []

    def _answer(self, user: str) -> str:
        if callable(self._answers):
            return self._answers(user)
        text = self._answers[self._next]
        self._next += 1
        return text

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.calls += 1
        self.requests.extend(requests)
        out = []
        for request in requests:
            user = request.messages[-1].content
            text = self._answer(user)
            prompt = sum(len(m.content.split()) for m in request.messages)
            out.append(Generation(text, "stop", prompt, len(text.split())))
        return out

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(len(m.content.split()) for m in messages), len(completion.split())

    def close(self) -> None:
        return None


class HashingEmbedderDouble:
    """Bag-of-words vectors: each lower-cased word hashes to a random unit direction; rows are summed
    and normalised. Texts sharing words are close; identical word bags are identical."""

    model_name = "hashing-double"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return vector / np.linalg.norm(vector)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                rows[i] += self._word(word)
            norm = np.linalg.norm(rows[i])
            rows[i] = rows[i] / norm if norm > 0 else self._word("\x00")
        return rows


RERANKER_ROLE = RoleSettings(
    name="reranker", model=ModelSpec(), sampling=SamplingConfig(max_tokens=64), backend="vllm"
)
"""A re-ranker role's settings (its engine is whatever backend an :class:`EnginesDouble` is given)."""


class EnginesDouble:
    """A ``RetrievalEngines``: hashing embedders named as asked, and ``backend`` (a re-ranker double) for
    every role; records which models were asked for."""

    def __init__(self, backend: Backend | None = None) -> None:
        self._backend = backend
        self.embedders: list[str] = []
        self.roles: list[str] = []

    def embedder(self, model_name: str) -> HashingEmbedderDouble:
        self.embedders.append(model_name)
        double = HashingEmbedderDouble()
        double.model_name = model_name
        return double

    def backend(self, role: RoleSettings) -> Backend:
        self.roles.append(role.name)
        if self._backend is None:
            raise AssertionError(f"the test gave no backend for the {role.name} role")
        return self._backend


def make_record(
    task_id: str = "t1",
    task_type: str = "heat",
    success: bool = False,
    env: str = "alfworld",
    steps: list[Step] | None = None,
    stop_reason: str = "max_calls",
) -> EpisodeRecord:
    steps = (
        steps
        if steps is not None
        else [
            Step("think: find a mug", None, True, "OK.", 0.0, False, 10, 5),
            Step(
                "go to cabinet 1",
                "go to cabinet 1",
                False,
                "On the cabinet 1, you see a mug 2.",
                0.0,
                False,
                10,
                5,
            ),
            Step(
                "heat mug 2 with microwave 1",
                "heat mug 2 with microwave 1",
                False,
                "Nothing happens.",
                0.0,
                False,
                10,
                5,
            ),
        ]
    )
    return EpisodeRecord(
        run_id="run-a",
        env=env,
        split="train",
        task_id=task_id,
        task_type=task_type,
        instruction="Your task is to: heat some mug and put it in cabinet.",
        agent="react",
        source="agent",
        model="smollm2-135m",
        adapter=None,
        seed=42,
        prompt=[
            Segment("system", "system", "Interact with a household to solve a task."),
            Segment("fewshot", "user", "FEWSHOT-EXAMPLE: > go to countertop 1 ... You win."),
            Segment("task", "user", "Your task is to: heat some mug and put it in cabinet."),
        ],
        steps=steps,
        success=success,
        score=1.0 if success else 0.0,
        stop_reason=stop_reason,  # type: ignore[arg-type]
    )
