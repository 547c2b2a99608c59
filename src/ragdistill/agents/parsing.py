"""Turning raw model text into an action: forgiving about decoration, strict about what counts.

Small chat models wrap actions in junk: a leading ``> `` copied from the transcripts, an ``Action:``
label, quotes, markdown bold, a trailing full stop, several lines, control characters. The cleaners
here strip that decoration and nothing else; whether the remaining text is a valid command is the
environment's call. What they hand on is one line without control characters; an action longer than
:data:`MAX_ACTION_CHARS` is no command in any environment (:func:`action_problem`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from ragdistill.environments.profile import ThinkSyntax

_LEADING_MARKERS = re.compile(r"^[\s>*`\"'\-•]+")
_TRAILING_JUNK = re.compile(r"[\s.!?,;:*`\"']+$")
_TRAILING_MARKUP = re.compile(r"[\s*`\"']+$")
_ACTION_LABEL = re.compile(r"^(?:next\s+)?action\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_THINK_LABEL = re.compile(r"^(?:think|thought)\s*:\s*", re.IGNORECASE)
_THINK_BRACKET = re.compile(r"^(?:think|thought)\s*\[\s*", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_ANY_ACTION_LABEL = re.compile(r"action[ \t]*:", re.IGNORECASE)
MAX_ACTION_CHARS = 400
"""Longer than any ALFWorld command or WebShop search a goal calls for."""
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


@lru_cache(maxsize=16)
def _state_line(keys: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(key) for key in sorted(keys, key=len, reverse=True))
    return re.compile(r"^[\s>*`\"'\-]*(" + alternatives + r")\s*:[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)


def first_line(text: str) -> str:
    """The first line that has any content, stripped ("" when there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def without_control_characters(text: str) -> str:
    """``text`` with control and invisible format characters (NUL, escape, zero-width, bidi, line
    separators) replaced by spaces."""
    if text.isprintable():
        return text
    return "".join(" " if unicodedata.category(char) in _CONTROL_CATEGORIES else char for char in text)


def strip_decoration(line: str) -> str:
    """Remove prompt markers, quotes and markdown around one line; collapse whitespace and control
    characters."""
    line = _LEADING_MARKERS.sub("", without_control_characters(line))
    line = _TRAILING_JUNK.sub("", line)
    return _SPACES.sub(" ", line).strip()


def split_think(line: str) -> str | None:
    """The thought of a ``think: …`` or ``think[…]`` line, or None when the line is no thought.

    Both syntaxes are accepted whatever the environment's own (a model trained on one may write the
    other). Leading markers and ``Action:`` labels go; the thought keeps its case and final punctuation.
    """
    stripped = _LEADING_MARKERS.sub("", without_control_characters(line).strip())
    while (match := _ACTION_LABEL.match(stripped)) is not None:
        stripped = _LEADING_MARKERS.sub("", stripped[match.end() :])
    if (match := _THINK_LABEL.match(stripped)) is not None:
        thought = stripped[match.end() :]
    elif (match := _THINK_BRACKET.match(stripped)) is not None:
        thought = stripped[match.end() :]
        closing = thought.rfind("]")
        thought = thought[:closing] if closing >= 0 else thought
    else:
        return None
    thought = _TRAILING_MARKUP.sub("", thought)
    return _SPACES.sub(" ", thought).strip()


def think_text(thought: str, syntax: ThinkSyntax) -> str:
    """A thought as the environment's ReAct prompts write it: ``think: …`` or ``think[…]``."""
    if syntax == "brackets":
        return f"think[{thought}]"
    return f"think: {thought}".rstrip()


def strip_labels(line: str) -> str:
    """``line`` without decoration or ``Action:`` labels, case kept."""
    stripped = strip_decoration(line)
    while (match := _ACTION_LABEL.match(stripped)) is not None:
        stripped = strip_decoration(stripped[match.end() :])
    return stripped


def clean_action(line: str, lowercase: bool = True) -> str:
    """The command in ``line``: no markers, labels, quotes or trailing punctuation; lower case when the
    environment's commands are case-blind (``AgentStyle.lowercase_actions``). An empty string means
    there was no command at all.
    """
    action = strip_labels(line)
    return action.lower() if lowercase else action


def action_problem(action: str) -> str | None:
    """Why a cleaned action cannot be a command (None when it can be sent)."""
    if len(action) > MAX_ACTION_CHARS:
        return f"the action is {len(action)} characters long, more than any command ({MAX_ACTION_CHARS})"
    return None


def parse_state_lines(text: str, keys: Sequence[str]) -> dict[str, str]:
    """The StateAct ``key: value`` lines of ``keys`` in ``text``; a key written twice keeps its last value."""
    state: dict[str, str] = {}
    for match in _state_line(tuple(keys)).finditer(text):
        state[match.group(1).lower()] = first_line(match.group(2))
    return state


def text_after_last_action_label(text: str) -> tuple[str | None, int]:
    """The text after the last ``action:`` (case-insensitive) and where that text's line ends.

    The value is the rest of that line, or the next non-empty line when the label stands alone.
    Returns ``(None, -1)`` when there is no ``action:`` label.
    """
    labels = list(_ANY_ACTION_LABEL.finditer(text))
    if not labels:
        return None, -1
    rest_start = labels[-1].end()
    line_end = text.find("\n", rest_start)
    line_end = len(text) if line_end < 0 else line_end
    value = text[rest_start:line_end]
    if value.strip():
        return value, line_end
    for line in text[line_end:].splitlines(keepends=True):
        line_end += len(line)
        if line.strip():
            return line, line_end
    return "", line_end


def split_list(value: str) -> list[str]:
    """A comma-joined state list ("None" or empty means no items)."""
    value = value.strip()
    if not value or value.lower() in {"none", "nothing", "empty", "[]"}:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def join_list(items: list[str]) -> str:
    return ", ".join(items) if items else "None"
