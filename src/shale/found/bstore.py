"""found's ``bstore`` (``from found import bstore``) over
``shale.layers.bstore``, with found's names, signatures and keys.

Differences from found: an empty blob reads back as ``b""`` (found raised
``BStoreException``), and each ``get_or_create`` counts a reference in a
key found does not use, so ``shale.layers.bstore.BStore.delete`` can free
a blob once nobody holds it. Larger-than-transaction blobs, streaming and
deletion are in the Shale API only. found 0.13's path for this module,
``shale.found.ext.bstore``, re-exports it with found's constants.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from shale.found.errors import BaseFoundException
from shale.found.transaction import Transaction, seam
from shale.layers import bstore as layer

__all__ = ["BStore", "BStoreException", "get", "get_or_create", "make"]


class BStoreException(BaseFoundException):
    """found's bstore error: ``get`` of a uid that holds no blob."""


class BStore(NamedTuple):
    """found's handle; ``layer`` is the Shale store it drives."""

    name: str
    prefix_hash: tuple[Any, ...]
    prefix_blob: tuple[Any, ...]
    layer: layer.BStore


def make(name: str, prefix: Sequence[Any]) -> BStore:
    """A handle over the bstore called ``name`` (for debugging) at ``prefix``.

    It reads nothing, so the format version is neither checked nor
    recorded (found had none). found needed a list here; any sequence works.
    """
    prefix = tuple(prefix)
    return BStore(name, (*prefix, layer.HASH), (*prefix, layer.CHUNK), layer.BStore(prefix))


async def get_or_create(tx: Transaction, store: BStore, blob: bytes) -> uuid.UUID:
    """The uid of ``blob``, stored unless the same bytes already are."""
    assert not tx.snapshot, "a snapshot transaction cannot write"
    with seam(tx) as core:
        before = core.approximate_size
        uid = await store.layer.get_or_create(core, blob)
        tx.pointer.size += core.approximate_size - before
    return uid


async def get(tx: Transaction, store: BStore, uid: uuid.UUID) -> bytes:
    """The blob stored as ``uid``.

    Raises:
        BStoreException: nothing is stored as ``uid``.
    """
    with seam(tx) as core:
        try:
            return await store.layer.get(core.snapshot if tx.snapshot else core, uid)
        except layer.BlobNotFound as exc:
            # Not a ShaleError, so the seam lets it through untranslated.
            raise BStoreException(f"BLOB should be in database: uid={uid}") from exc
