"""The adapter registry: every trained student, its lineage and evaluation, and which one is current.

``registry`` stores and moves versions (``registry/`` under the run root), ``gate`` decides whether a
candidate beats the current adapter, ``entries`` holds what is stored. A later flow runs the promoted
student with :func:`current_adapter`.
"""

from ragdistill.adapter_registry.entries import EvalSummary, Event, Pointer, RegistryEntry
from ragdistill.adapter_registry.gate import Decision, decide, manual_objection
from ragdistill.adapter_registry.registry import (
    REGISTRY_DIR,
    AdapterRegistry,
    RegistryError,
    current_adapter,
    version_statuses,
)

__all__ = [
    "REGISTRY_DIR",
    "AdapterRegistry",
    "Decision",
    "EvalSummary",
    "Event",
    "Pointer",
    "RegistryEntry",
    "RegistryError",
    "current_adapter",
    "decide",
    "manual_objection",
    "version_statuses",
]
