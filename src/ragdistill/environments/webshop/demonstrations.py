"""WebShop expert trajectories as agent turns: thoughts for ReAct, state lines for StateAct.

The expert searches, opens the target, picks the goal's options and buys. ReAct turns get a
``think[…]`` before each kind of step (answered "OK."), read off the actions alone: what to search
for and why, which product to open, which option to pick, that everything is chosen. StateAct turns
state the goal, the page the agent is on and the options chosen so far, then the action (WebShop's
StateAct has no thought line).
"""

from __future__ import annotations

import re
from typing import Any

SEARCH = re.compile(r"^search\[(?P<query>.*)\]$", re.IGNORECASE)
CLICK = re.compile(r"^click\[(?P<target>.*)\]$", re.IGNORECASE)
ASIN = re.compile(r"^B[0-9A-Z]{9}$")
PAGE_BUTTONS = {"next >": 1, "< prev": -1}
THINK_OBSERVATION = "OK."
START_LOCATION = "search page"


def _kind(action: str) -> tuple[str, str]:
    """("search" | "product" | "next" | "prev" | "back" | "buy" | "detail" | "option", argument)."""
    if match := SEARCH.match(action.strip()):
        return "search", match["query"].strip()
    match = CLICK.match(action.strip())
    if match is None:
        return "other", action.strip()
    target = match["target"].strip()
    lowered = target.lower()
    if ASIN.match(target):
        return "product", target
    if lowered == "buy now":
        return "buy", target
    if lowered == "back to search":
        return "back", target
    if lowered in PAGE_BUTTONS:
        return ("next" if PAGE_BUTTONS[lowered] > 0 else "prev"), target
    if lowered in {"description", "features", "reviews"}:
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
        picked = f" ({', '.join(chosen)})" if chosen else ""
        return f"This product matches the instruction{picked}. I will buy it."
    return None


def render_turns(trajectory: Any, format_name: str) -> list[tuple[str, str]]:
    """``trajectory`` (an ``ExpertTrajectory``) as (model output, observation) turns of ``format_name``.

    Act: the bare actions. ReAct: a ``think[…]`` turn (answered "OK.") before each step that needs a
    decision. StateAct: one block per action with ``goal``, ``current location``, ``current
    selection`` and ``action``. Every output parses back to the expert's action."""
    if format_name not in {"act", "react", "stateact"}:
        raise ValueError(f"no WebShop demonstrations for agent format {format_name!r}")
    instruction = trajectory.instruction
    turns: list[tuple[str, str]] = []
    location, page, chosen = START_LOCATION, 1, []
    for action, observation in trajectory.steps:
        kind, argument = _kind(action)
        if format_name == "react":
            thought = _thought(kind, argument, instruction, chosen)
            if thought is not None:
                turns.append((f"think[{thought}]", THINK_OBSERVATION))
            turns.append((action, observation))
        elif format_name == "stateact":
            block = (
                f"goal: {instruction.strip()}\n"
                f"current location: {location}\n"
                f"current selection: {', '.join(chosen) or 'None'}\n"
                f"action: {action}"
            )
            turns.append((block, observation))
        else:
            turns.append((action, observation))
        if observation.strip() == "Invalid action!":
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
        elif kind == "detail":
            location = f"{location}: {argument.lower()}"
        elif kind == "product":
            location, chosen = f"item page {argument}", []
        elif kind == "back":
            location, page, chosen = START_LOCATION, 1, []
        elif kind == "option" and argument not in chosen:
            chosen.append(argument)
    return turns
