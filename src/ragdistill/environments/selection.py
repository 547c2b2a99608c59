"""Task selection shared by every environment's lister: checked arguments and a round-robin over groups."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TypeVar

from ragdistill.environments.base import EnvError

T = TypeVar("T")


def check_selection(
    env_title: str, groups: Sequence[str], task_types: Sequence[str] | None, limit: int | None
) -> set[str] | None:
    """The wanted groups (None: all), after checking them and ``limit``; errors name the choices."""
    wanted = set(task_types) if task_types else None
    if wanted is not None and not wanted <= set(groups):
        raise EnvError(
            f"unknown {env_title} task type(s) {sorted(wanted - set(groups))}; choose from {tuple(groups)}"
        )
    if limit is not None and limit <= 0:
        raise EnvError(f"limit must be positive, got {limit}")
    return wanted


def round_robin(streams: Iterable[Iterator[T]], limit: int | None) -> list[T]:
    """One item of each stream in turn until all are spent or ``limit`` items are taken. Streams are
    read lazily, so a limit of 12 over six groups reads about two items of each."""
    alive = list(streams)
    taken: list[T] = []
    while alive and (limit is None or len(taken) < limit):
        for stream in list(alive):
            if limit is not None and len(taken) == limit:
                break
            item = next(stream, None)
            if item is None:
                alive.remove(stream)
            else:
                taken.append(item)
    return taken


def first(items: Iterable[T], limit: int | None) -> list[T]:
    return list(islice(items, limit))


def seeded_order(items: Iterable[T], seed: int, key: Callable[[T], str]) -> list[T]:
    """``items`` ordered by the sha256 of ``"<seed>:<key(item)>"``: a fixed pseudo-random permutation
    that depends on each item's own key only, so the order of two items never changes when others are
    added or left out, and the first N of a larger list are the first N of a smaller one."""
    return sorted(items, key=lambda item: hashlib.sha256(f"{seed}:{key(item)}".encode()).hexdigest())
