"""found 0.13's ``found.ext.nstore``: ``shale.found.nstore``'s functions and
handles (the same objects), plus found's helpers for checking an index set.

The flat ``shale.found.nstore`` stays for code written against found's
older layout (``from found import nstore``). The helpers compare index
positions as strings of digits, as found does: exact for up to 10 columns.
``NStore.indices`` holds the permutations they check::

    store = make("triples", ["app"], 3)
    ok([stringify(index) for index in store.indices], range(store.n))  # True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

from shale.found.nstore import (
    NStore,
    NStoreException,
    Variable,
    add,
    get,
    make,
    query,
    remove,
    select,
    var,
    where,
)

__all__ = [
    "NStore",
    "NStoreException",
    "Variable",
    "add",
    "bc",
    "combinations",
    "get",
    "is_permutation_prefix",
    "make",
    "ok",
    "query",
    "remove",
    "select",
    "stringify",
    "var",
    "where",
]


def bc(n: int, k: int) -> int:
    """The binomial coefficient C(n, k), but 0 when ``k >= n`` (found's
    definition); an nstore of ``n`` columns has C(n, n // 2) indices."""
    return math.comb(n, k) if k < n else 0


def stringify(iterable: Iterable[Any]) -> str:
    """The items' ``str`` forms, concatenated: ``(1, 2, 0)`` -> ``"120"``."""
    return "".join(str(item) for item in iterable)


def combinations(tab: Sequence[Any]) -> list[str]:
    """Every non-empty combination of ``tab``'s items, stringified, shortest
    first: the sets of bound positions a pattern can have."""
    return [
        stringify(combination)
        for size in range(1, len(tab) + 1)
        for combination in itertools.combinations(tab, size)
    ]


def is_permutation_prefix(combination: Iterable[Any], index: Iterable[Any]) -> bool:
    """Whether some ordering of ``combination`` starts ``index``: a pattern
    binding those positions can scan that index with one range read."""
    order = stringify(index)
    return any(
        order.startswith(stringify(permutation))
        for permutation in itertools.permutations(combination)
    )


def ok(solutions: Iterable[str], tab: Sequence[Any]) -> bool:
    """``True`` if the stringified indices ``solutions`` serve every pattern
    over the positions ``tab`` with one range read.

    Raises:
        NStoreException: a combination no index starts with (found raised
            a bare ``Exception`` with the same message).
    """
    indices = list(solutions)
    for combination in combinations(tab):
        if not any(is_permutation_prefix(combination, index) for index in indices):
            raise NStoreException(f"failed with combination={combination}")
    return True
