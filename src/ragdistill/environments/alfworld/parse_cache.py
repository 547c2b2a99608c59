"""Parse each piece of an ALFWorld game's grammar once per process, not on every step.

TextWorld's PDDL engine (textworld 1.7) turns every admissible action's command template and every
feedback rule into text through its context-sensitive grammar, and it parses each of those strings with
a TatSu parser again each time: ``ContextSensitiveGrammar.derive`` parses its start string, and rule
conditions and ``{…|given}`` queries go through ``Rule.parse_conjunctive_query``. That is most of a
step's ~0.05-0.1 s CPU; the strings come from the game file's grammar, so they repeat on every step of
a game, and across games, which share ALFWorld's templates.

:func:`install` puts a memo in front of the two module-level parsers those calls use (textgen's
``symbols`` rule and the logic's ``conjunctiveQuery`` rule), keyed by (rule, text). Only the parse is
remembered: TextWorld still converts the parse tree into fresh symbol and proposition objects on every
call (its derivation sets a context on them), so what a game says is unchanged. The site-packages files
are left as they are; :func:`uninstall` puts the original parsers back.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

CACHED_RULES: dict[str, str] = {
    "textworld.envs.pddl.textgen": "symbols",
    "textworld.logic": "conjunctiveQuery",
}
"""The module whose ``_PARSER`` is wrapped -> the one grammar rule whose parses are remembered."""
MAX_ENTRIES = 50_000
"""Per rule. ALFWorld's games share a few thousand distinct strings; the bound only guards odd uses."""
DISABLE_ENV = "RAGDISTILL_ALFWORLD_PARSE_CACHE"
"""Set to 0 to play ALFWorld games with TextWorld's own parsers (the cache is not installed)."""
_MISSING = object()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class MemoParser:
    """Stands in for a TatSu parser: parses of ``rule_name`` without other settings come from a memo,
    everything else goes to the wrapped parser unchanged."""

    def __init__(self, parser: Any, rule_name: str, max_entries: int = MAX_ENTRIES) -> None:
        self.wrapped = parser
        self.rule_name = rule_name
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._trees: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def parse(self, text: Any, /, *args: Any, **settings: Any) -> Any:
        cacheable = (
            isinstance(text, str)
            and not args
            and settings.get("rule_name") == self.rule_name
            and not settings.get("trace")
            and set(settings) <= {"rule_name", "trace"}
        )
        if not cacheable:
            return self.wrapped.parse(text, *args, **settings)
        with self._lock:
            tree = self._trees.get(text, _MISSING)
            if tree is not _MISSING:
                self._trees.move_to_end(text)
                self.stats.hits += 1
                return tree
        tree = self.wrapped.parse(text, rule_name=self.rule_name)
        with self._lock:
            self.stats.misses += 1
            self._trees[text] = tree
            if len(self._trees) > self.max_entries:
                self._trees.popitem(last=False)
        return tree

    def clear(self) -> None:
        with self._lock:
            self._trees.clear()
            self.stats = CacheStats()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def _modules() -> dict[str, Any]:
    import importlib

    return {name: importlib.import_module(name) for name in CACHED_RULES}


def wanted() -> bool:
    """Whether games should be loaded with the cache (``RAGDISTILL_ALFWORLD_PARSE_CACHE`` is not 0)."""
    return os.environ.get(DISABLE_ENV, "1").strip() != "0"


def follow_setting() -> None:
    """Install the cache, or take it out when ``RAGDISTILL_ALFWORLD_PARSE_CACHE=0``; run before each load."""
    if wanted():
        install()
    else:
        uninstall()


def install() -> None:
    """Wrap TextWorld's two per-step parsers in a :class:`MemoParser`; calling it again does nothing."""
    for name, module in _modules().items():
        if not isinstance(module._PARSER, MemoParser):
            module._PARSER = MemoParser(module._PARSER, CACHED_RULES[name])


def uninstall() -> None:
    """Put TextWorld's own parsers back (every parse from then on is TextWorld's again)."""
    for module in _modules().values():
        if isinstance(module._PARSER, MemoParser):
            module._PARSER = module._PARSER.wrapped


def installed() -> bool:
    return all(isinstance(module._PARSER, MemoParser) for module in _modules().values())


def clear() -> None:
    """Forget every remembered parse (and the hit counts)."""
    for module in _modules().values():
        if isinstance(module._PARSER, MemoParser):
            module._PARSER.clear()


def stats() -> dict[str, CacheStats]:
    """Hits and misses per cached rule, while installed."""
    return {
        CACHED_RULES[name]: module._PARSER.stats
        for name, module in _modules().items()
        if isinstance(module._PARSER, MemoParser)
    }
