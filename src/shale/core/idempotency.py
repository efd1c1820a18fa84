"""Idempotency ids: how ``Database.run`` learns whether a commit whose reply
was lost was applied.

On an engine whose commits can end in ``CommitUnknownResult``
(``Capabilities.unknown_results``), each ``run()`` call draws one id and every
attempt's commit also writes it, in the same atomic commit, at::

    \\xff + pack(("idempotency",)) + id  ->  the commit's 10-byte versionstamp

so "was that commit applied?" becomes "is the id's key there?", a question
any later transaction can answer. An id is 8 bytes of big-endian
milliseconds since the epoch and 8 random bytes: ids sort by creation time,
which lets ``sweep_idempotency_ids`` drop the old ones with one range clear.
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING, Final

from shale import tuple as tuples
from shale.engines.base import CommitRequest, Mutation, MutationType
from shale.errors import UsageError

if TYPE_CHECKING:
    from shale.core.database import Database
    from shale.core.transaction import Transaction

__all__ = [
    "IDEMPOTENCY_PREFIX",
    "IDEMPOTENCY_RETENTION",
    "IDEMPOTENCY_TRUSTED",
    "ID_SIZE",
    "idempotency_applied",
    "idempotency_key",
    "new_id",
    "sweep_idempotency_ids",
    "tag_commit",
]

IDEMPOTENCY_PREFIX: Final = b"\xff" + tuples.pack(("idempotency",))
"""``\\xff + pack(("idempotency",))``: where the ids of recent commits live."""

IDEMPOTENCY_RETENTION: Final = 120.0
"""Seconds an id is kept (the server sweeps older ones). Every commit
stores one, so this bounds what they cost: ids of two minutes of commits.
``Database.run`` relies on an id only within ``IDEMPOTENCY_TRUSTED``
seconds of its start, leaving the rest as margin for clocks and sweeps."""

IDEMPOTENCY_TRUSTED: Final = IDEMPOTENCY_RETENTION / 2
"""Seconds after its start during which ``run()`` resolves an unknown
result by its id; later, it raises ``CommitUnknownResult``."""

ID_SIZE: Final = 16

_TIME = struct.Struct(">Q")
_STAMP_AT_START: Final = b"\x00" * 10 + struct.pack("<I", 0)
"""A versionstamped value that is the versionstamp alone (offset 0)."""


def _millis(at: float) -> bytes:
    return _TIME.pack(int(at * 1000))


def new_id(at: float | None = None) -> bytes:
    """A fresh 16-byte id stamped with ``at`` (default: now, ``time.time()``)."""
    return _millis(time.time() if at is None else at) + os.urandom(ID_SIZE - _TIME.size)


def idempotency_key(ident: bytes) -> bytes:
    """The system key that records ``ident``."""
    if type(ident) is not bytes or len(ident) != ID_SIZE:
        raise UsageError(f"an idempotency id is {ID_SIZE} bytes, not {ident!r}")
    return IDEMPOTENCY_PREFIX + ident


def tag_commit(request: CommitRequest, ident: bytes) -> None:
    """Make ``request`` also record ``ident``.

    The key goes into the write conflict set too, because another attempt of
    the same ``run()`` reads it: that attempt must conflict with a late
    landing of this one, or both would apply. The caller adds the key to the
    read set, which makes the converse hold.
    """
    key = idempotency_key(ident)
    stamp: Mutation = (MutationType.SET_VERSIONSTAMPED_VALUE, key, _STAMP_AT_START)
    request.mutations = [*request.mutations, stamp]
    request.write_keys = request.write_keys | {key}
    request.versionstamped = True


async def idempotency_applied(tr: Transaction, ident: bytes) -> bool:
    """Whether a commit that recorded ``ident`` is visible to ``tr``.

    The read is a normal one, so it conflicts with a commit recording
    ``ident`` that lands after ``tr``'s read version: ``tr`` then fails
    rather than acting on a stale "not applied".
    """
    access, tr.access_system_keys = tr.access_system_keys, True
    try:
        return await tr.get(idempotency_key(ident)) is not None
    finally:
        tr.access_system_keys = access


async def sweep_idempotency_ids(db: Database, older_than: float = IDEMPOTENCY_RETENTION) -> int:
    """Remove the ids created more than ``older_than`` seconds ago, in one
    transaction; return the cutoff, in milliseconds since the epoch.

    Clearing an id forgets whether its commit was applied, so a ``run()``
    still retrying one would run its body again: ``older_than`` must exceed
    the longest a ``run()`` keeps retrying.
    """
    if older_than < 0:
        raise UsageError(f"older_than must be >= 0 seconds, not {older_than!r}")
    cutoff = _millis(time.time() - older_than)

    async def sweep(tr: Transaction) -> None:
        tr.access_system_keys = True
        # An idle server sweeps nothing: no commit, no fsync, no new version.
        if await tr.snapshot.get_range(IDEMPOTENCY_PREFIX, IDEMPOTENCY_PREFIX + cutoff, limit=1):
            tr.clear_range(IDEMPOTENCY_PREFIX, IDEMPOTENCY_PREFIX + cutoff)

    # Clearing twice is clearing once: engines that tag no ids may retry it too.
    await db.run(sweep, idempotent=True)
    return int(_TIME.unpack(cutoff)[0])
