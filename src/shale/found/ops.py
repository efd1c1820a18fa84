"""found's operations on a transaction: reads, writes, range queries, key
selectors, atomic operations, versionstamps, watches and conflict ranges.

Every function takes a found ``Transaction`` first and calls the Shale
transaction inside ``seam``, so Shale's errors surface as
``FoundException`` codes. Several names shadow builtins (``set``, ``max``,
``min``) because found's API has them; this module therefore never uses
those builtins.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import shale
from shale.core.selectors import KeySelector
from shale.core.transaction import strinc
from shale.errors import ReadVersionError, ShaleError, TransactionStateError, UsageError
from shale.found.errors import (
    CLIENT_INVALID_OPERATION,
    EXACT_MODE_WITHOUT_LIMITS,
    NO_COMMIT_VERSION,
    READ_VERSION_ALREADY_SET,
    TRANSACTION_CANCELLED,
    VERSION_INVALID,
    FoundException,
    translate,
)
from shale.found.transaction import Transaction, seam

__all__ = [
    "CONFLICT_RANGE_TYPE_READ",
    "CONFLICT_RANGE_TYPE_WRITE",
    "MUTATION_ADD",
    "MUTATION_APPEND_IF_FITS",
    "MUTATION_BIT_AND",
    "MUTATION_BIT_OR",
    "MUTATION_BIT_XOR",
    "MUTATION_BYTE_MAX",
    "MUTATION_BYTE_MIN",
    "MUTATION_COMPARE_AND_CLEAR",
    "MUTATION_MAX",
    "MUTATION_MIN",
    "MUTATION_SET_VERSIONSTAMPED_KEY",
    "MUTATION_SET_VERSIONSTAMPED_VALUE",
    "STREAMING_MODE_EXACT",
    "STREAMING_MODE_ITERATOR",
    "STREAMING_MODE_LARGE",
    "STREAMING_MODE_MEDIUM",
    "STREAMING_MODE_SERIAL",
    "STREAMING_MODE_SMALL",
    "STREAMING_MODE_WANT_ALL",
    "add",
    "add_conflict_range",
    "append_if_fits",
    "bit_and",
    "bit_or",
    "bit_xor",
    "byte_max",
    "byte_min",
    "clear",
    "compare_and_clear",
    "estimated_size_bytes",
    "get",
    "get_addresses_for_key",
    "get_client_version",
    "get_key",
    "get_range_split_points",
    "get_versionstamp",
    "gt",
    "gte",
    "lt",
    "lte",
    "max",
    "min",
    "next_prefix",
    "query",
    "read_version",
    "set",
    "set_read_version",
    "set_versionstamped_key",
    "set_versionstamped_value",
    "watch",
]

# FoundationDB's StreamingMode values. Shale streams every range in growing
# batches; a mode only chooses the first batch's size (WANT_ALL reads the
# whole range at once, EXACT exactly ``limit``).
STREAMING_MODE_WANT_ALL: Final = -2
STREAMING_MODE_ITERATOR: Final = -1
STREAMING_MODE_EXACT: Final = 0
STREAMING_MODE_SMALL: Final = 1
STREAMING_MODE_MEDIUM: Final = 2
STREAMING_MODE_LARGE: Final = 3
STREAMING_MODE_SERIAL: Final = 4

_FIRST_BATCH: Final = {
    STREAMING_MODE_ITERATOR: 64,
    STREAMING_MODE_SMALL: 32,
    STREAMING_MODE_MEDIUM: 256,
    STREAMING_MODE_LARGE: 2048,
    STREAMING_MODE_SERIAL: 16384,
}

CONFLICT_RANGE_TYPE_READ: Final = 0
CONFLICT_RANGE_TYPE_WRITE: Final = 1

# FoundationDB's MutationType codes of the atomic operations below; found
# keeps them in found.base. Informational: each operation is its own function.
MUTATION_ADD: Final = 2
MUTATION_BIT_AND: Final = 6
MUTATION_BIT_OR: Final = 7
MUTATION_BIT_XOR: Final = 8
MUTATION_APPEND_IF_FITS: Final = 9
MUTATION_MAX: Final = 12
MUTATION_MIN: Final = 13
MUTATION_SET_VERSIONSTAMPED_KEY: Final = 14
MUTATION_SET_VERSIONSTAMPED_VALUE: Final = 15
MUTATION_BYTE_MIN: Final = 16
MUTATION_BYTE_MAX: Final = 17
MUTATION_COMPARE_AND_CLEAR: Final = 20


def _check(tx: Transaction) -> None:
    assert isinstance(tx, Transaction), "tx must be a found.Transaction"


def _count(tx: Transaction, size: int) -> None:
    tx.pointer.size += size


# -- key selectors ---------------------------------------------------------------
# found's offsets are raw: they replace the default offset, they are not
# added to it (gt(k, 2) is FoundationDB's first_greater_than(k) + 1).


def lt(key: bytes, offset: int = 0) -> KeySelector:
    """``last_less_than(key)`` when ``offset`` is 0."""
    assert isinstance(key, bytes), "key must be bytes"
    return KeySelector(key, False, offset)


def lte(key: bytes, offset: int = 0) -> KeySelector:
    """``last_less_or_equal(key)`` when ``offset`` is 0."""
    assert isinstance(key, bytes), "key must be bytes"
    return KeySelector(key, True, offset)


def gt(key: bytes, offset: int = 1) -> KeySelector:
    """``first_greater_than(key)`` when ``offset`` is 1."""
    assert isinstance(key, bytes), "key must be bytes"
    return KeySelector(key, True, offset)


def gte(key: bytes, offset: int = 1) -> KeySelector:
    """``first_greater_or_equal(key)`` when ``offset`` is 1."""
    assert isinstance(key, bytes), "key must be bytes"
    return KeySelector(key, False, offset)


def next_prefix(key: bytes) -> bytes:
    """The first key after every key that starts with ``key`` (``strinc``)."""
    try:
        return strinc(key)
    except UsageError as exc:
        raise ValueError("Key must contain at least one byte not equal to 0xFF.") from exc


# -- reads -------------------------------------------------------------------------


async def get(tx: Transaction, key: bytes) -> bytes | None:
    """The value of ``key``, or ``None``; sees the transaction's own writes."""
    _check(tx)
    assert isinstance(key, bytes), "key must be bytes"
    with seam(tx) as core:
        value = await core.get(key, snapshot=tx.snapshot)
    if not tx.snapshot:
        _count(tx, 2 * len(key) + 1)
    return value


async def get_key(tx: Transaction, key_selector: KeySelector) -> bytes:
    """The key ``key_selector`` resolves to."""
    _check(tx)
    assert isinstance(key_selector, KeySelector), "key_selector must be a KeySelector"
    with seam(tx) as core:
        return await core.get_key(key_selector, snapshot=tx.snapshot)


def _selector(key: bytes | KeySelector) -> KeySelector:
    if isinstance(key, KeySelector):
        return key
    assert isinstance(key, bytes), "query bounds must be bytes or KeySelector"
    return gte(key)


def _direction(
    key: bytes | KeySelector, other: bytes | KeySelector, reverse: bool | None
) -> tuple[KeySelector, KeySelector, bool]:
    begin, end = _selector(key), _selector(other)
    if reverse is not None:
        return begin, end, reverse
    if begin.key < end.key:
        return begin, end, False
    # found's implicit reverse: from ``key`` down to ``other``, both included
    # when they are plain keys ([other, key], not FoundationDB's half-open).
    return KeySelector(end.key, False, end.offset), KeySelector(begin.key, True, begin.offset), True


async def query(
    tx: Transaction,
    key: bytes | KeySelector,
    other: bytes | KeySelector,
    *,
    limit: int = 0,
    reverse: bool | None = None,
    mode: int = STREAMING_MODE_ITERATOR,
) -> AsyncIterator[tuple[bytes, bytes]]:
    """Key-value pairs between ``key`` and ``other`` (an async generator).

    With ``reverse=None``: ascending over ``[key, other)`` if ``key <
    other``, else descending over ``[other, key]``. With an explicit
    ``reverse`` the bounds are FoundationDB's ``[key, other)`` in the
    order asked. ``limit=0`` means no limit.
    """
    _check(tx)
    begin, end, backwards = _direction(key, other, reverse)
    if mode == STREAMING_MODE_EXACT and not limit:
        raise FoundException(EXACT_MODE_WITHOUT_LIMITS)
    if mode not in _FIRST_BATCH and mode not in (STREAMING_MODE_WANT_ALL, STREAMING_MODE_EXACT):
        raise FoundException(CLIENT_INVALID_OPERATION)
    batch = limit if mode == STREAMING_MODE_EXACT else _FIRST_BATCH.get(mode, 256)
    with seam(tx) as core:
        rows = core.get_range(
            begin, end, limit=limit, reverse=backwards, snapshot=tx.snapshot, batch_size=batch
        )
        if not tx.snapshot:
            _count(tx, len(begin.key) + len(end.key))
        if mode == STREAMING_MODE_WANT_ALL:
            for pair in await rows:
                yield pair
        else:
            async for pair in rows:
                yield pair


async def read_version(tx: Transaction) -> int:
    """The version the transaction reads at."""
    _check(tx)
    with seam(tx) as core:
        return await core.get_read_version()


async def set_read_version(tx: Transaction, version: int) -> None:
    """Read at ``version``; only before the first read."""
    _check(tx)
    assert isinstance(version, int), "version must be an int"
    if version < 0:
        raise FoundException(VERSION_INVALID)
    with seam(tx, {ReadVersionError: READ_VERSION_ALREADY_SET}) as core:
        core.set_read_version(version)


async def estimated_size_bytes(tx: Transaction, begin: bytes, end: bytes) -> int:
    """Bytes of keys and values in ``[begin, end)`` as this transaction sees
    them. Exact rather than estimated: Shale has no size statistics, so
    this is a snapshot scan, linear in the range's size."""
    _check(tx)
    assert isinstance(begin, bytes) and isinstance(end, bytes), "bounds must be bytes"
    total = 0
    with seam(tx) as core:
        async for k, v in core.get_range(begin, end, snapshot=True, batch_size=1024):
            total += len(k) + len(v)
    return total


async def get_range_split_points(
    tx: Transaction, begin: bytes, end: bytes, chunk_size: int
) -> list[bytes]:
    """``[begin, *splits, end]``: each split starts a chunk after at least
    ``chunk_size`` bytes of keys and values (a snapshot scan)."""
    _check(tx)
    assert isinstance(begin, bytes) and isinstance(end, bytes), "bounds must be bytes"
    assert isinstance(chunk_size, int) and chunk_size > 0, "chunk_size must be a positive int"
    points, filled = [begin], 0
    with seam(tx) as core:
        async for k, v in core.get_range(begin, end, snapshot=True, batch_size=1024):
            if filled >= chunk_size:
                points.append(k)
                filled = 0
            filled += len(k) + len(v)
    points.append(end)
    return points


async def get_addresses_for_key(tx: Transaction, key: bytes) -> list[str]:
    """The addresses of the servers that hold ``key``, as ``"host:port"``
    strings (``"host:port:tls"`` over TLS, ``"[ipv6]:port"``), the format
    FoundationDB gives its storage servers.

    Through ``shale://`` that is the one server the database is reached
    through, with the host as the URL names it (not resolved). An engine
    with no server of Shale's own (``memory://``, ``sqlite://``) answers
    ``[]``. Like FoundationDB, it first gets the read version, so a
    transaction that cannot read raises as a read would.
    """
    _check(tx)
    assert isinstance(key, bytes), "key must be bytes"
    with seam(tx) as core:
        await core.get_read_version()
    return _server_addresses(tx.db.pointer)


def _server_addresses(db: shale.Database) -> list[str]:
    # Imported here: an engine module is no import of the facade's, and
    # only this call needs to recognise the one engine that has a server.
    from shale.engines.remote import RemoteEngine

    engine = db.engine
    if not isinstance(engine, RemoteEngine):
        return []
    host, port = engine.address
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [address + ":tls" if urlsplit(db.url).scheme.lower() == "shale+tls" else address]


def get_client_version() -> str:
    """Shale's version (found returned libfdb_c's)."""
    return shale.__version__


# -- writes ------------------------------------------------------------------------


async def set(tx: Transaction, key: bytes, value: bytes) -> None:
    """Set ``key`` to ``value``. A snapshot transaction refuses, as found."""
    _check(tx)
    assert isinstance(key, bytes), "key must be bytes"
    assert isinstance(value, bytes), "value must be bytes"
    assert not tx.snapshot, "set is not allowed on a snapshot transaction"
    with seam(tx) as core:
        core.set(key, value)
    _count(tx, len(key) + len(value))


async def clear(tx: Transaction, key: bytes, other: bytes | None = None) -> None:
    """Clear ``key``, or the range ``[key, other)`` when ``other`` is given."""
    _check(tx)
    assert isinstance(key, bytes), "key must be bytes"
    with seam(tx) as core:
        if other is None:
            core.clear(key)
        else:
            assert isinstance(other, bytes), "other must be bytes"
            core.clear_range(key, other)
    _count(tx, len(key) + len(other or b""))


def _mutate(
    tx: Transaction, op: Callable[[shale.Transaction, bytes, bytes], None], key: bytes, param: bytes
) -> None:
    _check(tx)
    with seam(tx) as core:
        op(core, key, param)
    _count(tx, len(key) + len(param))


async def add(tx: Transaction, key: bytes, param: bytes) -> None:
    """Little-endian integer addition, wrapping at ``len(param)`` bytes."""
    _mutate(tx, shale.Transaction.add, key, param)


async def bit_and(tx: Transaction, key: bytes, param: bytes) -> None:
    """Bitwise AND; an absent key becomes ``param``."""
    _mutate(tx, shale.Transaction.bit_and, key, param)


async def bit_or(tx: Transaction, key: bytes, param: bytes) -> None:
    """Bitwise OR."""
    _mutate(tx, shale.Transaction.bit_or, key, param)


async def bit_xor(tx: Transaction, key: bytes, param: bytes) -> None:
    """Bitwise XOR."""
    _mutate(tx, shale.Transaction.bit_xor, key, param)


async def max(tx: Transaction, key: bytes, param: bytes) -> None:
    """Keep the larger, as little-endian unsigned integers."""
    _mutate(tx, shale.Transaction.max, key, param)


async def min(tx: Transaction, key: bytes, param: bytes) -> None:
    """Keep the smaller, as little-endian unsigned integers; an absent key
    becomes ``param``."""
    _mutate(tx, shale.Transaction.min, key, param)


async def byte_max(tx: Transaction, key: bytes, param: bytes) -> None:
    """Keep the lexicographically larger."""
    _mutate(tx, shale.Transaction.byte_max, key, param)


async def byte_min(tx: Transaction, key: bytes, param: bytes) -> None:
    """Keep the lexicographically smaller."""
    _mutate(tx, shale.Transaction.byte_min, key, param)


async def append_if_fits(tx: Transaction, key: bytes, param: bytes) -> None:
    """Append ``param`` unless the value would exceed 100,000 bytes."""
    _mutate(tx, shale.Transaction.append_if_fits, key, param)


async def compare_and_clear(tx: Transaction, key: bytes, param: bytes) -> None:
    """Clear ``key`` if its value equals ``param``."""
    _mutate(tx, shale.Transaction.compare_and_clear, key, param)


async def set_versionstamped_key(tx: Transaction, key: bytes, param: bytes) -> None:
    """Set a key whose 10 bytes at the little-endian offset in its last 4
    bytes become the commit's versionstamp (``pack_with_versionstamp``)."""
    _mutate(tx, shale.Transaction.set_versionstamped_key, key, param)


async def set_versionstamped_value(tx: Transaction, key: bytes, param: bytes) -> None:
    """Set ``key`` to ``param`` with its versionstamp placeholder filled in."""
    _mutate(tx, shale.Transaction.set_versionstamped_value, key, param)


def add_conflict_range(tx: Transaction, begin: bytes, end: bytes, conflict_type: int) -> None:
    """Add ``[begin, end)`` to the read (0) or write (1) conflict ranges."""
    _check(tx)
    with seam(tx) as core:
        if conflict_type == CONFLICT_RANGE_TYPE_READ:
            core.add_read_conflict_range(begin, end)
        elif conflict_type == CONFLICT_RANGE_TYPE_WRITE:
            core.add_write_conflict_range(begin, end)
        else:
            raise FoundException(CLIENT_INVALID_OPERATION)
    _count(tx, len(begin) + len(end))


# -- futures that outlive the call -------------------------------------------------

# A watch or versionstamp the transaction drops (reset, cancel, retry) fails
# with TransactionStateError; FoundationDB reports that as cancelled.
_FUTURE_CODES: Final[Mapping[type[ShaleError], int]] = {
    TransactionStateError: TRANSACTION_CANCELLED,
    UsageError: NO_COMMIT_VERSION,
}


async def get_versionstamp(tx: Transaction) -> bytes:
    """The 10-byte versionstamp of the transaction's commit; returns once
    the commit succeeds. Start it (e.g. as a task) before committing: once
    the commit has started it raises ``used_during_commit``. A transaction
    that writes nothing gets ``no_commit_version`` (2021)."""
    _check(tx)
    with seam(tx) as core:
        stamp = core.get_versionstamp()
    try:
        # Shielded: cancelling one waiter must not fail the stamp for others.
        return await asyncio.shield(stamp)
    except ShaleError as exc:
        raise translate(exc, overrides=_FUTURE_CODES) from exc


async def watch(tx: Transaction, key: bytes) -> asyncio.Future[None]:
    """A future that resolves to ``None`` once ``key`` changes after the
    transaction commits (changes committed through the same database
    handle). It fails with the commit's error, or 1025 if the transaction
    is reset or cancelled first. Cancel it when no longer needed."""
    _check(tx)
    assert isinstance(key, bytes), "key must be bytes"
    with seam(tx) as core:
        inner = core.watch(key)
    outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def relay(done: asyncio.Future[None]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
            return
        exc = done.exception()
        if exc is None:
            outer.set_result(None)
            return
        if isinstance(exc, ShaleError):
            found = translate(exc, overrides=_FUTURE_CODES)
            found.__cause__ = exc
            exc = found
        outer.set_exception(exc)
        outer.exception()  # a dropped watch must not log "never retrieved"

    def stop(done: asyncio.Future[None]) -> None:
        if done.cancelled():
            inner.cancel()

    inner.add_done_callback(relay)
    outer.add_done_callback(stop)
    return outer
