"""Where each stage's artifacts live under the run root (DESIGN.md, "Artifacts").

A leaf: the per-stage settings (``config.stages``) name their input folders with these, and the stages
write there.
"""

from __future__ import annotations

ROLLOUTS_DIR = "rollouts"
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
TASKS_FILE = "tasks.json"
"""``<rollout stage>/tasks.json``: the tasks a rollout played, in order, and the environment's version."""
COLLECT_PREFIX = "collect-"
STUDENTS: tuple[str, ...] = ("sft", "distill")
METHODS: tuple[str, ...] = ("base", "rag", "sft", "distill")


def rollout_prefix(stage: str) -> str:
    """``rollouts/<stage>``: the episode records of one rollout stage (base, teacher, eval-…)."""
    return f"{ROLLOUTS_DIR}/{stage}"


def eval_stage(method: str) -> str:
    """The rollout stage that evaluates ``method`` (``eval-distill``)."""
    return f"eval-{method}"


def collect_stage(batch: int) -> str:
    """The rollout stage name of collect batch ``batch`` (``collect-0003``)."""
    return f"{COLLECT_PREFIX}{batch:04d}"


def dataset_dir(name: str) -> str:
    return f"{DATASETS_DIR}/{name}"


def adapter_dir(name: str) -> str:
    """A student's training folder (``adapters/<name>``)."""
    return f"{ADAPTERS_DIR}/{name}"


def adapter_folder(name: str) -> str:
    """Where the training stage puts a student's adapter weights, under the run root."""
    return f"{ADAPTERS_DIR}/{name}/adapter"


def rerun_command(stage_dir: str) -> str:
    """The CLI command that rebuilds the stage folder ``stage_dir`` (for error messages)."""
    parts = stage_dir.strip("/").split("/")
    top, name = parts[0], parts[1] if len(parts) > 1 else ""
    if top == ROLLOUTS_DIR:
        if name.startswith("eval-"):
            return f"ragdistill evaluate -c CONFIG --method {name.removeprefix('eval-')}"
        if name == TEACHER_STAGE:
            return "ragdistill teach -c CONFIG"
        if name == EXPERT_STAGE:
            return "ragdistill expert -c CONFIG"
        if name == BASE_STAGE:
            return "ragdistill rollout -c CONFIG"
        if name.startswith(COLLECT_PREFIX):
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
