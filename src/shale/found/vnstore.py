"""found's ``found.ext.vnstore`` API over ``shale.layers.vnstore``.

Functions take a found ``Transaction`` and the handle ``make`` returns, as
in found. Errors of the layer come out as ``VNStoreException``; Shale's
errors as ``FoundException`` codes (through ``seam``). Differences from
found, each a fix (``docs/vnstore.md``):

- a change's significance is the commit versionstamp of the transaction
  that applied it (a ``Versionstamp``), not a client uuid7, so history is
  in commit order;
- ``change_create`` leaves the new change active: ``add`` works without
  ``change_continue``;
- editing an applied change, applying or editing an unknown change, a
  wrong number of items, and ``add``/``remove`` with no active change raise
  ``VNStoreException`` instead of corrupting history, passing silently or
  raising ``KeyError``/``AssertionError``;
- ``select`` yields each live tuple once;
- ``ask``/``select``/``where``/``query`` take ``as_of=changeid``.

found 0.13's path for this module is ``shale.found.ext.vnstore``; found's
web UI helpers are ``shale.found.ext.vnstore.server``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, NoReturn
from uuid import UUID

import shale
from shale.found.errors import BaseFoundException
from shale.found.transaction import Transaction, seam
from shale.layers.vnstore import Change, Variable, VNStore, VNStoreError, var

__all__ = [
    "VNStore",
    "VNStoreException",
    "Variable",
    "add",
    "ask",
    "change_apply",
    "change_changes",
    "change_continue",
    "change_create",
    "change_get",
    "change_list",
    "change_message",
    "get",
    "make",
    "query",
    "remove",
    "select",
    "var",
    "where",
]

# The key found's add/remove read; found's change_create wrote the other
# (its bug), kept too for code that reads it.
_ACTIVE: Final = "_vnstore_changeid"
_ACTIVE_FOUND_BUG: Final = "vnstore_changeid"


class VNStoreException(BaseFoundException):
    """A misuse of the vnstore; the Shale error is ``__cause__``."""


@contextmanager
def _layer(tx: Transaction, vn: VNStore) -> Iterator[shale.Transaction]:
    assert isinstance(tx, Transaction), "tx must be a found.Transaction"
    assert isinstance(vn, VNStore), "vnstore must be a handle from vnstore.make"
    with seam(tx) as core:
        before = core.approximate_size
        try:
            yield core
        except VNStoreError as exc:
            raise VNStoreException(str(exc)) from exc
        # found's get_approximate_size counts the bytes found's functions write.
        tx.pointer.size += core.approximate_size - before


def make(name: str, subspace: Sequence[Any], items: Sequence[str]) -> VNStore:
    """A handle on the vnstore at ``subspace`` (a list or tuple) whose
    tuples have one item per name in ``items``; nothing is read or written."""
    try:
        return VNStore(tuple(subspace), items, name=name)
    except VNStoreError as exc:
        raise VNStoreException(str(exc)) from exc


def _as_dict(change: Change) -> dict[str, Any]:
    return {
        "type": "change",
        "significance": change.significance,
        "message": change.message,
        "uid": change.uid,
    }


async def change_create(tx: Transaction, vn: VNStore) -> UUID:
    """A new change, active for the rest of the transaction."""
    with _layer(tx, vn) as core:
        cid = await vn.change_create(core)
    tx.vars[_ACTIVE] = tx.vars[_ACTIVE_FOUND_BUG] = cid
    return cid


def change_continue(tx: Transaction, vn: VNStore, changeid: UUID) -> None:
    """Make ``changeid`` the active change (checked at the next ``add``/``remove``)."""
    assert isinstance(vn, VNStore), "vnstore must be a handle from vnstore.make"
    tx.vars[_ACTIVE] = changeid


async def change_message(tx: Transaction, vn: VNStore, changeid: UUID, message: str) -> None:
    with _layer(tx, vn) as core:
        await vn.change_message(core, changeid, message)


async def change_get(tx: Transaction, vn: VNStore, changeid: UUID) -> dict[str, Any] | None:
    """``{"type", "significance", "message", "uid"}``, or ``None``."""
    with _layer(tx, vn) as core:
        change = await vn.change_get(core, changeid)
    return None if change is None else _as_dict(change)


async def change_list(tx: Transaction, vn: VNStore) -> list[dict[str, Any]]:
    """Every change as ``change_get`` returns it, ordered by id."""
    with _layer(tx, vn) as core:
        return [_as_dict(change) for change in await vn.change_list(core)]


async def change_changes(tx: Transaction, vn: VNStore, changeid: UUID) -> list[dict[str, Any]]:
    """One dict per event of ``changeid``: the columns and ``"alive?"``."""
    with _layer(tx, vn) as core:
        events = await vn.change_changes(core, changeid)
    return [{**dict(zip(vn.columns, e.items, strict=True)), "alive?": e.alive} for e in events]


async def change_apply(tx: Transaction, vn: VNStore, changeid: UUID) -> None:
    """Apply ``changeid``; applying it again does nothing."""
    with _layer(tx, vn) as core:
        await vn.change_apply(core, changeid)


async def ask(tx: Transaction, vn: VNStore, *items: Any, as_of: UUID | None = None) -> bool:
    with _layer(tx, vn) as core:
        return await vn.ask(core, *items, as_of=as_of)


async def add(tx: Transaction, vn: VNStore, *items: Any, value: bytes = b"") -> bool:
    """Add ``items`` in the active change; returns ``True`` as found does."""
    with _layer(tx, vn) as core:
        await vn.add(core, *items, value=value, change=tx.vars.get(_ACTIVE))
    return True


async def remove(tx: Transaction, vn: VNStore, *items: Any) -> bool:
    """Remove ``items`` in the active change; ``False`` if there was nothing to remove."""
    with _layer(tx, vn) as core:
        return await vn.remove(core, *items, change=tx.vars.get(_ACTIVE))


async def select(
    tx: Transaction,
    vn: VNStore,
    *pattern: Any,
    seed: dict[str, Any] | None = None,
    as_of: UUID | None = None,
) -> AsyncIterator[dict[str, Any]]:
    with _layer(tx, vn) as core:
        async for bindings in vn.select(core, *pattern, seed=seed, as_of=as_of):
            yield bindings


async def where(
    tx: Transaction,
    vn: VNStore,
    iterator: AsyncIterable[dict[str, Any]],
    *pattern: Any,
    as_of: UUID | None = None,
) -> AsyncIterator[dict[str, Any]]:
    with _layer(tx, vn) as core:
        async for bindings in vn.where(core, iterator, *pattern, as_of=as_of):
            yield bindings


async def query(
    tx: Transaction,
    vn: VNStore,
    pattern: Sequence[Any],
    *patterns: Sequence[Any],
    as_of: UUID | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """A coroutine, as in found: ``out = await vnstore.query(...)``."""
    out = select(tx, vn, *pattern, as_of=as_of)
    for other in patterns:
        out = where(tx, vn, out, *other, as_of=as_of)
    return out


async def get(tx: Transaction, *items: Any) -> NoReturn:
    """Not implemented, as in found."""
    raise NotImplementedError("vnstore.get is not implemented (as in found)")
