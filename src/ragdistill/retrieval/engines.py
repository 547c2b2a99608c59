"""The loaded models retrieval runs on, as one provider the runtime hands in.

Settings only name the models (an embedding model's name, the re-ranker role); how a model is loaded,
and whether it is shared with other stages in the process, is the runtime's business. So a retriever
or a group classifier asks a :class:`RetrievalEngines` for the model a setting names, and tests hand in
doubles instead of patching a loader.
"""

from __future__ import annotations

from typing import Protocol

from ragdistill.config.stage_models import RoleSettings
from ragdistill.inference.base import Backend
from ragdistill.retrieval.bank import TextEmbedder


class RetrievalEngines(Protocol):
    def embedder(self, model_name: str) -> TextEmbedder:
        """The sentence embedder ``model_name`` names (``retrieval.embedding_model``)."""
        ...

    def backend(self, role: RoleSettings) -> Backend:
        """The backend that generates for ``role`` (the re-ranker)."""
        ...
