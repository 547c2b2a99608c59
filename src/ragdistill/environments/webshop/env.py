"""The WebShop environment behind :class:`Env`, its task lister, version and ``env check`` report."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ragdistill.environments.webshop.pages as p
from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.environments.selection import check_selection, round_robin
from ragdistill.environments.webshop.catalog import Catalog, data_files, load_catalog
from ragdistill.environments.webshop.constants import (
    CATEGORIES,
    DEFAULT_MAX_STEPS,
    ENV_NAME,
    HUMAN_SPLIT,
    INVALID_OBSERVATION,
    PAGE_SIZE,
    PRICE_SEED,
    SPLITS,
)
from ragdistill.environments.webshop.goals import Goal, goal_at, goals_of, split_indices
from ragdistill.environments.webshop.reward import (
    fuzzy_score,
    product_can_match_every_option,
    score_purchase,
    some_purchase_wins,
)
from ragdistill.environments.webshop.search import ProductSearch, search_engine

_ACTION = re.compile(r"\s*(?P<verb>search|click)\[(?P<arg>.*)\]\s*", re.IGNORECASE | re.DOTALL)
_TASK_ID = re.compile(rf"{ENV_NAME}-(?P<split>\w+)-(?P<index>\d+)")


def task_id(split: str, index: int) -> str:
    return f"{ENV_NAME}-{split}-{index}"


def task_of(split: str, index: int, goal: Goal) -> TaskInfo:
    return TaskInfo(
        env=ENV_NAME,
        split=split,
        task_id=task_id(split, index),
        task_type=goal.category,
        instruction=goal.instruction_text,
        extras={
            "goal_index": index,
            "asin": goal.asin,
            "goal_options": dict(goal.goal_options),
            "price_upper": goal.price_upper,
        },
    )


def list_tasks(
    data_dir: Path | str = "data",
    split: str = "test",
    limit: int | None = None,
    task_types: Sequence[str] | None = None,
    balanced: bool = False,
) -> list[TaskInfo]:
    """The goals of a split in goal-index order (upstream's ``fixed_i``), so ``limit=100`` on ``test`` is
    the paper's first 100 test goals. ``task_types`` keeps only those product categories; ``balanced``
    interleaves the categories round-robin (beauty, electronics, fashion, garden, grocery, beauty, …)."""
    if split not in SPLITS:
        raise EnvError(f"unknown WebShop split {split!r}; choose from {list(SPLITS)}")
    wanted = check_selection("WebShop", CATEGORIES, task_types, limit)
    goals = goals_of(load_catalog(data_dir), human=split == HUMAN_SPLIT)
    tasks = [
        task_of(split, index, goals[index])
        for index in split_indices(split, len(goals))
        if wanted is None or goals[index].category in wanted
    ]
    if not balanced:
        return tasks[:limit]
    return round_robin((iter([t for t in tasks if t.task_type == c]) for c in CATEGORIES), limit)


def environment_version(data_dir: Path | str = "data") -> dict[str, str]:
    """What makes two WebShop runs score alike: search and matching libraries, the noun tagger in use,
    and the data files' sha256."""
    from importlib.metadata import PackageNotFoundError, version

    from ragdistill.environments.webshop.nouns import installed_tagger

    found: dict[str, str] = {}
    for package in ("bm25s", "rapidfuzz", "spacy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    found["noun_tagger"] = installed_tagger()
    for label, path in zip(("products", "instructions"), data_files(data_dir), strict=True):
        found[label] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def expert_plan(catalog: Catalog, engine: ProductSearch, goal: Goal, page_size: int) -> list[str]:
    """Search, page to the target, open it, choose the goal's options, buy. Computed from the catalogue
    and search engine the episode plays on.

    The query is the instruction itself when that shows the target on the first page (an agent can
    learn to do that: demonstrations become training data), else the target's title (first in 485 of
    the 500 test goals), else the product's own search query. It chooses the goal's own option values,
    which under upstream's option rule miss on 458 of the 6910 goals (see ``reward``): no choice of that
    product's options wins those, and the expert's reward on them is below 1."""
    queries = (goal.instruction_text, goal.name, goal.query)
    searched = [(query, engine.search(query)) for query in queries]
    found = [(query, results) for query, results in searched if goal.asin in results]
    if not found:
        return [f"search[{goal.name}]"]
    query, results = next(
        ((query, results) for query, results in found if goal.asin in results[:page_size]), found[0]
    )
    product = catalog.by_asin[goal.asin]
    actions = [f"search[{query}]"]
    actions += [f"click[{p.NEXT_PAGE}]"] * (results.index(goal.asin) // page_size)
    actions.append(f"click[{goal.asin}]")
    for name, wanted in goal.goal_options.items():
        own = product.options.get(name, ())
        if wanted in own:
            actions.append(f"click[{wanted}]")
            continue
        values = [value for values in product.options.values() for value in values]
        best = max(values, key=lambda value: fuzzy_score(value, wanted), default=None)
        if best is not None and fuzzy_score(best, wanted) > 85:
            actions.append(f"click[{best}]")
    return [*actions, f"click[{p.BUY_NOW}]"]


class WebShopEnv:
    """One WebShop goal at a time. ``data_dir`` holds ``webshop/`` as ``ragdistill data setup`` installs it;
    ``page_size=3`` shows the paper's top-3 view; ``max_steps`` ends an unfinished episode with reward 0."""

    name = ENV_NAME

    def __init__(
        self,
        data_dir: Path | str = "data",
        max_steps: int = DEFAULT_MAX_STEPS,
        page_size: int = PAGE_SIZE,
        seed: int = PRICE_SEED,
    ) -> None:
        if max_steps < 1 or page_size < 1:
            raise EnvError(f"max_steps and page_size must be positive, got {max_steps} and {page_size}")
        self.catalog = load_catalog(data_dir, seed)
        self.engine = search_engine(self.catalog)
        self.max_steps = max_steps
        self.page_size = page_size
        self.state = p.PageState()
        self.goal: Goal | None = None
        self.steps = 0
        self.done = False

    def reset(self, task: TaskInfo) -> ResetResult:
        found = _TASK_ID.fullmatch(task.task_id)
        if found is None or found["split"] != task.split:
            raise EnvError(
                f"not a WebShop task id: {task.task_id!r} (expected {task_id(task.split, 0)!r} style)"
            )
        self.goal = goal_at(self.catalog, task.split, int(found["index"]))
        self.state, self.steps, self.done = p.PageState(), 0, False
        info = task_of(task.split, int(found["index"]), self.goal)
        info = replace(info, extras={**task.extras, **info.extras})
        return ResetResult(info, self.observation(), self.available_actions())

    def observation(self) -> str:
        return p.render(self.state, self.catalog, self._goal().instruction_text, self.page_size)

    def available_actions(self) -> list[str]:
        return p.available_actions(self.state, self.catalog, self._goal().instruction_text, self.page_size)

    def step(self, action: str) -> StepResult:
        goal = self._goal()
        if self.done:
            raise EnvError("WebShopEnv.step called after the episode ended; reset first")
        self.steps += 1
        outcome = self._apply(action)
        if isinstance(outcome, p.PageState):
            self.state = outcome
            return self._result(self.observation(), info={})
        if outcome == "buy":
            parts = score_purchase(
                self.catalog.by_asin[str(self.state.asin)],
                goal,
                self.catalog.prices[str(self.state.asin)],
                self.state.options,
            )
            self.done = True
            info = {**parts.as_info(), "asin": self.state.asin, "chosen_options": self.state.options}
            return StepResult(p.done_text(parts.reward), parts.reward, True, parts.reward == 1.0, [], info)
        return self._result(INVALID_OBSERVATION, info={"invalid": True})

    def _result(self, observation: str, info: dict[str, Any]) -> StepResult:
        if self.steps >= self.max_steps:
            self.done = True
            return StepResult(observation, 0.0, True, False, [], {**info, "truncated": True})
        return StepResult(observation, 0.0, False, False, self.available_actions(), info)

    def _apply(self, action: str) -> p.PageState | str | None:
        """The next page, ``"buy"``, or None when the action is not available here."""
        found = _ACTION.fullmatch(action)
        if found is None:
            return None
        verb, arg = found["verb"].lower(), found["arg"].strip()
        if verb == "search":
            if self.state.kind != "search" or not arg:
                return None
            return p.PageState(
                kind="results", query=arg.lower(), results=tuple(self.engine.search(arg.lower()))
            )
        target = self._clickable(arg)
        state = self.state
        if target is None:
            return None
        if target == p.BACK_TO_SEARCH:
            return p.PageState()
        if state.kind == "results":
            if target in (p.NEXT_PAGE, p.PREV_PAGE):
                return replace(state, page=state.page + (1 if target == p.NEXT_PAGE else -1))
            return replace(state, kind="item", asin=target, chosen=())
        if state.kind == "sub":
            return replace(state, kind="item", sub_page=None)
        if target == p.PREV_PAGE:
            return replace(state, kind="results", asin=None, chosen=())
        if target in p.SUB_PAGES:
            return replace(state, kind="sub", sub_page=target)
        if target == p.BUY_NOW:
            return "buy"
        product = self.catalog.by_asin[str(state.asin)]
        return state.choose(str(product.option_name_of(target)), target)

    def _clickable(self, arg: str) -> str | None:
        """The page's clickable named ``arg`` (case-insensitive; ``[[value]]`` as shown for a chosen one)."""
        names = {name.lower(): name for name in p.clickables(self.state, self.catalog, self.page_size)}
        for candidate in (arg, arg[1:-1].strip() if arg.startswith("[") and arg.endswith("]") else None):
            if candidate is not None and candidate.lower() in names:
                return names[candidate.lower()]
        return None

    def expert_actions(self) -> list[str]:
        """The expert's plan from the start of the episode (see :func:`expert_plan`)."""
        return expert_plan(self.catalog, self.engine, self._goal(), self.page_size)

    def close(self) -> None:
        self.goal = None

    def _goal(self) -> Goal:
        if self.goal is None:
            raise EnvError("WebShopEnv used before reset")
        return self.goal


def check_report(
    *, data_dir: Path | str, tasks: Sequence[TaskInfo], summary: dict[str, Any]
) -> dict[str, Any]:
    """What ``ragdistill env check webshop`` prints beyond success: the score (100 × mean reward), how many
    goals some purchase of their own product wins under upstream's option rule, how many some purchase of
    any product wins (tried exhaustively) and success over those (the expert's 100%), how often the
    target is in the top 3 / top 10 when the instruction itself is the query, the noun tagger."""
    from ragdistill.environments.webshop.nouns import FALLBACK_AGREEMENT, tagger_name, using_fallback

    catalog = load_catalog(data_dir)
    engine = search_engine(catalog)
    ranks = [_rank(engine, task) for task in tasks]
    goals = [goal_at(catalog, task.split, int(task.extras["goal_index"])) for task in tasks]
    with_their_product = [product_can_match_every_option(catalog.by_asin[goal.asin], goal) for goal in goals]
    winnable = sum(
        own or some_purchase_wins(catalog.products, catalog.prices, goal)
        for own, goal in zip(with_their_product, goals, strict=True)
    )
    report: dict[str, Any] = {
        "score": round(100 * summary.get("mean_reward", 0.0), 2),
        "goals_winnable_with_their_product": sum(with_their_product),
        "goals_winnable": winnable,
        "success_over_winnable": round(summary.get("won", 0) / winnable, 4) if winnable else 0.0,
        "instruction_query_top3": round(sum(r is not None and r < 3 for r in ranks) / len(ranks), 4),
        "instruction_query_top10": round(sum(r is not None and r < 10 for r in ranks) / len(ranks), 4),
        "noun_tagger": tagger_name(),
    }
    if using_fallback():
        report["noun_tagger_agreement_with_spacy"] = FALLBACK_AGREEMENT
    episodes = summary.get("episodes") or 0
    report["seconds_per_episode"] = round(summary.get("seconds", 0.0) / episodes, 4) if episodes else 0.0
    return report


def _rank(engine: ProductSearch, task: TaskInfo) -> int | None:
    results = engine.search(task.instruction)
    asin = task.extras.get("asin")
    return results.index(asin) if asin in results else None
