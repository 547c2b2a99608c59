"""The product catalogue: products as upstream's ``load_products`` leaves them, and their drawn prices.

Price of a product (upstream ``generate_product_prices``): 100.0 when ``pricing`` is empty, its value
when it has one, otherwise ``uniform(first, second)``, drawn in catalogue order from one
``random.Random(seed)``. That stream then goes on to draw the goals' price bounds (see ``goals``), so the
catalogue keeps its state after the prices.
"""

from __future__ import annotations

import json
import lzma
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ragdistill.environments.base import EnvError
from ragdistill.environments.webshop.constants import INSTRUCTIONS_FILE, PRICE_SEED, PRODUCTS_FILE


@dataclass(frozen=True)
class Product:
    asin: str
    name: str
    title: str
    description: str
    bullet_points: tuple[str, ...]
    price_tag: str
    """What the pages show (``$12.99`` or ``$12.99 to $15.99``); the reward uses the drawn price."""
    pricing: tuple[float, ...]
    options: dict[str, tuple[str, ...]]
    attributes: tuple[str, ...]
    category: str
    query: str
    product_category: str
    rating: str
    reviews: tuple[dict[str, Any], ...] = ()

    def search_text(self) -> str:
        """What search indexes: title, description, bullet points, options and attributes."""
        options = ", ".join(f"{name}: {' '.join(values)}" for name, values in self.options.items())
        return " ".join(
            [self.title, self.description, " ".join(self.bullet_points), options, " ".join(self.attributes)]
        )

    def option_name_of(self, value: str) -> str | None:
        """The option a value belongs to (the last one listing it, as upstream's radio map keeps)."""
        found = None
        for name, values in self.options.items():
            if value in values:
                found = name
        return found


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]
    by_asin: dict[str, Product]
    prices: dict[str, float]
    data_dir: str
    seed: int
    rng_state_after_prices: tuple[Any, ...] = field(repr=False)
    instructions: dict[str, dict[str, Any]] = field(repr=False)
    """``items_ins_v2_1000.json``: per asin ``attributes`` and, for goal products, ``instruction`` and
    ``instruction_attributes``."""
    human_instructions: dict[str, list[dict[str, Any]]] = field(repr=False)


def draw_price(pricing: tuple[float, ...], rng: random.Random) -> float:
    if not pricing:
        return 100.0
    if len(pricing) == 1:
        return pricing[0]
    return rng.uniform(pricing[0], pricing[1])


def product_of(raw: dict[str, Any]) -> Product:
    return Product(
        asin=str(raw["asin"]),
        name=str(raw["name"]),
        title=str(raw["Title"]),
        description=str(raw.get("Description") or ""),
        bullet_points=tuple(str(point) for point in raw.get("BulletPoints") or []),
        price_tag=str(raw.get("Price") or "$100.0"),
        pricing=tuple(float(price) for price in raw.get("pricing") or []),
        options={
            str(name): tuple(str(v) for v in values) for name, values in (raw.get("options") or {}).items()
        },
        attributes=tuple(str(attribute) for attribute in raw.get("Attributes") or []),
        category=str(raw["category"]),
        query=str(raw["query"]).lower().strip(),
        product_category=str(raw.get("product_category") or ""),
        rating=str(raw.get("Rating", "N.A.")),
        reviews=tuple(raw.get("Reviews") or []),
    )


def data_files(data_dir: Path | str) -> tuple[Path, Path]:
    products, instructions = Path(data_dir) / PRODUCTS_FILE, Path(data_dir) / INSTRUCTIONS_FILE
    for path in (products, instructions):
        if not path.is_file():
            raise EnvError(
                f"WebShop data not found: no file {path}; install it with "
                f"`ragdistill data setup --mirror ../shared/data --only webshop --data-dir {data_dir}`"
            )
    return products, instructions


def load_catalog(data_dir: Path | str = "data", seed: int = PRICE_SEED) -> Catalog:
    """The catalogue under ``data_dir``, loaded once per process and seed."""
    return load_catalog_at(str(Path(data_dir).resolve()), seed)


@lru_cache(maxsize=4)
def load_catalog_at(data_dir: str, seed: int) -> Catalog:
    products_path, instructions_path = data_files(data_dir)
    try:
        raw_products = json.loads(lzma.decompress(products_path.read_bytes()))
        instructions = json.loads(instructions_path.read_text())
    except (OSError, ValueError, lzma.LZMAError) as error:
        raise EnvError(f"cannot read the WebShop data under {data_dir}: {error}") from error
    products = tuple(product_of(raw) for raw in raw_products)
    rng = random.Random(seed)
    prices = {product.asin: draw_price(product.pricing, rng) for product in products}
    return Catalog(
        products=products,
        by_asin={product.asin: product for product in products},
        prices=prices,
        data_dir=data_dir,
        seed=seed,
        rng_state_after_prices=rng.getstate(),
        instructions=instructions,
        human_instructions={
            str(raw["asin"]): list(raw["instructions"]) for raw in raw_products if raw.get("instructions")
        },
    )
