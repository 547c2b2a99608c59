"""WebShop expert trajectories with the thoughts and state an agent would have had at each step.

The expert searches, opens the target, picks the goal's options and buys. Thoughts (ReAct writes
each as a ``think[…]`` turn) are read off the actions alone: what to search for, which product to
open, which option to pick, that everything is chosen. State (StateAct's lines; WebShop's StateAct
has no thought line) is the goal, the page the agent is on and the options chosen so far.
"""

from __future__ import annotations

import re

from ragdistill.environments.profile import DemonstratedStep
from ragdistill.environments.webshop.constants import INVALID_OBSERVATION
from ragdistill.trajectories import ExpertTrajectory

_SEARCH = re.compile(r"^search\[(?P<query>.*)\]$", re.IGNORECASE)
_CLICK = re.compile(r"^click\[(?P<target>.*)\]$", re.IGNORECASE)
_ASIN = re.compile(r"^B[0-9A-Z]{9}$")
_BUTTONS = {"buy now": "buy", "back to search": "back", "next >": "next", "< prev": "prev"}
_DETAILS = {"description", "features", "reviews"}
START_LOCATION = "search page"


def action_kind(action: str) -> tuple[str, str]:
    """What an action does: (search | product | next | prev | back | buy | detail | option | other,
    its argument)."""
    if match := _SEARCH.match(action.strip()):
        return "search", match["query"].strip()
    match = _CLICK.match(action.strip())
    if match is None:
        return "other", action.strip()
    target = match["target"].strip()
    if _ASIN.match(target):
        return "product", target
    if target.lower() in _BUTTONS:
        return _BUTTONS[target.lower()], target
    if target.lower() in _DETAILS:
        return "detail", target
    return "option", target.strip("[]")


def _thought(kind: str, argument: str, instruction: str, chosen: list[str]) -> str | None:
    if kind == "search":
        return f"I need to find the product the instruction describes: {instruction.strip()}. I will search for it."
    if kind == "product":
        return f"{argument} looks like the product I need. I will open it."
    if kind == "next":
        return "The product I need is not on this page. I will look at the next page."
    if kind == "option":
        return f"The instruction asks for {argument}. I will select it."
    if kind == "buy":
        picked = f" with {', '.join(chosen)}" if chosen else ""
        return f"This product{picked} matches the instruction. I will buy it."
    return None


def demonstrate(trajectory: ExpertTrajectory) -> list[DemonstratedStep]:
    """``trajectory`` as steps with thoughts and StateAct state."""
    instruction = trajectory.instruction.strip()
    location, page, chosen = START_LOCATION, 1, []
    steps: list[DemonstratedStep] = []
    for action, observation in trajectory.steps:
        kind, argument = action_kind(action)
        thought = _thought(kind, argument, instruction, chosen)
        steps.append(
            DemonstratedStep(
                action,
                observation,
                thoughts=(thought,) if thought else (),
                state={"goal": instruction, "current location": location, "current selection": list(chosen)},
            )
        )
        if observation.strip() == INVALID_OBSERVATION:
            continue
        if kind == "search":
            location, page, chosen = "results page 1", 1, []
        elif kind == "prev" and ":" in location:
            location = location.split(":")[0]
        elif kind == "prev" and location.startswith("item"):
            location = f"results page {page}"
        elif kind in {"next", "prev"}:
            page = max(1, page + (1 if kind == "next" else -1))
            location = f"results page {page}"
        elif kind == "product":
            location, chosen = f"item page {argument}", []
        elif kind == "detail":
            location = f"{location}: {argument.lower()}"
        elif kind == "back":
            location, page, chosen = START_LOCATION, 1, []
        elif kind == "option" and argument not in chosen:
            chosen.append(argument)
    return steps
