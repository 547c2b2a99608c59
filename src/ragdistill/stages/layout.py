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


def rerun_command(stage_dir: str) -> str:
    """The CLI command that rebuilds the stage folder ``stage_dir`` (for error messages)."""
    parts = stage_dir.strip("/").split("/")
    top, name = parts[0], parts[1] if len(parts) > 1 else ""
    if top == "rollouts":
        if name.startswith("eval-"):
            return f"ragdistill evaluate -c CONFIG --method {name.removeprefix('eval-')}"
        if name == TEACHER_STAGE:
            return "ragdistill teach -c CONFIG"
        if name == EXPERT_STAGE:
            return "ragdistill expert -c CONFIG"
        if name == BASE_STAGE:
            return "ragdistill rollout -c CONFIG"
        if name.startswith("collect-"):
            return "ragdistill pipeline -c CONFIG (or the collect deployment)"
        return f"ragdistill rollout -c CONFIG --stage {name}"
    commands = {
        HINTS_DIR: "ragdistill mine -c CONFIG",
        INDEX_DIR: "ragdistill index -c CONFIG",
        DATASETS_DIR: "ragdistill build-datasets -c CONFIG",
        ADAPTERS_DIR: f"ragdistill train -c CONFIG --student {name}",
        PROMOTION_DIR: "ragdistill adapters register -c CONFIG",
        REPORTS_DIR: "ragdistill report RUN_ROOT",
    }
    return commands.get(top, "ragdistill pipeline -c CONFIG")
