"""ALFWorld's profile: its task types, its answers, how the agents speak about it, its hints and its
few-shot material (ReAct's transcripts, expert walkthroughs)."""

from __future__ import annotations

from ragdistill.environments.alfworld.demonstrations import demonstrate
from ragdistill.environments.alfworld.env import ENV_NAME, INVALID_OBSERVATION, TASK_PREFIX, TASK_TYPES
from ragdistill.environments.alfworld.hints import ALFWORLD_HINT_STYLE
from ragdistill.environments.alfworld.react_prompts import react_transcripts
from ragdistill.environments.profile import AgentStyle, EnvProfile

ALFWORLD_AGENT_STYLE = AgentStyle(
    instruction="Interact with a household to solve a task.",
    env_noun="the household",
    action_examples=("go to cabinet 1", "take apple 1 from countertop 1", "open fridge 1"),
    think_example="First I need to find an apple.",
    state_keys=(
        "goal",
        "locations visited",
        "current location",
        "current inventory",
        "thought",
        "action",
    ),
    state_descriptions=(
        "the task",
        "places you have gone to so far, comma-separated, or None",
        "where you are now",
        "what you are holding, comma-separated, or None",
        "a short reasoning step, or None",
        "one action for the household, for example go to cabinet 1",
    ),
    think_syntax="label",
    lowercase_actions=True,
    task_prefix=TASK_PREFIX,
)

ALFWORLD_PROFILE = EnvProfile(
    name=ENV_NAME,
    task_groups=TASK_TYPES,
    group_label="Task type",
    invalid_observation=INVALID_OBSERVATION,
    agent=ALFWORLD_AGENT_STYLE,
    hints=ALFWORLD_HINT_STYLE,
    default_max_invalid=1,
    fewshot_sources=("react", "expert"),
    react_examples=react_transcripts,
    render_demonstration=demonstrate,
)
"""The paper's ALFWorld filter keeps episodes with at most one "Nothing happens." (drops 2+)."""
