"""Transactions: read-your-writes over an engine snapshot, conflict sets, commit.

A transaction buffers its writes and reads from one engine snapshot, so it
sees a consistent database as of its read version plus its own writes. It
records what it read (outside snapshot reads) and what it wrote; the engine
uses those sets at commit to guarantee serializability.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import struct
import time
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any, Final

from shale.core.idempotency import idempotency_key, tag_commit
from shale.core.selectors import KeySelector
from shale.engines.atomic import MAX_VALUE_SIZE, apply_atomic
from shale.engines.base import CommitRequest, EngineSnapshot, KeyRange, Mutation, MutationType
from shale.engines.feedlog import check_system_write
from shale.errors import (
    AccessedUnreadable,
    DatabaseClosed,
    InvertedRange,
    KeyOutsideLegalRange,
    KeyTooLarge,
    ReadVersionError,
    ShaleError,
    TransactionStateError,
    TransactionTooLarge,
    TransactionTooOld,
    UsageError,
    ValueTooLarge,
)
from shale.keys import strinc

if TYPE_CHECKING:
    from shale.core.database import Database

__all__ = ["RangeResult", "SnapshotReads", "Transaction", "strinc"]

MAX_KEY_SIZE: Final = 10_000
MAX_TRANSACTION_SIZE: Final = 10_000_000
SYSTEM_PREFIX: Final = b"\xff"

_OFFSET = struct.Struct("<I")
_MISSING: Final = object()


class _Unreadable:
    """Marks a value a versionstamp operation will write at commit."""


_UNREADABLE: Final = _Unreadable()
_Entry = bytes | None | list[tuple[MutationType, bytes]] | _Unreadable


class _State(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    FAILED = "failed"
    CLOSED = "closed"


class RangeResult:
    """A range read: ``await`` it for a list, or ``async for`` to stream it.

    Streaming fetches batches that grow from ``batch_size`` so a large scan
    never holds more than one batch of the engine's rows.
    """

    __slots__ = ("_args", "_tr")

    def __init__(self, tr: Transaction, *args: Any) -> None:
        self._tr = tr
        self._args = args

    def __await__(self) -> Generator[Any, None, list[tuple[bytes, bytes]]]:
        return self._collect().__await__()

    async def _collect(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        async for batch in self._tr._scan(*self._args, want_all=True):
            out.extend(batch)
        return out

    async def __aiter__(self) -> AsyncIterator[tuple[bytes, bytes]]:
        async for batch in self._tr._scan(*self._args, want_all=False):
            for pair in batch:
                yield pair


class Transaction:
    """One transaction. Use it as ``async with db.transaction() as tr:`` —
    it commits when the block ends without an exception — or through
    ``db.transact(fn)``, which also retries.

    Writes (``set``, ``clear``, atomic ops) are buffered and return at once;
    reads are coroutines. After ``commit`` the transaction is finished:
    any further use raises ``TransactionStateError``.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._max_age = db.max_transaction_age
        self.access_system_keys = False
        self._idempotency_id: bytes | None = None
        """Set by ``Database.run`` on engines with unknown results: the commit
        also records it (``shale.core.idempotency``). It names the whole
        ``run()``, not this attempt, so ``reset()`` keeps it."""
        self._snapshot: EngineSnapshot | None = None
        self._resets = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self._state = _State.OPEN
        self._failure: BaseException | None = None
        self._wanted_version: int | None = None
        self._started = 0.0
        self._writes: dict[bytes, _Entry] = {}
        self._sorted_writes: list[bytes] | None = None
        self._clears: list[KeyRange] = []
        self._unreadable: list[KeyRange] = []
        self._mutations: list[Mutation] = []
        self._read_keys: set[bytes] = set()
        self._read_ranges: list[KeyRange] = []
        self._write_ranges: list[KeyRange] = []
        self._size = 0
        self._versionstamped = False
        self._stamped_keys = False  # keys unknown until commit: wakes every feed
        self._stamp: asyncio.Future[bytes] | None = None
        self._watches: list[tuple[bytes, asyncio.Future[None]]] = []
        self.committed_version: int | None = None

    # -- lifecycle -----------------------------------------------------

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._state is _State.OPEN:
            await self.commit()
        else:
            self.close()

    def _check_open(self) -> None:
        if self._state is _State.OPEN:
            return
        if self._db._closed and self._state is not _State.COMMITTED:
            self._db._check_open()
        if self._state is _State.COMMITTING:
            raise TransactionStateError("the transaction is being committed; wait for commit()")
        if self._state is _State.COMMITTED:
            raise TransactionStateError(
                "the transaction has already committed; start a new transaction"
            )
        if self._state is _State.FAILED:
            raise TransactionStateError(
                f"the transaction failed ({type(self._failure).__name__}); call reset() "
                "or start a new transaction"
            )
        raise TransactionStateError("the transaction was closed")

    def _fail_closed(self) -> None:
        """The database was closed: this transaction can never commit."""
        error = DatabaseClosed(f"{self._db!r} is closed; open it again to go on")
        self._state = _State.FAILED
        self._failure = error
        self._cancel_futures(error)
        self._release()
        raise error

    def close(self) -> None:
        """Abandon the transaction without committing; idempotent."""
        if self._state in (_State.OPEN, _State.FAILED):
            self._state = _State.CLOSED
            self._cancel_futures(TransactionStateError("the transaction was closed"))
        self._release()

    def reset(self) -> None:
        """Discard everything and start over as a new transaction would."""
        if self._state is _State.COMMITTING:
            raise TransactionStateError("cannot reset a transaction while it commits")
        self._db._check_open()
        self._cancel_futures(TransactionStateError("the transaction was reset"))
        self._release()
        self._resets += 1
        self._reset_state()

    def _release(self) -> None:
        if self._snapshot is not None:
            self._snapshot.release()
            self._snapshot = None

    def _cancel_futures(self, error: BaseException) -> None:
        futures: list[asyncio.Future[Any]] = [f for _, f in self._watches]
        if self._stamp is not None:
            futures.append(self._stamp)
        for future in futures:
            if not future.done():
                future.set_exception(error)
                future.exception()  # a dropped watch must not log "never retrieved"

    # -- versions --------------------------------------------------------

    async def _acquire(self) -> EngineSnapshot:
        if self._snapshot is None:
            self._db._check_open()
            self._snapshot = await self._db.engine.snapshot(self._wanted_version)
            self._started = time.monotonic()
        elif time.monotonic() - self._started > self._max_age:
            raise TransactionTooOld(f"the transaction is older than {self._max_age:g} s; retry it")
        return self._snapshot

    async def get_read_version(self) -> int:
        """The version this transaction reads at (fixed by its first read)."""
        self._check_open()
        return await (await self._acquire()).version()

    def set_read_version(self, version: int) -> None:
        """Read at ``version`` instead of the latest; only before any read."""
        self._check_open()
        if self._snapshot is not None or self._wanted_version is not None:
            raise ReadVersionError("the read version is already set for this transaction")
        if not isinstance(version, int) or version < 0:
            raise ReadVersionError(f"a read version is a non-negative int, not {version!r}")
        self._wanted_version = version

    # -- reads -----------------------------------------------------------

    def _check_read_key(self, key: bytes) -> None:
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        if key >= SYSTEM_PREFIX and not self.access_system_keys:
            raise KeyOutsideLegalRange(
                f"key {key[:32]!r} is in the system keyspace (keys starting with 0xFF)"
            )

    def _cleared(self, key: bytes) -> bool:
        return any(begin <= key < end for begin, end in self._clears)

    def _check_readable(self, begin: bytes, end: bytes) -> None:
        for low, high in self._unreadable:
            if begin < high and low < end:
                raise AccessedUnreadable(
                    "the range read overlaps a key that a versionstamp operation of this "
                    "transaction will write; it is unknown until commit"
                )

    async def get(self, key: bytes, *, snapshot: bool = False) -> bytes | None:
        """The value of ``key``, or ``None``; sees this transaction's writes."""
        # The checks are inlined with cheap guards: this is the hottest path.
        if self._state is not _State.OPEN:
            self._check_open()
        if type(key) is not bytes or key >= SYSTEM_PREFIX:
            self._check_read_key(key)
        entry = self._writes.get(key, _MISSING)
        if entry is _MISSING:
            if self._clears and self._cleared(key):
                return None
            if self._unreadable:
                self._check_readable(key, key + b"\x00")
            snap = self._snapshot
            if snap is None or time.monotonic() - self._started > self._max_age:
                snap = await self._acquire()
            if not snapshot and key not in self._read_keys:
                self._read_keys.add(key)
                self._size += len(key)  # conflict ranges count, as in FoundationDB
            return await snap.get(key)
        if type(entry) is list:
            snap = await self._acquire()
            if not snapshot and key not in self._read_keys:
                self._read_keys.add(key)
                self._size += len(key)
            return _replay(entry, await snap.get(key))
        if entry is _UNREADABLE:
            raise AccessedUnreadable(
                f"the value of {key[:32]!r} is set by a versionstamp operation of this "
                "transaction and is unknown until commit"
            )
        return entry  # type: ignore[return-value]

    def get_range(
        self,
        begin: bytes | KeySelector,
        end: bytes | KeySelector,
        *,
        limit: int = 0,
        reverse: bool = False,
        snapshot: bool = False,
        batch_size: int = 256,
    ) -> RangeResult:
        """Pairs with ``begin <= key < end``, ascending (descending if
        ``reverse``), at most ``limit`` (0: all). ``begin``/``end`` may be key
        selectors. Await the result for a list or iterate it to stream."""
        self._check_open()
        if not isinstance(limit, int) or limit < 0:
            raise UsageError(f"limit must be a non-negative int, not {limit!r}")
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, not {batch_size!r}")
        return RangeResult(self, begin, end, limit, reverse, snapshot, batch_size)

    def get_range_startswith(
        self, prefix: bytes, *, limit: int = 0, reverse: bool = False, snapshot: bool = False
    ) -> RangeResult:
        """Every pair whose key starts with ``prefix``."""
        return self.get_range(
            prefix, strinc(prefix), limit=limit, reverse=reverse, snapshot=snapshot
        )

    def _upper(self) -> bytes:
        return b"\xff\xff" if self.access_system_keys else SYSTEM_PREFIX

    def _check_range_bounds(self, begin: bytes, end: bytes) -> None:
        upper = self._upper()
        for key in (begin, end):
            if type(key) is not bytes:
                raise TypeError(f"range bounds are bytes or KeySelector, not {type(key).__name__}")
            if key > upper:
                raise KeyOutsideLegalRange(
                    f"range bound {key[:32]!r} is beyond the user keyspace (ends at {upper!r})"
                )

    async def _scan(
        self,
        begin: bytes | KeySelector,
        end: bytes | KeySelector,
        limit: int,
        reverse: bool,
        snapshot: bool,
        batch_size: int,
        *,
        want_all: bool,
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        if isinstance(begin, KeySelector):
            begin = await self._resolve(begin, snapshot)
        if isinstance(end, KeySelector):
            end = await self._resolve(end, snapshot)
        self._check_range_bounds(begin, end)
        if begin >= end:
            return
        if self._unreadable:
            self._check_readable(begin, end)
        snap = await self._acquire()
        local = self._local_keys(begin, end)
        if want_all and not local and not self._clears:
            rows = await snap.get_range(begin, end, limit, reverse)
            if not snapshot:
                last = rows[-1][0] if limit and len(rows) >= limit else None
                self._add_read_range(-1, _examined(begin, end, last, reverse))
            yield rows
            return
        merger = _Merger(self, local, reverse)
        low, high, produced, size = begin, end, 0, batch_size
        resets = self._resets
        conflict = -1  # where this scan's read range sits in _read_ranges
        while True:
            if want_all:
                want = limit - produced if limit else 0
            else:
                want = min(size, limit - produced) if limit else size
            rows = await snap.get_range(low, high, want, reverse)
            exhausted = not want or len(rows) < want
            batch = merger.merge(rows, exhausted, limit - produced if limit else 0)
            produced += len(batch)
            limited = bool(limit) and produced >= limit
            if not snapshot:
                # Recorded before the batch is handed out, as FoundationDB
                # does: a caller may stop iterating at any row (``break``),
                # and the generator is then never resumed, so what it was
                # given must already be a read conflict.
                last = batch[-1][0] if limited else None if exhausted else rows[-1][0]
                conflict = self._add_read_range(conflict, _examined(begin, end, last, reverse))
            if batch:
                yield batch
            if exhausted or limited:
                return
            if reverse:
                high = rows[-1][0]
            else:
                low = rows[-1][0] + b"\x00"
            size = min(size * 2, 16384)
            self._check_open()
            if self._resets != resets:
                # Its conflict range and overlay belong to the transaction
                # as it was; the new one never read this range.
                raise TransactionStateError("the transaction was reset during this range read")
            await self._acquire()  # a long stream must not outlive the age limit

    def _add_read_range(self, index: int, covered: KeyRange) -> int:
        """Record a scan's read range — a new one if ``index`` is negative,
        else replacing the one it grew from — counting its bounds toward
        the size limit as sent; return where it is."""
        if index < 0:
            index = len(self._read_ranges)
            self._read_ranges.append(covered)
        else:
            old_begin, old_end = self._read_ranges[index]
            self._size -= len(old_begin) + len(old_end)
            self._read_ranges[index] = covered
        self._size += len(covered[0]) + len(covered[1])
        return index

    def _local_keys(self, begin: bytes, end: bytes) -> list[bytes]:
        if not self._writes:
            return []
        if self._sorted_writes is None:
            self._sorted_writes = sorted(self._writes)
        keys = self._sorted_writes
        return keys[bisect.bisect_left(keys, begin) : bisect.bisect_left(keys, end)]

    async def get_key(self, selector: KeySelector, *, snapshot: bool = False) -> bytes:
        """The key ``selector`` resolves to (see ``KeySelector``)."""
        self._check_open()
        if not isinstance(selector, KeySelector):
            raise TypeError(f"get_key takes a KeySelector, not {type(selector).__name__}")
        return await self._resolve(selector, snapshot)

    async def _resolve(self, selector: KeySelector, snapshot: bool) -> bytes:
        upper = self._upper()
        key = min(selector.key, upper)
        if selector.offset >= 1:
            start = key + b"\x00" if selector.or_equal else key
            if start >= upper:
                return upper
            rows = await self.get_range(start, upper, limit=selector.offset, snapshot=snapshot)
            return rows[-1][0] if len(rows) == selector.offset else upper
        count = 1 - selector.offset
        stop = key + b"\x00" if selector.or_equal else key
        rows = await self.get_range(
            b"", min(stop, upper), limit=count, reverse=True, snapshot=snapshot
        )
        return rows[-1][0] if len(rows) == count else b""

    @property
    def snapshot(self) -> SnapshotReads:
        """The same transaction, reading without adding read conflicts."""
        return SnapshotReads(self)

    # -- writes ----------------------------------------------------------

    def _check_write_key(self, key: bytes) -> None:
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        if len(key) > MAX_KEY_SIZE:
            self._fail(
                KeyTooLarge(f"key of {len(key)} bytes exceeds the {MAX_KEY_SIZE}-byte limit")
            )
        if key >= SYSTEM_PREFIX and not self.access_system_keys:
            self._fail(
                KeyOutsideLegalRange(
                    f"key {key[:32]!r} is in the system keyspace (keys starting with 0xFF); "
                    "user writes may not go there"
                )
            )

    def _check_value(self, value: bytes) -> None:
        if type(value) is not bytes:
            raise TypeError(f"values are bytes, not {type(value).__name__}")
        if len(value) > MAX_VALUE_SIZE:
            self._fail(
                ValueTooLarge(
                    f"value of {len(value)} bytes exceeds the {MAX_VALUE_SIZE}-byte limit"
                )
            )

    def _check_system(self, op: MutationType, key: bytes, param: bytes) -> None:
        """Refuse a system write that would corrupt a feed's declaration or
        state, before it is buffered (see ``check_system_write``)."""
        if key >= SYSTEM_PREFIX and (problem := check_system_write(op, key, param)):
            self._fail(UsageError(f"refused write to {key[:48]!r}: {problem}"))

    def _fail(self, error: ShaleError) -> None:
        """Poison the transaction so it can never commit, then raise.

        As in FoundationDB, a breached limit fails the whole transaction:
        committing the writes before it would commit half of the body.
        """
        self._failure = error
        raise error

    def _record(self, op: MutationType, key: bytes, param: bytes) -> None:
        self._size += len(key) + len(param)
        if self._size > MAX_TRANSACTION_SIZE:
            self._fail(self._too_large())
        self._mutations.append((op, key, param))

    def _put(self, key: bytes, entry: _Entry) -> None:
        if key not in self._writes:
            self._sorted_writes = None
        self._writes[key] = entry

    def set(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``."""
        # Guards first, full checks only when one trips: bulk loads live here.
        if self._state is not _State.OPEN:
            self._check_open()
        if type(key) is not bytes or len(key) > MAX_KEY_SIZE or key >= SYSTEM_PREFIX:
            self._check_write_key(key)
        if type(value) is not bytes or len(value) > MAX_VALUE_SIZE:
            self._check_value(value)
        if key >= SYSTEM_PREFIX:
            self._check_system(MutationType.SET, key, value)
        self._record(MutationType.SET, key, value)
        if key not in self._writes:
            self._sorted_writes = None
        self._writes[key] = value

    def clear(self, key: bytes) -> None:
        """Remove ``key`` if present."""
        self._check_open()
        self._check_write_key(key)
        self._check_system(MutationType.CLEAR, key, b"")
        self._record(MutationType.CLEAR, key, b"")
        self._put(key, None)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        """Remove every key with ``begin <= key < end``."""
        self._check_open()
        try:
            self._check_range_bounds(begin, end)
        except KeyOutsideLegalRange as exc:
            self._fail(exc)
        if begin > end:
            raise InvertedRange(f"clear_range begin {begin[:32]!r} sorts after end {end[:32]!r}")
        if begin == end:
            return
        self._record(MutationType.CLEAR_RANGE, begin, end)
        for key in self._local_keys(begin, end):
            self._writes[key] = None
        self._clears.append((begin, end))
        self._write_ranges.append((begin, end))

    def clear_range_startswith(self, prefix: bytes) -> None:
        """Remove every key that starts with ``prefix``."""
        self.clear_range(prefix, strinc(prefix))

    def _atomic(self, op: MutationType, key: bytes, param: bytes) -> None:
        self._check_open()
        self._check_write_key(key)
        self._check_value(param)
        self._check_system(op, key, param)
        self._record(op, key, param)
        entry = self._writes.get(key, _MISSING)
        if entry is _MISSING:
            if self._clears and self._cleared(key):
                self._put(key, apply_atomic(op, None, param))
            else:
                self._put(key, [(op, param)])
        elif type(entry) is list:
            entry.append((op, param))
        elif entry is not _UNREADABLE:
            self._put(key, apply_atomic(op, entry, param))  # type: ignore[arg-type]

    def add(self, key: bytes, param: bytes) -> None:
        """Little-endian integer addition (wrapping at ``len(param)`` bytes)."""
        self._atomic(MutationType.ADD, key, param)

    def bit_and(self, key: bytes, param: bytes) -> None:
        """Bitwise AND; an absent key becomes ``param``."""
        self._atomic(MutationType.BIT_AND, key, param)

    def bit_or(self, key: bytes, param: bytes) -> None:
        """Bitwise OR."""
        self._atomic(MutationType.BIT_OR, key, param)

    def bit_xor(self, key: bytes, param: bytes) -> None:
        """Bitwise XOR."""
        self._atomic(MutationType.BIT_XOR, key, param)

    def max(self, key: bytes, param: bytes) -> None:
        """Keep the larger, comparing little-endian unsigned integers."""
        self._atomic(MutationType.MAX, key, param)

    def min(self, key: bytes, param: bytes) -> None:
        """Keep the smaller, comparing little-endian unsigned integers."""
        self._atomic(MutationType.MIN, key, param)

    def byte_max(self, key: bytes, param: bytes) -> None:
        """Keep the lexicographically larger."""
        self._atomic(MutationType.BYTE_MAX, key, param)

    def byte_min(self, key: bytes, param: bytes) -> None:
        """Keep the lexicographically smaller."""
        self._atomic(MutationType.BYTE_MIN, key, param)

    def append_if_fits(self, key: bytes, param: bytes) -> None:
        """Append ``param`` unless the result would exceed the value limit."""
        self._atomic(MutationType.APPEND_IF_FITS, key, param)

    def compare_and_clear(self, key: bytes, param: bytes) -> None:
        """Clear ``key`` if its value equals ``param``."""
        self._atomic(MutationType.COMPARE_AND_CLEAR, key, param)

    def _check_stamp_offset(self, data: bytes, what: str) -> int:
        if len(data) < 4:
            raise UsageError(f"a versionstamped {what} needs a 4-byte offset at its end")
        (offset,) = _OFFSET.unpack_from(data, len(data) - 4)
        if offset + 10 > len(data) - 4:
            raise UsageError(
                f"versionstamp offset {offset} does not leave 10 bytes inside the "
                f"{len(data) - 4}-byte {what}; pack it with pack_with_versionstamp"
            )
        return int(offset)

    def set_versionstamped_key(self, key: bytes, value: bytes) -> None:
        """Set a key whose 10 bytes at the offset in its last 4 bytes (little
        endian) are replaced by the commit's versionstamp."""
        self._check_open()
        if type(key) is not bytes:
            raise TypeError(f"keys are bytes, not {type(key).__name__}")
        offset = self._check_stamp_offset(key, "key")
        self._check_write_key(key[:-4])
        self._check_system(MutationType.SET_VERSIONSTAMPED_KEY, key[:-4], value)
        self._check_value(value)
        self._record(MutationType.SET_VERSIONSTAMPED_KEY, key, value)
        self._versionstamped = True
        self._stamped_keys = True
        body = key[:-4]
        prefix, suffix = body[:offset], body[offset + 10 :]
        self._unreadable.append((prefix + b"\x00" * 10 + suffix, prefix + b"\xff" * 11))

    def set_versionstamped_value(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` with its 10 bytes at the offset in its
        last 4 bytes replaced by the commit's versionstamp."""
        self._check_open()
        self._check_write_key(key)
        if type(value) is not bytes:
            raise TypeError(f"values are bytes, not {type(value).__name__}")
        self._check_stamp_offset(value, "value")
        self._check_value(value[:-4])
        self._check_system(MutationType.SET_VERSIONSTAMPED_VALUE, key, value)
        self._record(MutationType.SET_VERSIONSTAMPED_VALUE, key, value)
        self._versionstamped = True
        self._put(key, _UNREADABLE)

    def get_versionstamp(self) -> asyncio.Future[bytes]:
        """A future of the 10-byte versionstamp this transaction commits at.

        It resolves when ``commit`` succeeds and fails if the commit fails or
        the transaction wrote nothing.
        """
        self._check_open()
        if self._stamp is None:
            self._stamp = asyncio.get_running_loop().create_future()
        return self._stamp

    @property
    def approximate_size(self) -> int:
        """Bytes counted against the 10 MB limit so far: as in FoundationDB,
        the keys and values written plus the bounds of every read and
        explicit write conflict range."""
        return self._size

    # -- conflicts -------------------------------------------------------

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        """Make the commit fail if ``[begin, end)`` is written concurrently."""
        self._check_open()
        self._check_range_bounds(begin, end)
        if begin > end:
            raise InvertedRange(f"conflict range begin {begin[:32]!r} sorts after its end")
        if begin < end:
            self._count_conflict(begin, end)
            self._read_ranges.append((begin, end))

    def _count_conflict(self, begin: bytes, end: bytes) -> None:
        self._size += len(begin) + len(end)
        if self._size > MAX_TRANSACTION_SIZE:
            self._fail(self._too_large())

    def _too_large(self) -> TransactionTooLarge:
        return TransactionTooLarge(
            f"the transaction's writes and conflict ranges exceed {MAX_TRANSACTION_SIZE} bytes"
        )

    def add_read_conflict_key(self, key: bytes) -> None:
        self.add_read_conflict_range(key, key + b"\x00")

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        """Make concurrent readers of ``[begin, end)`` conflict, as a write would."""
        self._check_open()
        self._check_range_bounds(begin, end)
        if begin > end:
            raise InvertedRange(f"conflict range begin {begin[:32]!r} sorts after its end")
        if begin < end:
            self._count_conflict(begin, end)
            self._write_ranges.append((begin, end))

    def add_write_conflict_key(self, key: bytes) -> None:
        self.add_write_conflict_range(key, key + b"\x00")

    # -- watches and commit ------------------------------------------------

    def watch(self, key: bytes) -> asyncio.Future[None]:
        """A future that resolves once ``key``'s value differs from the one
        this transaction sees. It starts watching when the transaction
        commits, and fails if the commit fails."""
        self._check_open()
        self._check_read_key(key)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watches.append((key, future))
        return future

    async def commit(self) -> None:
        """Commit atomically; durable on return for durable engines.

        Raises:
            ConflictError: something read was written concurrently; retry.
            TransactionTooOld: the transaction outlived the MVCC window.
            LimitError: a size limit was breached earlier in the transaction.
        """
        self._check_open()
        if self._db._closed:
            self._fail_closed()
        if self._failure is not None:
            failure = self._failure
            self._state = _State.FAILED
            self._cancel_futures(failure)
            raise failure
        watched = [(key, await self.snapshot.get(key), f) for key, f in self._watches]
        self._state = _State.COMMITTING
        try:
            self.committed_version = await self._commit_request()
        except BaseException as exc:
            self._state = _State.FAILED
            self._failure = exc
            self._cancel_futures(exc)
            raise
        finally:
            self._release()
        self._state = _State.COMMITTED
        if self._mutations:
            self._db._notify_watches(self._writes.keys(), self._write_ranges)
            if self._db._next_change:
                self._db._changed(self._writes.keys(), self._write_ranges, self._stamped_keys)
        for key, seen, future in watched:
            self._db._add_watch(key, seen, future)

    async def _commit_request(self) -> int:
        if not self._mutations and not self._write_ranges:
            if self._stamp is not None and not self._stamp.done():
                self._stamp.set_exception(
                    UsageError("the transaction wrote nothing, so it has no versionstamp")
                )
            return -1
        tag = self._idempotency_id
        if tag is not None:
            # Read even by a body that read nothing: if another attempt of the
            # same run() lands after this read version, this commit must fail,
            # or a late landing of it would apply the body a second time.
            self._read_keys.add(idempotency_key(tag))
        if self._size > MAX_TRANSACTION_SIZE:  # reads can pass it without a write noticing
            raise self._too_large()
        if self._snapshot is None and (self._read_keys or self._read_ranges):
            await self._acquire()  # manual read conflicts need a version to check against
        if self._snapshot is not None and time.monotonic() - self._started > self._max_age:
            raise TransactionTooOld(f"the transaction is older than {self._max_age:g} s; retry it")
        request = CommitRequest(
            read_version=await self._snapshot.version() if self._snapshot else -1,
            mutations=self._mutations,
            read_keys=self._read_keys,
            read_ranges=self._read_ranges,
            write_keys=self._writes.keys(),
            write_ranges=self._write_ranges,
            versionstamped=self._versionstamped,
            feeds=tuple(self._db.feeds.values()) if self._db.feeds else (),
            snapshot=self._snapshot,
        )
        if tag is not None:
            tag_commit(request, tag)
        result = await self._db.engine.commit(request)
        if self._stamp is not None and not self._stamp.done():
            self._stamp.set_result(result.versionstamp)
        return result.version


class _Merger:
    """Overlays a transaction's own writes on the engine's rows of a scan."""

    def __init__(self, tr: Transaction, local: list[bytes], reverse: bool) -> None:
        self._tr = tr
        self._local = local[::-1] if reverse else local
        self._reverse = reverse
        self._next = 0

    def _before(self, a: bytes, b: bytes) -> bool:
        return a > b if self._reverse else a < b

    def _emit_local(self, key: bytes, base: bytes | None, out: list[tuple[bytes, bytes]]) -> None:
        entry = self._tr._writes[key]
        if entry is _UNREADABLE:
            raise AccessedUnreadable(
                f"the scan reached {key[:32]!r}, whose value a versionstamp operation "
                "of this transaction sets at commit"
            )
        value = _replay(entry, base) if type(entry) is list else entry
        if value is not None:
            out.append((key, value))  # type: ignore[arg-type]

    def merge(
        self, rows: list[tuple[bytes, bytes]], exhausted: bool, room: int
    ) -> list[tuple[bytes, bytes]]:
        """Merge one engine batch; ``room`` caps the output (0: no cap)."""
        local, out = self._local, list[tuple[bytes, bytes]]()
        cleared = self._tr._cleared if self._tr._clears else None
        if not local and cleared is None:
            return rows[:room] if room else rows
        for key, value in rows:
            while self._next < len(local) and self._before(local[self._next], key):
                self._emit_local(local[self._next], None, out)
                self._next += 1
            if self._next < len(local) and local[self._next] == key:
                self._emit_local(key, value, out)
                self._next += 1
            elif cleared is None or not cleared(key):
                out.append((key, value))
            if room and len(out) >= room:
                return out[:room]
        if exhausted:
            while self._next < len(local):
                self._emit_local(local[self._next], None, out)
                self._next += 1
        return out[:room] if room else out


def _examined(begin: bytes, end: bytes, last: bytes | None, reverse: bool) -> KeyRange:
    """The part of ``[begin, end)`` a scan depends on: all of it, or, when
    it stopped at ``last`` (a limit, or more batches to come), the keys from
    its start up to and including ``last``."""
    if last is None:
        return begin, end
    return (last, end) if reverse else (begin, last + b"\x00")


def _replay(ops: list[tuple[MutationType, bytes]], base: bytes | None) -> bytes | None:
    value = base
    for op, param in ops:
        value = apply_atomic(op, value, param)
    return value


class SnapshotReads:
    """Reads of a transaction that add no read conflicts (``tr.snapshot``)."""

    __slots__ = ("_tr",)

    def __init__(self, tr: Transaction) -> None:
        self._tr = tr

    async def get(self, key: bytes) -> bytes | None:
        return await self._tr.get(key, snapshot=True)

    def get_range(
        self,
        begin: bytes | KeySelector,
        end: bytes | KeySelector,
        *,
        limit: int = 0,
        reverse: bool = False,
        batch_size: int = 256,
    ) -> RangeResult:
        return self._tr.get_range(
            begin, end, limit=limit, reverse=reverse, snapshot=True, batch_size=batch_size
        )

    async def get_key(self, selector: KeySelector) -> bytes:
        return await self._tr.get_key(selector, snapshot=True)
