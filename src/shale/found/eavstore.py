"""found's ``eavstore`` (``from found import eavstore``) over
``shale.layers.eavstore``, with found's names, signatures and keys.

Differences from found, both bug fixes: ``remove`` and ``update`` also
delete the entity's index entries, so ``query`` never yields a removed or
changed entity; and ``get``/``query`` scan exactly one uid or one
``(key, value)``, never a longer string that starts with it and a NUL.
``create`` with an explicit ``uid`` that exists merges the attributes, as
found's did, but keeps the index in step with the values it replaces.

found 0.13's path for this module, ``shale.found.ext.eavstore``, re-exports
it with found's constants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import shale
from shale.found.transaction import Transaction, seam
from shale.layers import eavstore as layer

__all__ = ["EAVStore", "create", "get", "make", "query", "remove", "update"]


class EAVStore(NamedTuple):
    """found's handle; ``layer`` is the Shale store it drives."""

    name: str
    prefix_data: tuple[Any, ...]
    prefix_index: tuple[Any, ...]
    layer: layer.EAVStore


def make(name: str, prefix: Sequence[Any]) -> EAVStore:
    """A handle over the eavstore called ``name`` (for debugging) at ``prefix``.

    Unlike ``EAVStore.open`` it reads nothing, so the format version is
    neither checked nor recorded (found had none).
    """
    prefix = tuple(prefix)
    return EAVStore(name, (*prefix, layer.DATA), (*prefix, layer.INDEX), layer.EAVStore(prefix))


@contextmanager
def _writing(tx: Transaction) -> Iterator[shale.Transaction]:
    assert not tx.snapshot, "a snapshot transaction cannot write"
    with seam(tx) as core:
        before = core.approximate_size
        yield core
        tx.pointer.size += core.approximate_size - before


def _reader(tx: Transaction, core: shale.Transaction) -> layer.Reader:
    return core.snapshot if tx.snapshot else core


async def create(
    tx: Transaction,
    store: EAVStore,
    dict: Mapping[Any, Any],  # found's parameter name, kept for keyword callers
    uid: Any = None,
) -> Any:
    """Store ``dict`` and return its uid (a new ``uuid4`` unless given)."""
    with _writing(tx) as core:
        if uid is None:
            return await store.layer.create(core, dict)
        await store.layer.patch(core, uid, dict)
        return uid


async def get(tx: Transaction, store: EAVStore, uid: Any) -> dict[Any, Any]:
    """The dict stored as ``uid``, or ``{}``."""
    with seam(tx) as core:
        return await store.layer.get(_reader(tx, core), uid)


async def remove(tx: Transaction, store: EAVStore, uid: Any) -> None:
    """Remove the dict stored as ``uid`` and its index entries."""
    with _writing(tx) as core:
        await store.layer.remove(core, uid)


async def update(
    tx: Transaction,
    store: EAVStore,
    uid: Any,
    dict: Mapping[Any, Any],  # found's parameter name
) -> None:
    """Replace the dict stored as ``uid`` by ``dict``."""
    with _writing(tx) as core:
        await store.layer.update(core, uid, dict)


async def query(tx: Transaction, store: EAVStore, key: Any, value: Any) -> AsyncIterator[Any]:
    """The uids whose ``key`` is ``value``, in uid order (an async generator)."""
    with seam(tx) as core:
        async for uid in store.layer.query(_reader(tx, core), key, value):
            yield uid
