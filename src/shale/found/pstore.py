"""found's ``pstore`` (``from found import pstore``) over ``shale.layers.pstore``.

::

    store = pstore.make("articles", ["app", "search"])
    await pstore.index(tx, store, docuid, {"okvs": 2, "database": 42})
    await pstore.search(tx, store, ["database"], limit=13)   # [(docuid, 42), ...]

Keys follow found's layout (token dictionary, postings, one counter per
document) except that counters are not zstd-compressed and postings carry
``(count, length)`` where found stores ``b""``; ``docs/pstore.md`` lists
the bytes. Differences from found, each deliberate:

* ``search`` scores every candidate: found scores a random sample of 1,337
  when a keyword matches more documents, so its results vary between runs.
  Equal scores are ordered by packed docuid, not by completion order.
* Re-indexing a document replaces its postings (found kept the old ones, so
  the document still matched tokens it no longer holds); ``remove`` is new.
* A repeated keyword counts once (found added its count twice).
* Bad input raises ``PStoreException`` before anything is written (found
  defined it and never raised it); ``search(..., ranking="bm25")`` ranks by
  BM25 instead of raw counts.

found 0.13's path for this module, ``shale.found.ext.pstore``, re-exports
it with found's constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from shale.found.errors import BaseFoundException
from shale.found.transaction import Transaction, seam
from shale.layers import pstore as layer

__all__ = ["PStore", "PStoreException", "index", "make", "remove", "search"]


class PStoreException(BaseFoundException):
    """A bad argument to a pstore function; nothing was written.

    Subclasses ``BaseFoundException``, not ``FoundException``: it carries
    no FoundationDB error code, so a retry loop never retries it.
    """


class PStore(NamedTuple):
    """found's handle: its five fields, plus the Shale layer doing the work.

    ``tokens`` is the token dictionary's flattened prefix (found kept an
    nstore handle there).
    """

    name: str
    tokens: tuple[Any, ...]
    prefix_index: tuple[Any, ...]
    prefix_counters: tuple[Any, ...]
    pool: Any
    layer: layer.PStore


def make(name: str, prefix: Sequence[Any], pool: Any = None) -> PStore:
    """A handle on the pstore at ``prefix`` (a list or tuple); ``name`` is for
    debugging and ``pool`` is kept but unused, as in found."""
    if not isinstance(prefix, list | tuple):
        raise PStoreException(f"prefix must be a list or tuple, not {type(prefix).__name__}")
    items = tuple(prefix)
    try:
        handle = layer.PStore(items)
    except TypeError as exc:
        raise PStoreException(str(exc)) from exc
    return PStore(
        name,
        (*items, b"\x01"),
        (*items, b"\x02"),
        (*items, b"\x03"),
        pool,
        handle,
    )


async def index(tx: Transaction, store: PStore, docuid: Any, counter: Mapping[str, int]) -> None:
    """Index ``docuid`` with ``counter`` (str -> int > 0), replacing any
    earlier version of the document."""
    assert not tx.snapshot, "index is not allowed on a snapshot transaction"
    with seam(tx) as core:
        try:
            await store.layer.index(core, docuid, counter)
        except layer.PStoreInputError as exc:
            raise PStoreException(str(exc)) from exc


async def search(
    tx: Transaction,
    store: PStore,
    keywords: Sequence[str],
    limit: int = 13,
    *,
    ranking: layer.Ranking = "count",
) -> list[tuple[Any, float]]:
    """The ``limit`` best ``(docuid, score)`` among documents holding every
    keyword; the score is the sum of the keywords' counts (``ranking="count"``,
    found's) or BM25."""
    with seam(tx) as core:
        try:
            hits = await store.layer.search(
                core, keywords, limit=limit, ranking=ranking, snapshot=tx.snapshot
            )
        except layer.PStoreInputError as exc:
            raise PStoreException(str(exc)) from exc
    return [(hit.docuid, hit.score) for hit in hits]


async def remove(tx: Transaction, store: PStore, docuid: Any) -> bool:
    """Remove ``docuid`` from the index; whether it was there (not in found)."""
    assert not tx.snapshot, "remove is not allowed on a snapshot transaction"
    with seam(tx) as core:
        try:
            return await store.layer.remove(core, docuid)
        except layer.PStoreInputError as exc:
            raise PStoreException(str(exc)) from exc
