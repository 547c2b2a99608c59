"""TextWorld's grammar strings parsed once (ragdistill.environments.alfworld.parse_cache): games say
exactly what they said without the cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from alfworld_data import alfworld_data_dir
from conftest import installed, require
from ragdistill.environments.alfworld import AlfworldEnv, list_tasks, parse_cache
from ragdistill.environments.alfworld.parse_cache import DISABLE_ENV, MemoParser

EXTRA_ACTIONS = ("look", "inventory", "fly to the moon")
"""Played before each walkthrough: other grammar rules than the expert's, and an invalid command."""


@pytest.fixture(autouse=True)
def textworld_parsers_restored() -> Iterator[None]:
    require(
        installed("textworld"), "TextWorld is not installed (`make setup` installs alfworld's dependencies)"
    )
    was_installed = parse_cache.installed()
    yield
    parse_cache.install() if was_installed else parse_cache.uninstall()


class CountingParser:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def parse(self, text: str, /, **settings: Any) -> list[str]:
        self.calls.append((text, settings))
        return [f"tree of {text}"]

    grammar_name = "counting"


def test_memo_parser_parses_each_string_of_its_rule_once() -> None:
    inner = CountingParser()
    memo = MemoParser(inner, "symbols")
    first = memo.parse("#take#", rule_name="symbols", trace=False)
    assert memo.parse("#take#", rule_name="symbols") is first
    assert memo.parse("#put#", rule_name="symbols") == ["tree of #put#"]
    assert [text for text, _ in inner.calls] == ["#take#", "#put#"]
    assert (memo.stats.hits, memo.stats.misses) == (1, 2)
    assert memo.grammar_name == "counting"  # anything else is the wrapped parser's


def test_memo_parser_passes_other_rules_and_settings_through() -> None:
    inner = CountingParser()
    memo = MemoParser(inner, "symbols")
    memo.parse("a & b", rule_name="conjunctiveQuery")
    memo.parse("a & b", rule_name="conjunctiveQuery")
    memo.parse("#x#", rule_name="symbols", trace=True)
    memo.parse("#x#", rule_name="symbols", filename="game.tw-pddl")
    assert len(inner.calls) == 4 and memo.stats.hits == 0


def test_memo_parser_keeps_at_most_max_entries() -> None:
    inner = CountingParser()
    memo = MemoParser(inner, "symbols", max_entries=2)
    for text in ("a", "b", "a", "c", "a", "b"):
        memo.parse(text, rule_name="symbols")
    assert [text for text, _ in inner.calls] == ["a", "b", "c", "b"]  # "b" was the least recently used


def test_install_and_uninstall_wrap_textworlds_parsers_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import textworld.envs.pddl.textgen as textgen

    parse_cache.uninstall()
    original = textgen._PARSER
    monkeypatch.setenv(DISABLE_ENV, "1")
    parse_cache.follow_setting()
    parse_cache.install()
    assert parse_cache.installed() and textgen._PARSER.wrapped is original
    monkeypatch.setenv(DISABLE_ENV, "0")
    parse_cache.follow_setting()
    assert not parse_cache.installed() and textgen._PARSER is original


def play(env: AlfworldEnv, task: Any) -> list[tuple[Any, ...]]:
    """Everything a player sees: the first observation and commands, then every step's result."""
    start = env.reset(task)
    seen: list[tuple[Any, ...]] = [(start.observation, start.available_actions, start.task.instruction)]
    for action in (*EXTRA_ACTIONS, *env.expert_actions()):
        step = env.step(action)
        seen.append((action, step.observation, step.available_actions, step.reward, step.done, step.won))
    return seen


@pytest.mark.slow
def test_games_play_identically_with_and_without_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = alfworld_data_dir()
    tasks = list_tasks(data_dir, "valid_unseen", limit=2)
    env = AlfworldEnv(data_dir)
    try:
        monkeypatch.setenv(DISABLE_ENV, "0")
        without = [play(env, task) for task in tasks]
        assert not parse_cache.installed()
        monkeypatch.setenv(DISABLE_ENV, "1")
        parse_cache.uninstall()  # a cold cache: every string is parsed once, then remembered
        with_cache = [play(env, task) for task in tasks]
        assert parse_cache.installed()
    finally:
        env.close()
    hits = sum(stats.hits for stats in parse_cache.stats().values())
    assert hits > 100, parse_cache.stats()
    for before, after in zip(without, with_cache, strict=True):
        assert before == after
        assert before[-1][-1] is True  # the walkthrough won, so every step of it was compared
        assert any(len(seen[2]) > 5 for seen in before[1:])  # real admissible commands were compared
