"""WebShop's constants: names, data files, seeds, step cap, page size, splits and categories.

A leaf, so the package's modules and its face (``__init__``) share them without importing each other.
"""

from __future__ import annotations

ENV_NAME = "webshop"
INVALID_OBSERVATION = "Invalid action!"
"""What the environment answers to an action that is not available on the current page."""

PRODUCTS_FILE = "webshop/products_1000.json.xz"
INSTRUCTIONS_FILE = "webshop/items_ins_v2_1000.json"

PRICE_SEED = 233
"""Seeds the one random stream that draws product prices, then the goals' price bounds (upstream's
``random.seed(233)`` before loading)."""
SHUFFLE_SEED = 233
"""Fixed seed of the one shuffle of the goal list (upstream's ``random.seed(233); random.shuffle``)."""

DEFAULT_MAX_STEPS = 15
SEARCH_RESULTS = 50
PAGE_SIZE = 10
"""Results per page upstream. ``page_size=3`` gives the paper's view: only the top 3 per page."""

SPLIT_RANGES: dict[str, tuple[int, int | None]] = {
    "test": (0, 500),
    "eval": (500, 1500),
    "train": (1500, None),
}
HUMAN_SPLIT = "human"
SPLITS: tuple[str, ...] = (*SPLIT_RANGES, HUMAN_SPLIT)
CATEGORIES: tuple[str, ...] = ("beauty", "electronics", "fashion", "garden", "grocery")
"""Task types: the product's ``category``."""
