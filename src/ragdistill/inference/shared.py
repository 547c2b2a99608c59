"""One loaded backend per model role in a process, shared by the stages that run in it.

An in-process engine costs seconds and gigabytes to load; when the agent, the extractor and the
re-ranker name the same model and backend settings, the pipeline loads it once. Engines stay loaded
until :func:`close_shared_backends` (the CLI and flows call it at exit).
"""

from __future__ import annotations

import atexit
import threading

from ragdistill.config import RoleConfig, engine_key
from ragdistill.inference.base import Backend
from ragdistill.inference.factory import make_backend

_BACKENDS: dict[str, Backend] = {}
_LOCK = threading.Lock()


def _key(role: RoleConfig) -> str:
    """Engines are keyed by base weights and backend settings (``config.engine_key``): sampling and
    the adapter travel with each request."""
    return engine_key(role)


def shared_backend(role: RoleConfig) -> Backend:
    with _LOCK:
        key = _key(role)
        if key not in _BACKENDS:
            _BACKENDS[key] = make_backend(role)
        return _BACKENDS[key]


def close_shared_backends() -> None:
    with _LOCK:
        backends = list(_BACKENDS.values())
        _BACKENDS.clear()
    for backend in backends:
        backend.close()


atexit.register(close_shared_backends)
