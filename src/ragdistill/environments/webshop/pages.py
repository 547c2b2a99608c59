"""Pages in text mode: what each page shows, what can be clicked on it, and the page an action leads to.

An observation is the page's visible text, clickable elements in ``[brackets]``, joined by `` [SEP] ``
(upstream's text mode, brackets added as in ReAct's WebShop prompts; a chosen option value shows as
``[[value]]``). Every page but the first starts with the instruction, as upstream's pages do.

- search: ``WebShop [SEP] Instruction: [SEP] <instruction> [SEP] [Search]``; action ``search[<text>]``.
- results: ``[Back to Search]``, ``Page N (Total results: M)``, ``[< Prev]`` (after page 1), ``[Next >]``
  (when more follow), then per product ``[<ASIN>]``, title, price.
- item: ``[Back to Search]``, ``[< Prev]`` (to the results page it came from), per option its name and
  ``[value]`` each, title, ``Price: …``, ``Rating: …``, ``[Description]``, ``[Features]``, ``[Reviews]``,
  ``[Buy Now]``. Clicking a value selects it (one per option name).
- sub-page (Description / Features / Reviews): ``[Back to Search]``, ``[< Prev]`` (to the item, options
  kept), then the text.

Available actions (for prompts, tests and scripted policies) are ``click[<clickable>]`` for each
clickable of the page; on the search page, where any text may be searched, the one listed is a search for
the instruction itself, so a policy without a query of its own still has a search to choose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ragdistill.environments.webshop.catalog import Catalog, Product

SEP = " [SEP] "
BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BUY_NOW = "Buy Now"
SUB_PAGES: tuple[str, ...] = ("Description", "Features", "Reviews")

PageKind = Literal["search", "results", "item", "sub"]


@dataclass(frozen=True)
class PageState:
    """Where the browser is. Immutable: an action builds the next state, an invalid one keeps this."""

    kind: PageKind = "search"
    query: str = ""
    results: tuple[str, ...] = ()
    page: int = 1
    asin: str | None = None
    chosen: tuple[tuple[str, str], ...] = ()
    sub_page: str | None = None

    @property
    def options(self) -> dict[str, str]:
        return dict(self.chosen)

    def choose(self, name: str, value: str) -> PageState:
        return replace(self, chosen=tuple({**self.options, name: value}.items()))


def shown_results(state: PageState, page_size: int) -> tuple[str, ...]:
    return state.results[(state.page - 1) * page_size : state.page * page_size]


def has_next(state: PageState, page_size: int) -> bool:
    return state.page * page_size < len(state.results)


def clickables(state: PageState, catalog: Catalog, page_size: int) -> list[str]:
    """What can be clicked on the page, as shown (case as displayed)."""
    if state.kind == "search":
        return []
    if state.kind == "results":
        buttons = [BACK_TO_SEARCH]
        buttons += [PREV_PAGE] if state.page > 1 else []
        buttons += [NEXT_PAGE] if has_next(state, page_size) else []
        return buttons + list(shown_results(state, page_size))
    if state.kind == "sub":
        return [BACK_TO_SEARCH, PREV_PAGE]
    product = catalog.by_asin[str(state.asin)]
    values = [value for values in product.options.values() for value in values]
    return [BACK_TO_SEARCH, PREV_PAGE, *dict.fromkeys(values), *SUB_PAGES, BUY_NOW]


def available_actions(state: PageState, catalog: Catalog, instruction: str, page_size: int) -> list[str]:
    if state.kind == "search":
        return [f"search[{instruction}]"]
    return [f"click[{name}]" for name in clickables(state, catalog, page_size)]


def render(state: PageState, catalog: Catalog, instruction: str, page_size: int) -> str:
    if state.kind == "search":
        return SEP.join(["WebShop", "Instruction:", instruction, "[Search]"])
    parts = ["Instruction:", instruction, f"[{BACK_TO_SEARCH}]"]
    if state.kind == "results":
        parts.append(f"Page {state.page} (Total results: {len(state.results)})")
        parts += [f"[{PREV_PAGE}]"] if state.page > 1 else []
        parts += [f"[{NEXT_PAGE}]"] if has_next(state, page_size) else []
        for asin in shown_results(state, page_size):
            product = catalog.by_asin[asin]
            parts += [f"[{asin}]", product.title, product.price_tag]
    else:
        product = catalog.by_asin[str(state.asin)]
        parts.append(f"[{PREV_PAGE}]")
        parts += item_text(product, state) if state.kind == "item" else sub_page_text(product, state.sub_page)
    return SEP.join(part.strip() for part in parts if part.strip())


def item_text(product: Product, state: PageState) -> list[str]:
    chosen = state.options
    parts: list[str] = []
    for name, values in product.options.items():
        parts.append(name)
        parts += [f"[[{value}]]" if chosen.get(name) == value else f"[{value}]" for value in values]
    parts += [product.title, f"Price: {product.price_tag}", f"Rating: {product.rating}"]
    return parts + [f"[{name}]" for name in SUB_PAGES] + [f"[{BUY_NOW}]"]


def sub_page_text(product: Product, sub_page: str | None) -> list[str]:
    if sub_page == "Description":
        return [product.description]
    if sub_page == "Features":
        return list(product.bullet_points) or ["No Features"]
    return [str(review.get(key, "")) for review in product.reviews for key in ("title", "score", "body")] or [
        "No Reviews"
    ]


def done_text(reward: float) -> str:
    return SEP.join(["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", f"{reward:.4g}"])
