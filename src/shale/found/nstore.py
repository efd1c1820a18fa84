"""found's ``found.ext.nstore`` over ``shale.layers.nstore``.

``from shale.found import nstore`` replaces ``from found.ext import nstore``:
same names, same signatures, same keys in the database. The work is done
by ``shale.layers.nstore.NStore``; this module gives it found's transaction
handle and found's exceptions.

Differences from found (``docs/nstore.md`` has the reasons):

* scans use exact tuple ranges, so a pattern ending in ``"title"`` no
  longer matches ``"title\\x00x"`` (found's ``next_prefix`` ranges did);
* an item holding an incomplete ``Versionstamp`` is written with
  ``set_versionstamped_key`` (found stored the placeholder literally);
* ``add`` and ``remove`` read index 0's key (the layer's counts must know
  whether the tuple exists), so they add a read conflict on that key;
* a variable repeated in a pattern must match the same item twice, and a
  seed's values constrain the pattern (found let the last one win);
* bad arguments raise ``NStoreException`` instead of ``AssertionError``.

``query`` joins the patterns left to right, as found does, so results come
in found's order; ``NStore.query`` in ``shale.layers`` plans the order.

found 0.13's path for this module, ``shale.found.ext.nstore``, re-exports
it with found's index-set helpers (``bc``, ``ok``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import shale
from shale.found.errors import BaseFoundException
from shale.found.transaction import Transaction, seam
from shale.layers.nstore import NStore, NStoreError, Variable, var

__all__ = [
    "NStore",
    "NStoreException",
    "Variable",
    "add",
    "get",
    "make",
    "query",
    "remove",
    "select",
    "var",
    "where",
]


class NStoreException(BaseFoundException):
    """Bad arguments to an nstore function: a wrong number of items, a
    variable where an item must be known. ``__cause__`` is Shale's
    ``NStoreError``. Not a ``FoundException``: it has no error code."""


@contextmanager
def _guard(tx: Transaction) -> Iterator[shale.Transaction]:
    """The Shale transaction of ``tx``; the layer's own errors become
    ``NStoreException``, the core's become ``FoundException`` codes."""
    assert isinstance(tx, Transaction), "tx must be a found.Transaction"
    with seam(tx) as core:
        try:
            yield core
        except NStoreError as exc:
            raise NStoreException(str(exc)) from exc


def make(name: str, prefix: Sequence[Any], n: int) -> NStore:
    """A handle on the ``n``-column store under ``prefix`` (a tuple or a
    list of tuple items); ``name`` only shows in messages."""
    try:
        return NStore(tuple(prefix), n, name=name)
    except NStoreError as exc:
        raise NStoreException(str(exc)) from exc


async def add(tx: Transaction, nstore: NStore, *items: Any, value: bytes = b"") -> None:
    """Store the tuple ``items`` with ``value``."""
    with _guard(tx) as core:
        before = core.approximate_size
        await nstore.add(core, *items, value=value)
        tx.pointer.size += core.approximate_size - before


async def remove(tx: Transaction, nstore: NStore, *items: Any) -> None:
    """Delete the tuple ``items`` if it is there."""
    with _guard(tx) as core:
        before = core.approximate_size
        await nstore.remove(core, *items)
        tx.pointer.size += core.approximate_size - before


async def get(tx: Transaction, nstore: NStore, *items: Any) -> bytes | None:
    """The value stored with ``items``, or ``None``."""
    with _guard(tx) as core:
        return await nstore.get(core, *items, snapshot=tx.snapshot)


async def select(
    tx: Transaction, nstore: NStore, *pattern: Any, seed: Mapping[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The bindings of ``pattern``'s variables, in the scanned index's order."""
    with _guard(tx) as core:
        async for binding in nstore.select(core, *pattern, seed=seed, snapshot=tx.snapshot):
            yield binding


async def where(
    tx: Transaction, nstore: NStore, iterator: AsyncIterable[Mapping[str, Any]], *pattern: Any
) -> AsyncIterator[dict[str, Any]]:
    """``select(pattern, seed=b)`` for each binding ``b`` of ``iterator``."""
    with _guard(tx) as core:
        async for binding in nstore.where(core, iterator, *pattern, snapshot=tx.snapshot):
            yield binding


def query(
    tx: Transaction, nstore: NStore, pattern: Sequence[Any], *patterns: Sequence[Any]
) -> AsyncIterator[dict[str, Any]]:
    """The bindings matching every pattern, joined left to right; iterate
    the result directly (it is not a coroutine)."""
    out = select(tx, nstore, *pattern)
    for other in patterns:
        out = where(tx, nstore, out, *other)
    return out
