"""BigchainDB's ``ChangeFeed``, on a Shale feed.

BigchainDB's changefeed (reference 001) runs forever, puts changes on an
output queue filtered by an ``INSERT | DELETE | UPDATE`` bitmask, first
outputs a "prefeed", and reconnects after back-end errors. This adapter
keeps that shape and closes its gaps: the prefeed can be the table's own
snapshot joined to the live changes with no gap, a reconnect resumes from
the last change it queued (no loss, no repeat), and a lost history raises
``HistoryLost`` instead of silently skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from shale.core.database import Database
from shale.core.database import open as open_database
from shale.core.retry import Backoff, FullJitterBackoff
from shale.errors import EngineError, HistoryLost, RetryableError, UsageError
from shale.feeds.feed import ALL, DELETE, INSERT, UPDATE, Feed
from shale.feeds.feed import _cursor_after as _after
from shale.subspace import Subspace

__all__ = ["ChangeFeed"]

log = logging.getLogger("shale.feeds")


class ChangeFeed:
    """Changes under ``prefix`` matching ``operation``, put on ``outqueue``.

    ``prefeed``: ``True`` outputs every existing key first (as inserts, from
    one snapshot joined to the changes after it); an iterable outputs its
    items first, as BigchainDB did; ``None`` outputs only new changes.
    Give ``db`` (an open ``Database``) or ``url`` (opened, and re-opened
    after errors). ``outqueue`` is bounded (``maxsize``): when the reader of
    the queue is slow, the feed waits instead of buffering without bound.
    """

    INSERT = INSERT
    DELETE = DELETE
    UPDATE = UPDATE

    def __init__(
        self,
        prefix: bytes | Subspace,
        operation: int = ALL,
        *,
        prefeed: bool | Iterable[Any] | None = None,
        db: Database | None = None,
        url: str | None = None,
        name: str | None = None,
        maxsize: int = 1000,
        backoff: Backoff | None = None,
    ) -> None:
        if (db is None) == (url is None):
            raise UsageError("give ChangeFeed exactly one of db= or url=")
        raw = prefix.key() if isinstance(prefix, Subspace) else prefix
        self.feed = Feed(name or f"changefeed:{raw.hex()}", raw)
        if not 0 < operation <= ALL:
            raise UsageError(f"operation is a mask of INSERT|DELETE|UPDATE, not {operation!r}")
        self.operation = operation
        self.prefeed = prefeed
        self.outqueue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._db = db
        self._url = url
        self._backoff = backoff or FullJitterBackoff(base=0.05, cap=5.0)
        self.cursor: bytes | None = None
        """The cursor of the last change queued; a reconnect resumes after it."""

    async def run_forever(self) -> None:
        """Output the prefeed, then changes, forever; reconnect after errors.

        Raises:
            HistoryLost: the feed lost changes this one had not queued yet.
        """
        if self.prefeed is not None and self.prefeed is not True and self.prefeed is not False:
            for item in self.prefeed:
                await self.outqueue.put(item)
        failures = 0
        while True:
            try:
                db = await self._connect()
                await self.feed.declare(db)
                failures = 0  # connected: the next failure starts the backoff over
                await self._run_changefeed(db)
            except HistoryLost:
                raise
            except (EngineError, RetryableError, OSError) as exc:
                failures += 1
                log.warning("changefeed %s: %s; reconnecting", self.feed.name, exc)
                await self._disconnect()
                await asyncio.sleep(self._backoff.delay(failures))

    async def _run_changefeed(self, db: Database) -> None:
        if self.cursor is None:
            # Fix the starting point before anything can fail, so that a
            # reconnect neither skips changes nor repeats a finished prefeed.
            if self.prefeed is True:
                # The snapshot is read whole before anything is queued: a slow
                # queue reader cannot then age its transaction out half way,
                # which would restart it and repeat what was already queued.
                # It costs memory for one copy of the prefix, read once.
                tr = db.transaction()
                try:
                    snapshot = [c async for c in self.feed.snapshot(tr, self.operation)]
                    start = _after(await tr.get_read_version())
                finally:
                    tr.close()
                for change in snapshot:
                    await self.outqueue.put(change)
                self.cursor = start
            else:
                self.cursor = await self.feed.position(db)
        async for change in self.feed.subscribe(db, self.cursor, operations=self.operation):
            await self.outqueue.put(change)
            self.cursor = change.cursor

    async def _connect(self) -> Database:
        if self._db is None:
            assert self._url is not None
            self._db = await open_database(self._url)
        return self._db

    async def _disconnect(self) -> None:
        if self._url is not None and self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(EngineError):
                await db.close()
