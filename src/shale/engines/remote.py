"""The ``shale://`` engine: a database served by ``shale serve``.

``shale://[:TOKEN@]host[:port]`` (``shale+tls://`` for TLS). The token comes
from the ``token=`` option, the URL, or ``$SHALE_TOKEN``, in that order.
Options: ``ca`` (a CA file to verify the server with; the system's by
default), ``verify`` (``false`` to skip verification — for tests only),
``server_hostname``, ``cert`` and ``key`` (a client certificate, for a
server that requires one), ``connect_timeout`` (seconds to keep trying to
reach the server before ``Unavailable``; default 10).

One connection per engine carries every transaction's requests, pipelined.
Snapshots live on the server: opening one is a one-way message sent ahead
of the first read, so a transaction's first read costs one round trip, not
two. When the connection drops, requests in flight fail — reads with the
retryable ``Unavailable``, commits with ``CommitUnknownResult`` (which
``Database.run`` resolves with the commit's idempotency id) — and the next
request reconnects, with backoff, for up to ``connect_timeout``.

``close()`` gives the commits already sent up to ``CLOSE_GRACE`` seconds to
be answered, then ends everything: requests still waiting fail with
``DatabaseClosed`` (commits with ``CommitUnknownResult``), pending watches
are cancelled, and every later operation raises ``DatabaseClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import ssl
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, cast
from urllib.parse import unquote, urlsplit

from shale import errors
from shale.engines.base import Capabilities, CommitRequest, CommitResult, EngineSnapshot
from shale.server.protocol import (
    PROTOCOL_VERSION,
    REPLY,
    ErrorCode,
    FrameError,
    FrameReader,
    FrameWriter,
    MessageType,
    decode_body,
    encode_commit,
    error_from,
    frame,
)

__all__ = ["RemoteEngine", "RemoteSnapshot"]

DEFAULT_PORT = 7480
CONNECT_TIMEOUT = 10.0
CLOSE_GRACE = 2.0
"""Seconds ``close()`` waits for the replies of commits already sent."""

_COUNTED = frozenset(
    {MessageType.GET, MessageType.GET_RANGE, MessageType.VERSION, MessageType.COMMIT}
)
"""The requests the server counts against ``max_in_flight``; opens and
watches are bounded separately."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class _Link(asyncio.Protocol):
    """One connection: frames out, replies matched to their requests."""

    def __init__(self, engine: RemoteEngine) -> None:
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.reader = FrameReader(1 << 20)
        self.pending: dict[int, tuple[asyncio.Future[tuple[Any, ...]], int]] = {}
        self._last_id = 0
        self.counted = 0
        """Requests pending that count against the server's ``max_in_flight``."""
        self.snapshot_ids = itertools.count(1)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[errors.ShaleError] = asyncio.get_running_loop().create_future()
        self.max_in_flight = 64
        self._room = asyncio.Event()
        """Set when a reply frees a slot or the socket drains: wakes callers
        waiting for ``max_in_flight``."""
        self.writer = FrameWriter()
        self._writable = asyncio.Event()
        self._writable.set()
        self.used = True
        self.alive = True
        """False once the connection is lost; ``closed`` then says why."""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the socket is closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not
        # subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.writer.transport = self.transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
            # A TLS alert (the server wants a client certificate, or refused
            # ours) is not transient: retrying would only wait out the timeout.
            self._fail(errors.AuthenticationError(f"the server refused TLS: {exc.reason}"))
            return
        self._fail(errors.Unavailable(f"lost the connection to the server: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        self._room.set()

    def data_received(self, data: bytes) -> None:
        try:
            for kind, request, body in self.reader.feed(data):
                if body is not None:  # always: this reader has no budget to refuse for
                    self._reply(kind, request, body)
        except (FrameError, errors.ProtocolError, TypeError, ValueError) as exc:
            self._fail(errors.ProtocolError(f"the server sent a bad frame: {exc}"))

    def _reply(self, kind: int, request: int, body: bytes) -> None:
        fields = decode_body(body)
        if request == 0:  # the server ends the connection, saying why
            code, message = fields if len(fields) == 2 else (ErrorCode.INTERNAL, repr(fields))
            self._fail(error_from(code, message), code=code)
            return
        entry = self.pending.pop(request, None)
        if entry is None:
            return
        if entry[1] in _COUNTED:
            self.counted -= 1
            self._room.set()
        future, sent = entry
        if future.done():
            return
        if kind == MessageType.ERROR:
            future.set_exception(error_from(*fields))
        elif kind == sent | REPLY:
            future.set_result(fields)
        else:
            future.set_exception(errors.ProtocolError(f"reply {kind:#x} to request {sent:#x}"))

    def _fail(self, error: errors.ShaleError, code: int | None = None) -> None:
        if self.closed.done():
            return
        self.alive = False
        self.writer.open = False
        self.closed.set_result(error)
        self._room.set()
        if self.transport is not None:
            self.transport.close()
        pending, self.pending = self.pending, {}
        for future, sent in pending.values():
            if future.done():
                continue
            if sent == MessageType.COMMIT and code != ErrorCode.AUTHENTICATION:
                unknown = errors.CommitUnknownResult(f"the commit's outcome is unknown: {error}")
                future.set_exception(unknown)
            else:
                future.set_exception(error)
        self.engine._link_lost(self)

    def send(self, kind: int, fields: tuple[Any, ...]) -> None:
        """A message that gets no reply."""
        if self.alive and self.transport is not None:
            self.writer.write(frame(kind, 0, fields), hold=True)

    async def call(self, kind: int, fields: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send a request and wait for its reply's fields."""
        if not self.alive:
            raise self.closed.result()
        while self.counted >= self.max_in_flight or not self._writable.is_set():
            self._room.clear()
            await self._room.wait()
            if not self.alive:
                raise self.closed.result()
        return await self.start(kind, fields)

    def _next_id(self) -> int:
        """Ids run from 1 to 2**32 - 1 and wrap, skipping any still pending."""
        request = self._last_id % 0xFFFF_FFFF + 1
        while request in self.pending:
            request = request % 0xFFFF_FFFF + 1
        self._last_id = request
        return request

    def start(
        self, kind: int, fields: tuple[Any, ...], hold: bool = False
    ) -> asyncio.Future[tuple[Any, ...]]:
        """Send a request (see ``FrameWriter`` for ``hold``); the future of its
        reply's fields."""
        if not self.alive or self.transport is None:
            raise self.closed.result() if self.closed.done() else errors.Unavailable("closed")
        request = self._next_id()
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self.pending[request] = (future, kind)
        if kind in _COUNTED:
            self.counted += 1
        self.used = True
        self.writer.write(frame(kind, request, fields), hold)
        return future


class RemoteSnapshot:
    """A snapshot held open on the server for one transaction.

    It is opened by a one-way message sent with the first read, and every
    read's reply carries its read version: a transaction learns it without
    a frame of its own. ``version()`` asks for it only when nothing was
    read yet."""

    __slots__ = ("__weakref__", "_dropped", "_engine", "_link", "_released", "_sid", "_version")

    def __init__(self, engine: RemoteEngine, link: _Link, sid: int) -> None:
        self._engine = engine
        self._link = link
        self._sid = sid
        self._version: int | None = None
        self._released = False
        # A transaction dropped without commit() or close() must not keep its
        # snapshot on the server until the connection ends, where it would
        # count against max_snapshots. A finalizer rather than __del__: it
        # holds only the link and the id, and release() disarms it.
        self._dropped = weakref.finalize(self, _release_dropped, link, sid)
        self._dropped.atexit = False

    @property
    def read_version(self) -> int:
        if self._version is None:
            raise errors.UsageError("the read version is not known yet; await version()")
        return self._version

    async def version(self) -> int:
        if self._version is None:
            (self._version,) = await self._call(MessageType.VERSION, (self._sid,))
        return self._version

    async def get(self, key: bytes) -> bytes | None:
        value, self._version = await self._call(MessageType.GET, (self._sid, key))
        return value  # type: ignore[no-any-return]

    async def get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool
    ) -> list[tuple[bytes, bytes]]:
        rows: list[tuple[bytes, bytes]] = []
        while True:
            want = limit - len(rows) if limit else 0
            more, self._version, *flat = await self._call(
                MessageType.GET_RANGE, (self._sid, begin, end, want, reverse)
            )
            rows += zip(flat[::2], flat[1::2], strict=True)
            if not more or not flat or (limit and len(rows) >= limit):
                return rows
            if reverse:
                end = flat[-2]
            else:
                begin = flat[-2] + b"\x00"

    async def _call(self, kind: int, fields: tuple[Any, ...]) -> tuple[Any, ...]:
        if self._engine._closed:
            raise errors.DatabaseClosed("the database was closed")
        if self._released:
            raise errors.TransactionTooOld("the snapshot was released")
        if not self._link.alive:
            raise errors.Unavailable("the connection this snapshot lived on was lost; retry")
        # The server queues it behind the open; a failed open answers it
        # with the open's error.
        return await self._link.call(kind, fields)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._dropped.detach()
            self._link.send(MessageType.RELEASE, (self._sid,))

    def _handed_over(self) -> int:
        """Mark the snapshot released by the commit that names it; its id,
        or 0 if it was released already."""
        if self._released:
            return 0
        self._released = True
        self._dropped.detach()
        return self._sid


def _release_dropped(link: _Link, sid: int) -> None:
    """Release the snapshot of a transaction dropped without ending. A
    finalizer runs wherever the garbage collector does — any thread, in the
    middle of any of the loop's callbacks — so it only hands the ``RELEASE``
    to the link's loop, and never raises: a closed loop took the connection
    with it, and the server released everything then."""
    if link.alive:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            link.loop.call_soon_threadsafe(link.send, MessageType.RELEASE, (sid,))


_TLS_OPTIONS = frozenset({"ca", "verify", "server_hostname", "cert", "key"})
"""Options of ``shale+tls://`` only; on plain ``shale://`` they are refused."""


class RemoteEngine:
    """The client of ``shale serve``; see the module docstring."""

    scheme: ClassVar[str] = "shale"
    options: ClassVar[frozenset[str]] = frozenset({"token", "connect_timeout", *_TLS_OPTIONS})
    capabilities: Capabilities

    def __init__(self, address: tuple[str, int], token: bytes, settings: _Settings) -> None:
        self.address = address
        self.token = token
        self.settings = settings
        self.capabilities = Capabilities(multi_process=True, unknown_results=True)
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._feeds: dict[str, asyncio.Future[None]] = {}
        self._watches: set[asyncio.Future[None]] = set()
        """The futures of pending key watches, cancelled by ``close()``."""
        self._pinger: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<RemoteEngine {self.address[0]}:{self.address[1]}>"

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> RemoteEngine:
        address, token, settings = _parse(url, options)
        engine = cls(address, token, settings)
        await engine._connected()
        return engine

    # -- connection --------------------------------------------------------

    async def _connected(self) -> _Link:
        link = self._link
        if link is not None and link.alive:
            return link
        if self._closed:
            raise errors.DatabaseClosed("the database was closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and connecting.cancelled() and not (task and task.cancelling()):
                # close() stopped the reconnect this request was waiting for.
                raise errors.DatabaseClosed("the database was closed") from None
            raise

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connect_timeout
        delay = 0.05
        while True:
            try:
                return await self._handshake()
            except ssl.SSLCertVerificationError as exc:
                # Not transient: retrying would only wait out connect_timeout.
                host, port = self.address
                raise errors.AuthenticationError(
                    f"the server at {host}:{port} failed TLS verification: "
                    f"{exc.verify_message} (is ca= the CA that signed its certificate?)"
                ) from exc
            except (OSError, errors.Unavailable, TimeoutError) as exc:
                if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
                    host, port = self.address
                    raise errors.AuthenticationError(
                        f"the server at {host}:{port} refused TLS: {exc.reason}"
                    ) from exc
                if loop.time() + delay > deadline:
                    host, port = self.address
                    raise errors.Unavailable(
                        f"cannot reach the server at {host}:{port}: {exc}"
                    ) from None
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    async def _handshake(self) -> _Link:
        loop = asyncio.get_running_loop()
        host, port = self.address
        settings = self.settings
        _, link = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Link(self),
                host,
                port,
                ssl=settings.ssl,
                server_hostname=settings.server_hostname if settings.ssl else None,
            ),
            settings.connect_timeout,
        )
        try:
            fields = await asyncio.wait_for(
                link.start(MessageType.HELLO, (PROTOCOL_VERSION, self.token, "shale-python")),
                settings.connect_timeout,
            )
        except BaseException:
            if link.transport is not None:
                link.transport.close()
            raise
        if len(fields) < 8 or fields[0] != PROTOCOL_VERSION:
            if link.transport is not None:
                link.transport.close()
            raise errors.ProtocolError(f"not a protocol 1 HELLO reply: {fields!r:.200}")
        # Later minor versions may append fields; these eight come first.
        _, _, max_frame, max_in_flight, idle, durable, persistent, old = fields[:8]
        link.reader.max_frame = max_frame
        link.max_in_flight = max_in_flight
        self.capabilities = Capabilities(
            durable=durable,
            persistent=persistent,
            multi_process=True,
            old_snapshots=old,
            unknown_results=True,
        )
        self._link = link
        if self._pinger is None or self._pinger.done():
            self._pinger = asyncio.ensure_future(self._ping(idle / 3))
        return link

    def _link_lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        # Subscribers re-read after a reconnect: what they missed is in the log.
        feeds, self._feeds = self._feeds, {}
        for future in feeds.values():
            if not future.done():
                future.set_result(None)

    async def _ping(self, interval: float) -> None:
        while not self._closed:
            await asyncio.sleep(interval)
            link = self._link
            if link is not None and link.alive and not link.used:
                with contextlib.suppress(errors.ShaleError):
                    await link.call(MessageType.PING, ())
            if link is not None:
                link.used = False

    # -- the engine contract ---------------------------------------------------

    async def snapshot(self, version: int | None = None) -> EngineSnapshot:
        link = await self._connected()
        sid = next(link.snapshot_ids)
        # One-way and held for the first read's write: no frame of its own
        # either way, and the read queues behind it on the server.
        link.send(MessageType.OPEN, (sid, version))
        return RemoteSnapshot(self, link, sid)

    async def commit(self, request: CommitRequest) -> CommitResult:
        link = await self._connected()
        sid = 0
        snapshot = request.snapshot
        if isinstance(snapshot, RemoteSnapshot) and snapshot._link is link:
            # The server releases it with the commit: one frame fewer.
            sid = snapshot._handed_over()
        version, order = await link.call(MessageType.COMMIT, encode_commit(sid, request))
        return CommitResult(version, order)

    def next_change(self, feed: str) -> asyncio.Future[None]:
        """Resolves when the server reports a commit under ``feed``'s prefix,
        or the connection drops (whoever waits then reads what it missed)."""
        future = self._feeds.get(feed)
        if future is not None and not future.done():
            return future
        future = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(errors.DatabaseClosed("the database was closed"))
            return future
        link = self._link
        if link is None or not link.alive:
            # Nothing to watch on: the caller's next read reconnects, and
            # its next wait watches. Until then it must not sleep.
            future.set_result(None)
            return future
        self._feeds[feed] = future
        # Sent now, ahead of the read the caller sends next, not from a task
        # behind it: the server registers the watch as it reads the frame, so
        # a commit the read's snapshot misses still fires it. Sent outside
        # the in-flight slots, as OPEN is; the server refuses a watch beyond
        # its limit, which only wakes the caller early.
        reply = link.start(MessageType.WATCH_FEED, (feed,))

        def answered(reply: asyncio.Future[tuple[Any, ...]]) -> None:
            if not reply.cancelled():
                reply.exception()
            if not future.done():
                future.set_result(None)

        reply.add_done_callback(answered)
        return future

    def watch(self, key: bytes, seen: bytes | None, future: asyncio.Future[None]) -> None:
        """Resolve ``future`` once ``key``'s value is no longer ``seen``, as
        the server sees it, whoever commits the change. A dropped connection
        re-registers the watch; the server answers at once if the value
        changed meanwhile. ``close()`` cancels it."""
        if self._closed:
            future.set_exception(errors.DatabaseClosed("the database was closed"))
            return
        task = asyncio.ensure_future(self._watch_key(key, seen, future))
        self._watches.add(future)
        future.add_done_callback(self._watches.discard)
        future.add_done_callback(lambda _: task.cancel())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _watch_key(
        self, key: bytes, seen: bytes | None, future: asyncio.Future[None]
    ) -> None:
        while not future.done():
            link: _Link | None = None
            try:
                link = await self._connected()
                await link.start(MessageType.WATCH_KEY, (key, seen))
            except errors.Unavailable as exc:
                if self._closed or (link is not None and link.alive):
                    # Refused (max_watches) on a live connection: sending it
                    # again would only be refused again.
                    if not future.done():
                        future.set_exception(exc)
                    return
                continue
            except errors.ShaleError as exc:
                if not future.done():
                    future.set_exception(exc)
                return
            if not future.done():
                future.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._pinger, self._connecting):
            if task is not None:
                task.cancel()
        for watch in list(self._watches):
            watch.cancel()
        link = self._link
        if link is None:
            return
        commits = [f for f, kind in link.pending.values() if kind == MessageType.COMMIT]
        if commits and link.alive:
            # Their outcome is worth a moment: unanswered, they are unknown.
            await asyncio.wait(commits, timeout=CLOSE_GRACE)
        link._fail(errors.DatabaseClosed("the database was closed"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(link.lost), 1.0)


class _Settings:
    __slots__ = ("connect_timeout", "server_hostname", "ssl")

    def __init__(
        self, ssl_context: ssl.SSLContext | None, server_hostname: str | None, timeout: float
    ) -> None:
        self.ssl = ssl_context
        self.server_hostname = server_hostname
        self.connect_timeout = timeout


def _parse(url: str, options: Mapping[str, object]) -> tuple[tuple[str, int], bytes, _Settings]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("shale", "shale+tls"):
        raise errors.EngineError(f"{url!r} is not a shale:// or shale+tls:// URL")
    # Errors name the address, never the URL: it may carry the token.
    address = parts.netloc.rpartition("@")[2]
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise errors.EngineError(f"{address!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise errors.EngineError(f"{scheme}://{address} names no host (shale://host:port)")
    token = options.get("token") or unquote(parts.password or "") or os.environ.get("SHALE_TOKEN")
    if not token:
        raise errors.AuthenticationError(
            "no token: pass token=..., put it in the URL (shale://:TOKEN@host:port) "
            "or set SHALE_TOKEN"
        )
    if not isinstance(token, str | bytes):
        raise errors.UsageError(f"the token is a str, not {type(token).__name__}")
    # Read from a token file (``make run`` writes .shale-token) it ends in a
    # newline, which the server drops from its own file too.
    token = token.rstrip("\r\n") if isinstance(token, str) else token.rstrip(b"\r\n")
    if not token:
        raise errors.AuthenticationError("the token is empty")
    misplaced = sorted(_TLS_OPTIONS & options.keys()) if scheme == "shale" else []
    if misplaced:
        what = "is a TLS option" if len(misplaced) == 1 else "are TLS options"
        raise errors.UsageError(
            f"{', '.join(misplaced)} {what}, but shale:// is plain TCP; "
            "use shale+tls:// to connect with TLS"
        )
    context = _ssl_context(options) if scheme == "shale+tls" else None
    hostname = options.get("server_hostname")
    raw = options.get("connect_timeout", CONNECT_TIMEOUT)
    try:
        timeout = float(str(raw))
    except ValueError:
        timeout = float("nan")
    if not timeout > 0:  # also refuses nan
        raise errors.UsageError(
            f"connect_timeout must be a positive number of seconds, not {raw!r}"
        )
    return (
        (host, port),
        token.encode() if isinstance(token, str) else token,
        _Settings(context, str(hostname) if hostname else host, timeout),
    )


def _ssl_context(options: Mapping[str, object]) -> ssl.SSLContext:
    ca = options.get("ca")
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    cert, key = options.get("cert"), options.get("key")
    if key and not cert:
        raise errors.UsageError("key= needs cert=, the client certificate it belongs to")
    if cert:
        try:
            context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as exc:
            raise errors.UsageError(f"cannot load the client certificate {cert}: {exc}") from None
    verify = str(options.get("verify", "true")).lower()
    if verify in _FALSE:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif verify not in _TRUE:
        raise errors.UsageError(f"verify is true or false, not {verify!r}")
    return context
