"""WebShop (Yao et al., NeurIPS 2022) in text mode over the 1000-product catalogue, behind :class:`Env`.

Our own implementation of upstream's behaviour (no Java, no Lucene): ``catalog`` loads the products and
draws their prices, ``goals`` builds the 6910 synthetic goals (and the 13 human ones), ``search`` is BM25
over each product's text, ``pages`` renders the pages and lists the actions, ``reward`` scores a purchase,
``nouns`` tags the nouns the reward compares, ``env`` plays an episode; ``constants`` holds the names,
seeds and splits they share. This module stays light: the constants and lazy entry points only, so
importing the package (the registry does) loads no data and no library.

Goal order and splits: the goal list is built in catalogue order and shuffled once with ``SHUFFLE_SEED``
(233), as upstream does; goal ``i`` of that order is upstream's session ``fixed_i``. Indices 0-499 are
``test`` (the paper's "first 100 test goals" are 0-99), 500-1499 ``eval``, the rest ``train``. The 13
human goals are the split ``human``. Task ids are ``webshop-<split>-<i>`` with ``i`` that index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragdistill.environments.webshop.constants import (
    CATEGORIES,
    DEFAULT_MAX_STEPS,
    ENV_NAME,
    HUMAN_SPLIT,
    INSTRUCTIONS_FILE,
    INVALID_OBSERVATION,
    PAGE_SIZE,
    PRICE_SEED,
    PRODUCTS_FILE,
    SEARCH_RESULTS,
    SHUFFLE_SEED,
    SPLIT_RANGES,
    SPLITS,
)

if TYPE_CHECKING:
    from ragdistill.environments.base import Env, TaskInfo


__all__ = [
    "CATEGORIES",
    "DEFAULT_MAX_STEPS",
    "ENV_NAME",
    "HUMAN_SPLIT",
    "INSTRUCTIONS_FILE",
    "INVALID_OBSERVATION",
    "PAGE_SIZE",
    "PRICE_SEED",
    "PRODUCTS_FILE",
    "SEARCH_RESULTS",
    "SHUFFLE_SEED",
    "SPLITS",
    "SPLIT_RANGES",
    "check_report",
    "environment_version",
    "list_tasks",
    "make_env",
]


def make_env(**kwargs: Any) -> Env:
    """The registry's factory (importable by reference for the pool's workers): a ``WebShopEnv``."""
    from ragdistill.environments.webshop.env import WebShopEnv

    return WebShopEnv(**kwargs)


def list_tasks(
    data_dir: Path | str = "data",
    split: str = "test",
    limit: int | None = None,
    task_types: Sequence[str] | None = None,
    balanced: bool = False,
) -> list[TaskInfo]:
    """See :func:`ragdistill.environments.webshop.env.list_tasks`."""
    from ragdistill.environments.webshop.env import list_tasks as lister

    return lister(data_dir=data_dir, split=split, limit=limit, task_types=task_types, balanced=balanced)


def environment_version(data_dir: Path | str = "data") -> dict[str, str]:
    """See :func:`ragdistill.environments.webshop.env.environment_version`."""
    from ragdistill.environments.webshop.env import environment_version as version

    return version(data_dir)


def check_report(**kwargs: Any) -> dict[str, Any]:
    """See :func:`ragdistill.environments.webshop.env.check_report`."""
    from ragdistill.environments.webshop.env import check_report as report

    return report(**kwargs)
