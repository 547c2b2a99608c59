"""The engines a stage's retrieval runs on in this process (a ``retrieval.engines.RetrievalEngines``).

A role's settings say what it generates; the run context says how its engine loads
(``stages.lifecycle.role_config``). Backends and embedders are loaded once per process and shared with the
other stages that name the same model (``inference.shared``, ``retrieval.embed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ragdistill.config.run_context import RunContext
from ragdistill.config.stage_models import RoleSettings
from ragdistill.inference.base import Backend
from ragdistill.inference.shared import shared_backend
from ragdistill.retrieval import embed
from ragdistill.retrieval.bank import TextEmbedder
from ragdistill.stages.lifecycle import role_config


@dataclass(frozen=True)
class SharedEngines:
    """Models loaded as ``ctx`` says, shared in the process."""

    ctx: RunContext

    def embedder(self, model_name: str) -> TextEmbedder:
        return embed.get_embedder(model_name)

    def backend(self, role: RoleSettings) -> Backend:
        return shared_backend(role_config(self.ctx, role))
