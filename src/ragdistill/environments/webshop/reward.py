"""The reward of a purchase, in [0, 1], with every part of it (upstream ``goal.get_reward``).

``reward = r_type * (attribute matches + option matches + price ok) / (|attributes| + |goal options| + 1)``

- attribute match: some product attribute scores > 85 against the goal attribute on the fuzzy token-set
  ratio, else the goal attribute occurs in the product's lower-cased title, joined bullet points or
  description;
- option match: some chosen option value scores > 85 against the goal option value, both colour-normalised
  (a value containing a word of ``COLORS`` becomes the first such word);
- price ok: the paid price is at most the goal's ``price_upper``;
- ``r_type``: 1; 0.5 when neither the queries match, nor two ``›`` levels of the product categories, nor
  the title score exceeds 0.2; 0.1 when the title score is under 0.1; 0 when it is 0. The title score is
  the number of distinct goal-name nouns found among the product-name nouns over the number of goal-name
  nouns, repeats counted (0.2 when the goal name has none).

Fuzzy scores are rapidfuzz's token-set ratio on lower-cased alphanumeric text, rounded to an integer as
thefuzz (upstream's library) returns them. Upstream passes the goal's options as ``(name, value)`` pairs
to the option matcher; we compare values, as our spec defines it (the expert's reward is 1 either way).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rapidfuzz import fuzz, utils

from ragdistill.environments.webshop.catalog import Product
from ragdistill.environments.webshop.goals import Goal
from ragdistill.environments.webshop.nouns import nouns

FUZZY_THRESHOLD = 85
COLORS: tuple[str, ...] = tuple(
    """alabaster apricot aqua ash asphalt azure banana beige black blue blush bordeaux bronze brown burgundy
    camel camo caramel champagne charcoal cheetah chestnut chocolate christmas coffee cognac copper coral
    cranberry cream crystal dark denim eggplant elephant espresso fuchsia gold granite grape graphite grass
    gray green grey heather indigo ivory ivy khaki lavender lemon leopard light lilac lime magenta maroon
    mauve merlot midnight mint mocha multicolor mushroom mustard natural navy nude olive orange peach pewter
    pink plum purple rainbow red rose royal rust sand sapphire seashell silver skull slate steel stone
    stonewash sunflower tan taupe teal tiger turquoise violet walnut wheat white wine yellow""".split()  # noqa: SIM905
)
"""Upstream's colour words (``engine/normalize.py``), in its order: the first one found wins."""


@dataclass(frozen=True)
class RewardParts:
    reward: float
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    attribute_matches: int
    attributes: int
    option_matches: int
    options: int
    price_ok: bool
    price: float
    price_upper: float

    def as_info(self) -> dict[str, Any]:
        return asdict(self)


def fuzzy_score(a: str, b: str) -> int:
    return round(fuzz.token_set_ratio(a, b, processor=utils.default_process))


def normalize_color(value: str) -> str:
    return next((color for color in COLORS if color in value), value)


def type_parts(product: Product, goal: Goal) -> tuple[float, bool, bool, float]:
    """``(r_type, query_match, category_match, title_score)``."""
    query_match = product.query == goal.query
    product_levels = {level.strip() for level in product.product_category.split("›")}
    goal_levels = {level.strip() for level in goal.product_category.split("›")}
    category_match = len(product_levels & goal_levels) >= 2
    goal_nouns = nouns(goal.name)
    title_score = len(set(nouns(product.name)) & set(goal_nouns)) / len(goal_nouns) if goal_nouns else 0.2
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(product: Product, attributes: Iterable[str]) -> int:
    text = (product.title.lower(), " ".join(product.bullet_points).lower(), product.description.lower())
    found = 0
    for wanted in attributes:
        if any(fuzzy_score(own, wanted) > FUZZY_THRESHOLD for own in product.attributes) or any(
            wanted in part for part in text
        ):
            found += 1
    return found


def option_matches(chosen: Iterable[str], wanted: Iterable[str]) -> int:
    chosen_values = [normalize_color(value) for value in chosen]
    return sum(
        any(fuzzy_score(value, normalize_color(goal_value)) > FUZZY_THRESHOLD for value in chosen_values)
        for goal_value in wanted
    )


def score_purchase(product: Product, goal: Goal, price: float, chosen: Mapping[str, str]) -> RewardParts:
    """The reward for buying ``product`` at ``price`` with options ``chosen`` (name -> value) for ``goal``."""
    r_type, query_match, category_match, title_score = type_parts(product, goal)
    attributes = attribute_matches(product, goal.attributes)
    options = option_matches(chosen.values(), goal.option_values)
    price_ok = price <= goal.price_upper
    total = (attributes + options + int(price_ok)) / (len(goal.attributes) + len(goal.goal_options) + 1)
    return RewardParts(
        reward=total * r_type,
        r_type=r_type,
        query_match=query_match,
        category_match=category_match,
        title_score=title_score,
        attribute_matches=attributes,
        attributes=len(goal.attributes),
        option_matches=options,
        options=len(goal.goal_options),
        price_ok=price_ok,
        price=price,
        price_upper=goal.price_upper,
    )
