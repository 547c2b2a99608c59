"""The pipeline's stages as plain functions, in the order they run.

Each stage module owns one stage: what its identity is made of (``stages.lifecycle``), how it reads its
inputs (exactly the files their manifests list), and what it writes. Prefect tasks in
``ragdistill.tasks`` wrap these functions; nothing here imports Prefect.
"""

from ragdistill.layout import BASE_STAGE, HINTS_DIR, INDEX_DIR, TEACHER_STAGE, rollout_prefix
from ragdistill.stages.indexing import run_indexing
from ragdistill.stages.lifecycle import StageError
from ragdistill.stages.mining import run_mining
from ragdistill.stages.rollout import run_rollout
from ragdistill.stages.teaching import run_teacher

__all__ = [
    "BASE_STAGE",
    "HINTS_DIR",
    "INDEX_DIR",
    "TEACHER_STAGE",
    "StageError",
    "rollout_prefix",
    "run_indexing",
    "run_mining",
    "run_rollout",
    "run_teacher",
]
