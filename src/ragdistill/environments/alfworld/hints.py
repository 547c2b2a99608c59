"""What a mined ALFWorld hint looks like: household placeholders, and no numbered object ids."""

from __future__ import annotations

import re

from ragdistill.environments.profile import HintStyle

_QUANTITY_WORDS = frozenset(
    [
        "to",
        "than",
        "of",
        "at",
        "in",
        "on",
        "up",
        "least",
        "most",
        "all",
        "first",
        "last",
        "every",
        "each",
        "after",
        "before",
        "within",
        "for",
        "over",
        "under",
        "about",
        "around",
        "and",
        "or",
        "top",
        "only",
        "step",
        "steps",
        "times",
        "attempts",
        "tries",
    ]
)
_NUMBERED_ID = re.compile(r"\b([a-z]+) (\d+)\b", re.IGNORECASE)


def names_numbered_object(text: str) -> bool:
    """True when ``text`` names an object id such as "cabinet 3" (a word followed by a number, unless
    the word is a quantity word such as "to", "than", "all"). Such hints are rejected, not rewritten:
    whether "cabinet 3" should become ``{container}`` or ``{location}`` cannot be decided from the text."""
    return any(word.lower() not in _QUANTITY_WORDS for word, _ in _NUMBERED_ID.findall(text))


ALFWORLD_HINT_STYLE = HintStyle(
    description="ALFWorld, a text game of household tasks",
    max_hints=4,
    placeholders=("object", "container", "location"),
    examples=(
        "Ensure {container} is empty before placing {object} inside.",
        "Open {container} before looking for {object} inside it.",
        "Go to {location} and take {object} before using the appliance.",
    ),
    verbs=(
        "Check",
        "Look",
        "Open",
        "Close",
        "Go",
        "Take",
        "Put",
        "Move",
        "Find",
        "Search",
        "Use",
        "Heat",
        "Cool",
        "Clean",
        "Examine",
        "Turn",
        "Verify",
        "Ensure",
        "Make",
        "Keep",
        "Avoid",
        "Pick",
        "Place",
        "Return",
        "Visit",
        "Explore",
        "Inspect",
        "Try",
        "Remember",
        "Read",
        "Stop",
        "Wash",
        "Toggle",
        "Carry",
        "Bring",
        "Hold",
        "Walk",
    ),
    generality_rule='it never names this episode\'s objects or numbers (write {object}, not "mug 2")',
    episode_specific=names_numbered_object,
)
