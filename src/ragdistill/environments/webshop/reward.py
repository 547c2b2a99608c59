"""The reward of a purchase, in [0, 1], with every part of it: upstream WebShop's ``goal.get_reward``.

``reward = r_type * (attribute matches + option matches + price ok) / (|attributes| + |goal options| + 1)``

We reproduce upstream's rule exactly, quirks included, because the paper's and WebShop's published scores
were computed with it and users compare ours with them:

- attribute match: some product attribute scores > 85 against the goal attribute (fuzzy token-set ratio),
  else the goal attribute occurs in the product's lower-cased title, joined bullet points or description;
- option match: upstream hands its option matcher the goal's options as ``goal_options.items()``, i.e.
  ``(name, value)`` pairs (human goals keep a bare list of values). Each side goes through the colour
  normaliser, ``next(c for c in COLORS if c in option)``: on a chosen value ``in`` is a substring test; on a
  pair it is tuple membership, so a pair is replaced only when its name or value *is* a colour word. A goal
  option matches when some normalised chosen value scores > 85 against it, the fuzzy matcher first turning
  a pair into its text, ``str(("color", "navy blue"))``, whose tokens are ``color navy blue``. So the
  option name counts as goal tokens, and the goal side is not colour-normalised: ``xx-large`` chosen for
  goal size ``large`` does not match (``xx large`` vs ``size large``), ``army green`` (normalised to
  ``green``) does match goal colour ``#1 black green``. Buying the goal's own options does not always win:
  ``dash kit`` normalises to ``ash``, ``rectangular`` to ``tan``; on 458 of the 6910 synthetic goals no
  choice of the goal product's options gets every option match;
- price ok: the paid price is at most the goal's ``price_upper``;
- ``r_type``: 1; 0.5 when neither the queries match, nor two ``›`` levels of the product categories, nor
  the title score exceeds 0.2; 0.1 when the title score is under 0.1; 0 when it is 0. The title score is
  the number of distinct goal-name nouns found among the product-name nouns over the number of goal-name
  nouns, repeats counted (0.2 when the goal name has none).

Fuzzy scores are those of thefuzz 0.19.0 (upstream's pin), ``fuzz.token_set_ratio`` with its defaults:
its processing (:func:`upstream_process`) then the token-set ratio, an integer (rounded). We compute the
ratio with rapidfuzz, whose Indel ratio is thefuzz's with python-Levenshtein (its "speedup" extra);
without it thefuzz falls back to difflib, whose ratio can only be lower, but on this catalogue it decides
no attribute or option differently (checked on every goal attribute against every product attribute and
every goal option against its product's option values and a sample of others').
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rapidfuzz import fuzz

from ragdistill.environments.webshop.catalog import Product
from ragdistill.environments.webshop.goals import Goal, GoalOption
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


_LATIN1_UPPER_HALF = dict.fromkeys(range(128, 256))
_NON_WORD = re.compile(r"\W")


def upstream_process(text: str) -> str:
    """thefuzz 0.19.0's ``full_process(text, force_ascii=True)``: delete the characters U+0080-U+00FF
    (``é`` and the no-break space vanish, joining their neighbours), every other non-word character becomes
    a space (``_`` is a word character and stays), lower-case, strip. rapidfuzz's ``default_process``
    differs on those characters and on ``_``."""
    return _NON_WORD.sub(" ", text.translate(_LATIN1_UPPER_HALF)).lower().strip()


def fuzzy_score(a: GoalOption, b: GoalOption) -> int:
    """thefuzz's ``token_set_ratio(a, b)``; a pair is scored as its text, ``str(pair)``, as thefuzz does."""
    first, second = (upstream_process(side if isinstance(side, str) else str(side)) for side in (a, b))
    return round(fuzz.token_set_ratio(first, second, processor=None))


def normalize_color(option: GoalOption) -> GoalOption:
    """The first colour word ``in`` the option, else the option: a substring of a value, but an element of
    a pair (only a name or value that is exactly a colour word replaces a pair)."""
    return next((color for color in COLORS if color in option), option)


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


def option_matches(chosen: Iterable[str], wanted: Iterable[GoalOption]) -> int:
    """How many goal options (pairs, or values for a human goal) some chosen value matches, both sides
    colour-normalised (see the module docstring: a pair is compared as its text)."""
    chosen_values = [normalize_color(value) for value in chosen]
    return sum(
        any(fuzzy_score(value, normalize_color(option)) > FUZZY_THRESHOLD for value in chosen_values)
        for option in wanted
    )


def product_can_match_every_option(product: Product, goal: Goal) -> bool:
    """Whether some choice of ``product``'s options (one value per option name, as the item page allows)
    gets every one of ``goal``'s option matches under upstream's rule. Not for 458 of the 6910 synthetic
    goals with their own product (see the module docstring): no purchase of it wins those."""
    wanted = goal.matched_options
    if not wanted:
        return True
    choices = [values for values in product.options.values() if values]
    return any(option_matches(combo, wanted) == len(wanted) for combo in itertools.product(*choices))


def some_purchase_wins(products: Iterable[Product], prices: Mapping[str, float], goal: Goal) -> bool:
    """Whether buying some product of ``products`` at its price in ``prices``, with some choice of its
    options, wins ``goal`` (reward 1). Tried exhaustively, so a goal this says no to is lost by every
    policy: under upstream's option rule, for instance, the 20 of the first 500 test goals that their own
    product cannot win are won by no other product of the catalogue either."""
    for product in products:
        if prices[product.asin] > goal.price_upper or type_parts(product, goal)[0] < 1.0:
            continue
        if attribute_matches(product, goal.attributes) < len(goal.attributes):
            continue
        if product_can_match_every_option(product, goal):
            return True
    return False


def score_purchase(product: Product, goal: Goal, price: float, chosen: Mapping[str, str]) -> RewardParts:
    """The reward for buying ``product`` at ``price`` with options ``chosen`` (name -> value) for ``goal``."""
    r_type, query_match, category_match, title_score = type_parts(product, goal)
    attributes = attribute_matches(product, goal.attributes)
    options = option_matches(chosen.values(), goal.matched_options)
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
