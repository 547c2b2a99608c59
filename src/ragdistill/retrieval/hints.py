"""Hints: what a failed episode teaches, as short general rules per task type (the paper's stage B).

The :class:`Hint` record, text normalisation and validation against an environment's hint style
(``EnvProfile.hints``: how many hints a failure may give, which placeholders a hint may use, what an
episode-specific leftover looks like), and a tolerant parser for the extractor's JSON. Prompting and
batching live in :mod:`ragdistill.retrieval.mining`.

Validation rules (each rejection is counted under its reason code):

- ``not_text`` / ``empty``: the item is not a string, or nothing is left after cleaning. Cleaning
  collapses whitespace and strips list markers ("1.", "-"), a leading "Hint:" label and wrapping quotes.
- ``malformed_placeholder`` / ``unknown_placeholder``: braces that do not form ``{name}``, or a name the
  environment does not define. Placeholder names are lower-cased (``{Object}`` becomes ``{object}``).
- ``episode_specific``: a leftover of the one episode, as the style's ``episode_specific`` check sees
  it (a numbered object id, a product id). The style's ``rewrite`` runs first, after the placeholder
  names are lower-cased (e.g. prices become ``{price}``, so a hint about the budget survives).
- ``too_long``: more than ``max_chars`` characters (the paper: 120) after rewriting.
- ``not_imperative``: the first word is not something an instruction starts with. The check is a
  deny-list, not a part-of-speech tagger: the first word must be alphabetic and must not be a pronoun,
  article, determiner, auxiliary or modal verb, or a word naming the actor ("agent", "model", "player");
  a first word ending in "-ed" or "-ing" (a report such as "Tried ..." or "Looking ...") is rejected
  unless it is a verb that merely ends that way ("Proceed", "Bring"). Conditional and adverbial openers
  ("If", "When", "Before", "Always", "Never", "Only") pass: they introduce an instruction.
- ``degenerate``: text a small extractor writes when it loses the thread, which reads as a rule to
  nobody: a word said twice in a row ("size iz iz"), a word of four letters or more said three times
  ("please, please, please"; "find the product, find ..., find"), the same three words twice ("ensure it
  matches ..., and ensure it matches"), or an end the length limit cut: a last word before the full stop
  that cannot end a sentence ("and its .") or a comma right before it ("price and size, .").
- ``duplicate`` / ``over_limit``: the same normalised text twice in one answer, or more hints than the
  environment allows per failure (extras are dropped in order).

Hints are data, never instructions: a hint that could act on the prompt it is pasted into is rejected
before any other check, under one of :data:`INJECTION_REASONS` (``control_characters``,
``template_token``, ``role_marker``, ``transcript_marker``, ``instruction_override``), and checked again
after rewriting. The checks, the text normalisation they read (NFKC, case folding, no zero-width
characters) and the render-time guard :func:`unsafe_for_prompt` live in
:mod:`ragdistill.retrieval.prompt_guard`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from ragdistill.environments.profile import HintStyle
from ragdistill.retrieval.lenient_json import find_json
from ragdistill.retrieval.prompt_guard import INJECTION_REASONS, injection_reason
from ragdistill.retrieval.prompt_guard import MAX_PROMPT_HINT_CHARS as MAX_PROMPT_HINT_CHARS
from ragdistill.retrieval.prompt_guard import unsafe_for_prompt as unsafe_for_prompt

REJECTION_REASONS: tuple[str, ...] = (
    "not_text",
    "empty",
    *INJECTION_REASONS,
    "malformed_placeholder",
    "unknown_placeholder",
    "episode_specific",
    "too_long",
    "not_imperative",
    "duplicate",
    "over_limit",
)


def normalise(text: str) -> str:
    """Lower-case, collapse whitespace, strip: the form hints are compared and hashed in."""
    return " ".join(text.lower().split())


def hint_id(text: str, env: str, task_type: str) -> str:
    """A content hash: the same rule for the same env and task type always gets the same id."""
    payload = "\x1f".join((normalise(text), env, task_type))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Hint:
    id: str
    text: str
    env: str
    task_type: str
    source_episode_ids: list[str] = field(default_factory=list)
    mentions: int = 1

    @classmethod
    def create(cls, text: str, env: str, task_type: str, source_episode_ids: list[str] | None = None) -> Hint:
        text = " ".join(text.split())
        return cls(hint_id(text, env, task_type), text, env, task_type, list(source_episode_ids or []), 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Hint:
        """Rebuild a hint, raising ValueError that names the field at fault."""
        if not isinstance(data, dict):
            raise ValueError(f"a hint must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hint fields {sorted(unknown)}")
        for name in ("id", "text", "env", "task_type"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"hint field {name!r} must be a non-empty string")
        sources = data.get("source_episode_ids", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ValueError("hint field 'source_episode_ids' must be a list of strings")
        mentions = data.get("mentions", 1)
        if not isinstance(mentions, int) or isinstance(mentions, bool) or mentions < 1:
            raise ValueError("hint field 'mentions' must be a positive integer")
        return cls(data["id"], data["text"], data["env"], data["task_type"], list(sources), mentions)


class Rejection(NamedTuple):
    text: str
    reason: str


@dataclass
class ParseResult:
    """Valid hint texts, what was rejected and why, and ``error`` when no JSON could be found at all."""

    hints: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None
    salvaged: bool = False


_LIST_MARKER = re.compile(r"^(?:[-*•]+|\d+[.)]|hint\s*\d*\s*:|rule\s*\d*\s*:)\s*", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_]+)\s*\}")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NOT_IMPERATIVE = _words(
    "i me my mine you your yours we us our he him his she her it its they them their this that these "
    "those the a an some someone something everything nothing there here is are was were be been being "
    "am has have had should must can could would will shall may might agent agents assistant model "
    "player user robot task hint rule failure error mistake"
)
_CANNOT_END = _words(
    "a an the and or but nor of to in on at by for with from into onto than its your their our his her "
    "my this that these those is are be if when while before after as"
)
_ED_ING_VERBS = _words(
    "proceed heed embed feed need succeed exceed speed shed seed bring ring string swing fling sling "
    "wring cling sting sing spring"
)


def _clean(raw: str) -> str:
    text = " ".join(raw.split())
    previous = None
    while text != previous:
        previous = text
        text = _LIST_MARKER.sub("", text).strip()
        text = text.strip("\"'`“”‘’").strip()
    return text


def _is_degenerate(text: str) -> bool:
    tokens = re.findall(r"\{[a-z_]+\}|[a-z']+", text.lower())
    words = [token for token in tokens if not token.startswith("{")]
    if any(first == second for first, second in itertools.pairwise(words)):
        return True
    long_words = [word for word in words if len(word) >= 4]
    if any(long_words.count(word) >= 3 for word in set(long_words)):
        return True
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    if len(set(trigrams)) < len(trigrams):
        return True
    if re.search(r"[,;:]\s*\.$", text.rstrip()):
        return True
    return bool(tokens) and text.rstrip().endswith(".") and tokens[-1] in _CANNOT_END


def _is_imperative(text: str) -> bool:
    match = re.match(r"[A-Za-z][A-Za-z']*", text)
    if match is None:
        return False
    first = match.group(0).lower()
    if first in _NOT_IMPERATIVE:
        return False
    stem = first.split("'")[0]
    if (stem.endswith("ed") and len(stem) > 4) or (stem.endswith("ing") and len(stem) > 5):
        return stem in _ED_ING_VERBS
    return True


def validate_hint(raw: Any, style: HintStyle, max_chars: int = 120) -> tuple[str | None, str | None]:
    """``(clean_text, None)`` for a usable hint, ``(None, reason)`` otherwise (reasons: module doc)."""
    if not isinstance(raw, str):
        return None, "not_text"
    text = _clean(raw)
    if not text:
        return None, "empty"
    if (reason := injection_reason(text)) is not None:
        return None, reason
    text = _PLACEHOLDER.sub(lambda m: "{" + m.group(1).lower() + "}", text)
    if style.rewrite is not None:
        text = style.rewrite(text)
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        return None, "malformed_placeholder"
    if any(name not in style.placeholders for name in _PLACEHOLDER.findall(text)):
        return None, "unknown_placeholder"
    if (reason := injection_reason(text)) is not None:
        return None, reason
    if style.episode_specific is not None and style.episode_specific(text):
        return None, "episode_specific"
    if len(text) > max_chars:
        return None, "too_long"
    if not _is_imperative(text):
        return None, "not_imperative"
    if _is_degenerate(text):
        return None, "degenerate"
    return text, None


def _hint_items(value: Any) -> list[Any] | None:
    """The list of hint items in a parsed JSON value, or None when the value has no hint shape."""
    if isinstance(value, dict):
        for key in ("hints", "Hints", "rules"):
            if key in value:
                inner = value[key]
                return inner if isinstance(inner, list) else [inner]
        for key in ("text", "hint"):
            if key in value:
                return [value]
        return None
    if isinstance(value, list) and value and all(isinstance(item, str | dict) for item in value):
        return value
    return None


def _item_text(item: Any) -> Any:
    if isinstance(item, dict):
        for key in ("text", "hint", "rule"):
            if key in item:
                return item[key]
    return item


_TEXT_FIELD = re.compile(r'"(?:text|hint)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _salvage(text: str) -> list[str]:
    """Complete ``"text": "..."`` fields of an answer cut off mid-JSON (e.g. at the token limit); used
    when they outnumber the items of the first decodable JSON value (there, only the first item)."""
    found: list[str] = []
    for escaped in _TEXT_FIELD.findall(text[:100_000]):
        try:
            found.append(json.loads(f'"{escaped}"'))
        except ValueError:
            continue
    return found


def parse_hints(
    text: Any, style: HintStyle, max_hints: int | None = None, max_chars: int = 120
) -> ParseResult:
    """Parse and validate an extractor answer. Never raises on model output, whatever it is."""
    limit = style.max_hints if max_hints is None else min(max_hints, style.max_hints)
    result = ParseResult()
    if not isinstance(text, str):
        result.error = f"answer is {type(text).__name__}, not text"
        return result
    value = find_json(text, accept=lambda v: _hint_items(v) is not None)
    items = _hint_items(value) if value is not None else None
    salvaged = _salvage(text)
    if len(salvaged) > len(items or []):
        items, result.salvaged = salvaged, True
    if items is None:
        result.error = "no JSON with hints found in the answer"
        return result
    seen: set[str] = set()
    for item in items:
        raw = _item_text(item)
        shown = raw if isinstance(raw, str) else json.dumps(raw, default=str)[:200]
        clean, reason = validate_hint(raw, style, max_chars)
        if clean is not None:
            key = normalise(clean)
            if key in seen:
                reason = "duplicate"
            elif len(result.hints) >= limit:
                reason = "over_limit"
            else:
                seen.add(key)
                result.hints.append(clean)
                continue
        result.rejected.append(Rejection(shown, reason or "empty"))
    return result
