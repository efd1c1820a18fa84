"""``shale serve``: one database, many clients, over TCP with optional TLS.

The server is a plain user of the core: it opens a ``Database`` and hands
its engine the clients' snapshots and commits, so the engine's own resolver
validates every commit, and the database's declared feeds (kept here, not
by clients) decide what each commit logs. Each connection is an
``asyncio.Protocol``: frames are cut and checked as bytes arrive, each
request runs at once and becomes a task only if it has to wait
(``shale.server.eager``), and replies go out in completion order, tagged
with the request's id.

A connection that has not authenticated yet — from its accept, through
its TLS handshake if any, to a valid ``HELLO`` — counts against
``max_unauthenticated``, a cap well below ``max_connections``. When it is
full, the oldest such connection is closed to make room for the new one:
peers without the token can neither fill ``max_connections`` nor keep a
client with the token out by sitting on the cap (refusing the newcomer
would lock clients out for as long as an attacker keeps the cap full), and
what they hold — TLS buffers included — is bounded by the cap. Refusals
are logged at most once a second.

Snapshots expire at the served database's ``max_transaction_age``, so a
client that leaks them holds only those it opened within that time. The
partly received frames of all connections share ``max_buffered``; a large
frame that does not fit is refused (``UNAVAILABLE``) and skipped, and its
connection goes on.

A connection is closed, and nobody else harmed, when it breaks the
protocol: a bad frame length, a first frame that is not a valid ``HELLO``,
a wrong token, a request that exists for its reply sent with id 0, a
refused request with no id to answer it by, silence before
authenticating or for ``idle_timeout`` after, or leaving the server
unable to write to it for ``stall_timeout``.

While the server cannot write to a client it stops reading from it and
stops dispatching, even in the middle of a chunk: the frames after the
current one stay unparsed in the frame reader until the client drains its
replies. So a client that does not read its replies costs the server about
one reply beyond the transport's high-water mark, plus the replies of its
requests already running.

On ``stop`` the server keeps reading, and answers each request that
arrives during the drain with ``SHUTTING_DOWN``; requests still running
when the drain ends are cancelled and answered (``COMMIT_UNKNOWN_RESULT``
for a commit) before the final id-0 ``SHUTTING_DOWN`` and the close.
``docs/protocol.md`` describes all of it.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from shale import errors
from shale import tuple as tuples
from shale.core.database import FEED_DECLARATIONS, Database
from shale.core.database import open as open_database
from shale.core.idempotency import IDEMPOTENCY_RETENTION, sweep_idempotency_ids
from shale.engines.base import CommitRequest, KeyRange, Mutation, MutationType
from shale.engines.feedlog import FeedSpec, decode_declaration
from shale.keys import strinc
from shale.server.connection import Connection, _TlsAccept
from shale.server.protocol import (
    ErrorCode,
    Limits,
    ReceiveBudget,
)

__all__ = ["DEFAULT_PORT", "Server", "serve"]

DEFAULT_PORT = 7480

SWEEP_INTERVAL = 10.0
"""Seconds between sweeps of expired idempotency ids."""

log = logging.getLogger("shale.server")


class _Throttled:
    """Warnings that peers can provoke at will (refused connections and
    tokens) at most once per ``interval`` seconds; the next one logged
    counts those left out. Unthrottled, one flood of connections once wrote
    172,000 lines in 20 seconds."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last = -interval
        self._left_out = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        if self._left_out:
            message += " (%d more refusals in the %.1f s before were not logged)"
            args = (*args, self._left_out, now - self._last)
        self._last = now
        self._left_out = 0
        log.warning(message, *args)


class Server:
    """Serves ``db`` to clients presenting ``token``.

    Start it with ``await server.start(host, port)`` (port 0 picks a free
    one, then ``server.port`` tells it), stop it with ``await server.stop()``.
    """

    def __init__(
        self,
        db: Database,
        token: str | bytes,
        *,
        limits: Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not token:
            raise errors.UsageError("the server needs a non-empty token")
        self.db = db
        self.token = token
        self.limits = limits or Limits()
        self.ssl_context = ssl_context
        self.connections: set[Connection] = set()
        self.unauthenticated: OrderedDict[Connection, None] = OrderedDict()
        """Connections from their accept until they authenticate or close,
        TLS handshake included, oldest first: at most
        ``limits.max_unauthenticated``."""
        self.refusals = _Throttled()
        self.budget = ReceiveBudget(self.limits.max_buffered)
        """Bytes of large frames partly received, across connections."""
        self.feed_watches: dict[str, tuple[asyncio.Future[None], int]] = {}
        """Pending ``WATCH_FEED`` by feed name: the future the watching
        connections share and how many they are. The last one to go takes
        the entry with it, so names that nobody watches cost nothing."""
        self.port = 0
        self.host = ""
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def token(self) -> bytes:
        """Only its digest is kept; setting it rotates it for new connections."""
        raise AttributeError("the token is write-only")

    @token.setter
    def token(self, token: str | bytes) -> None:
        secret = token.encode() if isinstance(token, str) else token
        self.token_digest = hashlib.sha256(secret).digest()

    async def start(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        """Listen on ``host:port``."""
        loop = asyncio.get_running_loop()
        # TLS is layered on by _TlsAccept rather than by create_server, so
        # that a connection over the cap is closed before its handshake.
        self._server = await loop.create_server(self._accept, host, port, backlog=2048)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        scheme = "shale+tls" if self.ssl_context else "shale"
        log.info("serving %s on %s://%s:%d", self.db.url, scheme, host, self.port)

    async def stop(self, drain: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``drain``
        seconds (the rest fail with ``SHUTTING_DOWN``, commits with
        ``COMMIT_UNKNOWN_RESULT``), close every connection, then the
        database, which finishes the commits its engine has queued."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for handshaking in list(self.unauthenticated):
            if handshaking.transport is None:
                handshaking.evict()
        connections = list(self.connections)
        # Connections keep reading, so that each request sent before the
        # close is answered (SHUTTING_DOWN) rather than lost to a reset.
        pending = [t for c in connections for t in c.tasks]
        if pending:
            _, late = await asyncio.wait(pending, timeout=drain)
            # Cancelled before their connections close, so each is answered:
            # SHUTTING_DOWN, or COMMIT_UNKNOWN_RESULT for a commit.
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
        for connection in connections:
            connection.close("server shutting down", ErrorCode.SHUTTING_DOWN)
        await self.db.close()
        log.info("stopped")

    def _accept(self) -> asyncio.Protocol:
        if self.ssl_context is None:
            return Connection(self)
        return _TlsAccept(self, self.ssl_context)

    @property
    def buffered(self) -> int:
        """Bytes of the receive budget in use."""
        return self.budget.used

    def admit(self, connection: Connection) -> None:
        """Count a connection just accepted against ``max_unauthenticated``;
        if the cap is full, close the oldest connection still without the
        token to make room. A client with the token authenticates within a
        round trip or two of its accept, so to keep it out an attacker must
        open ``max_unauthenticated`` connections in that time, not merely
        hold that many."""
        waiting = self.unauthenticated
        if len(waiting) >= self.limits.max_unauthenticated:
            oldest, _ = waiting.popitem(last=False)
            self.refusals.warning(
                "%s dropped: %d connections not authenticated yet, and it was the oldest",
                oldest.peer,
                len(waiting) + 1,
            )
            oldest.evict()
        waiting[connection] = None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await sweep_idempotency_ids(self.db, IDEMPOTENCY_RETENTION)
            except errors.ShaleError as exc:
                log.warning("sweeping idempotency ids failed: %s", exc)

    # -- commits: declarations are the server's to keep --------------------

    async def commit(self, request: CommitRequest) -> tuple[int, int]:
        """Commit a client's request with the server's feeds, then wake the
        feeds' watchers."""
        db = self.db
        undo = self._declare(request)
        request.feeds = tuple(db.feeds.values())
        try:
            result = await db.engine.commit(request)
        except BaseException:
            undo()
            raise
        db._notify_watches(request.write_keys, request.write_ranges)
        if db._next_change or self.feed_watches:
            stamped_keys = request.versionstamped and any(
                m[0] is MutationType.SET_VERSIONSTAMPED_KEY for m in request.mutations
            )
            if db._next_change:  # subscribers in this process
                db._changed(request.write_keys, request.write_ranges, stamped_keys)
            self._wake_feeds(request.write_keys, request.write_ranges, stamped_keys)
        return result.version, result.batch_order

    # -- feed watches: one shared future per watched name --------------------

    def watch_feed(self, name: str) -> asyncio.Future[None]:
        """The future a new watcher of ``name`` waits on; ``unwatch_feed``
        when it stops waiting unanswered."""
        entry = self.feed_watches.get(name)
        if entry is None:
            entry = (asyncio.get_running_loop().create_future(), 0)
        future, watchers = entry
        self.feed_watches[name] = (future, watchers + 1)
        return future

    def unwatch_feed(self, name: str, future: asyncio.Future[None]) -> None:
        entry = self.feed_watches.get(name)
        if entry is None or entry[0] is not future:
            return  # fired meanwhile: the entry went with it
        if entry[1] > 1:
            self.feed_watches[name] = (future, entry[1] - 1)
        else:
            del self.feed_watches[name]
            future.cancel()

    def _wake_feeds(self, keys: Iterable[bytes], ranges: Iterable[KeyRange], stamped: bool) -> None:
        """Answer the watches of the feeds a commit may have written to: those
        whose prefix it touches, every one if it wrote versionstamped keys
        (whose final keys are not looked at), and every name that is not a
        declared feed."""
        feeds = self.db.feeds
        for name, (future, _) in list(self.feed_watches.items()):
            spec = feeds.get(name)
            if spec is None or stamped or _touches(spec.prefix, keys, ranges):
                del self.feed_watches[name]
                future.set_result(None)

    def _declare(self, request: CommitRequest) -> Callable[[], None]:
        """Apply the feed declarations and drops a commit writes before it is
        queued, as ``Feed.declare`` does in process; return how to undo them
        if the commit fails. The undo leaves alone a feed that another
        commit changed in the meantime.

        Raises:
            ProtocolError: a declaration that does not decode; nothing is
                applied then.
        """
        feeds = self.db.feeds
        changes = [change for m in request.mutations for change in self._declarations(m)]
        done: list[tuple[str, FeedSpec | None, FeedSpec | None]] = []
        for name, spec in changes:
            done.append((name, feeds.get(name), spec))
            if spec is None:
                feeds.pop(name, None)
            else:
                feeds[name] = spec

        def undo() -> None:
            for name, before, after in reversed(done):
                if feeds.get(name) is not after:
                    continue
                if before is None:
                    feeds.pop(name, None)
                else:
                    feeds[name] = before

        return undo

    def _declarations(self, mutation: Mutation) -> list[tuple[str, FeedSpec | None]]:
        """The feeds ``mutation`` declares (a spec) or drops (``None``)."""
        kind, key, param = mutation
        if kind is MutationType.CLEAR_RANGE:
            return [
                (name, None)
                for name in self.db.feeds
                if key <= FEED_DECLARATIONS + tuples.pack((name,)) < param
            ]
        if not key.startswith(FEED_DECLARATIONS):
            return []
        if kind not in _DECLARING:
            raise errors.ProtocolError("feed declarations are written with set and clear only")
        try:
            (name,) = tuples.unpack(key, len(FEED_DECLARATIONS))
            spec = decode_declaration(param) if kind is MutationType.SET else None
        except ValueError as exc:
            raise errors.ProtocolError(f"invalid feed declaration: {exc}") from None
        if not isinstance(name, str) or (spec is not None and spec.name != name):
            raise errors.ProtocolError("a feed declaration's key and value disagree")
        return [(name, spec)]


_DECLARING = frozenset({MutationType.SET, MutationType.CLEAR})


def _touches(prefix: bytes, keys: Iterable[bytes], ranges: Iterable[KeyRange]) -> bool:
    end = strinc(prefix)
    return any(key.startswith(prefix) for key in keys) or any(
        begin < end and prefix < stop for begin, stop in ranges
    )


async def serve(
    url: str,
    token: str | bytes,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    limits: Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **options: object,
) -> Server:
    """Open the database at ``url`` and start serving it; the caller stops
    the returned server."""
    db = await open_database(url, **options)  # type: ignore[arg-type]
    server = Server(db, token, limits=limits, ssl_context=ssl_context)
    try:
        await server.start(host, port)
    except BaseException:
        await db.close()
        raise
    return server
