"""Named consumers: a feed cursor stored in the database, for exactly-once.

A consumer that commits its effects and its cursor in one transaction
processes each change exactly once, however often it is killed and
restarted: either the transaction committed (effects and cursor) or it did
not (neither). ``Consumer.process`` does exactly that, and also skips a
change another instance of the same consumer already committed, so two
instances never apply one change twice either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import UsageError
from shale.feeds.feed import ALL, Change, Feed

__all__ = ["Consumer"]

Handler = Callable[[Transaction, Change], Awaitable[Any]]


class Consumer:
    """The consumer ``name`` of ``feed``; its cursor lives under the feed.

    A new consumer starts right after the feed's declaration, so it sees
    every change the feed logged, or gets ``HistoryLost`` if retention
    already dropped some (``exc.oldest`` then resumes from what is left).
    """

    def __init__(self, feed: Feed, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise UsageError(f"a consumer's name is a non-empty str, not {name!r}")
        self.feed = feed
        self.name = name
        self._key = b"\xff" + tuples.pack(("feed", feed.name, "consumer", name))

    def __repr__(self) -> str:
        return f"Consumer({self.feed.name!r}, {self.name!r})"

    async def cursor(self, tr: Transaction) -> bytes | None:
        """The stored cursor (``None`` before the first commit); a normal
        read, so a concurrent advance of the cursor conflicts."""
        access, tr.access_system_keys = tr.access_system_keys, True
        try:
            return await tr.get(self._key)
        finally:
            tr.access_system_keys = access

    def advance(self, tr: Transaction, change: Change) -> None:
        """Store ``change``'s cursor in ``tr``; commit it with the effects."""
        access, tr.access_system_keys = tr.access_system_keys, True
        try:
            tr.set(self._key, change.cursor)
        finally:
            tr.access_system_keys = access

    async def changes(self, db: Database, *, operations: int = ALL) -> AsyncGenerator[Change, None]:
        """The feed's changes after the stored cursor, forever."""
        async with db.transaction() as tr:
            cursor = await self.cursor(tr)
        start = cursor or await self.feed.origin(db)
        async for change in self.feed.subscribe(db, start, operations=operations):
            yield change

    async def process(
        self, db: Database, handler: Handler, *, operations: int = ALL, limit: int = 0
    ) -> int:
        """Run ``handler(tr, change)`` for each change, each in a transaction
        that also advances the cursor: exactly once. Returns after ``limit``
        changes (``0``: never) with how many were handled."""
        handled = 0
        async for change in self.changes(db, operations=operations):
            if await db.transact(self._handle_one, handler, change):
                handled += 1
            if limit and handled >= limit:
                break
        return handled

    async def _handle_one(self, tr: Transaction, handler: Handler, change: Change) -> bool:
        stored = await self.cursor(tr)
        if stored is not None and stored >= change.cursor:
            return False  # another instance of this consumer got here first
        await handler(tr, change)
        self.advance(tr, change)
        return True
