"""Where the project's own folders are: the project root and the cache root.

The project root is the git work tree holding the current directory (else the current directory): the
CLI, the flows and the Prefect worker all run there, so ``configs/``, ``.prefect/`` and ``.cache/``
resolve alike for each of them. A leaf: it imports nothing from ragdistill.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "RAGDISTILL_CACHE"
COMPLETE_MARK = ".complete"
"""The file that marks a cache folder as whole; written last."""


def project_root() -> Path:
    """The nearest folder at or above the current directory that holds ``.git``, else the current one."""
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder
    return cwd


def default_cache_root() -> Path:
    """``$RAGDISTILL_CACHE``, else ``<project root>/.cache/ragdistill`` (``.cache/`` is git-ignored)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return project_root() / ".cache" / "ragdistill"


def cached_folder(target: Path, fill: Callable[[Path], None], note: str) -> Path:
    """``target``, filled once by ``fill`` and reused after. ``fill`` writes into a sibling folder of this
    process that is renamed into place with :data:`COMPLETE_MARK` (holding ``note``: where the files came
    from), so a crash or a concurrent filler never leaves a folder that counts as whole and is not."""
    if (target / COMPLETE_MARK).is_file():
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    fill(partial)
    (partial / COMPLETE_MARK).write_text(note + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target
