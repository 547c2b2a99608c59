"""What a mined WebShop hint looks like: product placeholders, prices as ``{price}``, no product ids."""

from __future__ import annotations

import re

from ragdistill.environments.profile import HintStyle

_PRICE = re.compile(
    r"\$\s?\d+(?:[.,]\d+)?|\b\d+(?:[.,]\d+)?\s*(?:dollars?|usd)\b|\busd\s?\d+(?:[.,]\d+)?", re.IGNORECASE
)
_ASIN = re.compile(r"\bB0[0-9A-Z]{8}\b")


def prices_as_placeholder(text: str) -> str:
    """ "$25", "25.99 dollars", "USD 30" → ``{price}``, so a hint about the budget survives validation."""
    return _PRICE.sub("{price}", text)


def names_product_id(text: str) -> bool:
    """True when ``text`` names a product ASIN (``B0`` and eight more letters or digits)."""
    return _ASIN.search(text) is not None


WEBSHOP_HINT_STYLE = HintStyle(
    description="WebShop, a shopping website where the goal is to buy a matching product",
    max_hints=2,
    placeholders=("item", "size", "color", "attribute", "material", "price"),
    examples=(
        "Verify {size} and {color} match requirements before selecting {item}.",
        "Check that the price is below {price} before clicking Buy Now.",
    ),
    verbs=(
        "Check",
        "Verify",
        "Ensure",
        "Search",
        "Select",
        "Click",
        "Buy",
        "Compare",
        "Choose",
        "Confirm",
        "Read",
        "Look",
        "Prefer",
        "Avoid",
        "Use",
        "Include",
        "Open",
        "Go",
        "Return",
        "Filter",
        "Stop",
        "Keep",
        "Try",
    ),
    generality_rule="it never names this episode's product, its id or its exact price (write {item}, {price})",
    episode_specific=names_product_id,
    rewrite=prices_as_placeholder,
)
