"""ALFWorld: the environment (``env``), its profile (``profile``: what agents, mining and training need
to know about it), ReAct's published transcripts (``react_prompts``), the thoughts and state lines of
its expert demonstrations (``demonstrations``) and its hint style (``hints``).

The environment's public names stay importable from here (``ragdistill.environments.alfworld.AlfworldEnv``,
``list_tasks``, …): configs, tests and pickled factories use them. Importing the package loads no game
engine and no profile.
"""

from ragdistill.environments.alfworld.env import (
    ENV_NAME,
    GAME_FILE,
    GAMES_SUBDIR,
    INVALID_OBSERVATION,
    SPLITS,
    TASK_PREFIX,
    TASK_TYPE_PREFIXES,
    TASK_TYPES,
    AlfworldEnv,
    environment_version,
    game_path,
    games_root,
    instruction_of,
    list_tasks,
    normalize_action,
    read_game,
    strip_banner,
    task_type_of,
)

__all__ = [
    "ENV_NAME",
    "GAMES_SUBDIR",
    "GAME_FILE",
    "INVALID_OBSERVATION",
    "SPLITS",
    "TASK_PREFIX",
    "TASK_TYPES",
    "TASK_TYPE_PREFIXES",
    "AlfworldEnv",
    "environment_version",
    "game_path",
    "games_root",
    "instruction_of",
    "list_tasks",
    "normalize_action",
    "read_game",
    "strip_banner",
    "task_type_of",
]
