"""Declaring a feed and subscribing to it.

A feed is declared on a key prefix. From then on every commit that changes
keys under it also appends, atomically, a log entry keyed by its commit
versionstamp (written by the engine, see ``shale.engines.feedlog``). A
subscriber reads the log after its cursor in commit order, in short
transactions of bounded size, and waits for the next commit when it has
caught up — so a slow subscriber costs no memory, only lag, until it falls
behind retention and gets ``HistoryLost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from shale import tuple as tuples
from shale.core.database import FEED_DECLARATIONS, Database
from shale.core.transaction import Transaction, strinc
from shale.engines.feedlog import (
    DELETE,
    INSERT,
    UPDATE,
    FeedSpec,
    declaration_state,
    decode_entry,
    decode_state,
    encode_declaration,
    feed_log,
    feed_state_key,
    part_key,
    stamp_of,
)
from shale.errors import HistoryLost, UsageError
from shale.subspace import Subspace

__all__ = ["ALL", "DELETE", "INSERT", "UPDATE", "Change", "Feed"]

ALL = INSERT | DELETE | UPDATE
_END_OF_VERSION = 0xFFFF
"""A batch order no transaction has: ``(V, 0xFFFF)`` sorts after every commit at V."""
_CURSOR = struct.Struct(">10sH")
POLL_SECONDS = 1.0
"""How long a caught-up subscriber sleeps before reading again when no
commit through its own ``Database`` wakes it (commits by other processes)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One key's change, as a feed delivers it.

    ``cursor`` resumes right after this change (``subscribe(cursor=...)``).
    All changes of one transaction share ``stamp`` and arrive consecutively;
    ``last`` marks the final one this subscription delivers (after its
    ``operations`` filter). Prefeed changes (``prefeed=True``) are
    the keys present at the snapshot, delivered as inserts; their cursor
    resumes after the snapshot.
    """

    op: int
    key: bytes
    value: bytes | None
    old: bytes | None
    cursor: bytes
    stamp: bytes
    last: bool
    prefeed: bool = False
    time: float = 0.0

    @property
    def version(self) -> int:
        """The commit version of the change (the snapshot's, for prefeed)."""
        return int.from_bytes(self.stamp[:8], "big")


def _validate(name: str, prefix: bytes) -> None:
    if not isinstance(name, str) or not name:
        raise UsageError(f"a feed's name is a non-empty str, not {name!r}")
    if not isinstance(prefix, bytes) or not prefix or prefix.startswith(b"\xff"):
        raise UsageError(
            f"a feed's prefix is non-empty bytes outside the system keyspace, not {prefix!r}"
        )


class Feed:
    """A change feed on ``prefix`` (bytes or a ``Subspace``).

    ``old_values``: log the value each change replaced. ``max_age`` (seconds)
    and ``max_entries`` (logged transactions): retention, trimmed a little
    on every logged commit, whole transactions at a time, so no commit pays
    for a large trim; ``None`` keeps everything.
    """

    INSERT = INSERT
    DELETE = DELETE
    UPDATE = UPDATE
    ALL = ALL

    def __init__(
        self,
        name: str,
        prefix: bytes | Subspace,
        *,
        old_values: bool = False,
        max_age: float | None = None,
        max_entries: int | None = None,
    ) -> None:
        raw = prefix.key() if isinstance(prefix, Subspace) else prefix
        _validate(name, raw)
        if max_age is not None and (type(max_age) not in (int, float) or not max_age > 0):
            raise UsageError(f"max_age must be a positive number of seconds, not {max_age!r}")
        if max_entries is not None and (type(max_entries) is not int or max_entries < 1):
            raise UsageError(f"max_entries must be a positive int, not {max_entries!r}")
        self.spec = FeedSpec(name, raw, bool(old_values), max_age, max_entries)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def prefix(self) -> bytes:
        return self.spec.prefix

    def __repr__(self) -> str:
        return f"Feed({self.name!r}, {self.prefix!r})"

    # -- declaration -------------------------------------------------------

    @staticmethod
    def _declaration_key(name: str) -> bytes:
        return FEED_DECLARATIONS + tuples.pack((name,))

    async def declare(self, db: Database) -> Feed:
        """Record the feed; every commit from now on logs to it.

        Declaring an identical feed again is a no-op; a different one under
        the same name raises ``UsageError`` (drop it first).
        """
        spec = self.spec
        value = encode_declaration(spec)

        async def write(tr: Transaction) -> None:
            tr.access_system_keys = True
            existing = await tr.get(self._declaration_key(spec.name))
            if existing is not None and existing != value:
                raise UsageError(
                    f"feed {spec.name!r} is already declared differently; drop it first"
                )
            if existing is None:
                tr.set(self._declaration_key(spec.name), value)
                tr.set_versionstamped_value(feed_state_key(spec.name), declaration_state(spec.name))
                tr.set_versionstamped_value(_declared_key(spec.name), bytes(14))

        # Registered before the declaring commit is even queued: commits are
        # applied in queue order, so every commit after it carries the feed.
        previous = db.feeds.get(spec.name)
        db.feeds[spec.name] = spec
        try:
            await db.transact(write)
        except BaseException:
            if previous is None:
                db.feeds.pop(spec.name, None)
            else:
                db.feeds[spec.name] = previous
            raise
        return self

    @classmethod
    async def open(cls, db: Database, name: str) -> Feed:
        """The feed declared under ``name``.

        Raises:
            UsageError: no such feed.
        """
        spec = db.feeds.get(name)
        if spec is None:
            await db.refresh_feeds()  # another process may have declared it
            spec = db.feeds.get(name)
        if spec is None:
            raise UsageError(f"no feed named {name!r} is declared")
        return cls(
            spec.name,
            spec.prefix,
            old_values=spec.old_values,
            max_age=spec.max_age,
            max_entries=spec.max_entries,
        )

    async def drop(self, db: Database) -> None:
        """Stop logging and delete the feed's log, state and consumers."""
        name = self.name

        async def clear(tr: Transaction) -> None:
            tr.access_system_keys = True
            tr.clear(self._declaration_key(name))
            begin = b"\xff" + tuples.pack(("feed", name))
            tr.clear_range(begin, strinc(begin))

        db.feeds.pop(name, None)
        await db.transact(clear)

    # -- subscribing ---------------------------------------------------------

    async def subscribe(
        self,
        db: Database,
        cursor: bytes | None = None,
        *,
        prefeed: bool = False,
        operations: int = ALL,
        batch_size: int = 256,
        poll: float = POLL_SECONDS,
    ) -> AsyncGenerator[Change, None]:
        """Changes in commit order, forever (break out of the loop to stop).

        With ``cursor``, continue right after that change. Without one,
        start now — or, with ``prefeed=True``, first deliver every key under
        the prefix as of a snapshot version V (as inserts), then every
        change after V: no gap, no duplicate. ``operations`` filters by the
        bitmask ``INSERT | UPDATE | DELETE``.

        Raises:
            HistoryLost: ``cursor`` is older than the retained log.
            UsageError: bad arguments, or a cursor together with a prefeed.
        """
        if not 0 < operations <= ALL:
            raise UsageError(f"operations is a mask of INSERT|UPDATE|DELETE, not {operations!r}")
        if self.name not in db.feeds:
            await db.refresh_feeds()
        if self.name not in db.feeds:
            raise UsageError(f"feed {self.name!r} is not declared in this database; declare it")
        if batch_size < 1:
            raise UsageError(f"batch_size must be positive, not {batch_size!r}")
        if cursor is not None and prefeed:
            raise UsageError("a prefeed starts a new subscription; it cannot resume a cursor")
        if cursor is None:
            tr = db.transaction()
            try:
                cursor = _cursor_after(await tr.get_read_version())
                if prefeed:
                    async for change in self.snapshot(tr, operations):
                        yield change
            finally:
                tr.close()
        async for change in self._follow(db, _parse_cursor(cursor), operations, batch_size, poll):
            yield change

    async def position(self, db: Database) -> bytes:
        """A cursor for now: subscribing from it delivers every change that
        commits after this call returns."""
        async with db.transaction() as tr:
            return _cursor_after(await tr.get_read_version())

    async def snapshot(
        self, tr: Transaction, operations: int = ALL
    ) -> AsyncGenerator[Change, None]:
        """The keys under the prefix as ``tr`` reads them, as prefeed inserts
        whose cursor resumes right after ``tr``'s read version.

        It streams from ``tr``, so it must be consumed within the
        transaction age limit (5 s by default) or it fails with the
        retryable ``TransactionTooOld``.
        """
        cursor = _cursor_after(await tr.get_read_version())
        start = cursor[:10]
        async for key, value in tr.get_range(self.prefix, strinc(self.prefix), snapshot=True):
            if operations & INSERT:
                yield Change(INSERT, key, value, None, cursor, start, False, True)

    async def _follow(
        self,
        db: Database,
        position: tuple[bytes, int],
        operations: int,
        batch_size: int,
        poll: float,
    ) -> AsyncGenerator[Change, None]:
        # Resuming inside a transaction re-reads it and skips the changes up
        # to ``skip``; a cursor after a whole transaction starts past it.
        skip_stamp, skip = position
        log = feed_log(self.name)
        first_part = _END_OF_VERSION if skip == _END_OF_VERSION else 0
        begin = part_key(log, skip_stamp, first_part)
        await self._read(db, begin, begin, 1)
        parts: list[bytes] = []  # the parts read so far of the transaction ``stamp``
        stamp = b""
        while True:
            woken = db.next_change(self.name)
            rows = await self._read(db, begin, log + b"\xff", batch_size)
            complete = len(rows) < batch_size  # commits are atomic: no part is missing
            for key, value in rows:
                row_stamp, _ = stamp_of(log, key)
                if parts and row_stamp != stamp:
                    for change in self._changes(stamp, parts, skip_stamp, skip, operations):
                        yield change
                    parts = []
                stamp = row_stamp
                parts.append(value)
                begin = key + b"\x00"
            if complete:
                if parts:
                    for change in self._changes(stamp, parts, skip_stamp, skip, operations):
                        yield change
                    parts = []
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(woken), poll)

    @staticmethod
    def _changes(
        stamp: bytes, parts: list[bytes], skip_stamp: bytes, skip: int, operations: int
    ) -> list[Change]:
        when, changes = decode_entry(b"".join(parts))
        final = len(changes) - 1
        wanted = [
            (index, change)
            for index, change in enumerate(changes)
            if change[0] & operations and not (stamp == skip_stamp and index <= skip)
        ]
        out = []
        for n, (index, (op, key, new, old)) in enumerate(wanted):
            # The final change's cursor says "after the whole transaction",
            # so resuming from it needs none of it again; ``last`` marks the
            # final change this subscriber gets, whatever its filter.
            cursor = _CURSOR.pack(stamp, _END_OF_VERSION if index == final else index)
            last = n == len(wanted) - 1
            out.append(Change(op, key, new, old, cursor, stamp, last, False, when))
        return out

    async def _read(
        self, db: Database, begin: bytes, end: bytes, limit: int
    ) -> list[tuple[bytes, bytes]]:
        # Retried, so a subscriber through a server rides out its restarts.
        async def read(tr: Transaction) -> list[tuple[bytes, bytes]]:
            tr.access_system_keys = True
            if await tr.snapshot.get(_declared_key(self.name)) is None:
                raise UsageError(f"feed {self.name!r} was dropped; nothing more will be logged")
            _, horizon = decode_state(await tr.snapshot.get(feed_state_key(self.name)))
            if horizon and horizon >= begin:
                raise HistoryLost(_after_key(horizon, self.name), "the log no longer holds it")
            return await tr.get_range(begin, end, limit=limit, snapshot=True)

        return await db.run(read)

    async def origin(self, db: Database) -> bytes:
        """The cursor right after the feed's declaration: subscribing from it
        delivers every change the feed ever logged, or raises
        ``HistoryLost`` if retention dropped some (where a new consumer
        starts)."""
        async with db.transaction() as tr:
            tr.access_system_keys = True
            declared = await tr.snapshot.get(_declared_key(self.name))
        if declared is None:
            raise UsageError(f"feed {self.name!r} is not declared in this database")
        return _CURSOR.pack(declared, _END_OF_VERSION)

    async def oldest(self, db: Database) -> bytes:
        """A cursor from which ``subscribe`` delivers everything the log
        still holds (where a new consumer starts)."""
        async with db.transaction() as tr:
            tr.access_system_keys = True
            _, horizon = decode_state(await tr.snapshot.get(feed_state_key(self.name)))
        return _after_key(horizon, self.name) if horizon else _CURSOR.pack(b"\x00" * 10, 0xFFFF)


def _declared_key(name: str) -> bytes:
    return b"\xff" + tuples.pack(("feed", name, "declared"))


def _after_key(horizon: bytes, name: str) -> bytes:
    """The cursor after the whole transaction whose log key is ``horizon``."""
    stamp, _ = stamp_of(feed_log(name), horizon)
    return _CURSOR.pack(stamp, _END_OF_VERSION)


def _cursor_after(version: int) -> bytes:
    """The cursor after every commit at or below ``version``: no transaction
    has batch order 0xFFFF, so ``(version, 0xFFFF)`` sorts after them all."""
    stamp = version.to_bytes(8, "big") + _END_OF_VERSION.to_bytes(2, "big")
    return _CURSOR.pack(stamp, _END_OF_VERSION)


def _parse_cursor(cursor: bytes) -> tuple[bytes, int]:
    if not isinstance(cursor, bytes) or len(cursor) != _CURSOR.size:
        raise UsageError(
            f"a feed cursor is {_CURSOR.size} bytes from Change.cursor, not {cursor!r}"
        )
    stamp, index = _CURSOR.unpack(cursor)
    return stamp, index
