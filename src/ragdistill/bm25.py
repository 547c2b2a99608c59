"""bm25s, imported without numba: shared by the hint retriever and the WebShop search engine."""

from __future__ import annotations

import sys
from typing import Any


def import_bm25s() -> Any:
    """Import bm25s without numba (it then uses its numpy backend).

    bm25s imports numba when it can; numba's llvmlite objects in ``sys.modules`` make vLLM 0.32's CPU
    engine fail to start later in the same process (``AttributeError: '_lib_fn_wrapper' object has no
    attribute 'get'`` in ``vllm.triton_utils.dispatcher``), and the teacher runs both. Scoring a few
    hundred hints or a thousand products needs no JIT. If numba is already imported, nothing is gained
    by hiding it.
    """
    if "bm25s" in sys.modules or "numba" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["numba"] = None  # type: ignore[assignment]
    try:
        import bm25s
    finally:
        del sys.modules["numba"]
    return bm25s
