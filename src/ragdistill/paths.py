"""Where the project's own folders are: the project root and the cache root.

The project root is the git work tree holding the current directory (else the current directory): the
CLI, the flows and the Prefect worker all run there, so ``configs/``, ``.prefect/`` and ``.cache/``
resolve alike for each of them. A leaf: it imports nothing from ragdistill.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RAGDISTILL_CACHE"


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
