"""The agent role's weights: its configured model, or the warm start's merged checkpoint.

With ``warm_start.enabled`` the agent role's settings say ``warm_start: true`` (``config.stages``), every
stage that plays or trains the agent lists ``warm-start/`` among the folders it reads, and its identity
holds that folder's content digest. Such a stage loads the agent through :func:`agent_role` (or, for
training, :func:`agent_model`), which swaps the configured ``model.name`` for a local folder holding the
checkpoint ``warm-start/model`` of the digest the stage was handed:

- on a local run root, the folder under the run root itself, after checking every file the warm start's
  manifest lists (``verified_input``);
- on an object store, a copy under ``<cache>/warm-start/<digest>/``, downloaded once per content digest,
  each file checked against its recorded size and sha256 as it is read.

The warm start lives in ``ctx.warm_start_root`` when set (a retrain generation plays on its parent's),
else in the run root. Every other field of the model spec (dtype, context window, adapter,
``trust_remote_code``) stays as configured.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragdistill.config import ModelSpec, RoleConfig
from ragdistill.config.stages import Inputs, RoleSettings, RunContext
from ragdistill.layout import WARM_START_DIR, WARM_START_MODEL
from ragdistill.stages.lifecycle import StageError, handed, rerun_remedy, verified_input
from ragdistill.store import ArtifactStore, Manifest, read_listed, read_manifest

CACHE_SUBDIR = "warm-start"
_COMPLETE = ".complete"


@dataclass(frozen=True)
class AgentModel:
    """The weights the agent plays or trains on, and where they come from (None: the configured model)."""

    model: ModelSpec
    lineage: dict[str, Any] | None = None


def agent_role(ctx: RunContext, role: RoleSettings, inputs: Inputs, **backend_update: Any) -> RoleConfig:
    """``ctx.role_config(role)`` with the warm start's checkpoint as its model when ``role.warm_start``."""
    config = ctx.role_config(role, **backend_update)
    if not role.warm_start:
        return config
    return config.model_copy(update={"model": agent_model(ctx, role.model, True, inputs).model})


def agent_model(ctx: RunContext, model: ModelSpec, warm_start: bool, inputs: Inputs) -> AgentModel:
    """``model``, or with ``warm_start`` the spec of the warm start's checkpoint of the digest handed in
    ``inputs`` and its lineage (see the module docstring)."""
    if not warm_start:
        return AgentModel(model)
    expected = handed(inputs, WARM_START_DIR)[WARM_START_DIR]
    store = warm_start_store(ctx)
    manifest, folder = checkpoint_folder(store, expected)
    lineage = {
        "model": model.name,
        "warm_start": {
            "folder": WARM_START_DIR,
            "run_root": store.root_url,
            "digest": manifest.digest,
            "games": manifest.counts.get("examples", 0),
        },
        "description": manifest.extra.get("description"),
    }
    return AgentModel(model.model_copy(update={"name": str(folder)}), lineage)


def warm_start_store(ctx: RunContext) -> ArtifactStore:
    """The run root holding the warm start: ``ctx.warm_start_root``, else the run root."""
    return ArtifactStore(ctx.warm_start_root or ctx.run_root)


def checkpoint_folder(store: ArtifactStore, expected: str) -> tuple[Manifest, Path]:
    """The warm start's manifest (of content digest ``expected``, else :class:`StageError`) and a local
    folder holding its checkpoint, every file checked against the manifest."""
    if store.is_local:
        manifest = verified_input(store, WARM_START_DIR, expected)
        return manifest, Path(store.local_path(f"{WARM_START_DIR}/{WARM_START_MODEL}"))
    manifest = read_manifest(store, WARM_START_DIR, rerun_remedy(WARM_START_DIR))
    if manifest.digest != expected:
        raise StageError(
            f"{store.uri(WARM_START_DIR)} changed after this stage was given its content digest "
            f"({expected[:12]}, now {manifest.digest[:12]}): another run rebuilt it; run this stage again"
        )
    from ragdistill.paths import default_cache_root

    target = default_cache_root() / CACHE_SUBDIR / manifest.digest[:32]
    if (target / _COMPLETE).is_file():
        return manifest, target
    prefix = f"{WARM_START_MODEL}/"
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name, entry in sorted(manifest.files.items()):
        if name.startswith(prefix):
            destination = partial / name.removeprefix(prefix)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(read_listed(store, f"{WARM_START_DIR}/{name}", entry))
    (partial / _COMPLETE).write_text(store.uri(WARM_START_DIR) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return manifest, target
