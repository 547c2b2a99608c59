"""Goals: the 6910 synthetic ones (the standard "small" setting) and the 13 human ones, in upstream order.

Synthetic: for each product whose instruction entry has an ``instruction``, one goal per combination of
its option values (option names sorted). Its price bound is drawn once per product: the upper bounds
10, 20, ..., 990 above the product's price, the first four of them; with at least two, two are sampled
and the larger is ``price_upper`` (and ", and price lower than X.00 dollars" ends the instruction),
otherwise ``price_upper`` is 1,000,000 and the instruction says nothing of price. The draws continue the
catalogue's price stream. The list is then shuffled once with ``SHUFFLE_SEED``. Human goals: the
products' ``instructions`` (written by people), built the same way, their option values named by the
product option that lists them; upstream keeps those as a list of values, which its reward compares
value to value (``Goal.options_as_pairs``).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import lru_cache

from ragdistill.environments.base import EnvError
from ragdistill.environments.webshop.catalog import Catalog, Product, load_catalog_at
from ragdistill.environments.webshop.constants import HUMAN_SPLIT, SHUFFLE_SEED, SPLIT_RANGES

PRICE_BOUNDS: tuple[float, ...] = tuple(10.0 * step for step in range(1, 100))
NO_PRICE_BOUND = 1_000_000.0

GoalOption = str | tuple[str, str]
"""A goal option as upstream's option matcher receives it: a ``(name, value)`` pair, or a bare value."""


@dataclass(frozen=True)
class Goal:
    asin: str
    category: str
    query: str
    name: str
    """The product's Title (the reward's title score compares nouns of names)."""
    product_category: str
    instruction_text: str
    attributes: tuple[str, ...]
    goal_options: dict[str, str]
    price_upper: float
    options_as_pairs: bool = True
    """Upstream keeps a synthetic goal's options as a name -> value dict, which its reward hands to the
    option matcher as ``(name, value)`` pairs; a human goal's as a bare list of values (False here)."""

    @property
    def matched_options(self) -> tuple[GoalOption, ...]:
        """What the reward's option matcher compares the chosen values with (see ``reward``)."""
        if self.options_as_pairs:
            return tuple(self.goal_options.items())
        return tuple(self.goal_options.values())


def price_bound(price: float, rng: random.Random) -> tuple[float, str]:
    """``(price_upper, price text)`` for a product at ``price``."""
    above = [bound for bound in PRICE_BOUNDS if bound > price][:4]
    if len(above) < 2:
        return NO_PRICE_BOUND, ""
    upper = max(rng.sample(above, 2))
    return upper, f", and price lower than {upper:.2f} dollars"


def _goal(
    product: Product,
    text: str,
    attributes: list[str],
    options: dict[str, str],
    upper: float,
    options_as_pairs: bool = True,
) -> Goal:
    return Goal(
        asin=product.asin,
        category=product.category,
        query=product.query,
        name=product.title,
        product_category=product.product_category,
        instruction_text=text,
        attributes=tuple(attributes),
        goal_options=options,
        price_upper=upper,
        options_as_pairs=options_as_pairs,
    )


def synthetic_goals(catalog: Catalog, rng: random.Random) -> list[Goal]:
    goals: list[Goal] = []
    for product in catalog.products:
        entry = catalog.instructions.get(product.asin, {})
        if entry.get("instruction") is None:
            continue
        upper, price_text = price_bound(catalog.prices[product.asin], rng)
        names = sorted(product.options)
        for combination in itertools.product(*(product.options[name] for name in names)):
            options = dict(zip(names, combination, strict=True))
            option_text = ", and ".join(f"{name}: {value}" for name, value in options.items())
            text = f"{entry['instruction']}{' with ' + option_text if option_text else ''}{price_text}"
            goals.append(_goal(product, text, list(entry["instruction_attributes"]), options, upper))
    return goals


def human_goals(catalog: Catalog, rng: random.Random) -> list[Goal]:
    """Human-written goals; one without attributes is skipped, as upstream does."""
    goals: list[Goal] = []
    for product in catalog.products:
        for entry in catalog.human_instructions.get(product.asin, []):
            if not entry.get("instruction_attributes"):
                continue
            upper, price_text = price_bound(catalog.prices[product.asin], rng)
            options = {
                product.option_name_of(value) or value: value for value in entry["instruction_options"]
            }
            text = str(entry["instruction"]).strip(".") + price_text
            goals.append(
                _goal(
                    product,
                    text,
                    list(entry["instruction_attributes"]),
                    options,
                    upper,
                    options_as_pairs=False,
                )
            )
    return goals


def build_goals(catalog: Catalog, human: bool = False) -> list[Goal]:
    """Every goal of one set, in upstream's shuffled order (index ``i`` = session ``fixed_i``)."""
    rng = random.Random()
    rng.setstate(catalog.rng_state_after_prices)
    goals = human_goals(catalog, rng) if human else synthetic_goals(catalog, rng)
    random.Random(SHUFFLE_SEED).shuffle(goals)
    return goals


def goals_of(catalog: Catalog, human: bool = False) -> tuple[Goal, ...]:
    """:func:`build_goals`, built once per process, catalogue and goal set."""
    return _goals_of(catalog.data_dir, catalog.seed, human)


@lru_cache(maxsize=8)
def _goals_of(data_dir: str, seed: int, human: bool) -> tuple[Goal, ...]:
    return tuple(build_goals(load_catalog_at(data_dir, seed), human))


def split_indices(split: str, total: int) -> range:
    """The goal indices of a split (``human``: every human goal)."""
    if split == HUMAN_SPLIT:
        return range(total)
    if split not in SPLIT_RANGES:
        raise EnvError(f"unknown WebShop split {split!r}; choose from {[*SPLIT_RANGES, HUMAN_SPLIT]}")
    start, stop = SPLIT_RANGES[split]
    return range(min(start, total), total if stop is None else min(stop, total))


def goal_at(catalog: Catalog, split: str, index: int) -> Goal:
    goals = goals_of(catalog, human=split == HUMAN_SPLIT)
    if index not in split_indices(split, len(goals)):
        raise EnvError(f"WebShop goal {index} is not in split {split!r}")
    return goals[index]
