"""The thoughts and StateAct state of ALFWorld's expert walkthroughs.

A walkthrough is only actions and observations. To show a ReAct or StateAct agent what good turns look
like, thoughts and state are added deterministically from the trajectory itself: a plan at the start
(the object, the tool and the target read off the expert's actions), a note when the object is found,
and after each step that makes progress a line saying what was done and what comes next. StateAct's
state (locations visited, current location, inventory) is tracked from the actions that succeeded. The
agent format writes them in its own syntax (``agents.demonstrations``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragdistill.environments.alfworld.env import INVALID_OBSERVATION
from ragdistill.environments.profile import DemonstratedStep
from ragdistill.trajectories import ExpertTrajectory

START_LOCATION = "starting location"
"""StateAct's current location before the first ``go to`` (as in the StateAct authors' prompts)."""

_ACTION = re.compile(
    r"^(?P<verb>go to|take|move|put|clean|heat|cool|use|open|close|examine|look|inventory)\b\s*(?P<rest>.*)$"
)
_OBJECT_FROM = re.compile(r"^(?P<obj>.+?) from (?P<recep>.+)$")
_OBJECT_TO = re.compile(r"^(?P<obj>.+?) (?:to|in/on|in|on) (?P<recep>.+)$")
_OBJECT_WITH = re.compile(r"^(?P<obj>.+?) with (?P<tool>.+)$")
_OBJECT_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "take": (_OBJECT_FROM, "recep"),
    "move": (_OBJECT_TO, "recep"),
    "put": (_OBJECT_TO, "recep"),
    "clean": (_OBJECT_WITH, "tool"),
    "heat": (_OBJECT_WITH, "tool"),
    "cool": (_OBJECT_WITH, "tool"),
}
_PROGRESS = {"take", "move", "put", "clean", "heat", "cool", "use"}
_TOOL_VERBS = ("clean", "heat", "cool")


@dataclass(frozen=True)
class _Action:
    verb: str
    obj: str | None = None
    target: str | None = None


def _split_action(action: str) -> _Action:
    match = _ACTION.match(action.strip().lower())
    if match is None:
        return _Action(verb="")
    verb, rest = match.group("verb"), match.group("rest").strip()
    if verb in {"go to", "use", "open", "close", "examine"}:
        return _Action(verb=verb, target=rest or None)
    pattern, group = _OBJECT_PATTERNS.get(verb, (None, ""))
    found = pattern.match(rest) if pattern else None
    if found is None:
        return _Action(verb=verb, obj=rest or None)
    return _Action(verb=verb, obj=found.group("obj"), target=found.group(group))


def _kind(name: str) -> str:
    """``apple 2`` → ``apple``: the object class without its instance number."""
    return re.sub(r"\s+\d+$", "", name.strip())


def _article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _succeeded(observation: str) -> bool:
    return observation.strip() != INVALID_OBSERVATION


def _plan(trajectory: ExpertTrajectory, actions: list[_Action]) -> list[str]:
    """The opening thoughts: the whole plan, then where the search starts."""
    takes = [a for a in actions if a.verb == "take" and a.obj]
    placements = [a for a in actions if a.verb in {"move", "put"} and a.target]
    tools = [a for a in actions if a.verb in _TOOL_VERBS and a.target]
    lamps = [a for a in actions if a.verb == "use" and a.target]
    if not takes:
        return [f"To solve the task, I need to {trajectory.instruction.strip().rstrip('.')}."]
    obj = _kind(takes[0].obj or "")
    recep = _kind(placements[-1].target or "") if placements else ""
    if trajectory.task_type == "puttwo" and recep:
        plan = (
            f"To solve the task, I need to find and take the first {obj}, then put it in/on {recep}, "
            f"then find and take the second {obj}, then put it in/on {recep}."
        )
    elif lamps and not placements:
        lamp = _article(_kind(lamps[0].target or ""))
        if actions.index(lamps[0]) < actions.index(takes[0]):
            plan = f"To solve the task, I need to find {_article(obj)} and {lamp}, then use the lamp and take the {obj}."
        else:
            plan = f"To solve the task, I need to find and take {_article(obj)}, then find and use {lamp}."
    elif tools and recep:
        tool = tools[0]
        plan = (
            f"To solve the task, I need to find and take {_article(obj)}, then {tool.verb} it with "
            f"{_kind(tool.target or '')}, then put it in/on {recep}."
        )
    elif recep:
        plan = f"To solve the task, I need to find and take {_article(obj)}, then put it in/on {recep}."
    else:
        plan = f"To solve the task, I need to find and take {_article(obj)}."
    thoughts = [plan]
    if actions and actions[0].verb == "go to" and actions[0].target:
        thoughts.append(f"First I need to find {_article(obj)}. I will start with {actions[0].target}.")
    return thoughts


def _done_phrase(action: _Action) -> str:
    if action.verb == "take":
        return f"Now I have {action.obj}."
    if action.verb in _TOOL_VERBS:
        state = {"clean": "clean", "heat": "hot", "cool": "cool"}[action.verb]
        return f"Now {action.obj} is {state}."
    if action.verb == "use":
        return f"Now {action.target} is on."
    return f"Now {action.obj} is in/on {action.target}."


def _next_phrase(upcoming: Sequence[_Action]) -> str | None:
    """What the next step that makes progress is, or None at the end."""
    travelled = False
    for action in upcoming:
        if action.verb not in _PROGRESS:
            travelled = travelled or action.verb == "go to"
            continue
        if action.verb == "take":
            return f"{'find and take' if travelled else 'take'} {action.obj}"
        if action.verb in _TOOL_VERBS:
            return f"{action.verb} it with {action.target}"
        if action.verb == "use":
            return f"{'find and use' if travelled else 'use'} {action.target}"
        return f"put it in/on {action.target}"
    return None


def expert_thoughts(trajectory: ExpertTrajectory) -> list[list[str]]:
    """For each step, the thoughts an agent would have right before taking that step's action."""
    actions = [_split_action(action) for action, _ in trajectory.steps]
    thoughts: list[list[str]] = [[] for _ in actions]
    if not actions:
        return thoughts
    thoughts[0].extend(_plan(trajectory, actions))
    for index in range(1, len(actions)):
        previous, previous_observation = actions[index - 1], trajectory.steps[index - 1][1]
        if previous.verb in _PROGRESS and _succeeded(previous_observation):
            following = _next_phrase(actions[index:])
            if following:
                thoughts[index].append(f"{_done_phrase(previous)} Next, I need to {following}.")
                continue
        current = actions[index]
        if current.verb == "take" and current.obj:
            thoughts[index].append(f"Now I find {current.obj}. Next, I need to take it.")
    return thoughts


def demonstrate(trajectory: ExpertTrajectory) -> list[DemonstratedStep]:
    """Every expert step with its thoughts and the StateAct state right before it (goal, locations
    visited, current location, inventory; a failed action changes nothing)."""
    goal = trajectory.instruction.strip().rstrip(".")
    visited: list[str] = []
    location = START_LOCATION
    inventory: list[str] = []
    steps: list[DemonstratedStep] = []
    for (action, observation), thoughts in zip(trajectory.steps, expert_thoughts(trajectory), strict=True):
        state = {
            "goal": goal,
            "locations visited": tuple(visited),
            "current location": location,
            "current inventory": tuple(inventory),
        }
        steps.append(DemonstratedStep(action, observation, tuple(thoughts), state))
        if not _succeeded(observation):
            continue
        parsed = _split_action(action)
        if parsed.verb == "go to" and parsed.target:
            location = parsed.target
            if parsed.target not in visited:
                visited.append(parsed.target)
        elif parsed.verb == "take" and parsed.obj and parsed.obj not in inventory:
            inventory.append(parsed.obj)
        elif parsed.verb in {"move", "put"} and parsed.obj in inventory:
            inventory.remove(parsed.obj)
    return steps
