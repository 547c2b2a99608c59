"""How big a config may be, and how an error shows a value without echoing what a file holds.

A config comes from a YAML file, from a flow run's overrides (which anyone who can reach the Prefect API
may set) and from a stored ``run.json``. Each is bounded before pydantic sees it: a few kilobytes of
YAML or JSON must never cost gigabytes or minutes. The limits are far above what any real experiment
needs (the shipped configs are about 2 KB, 4 levels deep).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ragdistill.config.base import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
"""The largest config file read."""
MAX_DEPTH = 16
"""Sections and values nested inside one another (``models.agent.sampling.seed`` is 4)."""
MAX_ITEMS = 1_000
"""Entries of one mapping or list."""
MAX_VALUES = 20_000
"""Mappings, lists and scalars in the whole config."""
MAX_STRING_CHARS = 4_096
"""The longest text setting (a path or URL fits)."""
MAX_KEY_CHARS = 100
"""The longest key of a mapping."""
INTEGER_LIMIT = 2**63
"""Integers are below this in magnitude: what the libraries settings go to store in 64 bits."""

_SHOWN_TEXT = re.compile(r"^[\w .,/:+-]{0,32}$")


def shown(value: Any) -> str:
    """A value as an error message may print it: short plain scalars as they are, anything else only by
    kind and size. A config file that is really a credentials or password file thus never has its lines
    echoed, nor a URL carrying a key (``@``, ``=``, ``?`` are never shown)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**32:
        return f"a number of {len(str(abs(value))) if value.bit_length() < 10_000 else 'thousands of'} digits"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if _SHOWN_TEXT.match(value) else f"a text of {len(value)} characters"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def shown_key(key: Any) -> str:
    """A key for an error message, cut to ``MAX_KEY_CHARS``."""
    text = str(key)
    return text if len(text) <= MAX_KEY_CHARS else f"{text[:MAX_KEY_CHARS]}…"


def check_bounds(data: Any, source: str) -> None:
    """Raise ConfigError naming ``source`` and the dotted key of the first value past a limit: nesting,
    entries per mapping or list, values in all, text and key length, integer size, and floats that are
    not finite (``.inf``, ``.nan``; also inside free-form sections such as ``env.options``). Walks at
    most ``MAX_VALUES`` values, so a shared or huge structure is refused without being traversed."""
    pending: list[tuple[str, Any, int]] = [("", data, 0)]
    counted = 1
    while pending:
        key, value, depth = pending.pop()
        where = f"{source}: {key or '(top level)'}"
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict | list | tuple):
            if len(value) > MAX_ITEMS:
                raise ConfigError(
                    f"{where}: {len(value)} entries; a mapping or list holds at most {MAX_ITEMS}"
                )
            counted += len(value)
            if counted > MAX_VALUES:
                raise ConfigError(
                    f"{source}: more than {MAX_VALUES} values in all; a config is a few settings"
                )
        if isinstance(value, dict):
            for name, inner in value.items():
                if not isinstance(name, str) or not name or len(name) > MAX_KEY_CHARS:
                    raise ConfigError(
                        f"{where}: key {shown(name)} is not a text of 1 to {MAX_KEY_CHARS} characters"
                    )
                pending.append((f"{key}.{name}" if key else name, inner, depth + 1))
        elif isinstance(value, list | tuple):
            pending.extend((key, inner, depth + 1) for inner in value)
        elif isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise ConfigError(f"{where}: {len(value)} characters; a setting holds at most {MAX_STRING_CHARS}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number; give a number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INTEGER_LIMIT:
            raise ConfigError(f"{where}: {shown(value)} is out of range (at most 2**63 - 1 in magnitude)")


def check_dotted_key(dotted: Any, source: str) -> list[str]:
    """The parts of an override's dotted key, each a plain key, at most ``MAX_DEPTH`` of them."""
    if not isinstance(dotted, str) or len(dotted) > MAX_DEPTH * (MAX_KEY_CHARS + 1):
        raise ConfigError(f"{source}: override key {shown(dotted)} is not a dotted setting name")
    parts = dotted.split(".")
    if len(parts) > MAX_DEPTH or any(not part or len(part) > MAX_KEY_CHARS for part in parts):
        raise ConfigError(
            f"{source}: override key {shown_key(dotted)!r} is not a dotted setting name such as env.limit "
            f"(at most {MAX_DEPTH} parts of 1 to {MAX_KEY_CHARS} characters)"
        )
    return parts
