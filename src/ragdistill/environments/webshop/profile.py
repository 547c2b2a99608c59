"""WebShop's profile: its categories, its answers, how the agents speak about it, its hints and its
expert demonstrations (the paper's WebShop agents: Act, ReAct with ``think[…]``, StateAct without a
thought line)."""

from __future__ import annotations

from ragdistill.environments.profile import AgentStyle, EnvProfile
from ragdistill.environments.webshop.constants import CATEGORIES, ENV_NAME, INVALID_OBSERVATION
from ragdistill.environments.webshop.demonstrations import demonstrate
from ragdistill.environments.webshop.hints import WEBSHOP_HINT_STYLE

WEBSHOP_AGENT_STYLE = AgentStyle(
    instruction="You are shopping on a web store. Buy the product the instruction describes.",
    env_noun="the shop",
    action_examples=("search[red cotton t-shirt]", "click[B07HRFSNL4]", "click[x-large]", "click[Buy Now]"),
    think_example="I need a red cotton t-shirt under 30 dollars. I will search for it.",
    state_keys=("goal", "current location", "current selection", "action"),
    state_descriptions=(
        "the product the instruction describes",
        "the page you are on",
        "the options you have selected, comma-separated, or None",
        "one action, for example click[Buy Now]",
    ),
    think_syntax="brackets",
    lowercase_actions=False,
    task_prefix="Instruction: ",
)

WEBSHOP_PROFILE = EnvProfile(
    name=ENV_NAME,
    task_groups=CATEGORIES,
    group_label="Product category",
    invalid_observation=INVALID_OBSERVATION,
    agent=WEBSHOP_AGENT_STYLE,
    hints=WEBSHOP_HINT_STYLE,
    default_max_invalid=0,
    headline="score",
    fewshot_sources=("expert",),
    render_demonstration=demonstrate,
)
"""The paper's WebShop filter drops any episode with an "Invalid action!"."""
