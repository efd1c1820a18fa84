"""The database handle: opening by URL, transactions, the retry loop, watches."""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlsplit

from shale.core.idempotency import IDEMPOTENCY_TRUSTED, idempotency_applied, new_id
from shale.core.retry import Backoff, FullJitterBackoff
from shale.core.transaction import Transaction
from shale.engines.base import Engine, KeyRange
from shale.engines.conflicts import coalesce
from shale.engines.feedlog import DECLARATIONS, FeedSpec, decode_declaration
from shale.engines.options import window_option
from shale.engines.registry import Registry, default_registry
from shale.errors import CommitUnknownResult, DatabaseClosed, RetryableError, UsageError
from shale.keys import strinc

__all__ = ["DEFAULT_URL", "Database", "open", "transactional"]

DEFAULT_URL = "sqlite:///shale.db"
"""Where ``open()`` goes without a URL or ``SHALE_URL``: a file in the
current directory."""

DEFAULT_RETRIES = 10

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """An open database. Create it with ``await shale.open(url)``; close it
    with ``await db.close()`` or ``async with``."""

    def __init__(self, engine: Engine, url: str, max_transaction_age: float) -> None:
        self.engine = engine
        self.url = url
        self.max_transaction_age = max_transaction_age
        self._watches: dict[bytes, list[tuple[bytes | None, asyncio.Future[None]]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.feeds: dict[str, FeedSpec] = {}
        """Declared change feeds, by name; every commit carries them to the
        engine, which logs what it changed under their prefixes."""
        self._next_change: dict[str, asyncio.Future[None]] = {}
        self._watch_index: list[bytes] | None = None
        """``_watches``' keys in order, for commits that clear ranges; rebuilt
        on the next such commit after a watch is added or dropped."""
        self._closed = False

    def __repr__(self) -> str:
        return f"<shale.Database {_redacted(self.url)!r}>"

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Finish the commits already under way and release the engine;
        idempotent. Watches and feed waits are cancelled, and every later
        use of this handle or of its open transactions raises
        ``DatabaseClosed``."""
        if self._closed:
            return
        self._closed = True
        # Open transactions are not tracked (that costs every transaction):
        # each fails on its next use, since the engine refuses snapshots,
        # reads and commits once closed, and so does this handle.
        futures = [f for watchers in self._watches.values() for _, f in watchers]
        for future in [*futures, *self._next_change.values(), *self._background]:
            if not future.done():
                future.cancel()
        self._watches.clear()
        self._watch_index = None
        self._next_change.clear()
        await self.engine.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"{self!r} is closed; open it again to go on")

    def transaction(self) -> Transaction:
        """A new transaction; ``async with db.transaction() as tr:`` commits it
        when the block ends cleanly and abandons it on an exception."""
        if self._closed:
            self._check_open()
        return Transaction(self)

    create_transaction = transaction

    async def transact(
        self,
        fn: Callable[Concatenate[Transaction, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn(tr, *args, **kwargs)`` in a transaction and commit it,
        retrying on ``RetryableError`` up to ``DEFAULT_RETRIES`` times with
        full-jitter exponential backoff. ``fn`` may run more than once, so
        its effects outside the transaction must be idempotent. Use
        ``run(fn, retries=..., backoff=...)`` to choose the policy.
        """
        return await self.run(fn, *args, **kwargs)  # type: ignore[arg-type]

    async def run(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = DEFAULT_RETRIES,
        backoff: Backoff | None = None,
        idempotent: bool = False,
        **kwargs: Any,
    ) -> T:
        """``transact`` with an explicit policy.

        ``retries``: how many times to retry after the first attempt.
        ``idempotent``: on an engine without ``unknown_results``, also retry
        ``CommitUnknownResult``; only safe if running ``fn`` twice is.

        On an engine with ``capabilities.unknown_results`` (a reply can be
        lost on the network) every attempt's commit records one id per
        ``run`` (``shale.core.idempotency``), so an unknown result is
        retried whatever ``idempotent`` says: the retry reads the id first,
        and returns the lost attempt's result if it was applied. Attempts
        conflict on the id, so at most one is applied; after
        ``IDEMPOTENCY_TRUSTED`` seconds the unknown result is raised
        instead. docs/semantics.md has the details.
        """
        if retries < 0:
            raise UsageError(f"retries must be >= 0, not {retries}")
        strategy = backoff or FullJitterBackoff()
        ident = new_id() if self.engine.capabilities.unknown_results else None
        started = time.monotonic()
        unknown: tuple[bytes, T] | None = None  # the id, and the latest result gone unknown
        attempt = 0
        while True:
            tr = self.transaction()
            tr._idempotency_id = ident
            committing = False
            try:
                if unknown is not None and await idempotency_applied(tr, unknown[0]):
                    tr.close()
                    return unknown[1]
                result = await fn(tr, *args, **kwargs)
                committing = True
                await tr.commit()
                return result
            except RetryableError as exc:
                tr.close()
                if isinstance(exc, CommitUnknownResult):
                    if committing and ident is not None:
                        if time.monotonic() - started > IDEMPOTENCY_TRUSTED:
                            exc.add_note("too late to tell by its idempotency id; not retried")
                            raise
                        unknown = (ident, result)
                    elif not idempotent:
                        raise
                attempt += 1
                if attempt > retries:
                    exc.add_note(f"gave up after {attempt} attempts")
                    raise
                await asyncio.sleep(strategy.delay(attempt))
            except BaseException:
                tr.close()
                raise

    async def get(self, key: bytes) -> bytes | None:
        """Read one key in its own transaction."""
        async with self.transaction() as tr:
            return await tr.get(key)

    async def set(self, key: bytes, value: bytes) -> None:
        """Write one key in its own transaction."""
        async with self.transaction() as tr:
            tr.set(key, value)

    async def clear(self, key: bytes) -> None:
        """Remove one key in its own transaction."""
        async with self.transaction() as tr:
            tr.clear(key)

    def next_change(self, feed: str) -> asyncio.Future[None]:
        """A future that resolves when a commit made through this handle
        writes under the prefix of the feed named ``feed``; its
        subscribers wait on it, and sleep through unrelated commits. An
        engine whose commits come from other processes too (the remote
        engine) provides the future itself, from its server's pushes."""
        self._check_open()
        pushed = getattr(self.engine, "next_change", None)
        if pushed is not None:
            remote: asyncio.Future[None] = pushed(feed)
            return remote
        future = self._next_change.get(feed)
        if future is None or future.done():
            future = self._next_change[feed] = asyncio.get_running_loop().create_future()
        return future

    async def refresh_feeds(self) -> None:
        """Reload the feed declarations from the database, for feeds that
        another process declared or dropped since this handle opened."""
        self.feeds = await _read_feeds(self)

    def _changed(self, keys: Iterable[bytes], ranges: Iterable[KeyRange], stamped: bool) -> None:
        """Wake the subscribers of the feeds a commit wrote to. A commit with
        versionstamped keys may have written anywhere: it wakes them all."""
        for name, future in list(self._next_change.items()):
            spec = self.feeds.get(name)
            if future.done():
                del self._next_change[name]
            elif spec is None or stamped or _touches(spec.prefix, keys, ranges):
                future.set_result(None)
                del self._next_change[name]

    # -- watches: fired by commits made through this handle ---------------

    def _add_watch(self, key: bytes, seen: bytes | None, future: asyncio.Future[None]) -> None:
        if future.done():
            return
        if self._closed:  # its commit finished while the handle closed
            future.cancel()
            return
        remote = getattr(self.engine, "watch", None)
        if remote is not None:  # the server sees every client's commits
            remote(key, seen, future)
            return
        if key not in self._watches:
            self._watch_index = None
        self._watches.setdefault(key, []).append((seen, future))
        self._notify_watches((key,), ())

    def _prune_watches(self, key: bytes) -> None:
        """Drop the resolved or cancelled watches of ``key``."""
        remaining = [entry for entry in self._watches.get(key, ()) if not entry[1].done()]
        if remaining:
            self._watches[key] = remaining
        elif self._watches.pop(key, None) is not None:
            self._watch_index = None

    def _notify_watches(self, keys: Iterable[bytes], ranges: Sequence[KeyRange]) -> None:
        if not self._watches or self._closed:
            return
        touched = {k for k in keys if k in self._watches}
        if ranges:
            # Bisections into the watched keys: a commit clearing thousands
            # of ranges under 100,000 watches must not take keys x ranges.
            if self._watch_index is None:
                self._watch_index = sorted(self._watches)
            index = self._watch_index
            for begin, end in coalesce(ranges):
                touched.update(
                    index[bisect.bisect_left(index, begin) : bisect.bisect_left(index, end)]
                )
        if touched:
            task = asyncio.ensure_future(self._fire(touched))
            self._background.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._background.discard)

    async def _fire(self, keys: Iterable[bytes]) -> None:
        backoff, attempt = FullJitterBackoff(), 0
        while True:
            try:
                snap = await self.engine.snapshot()
                break
            except RetryableError:
                # The engine is at a limit (SQLite's open readers, say); the
                # watches must still be checked once it has room.
                attempt += 1
                await asyncio.sleep(backoff.delay(attempt))
        try:
            for key in keys:
                current = await snap.get(key)
                remaining = []
                for seen, future in self._watches.get(key, ()):
                    if future.done():
                        continue
                    if current != seen:
                        future.set_result(None)
                    else:
                        remaining.append((seen, future))
                if remaining:
                    self._watches[key] = remaining
                elif self._watches.pop(key, None) is not None:
                    self._watch_index = None
        finally:
            snap.release()


def _touches(prefix: bytes, keys: Iterable[bytes], ranges: Iterable[KeyRange]) -> bool:
    end = strinc(prefix)
    return any(key.startswith(prefix) for key in keys) or any(
        begin < end and prefix < stop for begin, stop in ranges
    )


def _redacted(url: str) -> str:
    """``url`` without its secrets: the password (a server's token) and a
    ``token`` option, which reprs and logs must not show."""
    parts = urlsplit(url)
    redacted = url
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        redacted = redacted.replace(parts.netloc, f"{userinfo.partition(':')[0]}:***@{host}", 1)
    if parts.query:
        pairs = parts.query.split("&")
        hidden = ["token=***" if p.partition("=")[0] == "token" else p for p in pairs]
        redacted = redacted.replace(parts.query, "&".join(hidden), 1)
    return redacted


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return url, dict(parse_qsl(parts.query, keep_blank_values=True))


async def open(
    url: str | None = None, *, registry: Registry | None = None, **options: object
) -> Database:
    """Open the database at ``url``.

    Without a URL, ``SHALE_URL`` is used if set, else ``sqlite:///shale.db``
    in the current directory. Options come from the URL's query string
    (``sqlite:///app.db?synchronous=normal``) and keyword arguments, which
    win. ``max_transaction_age`` (seconds, default 5) applies to every
    engine.
    """
    url = url or os.environ.get("SHALE_URL") or DEFAULT_URL
    url, from_query = _split_options(url)
    merged: Mapping[str, object] = {**from_query, **options}
    window = window_option(merged)
    engine_class = (registry or default_registry()).engine_class(url)
    _check_options(engine_class, url, merged)
    engine = await engine_class.open(url, merged)
    db = Database(engine, url, window)
    try:
        await _load_feeds(db)
    except BaseException:
        await db.close()
        raise
    return db


def _check_options(engine_class: type[Engine], url: str, options: Mapping[str, object]) -> None:
    """Refuse options the engine does not read (where it says which it
    reads): a misspelt ``synchronus=normal`` must not silently leave a
    database at the default durability."""
    known: frozenset[str] | None = getattr(engine_class, "options", None)
    if known is None:
        return
    known = known | {"max_transaction_age"}
    unknown = sorted(set(options) - known)
    if unknown:
        scheme = urlsplit(url).scheme
        raise UsageError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {scheme}://; it takes {', '.join(sorted(known))}"
        )


FEED_DECLARATIONS = DECLARATIONS
"""``\\xff + pack(("feeds",))``: where feed declarations live (``shale.feeds``)."""


async def _load_feeds(db: Database) -> None:
    db.feeds.update(await _read_feeds(db))


async def _read_feeds(db: Database) -> dict[str, FeedSpec]:
    async def read(tr: Transaction) -> list[tuple[bytes, bytes]]:
        tr.access_system_keys = True
        return await tr.get_range(FEED_DECLARATIONS, FEED_DECLARATIONS + b"\xff")

    specs = (decode_declaration(value) for _, value in await db.run(read))
    return {spec.name: spec for spec in specs}


def transactional(
    fn: Callable[Concatenate[Transaction, P], Awaitable[T]],
) -> Callable[Concatenate[Database | Transaction, P], Awaitable[T]]:
    """Decorate ``async def fn(tr, ...)`` so it takes a database or a
    transaction. Given a database, it runs in a new, retried transaction;
    given a transaction, it joins it and does not commit (so transactional
    functions compose, as in FoundationDB's bindings)."""

    async def wrapper(db_or_tr: Database | Transaction, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if isinstance(db_or_tr, Transaction):
            return await fn(db_or_tr, *args, **kwargs)
        return await db_or_tr.transact(fn, *args, **kwargs)

    wrapper.__name__ = getattr(fn, "__name__", "transactional")
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper
