"""Search: BM25 (bm25s) over each product's text, the top ``SEARCH_RESULTS`` products that share a word
with the query, best first.

Upstream searches a Lucene index (pyserini's English analyzer: lower case, stop words, Porter stems).
Ours lower-cases, splits on word characters and drops bm25s's English stop words, without stemming (no
stemmer ships with the project's packages), so rankings differ from upstream's in detail; the expert's
title queries and the instruction-query hit rates (``ragdistill env check webshop``) measure ours.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from ragdistill.bm25 import import_bm25s
from ragdistill.environments.webshop.catalog import Catalog, load_catalog_at
from ragdistill.environments.webshop.constants import SEARCH_RESULTS

_WORD = re.compile(r"\w+")


def tokens(text: str, stopwords: frozenset[str]) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in stopwords]


class ProductSearch:
    """One BM25 index over a catalogue; :meth:`search` returns asins."""

    def __init__(self, catalog: Catalog) -> None:
        bm25s = import_bm25s()
        from bm25s.stopwords import STOPWORDS_EN

        self._stopwords = frozenset(STOPWORDS_EN)
        self._asins = [product.asin for product in catalog.products]
        self._model: Any = bm25s.BM25()
        corpus = [tokens(product.search_text(), self._stopwords) or ["\x00"] for product in catalog.products]
        self._model.index(corpus, show_progress=False)

    def search(self, query: str, k: int = SEARCH_RESULTS) -> list[str]:
        """The asins of the top ``k`` products sharing a word with ``query`` (ties keep catalogue order)."""
        query_tokens = tokens(query, self._stopwords)
        if not query_tokens:
            return []
        scores = np.asarray(self._model.get_scores(query_tokens), dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:k]
        return [self._asins[int(i)] for i in order if scores[i] > 0]


def search_engine(catalog: Catalog) -> ProductSearch:
    """The catalogue's index, built once per process (about a second for 1000 products)."""
    return _search_engine(catalog.data_dir, catalog.seed)


@lru_cache(maxsize=4)
def _search_engine(data_dir: str, seed: int) -> ProductSearch:
    return ProductSearch(load_catalog_at(data_dir, seed))
