"""Where each stage's artifacts live under the run root (DESIGN.md, "Artifacts").

A leaf: the per-stage settings (``config.stages``) name their input folders with these, and the stages
write there.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""What a run, stage or method name may be (``run.name`` too): one folder name, never ``..`` or a path."""
NAME_MAX_LENGTH = 100
_NAME = re.compile(NAME_PATTERN)
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
WARM_START_DIR = "warm-start"
"""Stage 0, the warm start: its demonstrations, training set, adapter and the merged checkpoint."""
WARM_START_MODEL = "model"
"""The merged checkpoint inside :data:`WARM_START_DIR`: the agent role's weights when the warm start is on."""
ABLATION_DIR = "ablation"
"""``ablation/``: the retrieval ablation's grid points (each a run root of its own) and its table."""
ABLATION_TABLE_DIR = f"{ABLATION_DIR}/table"
REJECTED_HINTS = f"{HINTS_DIR}/rejected.jsonl"
RUN_FILE = "run.json"
"""``run.json`` at the run root: the settings of the run (its config) and the config file's name."""
TASKS_FILE = "tasks.json"
"""``<rollout stage>/tasks.json``: the tasks a rollout played, in order, and the environment's version."""
PARTS_DIR = "parts"
SHARDS_DIR = "shards"
RECORD_LOG_FILES = ("shard-*.jsonl", f"{PARTS_DIR}/part-*.jsonl")
"""The files a record log (``store.RecordLog``) writes in its folder, as patterns of known outputs."""
ROLLOUT_OUTPUTS = (
    *RECORD_LOG_FILES,
    *(f"{SHARDS_DIR}/*/{pattern}" for pattern in RECORD_LOG_FILES),
    TASKS_FILE,
)
"""The files a rollout stage writes in its folder: its record log, each shard's (``rollout.shards``), and
its task list."""
COLLECT_PREFIX = "collect-"
STUDENTS: tuple[str, ...] = ("sft", "distill")
METHODS: tuple[str, ...] = ("base", "rag", "sft", "distill")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a stage, method or run (a folder of its own under the run root), or None."""
    if not isinstance(name, str) or not _NAME.match(name):
        return (
            f"{name!r} is not a name: use letters, digits, '.', '_' and '-', starting with a letter or digit "
            "(it names one folder under the run root, so never '..' or a path)"
        )
    if len(name) > NAME_MAX_LENGTH:
        return f"{name[:20]!r}… is {len(name)} characters long; a name has at most {NAME_MAX_LENGTH}"
    return None


def checked_name(name: str) -> str:
    """``name`` when it can name a folder under the run root; ValueError saying why not otherwise."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


def rollout_prefix(stage: str) -> str:
    """``rollouts/<stage>``: the episode records of one rollout stage (base, teacher, eval-…)."""
    return f"{ROLLOUTS_DIR}/{checked_name(stage)}"


EVAL_PREFIX = "eval-"
SEED_INFIX = "-seed"


def eval_stage(method: str, seed: int | None = None) -> str:
    """The rollout stage that evaluates ``method``: ``eval-distill`` under the agent's own sampling seed
    (``seed`` None), ``eval-distill-seed43`` under another evaluation seed (``evaluation.seeds``)."""
    return f"{EVAL_PREFIX}{method}" if seed is None else f"{EVAL_PREFIX}{method}{SEED_INFIX}{seed}"


def eval_stage_seed(method: str, seed: int, agent_seed: int) -> str:
    """The rollout stage of ``method`` evaluated under sampling seed ``seed``: the agent's own seed keeps
    the folder a run with one seed always had, so adding seeds never replays a finished evaluation."""
    return eval_stage(method, None if seed == agent_seed else seed)


def collect_stage(batch: int) -> str:
    """The rollout stage name of collect batch ``batch`` (``collect-0003``)."""
    return f"{COLLECT_PREFIX}{batch:04d}"


def dataset_dir(name: str) -> str:
    return f"{DATASETS_DIR}/{checked_name(name)}"


def adapter_dir(name: str) -> str:
    """A student's training folder (``adapters/<name>``)."""
    return f"{ADAPTERS_DIR}/{checked_name(name)}"


def adapter_folder(name: str) -> str:
    """Where the training stage puts a student's adapter weights, under the run root."""
    return f"{adapter_dir(name)}/adapter"


def rerun_command(stage_dir: str) -> str:
    """The CLI command that rebuilds the stage folder ``stage_dir`` (for error messages)."""
    parts = stage_dir.strip("/").split("/")
    top, name = parts[0], parts[1] if len(parts) > 1 else ""
    if top == ROLLOUTS_DIR:
        if name.startswith(EVAL_PREFIX):
            method, _, seed = name.removeprefix(EVAL_PREFIX).partition(SEED_INFIX)
            seed_option = f" --seed {seed}" if seed else ""
            return f"ragdistill evaluate -c CONFIG --method {method}{seed_option}"
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
        WARM_START_DIR: "ragdistill warm-start -c CONFIG",
        REPORTS_DIR: "ragdistill report RUN_ROOT",
    }
    return commands.get(top, "ragdistill pipeline -c CONFIG")
