"""Where each stage's artifacts live under the run root (DESIGN.md, "Artifacts")."""

from __future__ import annotations

BASE_STAGE = "base"
TEACHER_STAGE = "teacher"
EXPERT_STAGE = "expert"
HINTS_DIR = "hints"
INDEX_DIR = "index"
DATASETS_DIR = "datasets"
ADAPTERS_DIR = "adapters"
REPORTS_DIR = "reports"
PROMOTION_DIR = "promotion"
REJECTED_HINTS = f"{HINTS_DIR}/rejected.jsonl"


def rollout_prefix(stage: str) -> str:
    """``rollouts/<stage>``: the episode records of one rollout stage (base, teacher, eval-…)."""
    return f"rollouts/{stage}"
