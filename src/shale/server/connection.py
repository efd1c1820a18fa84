"""One client of ``shale serve``: authentication, then pipelined requests.

A ``Connection`` is an ``asyncio.Protocol``: frames are cut and checked as
bytes arrive, each request runs at once and becomes a task only if it has
to wait (``shale.server.eager``), and replies go out in completion order.
``_TlsAccept`` counts a TLS connection before its handshake. The server
(``shale.server.server``) owns the database, the limits shared by all
connections and the feed declarations.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import hmac
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from shale import errors
from shale.engines.base import EngineSnapshot
from shale.server import eager
from shale.server.handlers import HANDLERS, release_snapshot
from shale.server.protocol import (
    HANDSHAKE_LIMIT,
    PROTOCOL_VERSION,
    REPLY,
    ErrorCode,
    FrameError,
    FrameReader,
    FrameWriter,
    MessageType,
    check_fields,
    decode_body,
    error_of,
    frame,
)

if TYPE_CHECKING:
    from shale.server.server import Server

__all__ = ["Connection"]

log = logging.getLogger("shale.server")

_QUIET_FAILURES = (errors.ConflictError, errors.TransactionTooOld)
"""Commit failures that are part of normal operation: logged at DEBUG."""


_COUNTED = frozenset(
    {MessageType.GET, MessageType.GET_RANGE, MessageType.VERSION, MessageType.COMMIT}
)
"""Requests that hold a slot of ``max_in_flight`` until answered. Opens are
bounded by ``max_snapshots``, watches by ``max_watches``; pings and
releases are answered at once."""

_ANSWERED = _COUNTED | {MessageType.WATCH_FEED, MessageType.WATCH_KEY}
"""Requests that exist for their reply, so they need an id to carry it."""

_NAMES = frozenset(MessageType)

_Drop = Callable[[], object]
"""What to do with a pending watch when its connection ends."""

_HOUSEKEEPING = frozenset({MessageType.PING, MessageType.RELEASE})
"""Still served while the server stops: they start no work, and refusing
a one-way ``RELEASE`` would close the connection under running commits."""


class Connection(asyncio.Protocol):
    """One client: authentication, then pipelined requests."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = FrameReader(HANDSHAKE_LIMIT, server.budget)
        self.tasks: set[asyncio.Future[tuple[Any, ...]]] = set()
        self.shielded: set[asyncio.Future[tuple[Any, ...]]] = set()
        """The tasks of ``tasks`` that a lost connection does not cancel."""
        self.snapshots: dict[int, tuple[asyncio.Future[EngineSnapshot], float]] = {}
        """Open snapshots by id, oldest first, each with the loop time at
        which it expires (``max_transaction_age`` after its ``OPEN``)."""
        self.ended: OrderedDict[int, ErrorCode] = OrderedDict()
        """Ids the client may still name that hold nothing: snapshots that
        expired, opens refused at ``max_snapshots``. A read naming one gets
        the error kept here instead of ``UNKNOWN_SNAPSHOT``; ``RELEASE``, a
        ``COMMIT`` naming it or a new ``OPEN`` of it forgets it. At most
        ``max_snapshots`` are kept, the oldest forgotten first."""
        self._expiry: asyncio.TimerHandle | None = None
        self.watches: dict[int, tuple[asyncio.Future[None], Callable[..., None], _Drop]] = {}
        """Pending watches by request id: the future, the callback answering
        it, and what to do if the connection ends first (cancel a key
        watch's future, which is its own; give up a feed's shared one)."""
        self.transport: asyncio.Transport | None = None
        self.raw: asyncio.Transport | None = None
        """The TCP transport under a TLS connection, while its handshake runs."""
        self.admitted = False
        """Counted in ``server.unauthenticated`` (until authenticated)."""
        self.peer = "?"
        self.authenticated = False
        self.closed = False
        self.last_heard = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._reading = True
        self.writer = FrameWriter()

    # -- transport callbacks ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.writer.transport = self.transport
        self.raw = None
        self.peer = _peer(transport)
        server = self.server
        if server._stopping:
            self.close("server shutting down", ErrorCode.SHUTTING_DOWN)
            return
        if not self.admitted:  # plain TCP: just accepted
            self.admitted = True
            server.admit(self)
        context = server.ssl_context
        if (
            context is not None
            and context.verify_mode is not ssl.CERT_NONE
            and not transport.get_extra_info("peercert")
        ):
            # CERT_OPTIONAL lets the handshake finish without one, so that
            # the client hears why, instead of a reset it would retry.
            server.refusals.warning("%s refused: no client certificate", self.peer)
            self.close("a client certificate is required", ErrorCode.AUTHENTICATION)
            return
        if len(server.connections) >= self.limits.max_connections:
            server.refusals.warning(
                "%s refused: %d connections open", self.peer, len(server.connections)
            )
            self.close("too many connections", ErrorCode.TOO_MANY_CONNECTIONS)
            return
        server.connections.add(self)
        log.debug("%s connected", self.peer)
        self._arm(self.limits.handshake_timeout)

    def tls_done(self, handshake: asyncio.Future[None]) -> None:
        """The end of the TLS handshake: if it did not reach
        ``connection_made`` (failed, timed out, or the peer left), nothing
        else will free the connection's slot."""
        if not handshake.cancelled():
            failure = handshake.exception()
            if failure is not None and self.transport is None:
                log.debug("%s TLS handshake failed: %s", self.peer, failure)
        if self.transport is None:
            self.raw = None
            self.server.unauthenticated.pop(self, None)

    def evict(self) -> None:
        """Close a connection that has not authenticated, to make room."""
        if self.transport is None:  # still in its TLS handshake: nothing to say
            if self.raw is not None:
                self.raw.abort()
            return
        self.close("too many connections awaiting authentication", ErrorCode.TOO_MANY_CONNECTIONS)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.writer.open = False
            log.log(self._level, "%s disconnected%s", self.peer, f": {exc}" if exc else "")
        self._cleanup()

    @property
    def _level(self) -> int:
        """Comings and goings of peers without the token are not worth a
        line each at INFO: they can cause as many as they like."""
        return logging.INFO if self.authenticated else logging.DEBUG

    def pause_writing(self) -> None:
        self.stop_reading()
        self._stall = asyncio.get_running_loop().call_later(
            self.limits.stall_timeout, self.close, "client stopped reading", ErrorCode.TIMEOUT
        )

    def resume_writing(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self.transport is not None and not self.closed:
            self._reading = True
            self.transport.resume_reading()
            if self.reader.pending:
                self.data_received(b"")  # frames held back when writing paused

    def stop_reading(self) -> None:
        if self._reading and self.transport is not None and not self.closed:
            self._reading = False
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            for kind, request, body in self.reader.feed(data):
                if self.closed:
                    return
                if body is None:
                    self._over_budget(kind, request)
                elif self.authenticated:
                    self._dispatch(kind, request, body)
                else:
                    self._hello(kind, request, body)
                if not self._reading:
                    # The client is not taking its replies: the frames after
                    # this one wait in the reader, so a non-reading client holds about one reply
                    # beyond the transport's high-water mark, not one per
                    # frame it managed to send.
                    break
        except FrameError as exc:
            self.close(str(exc), exc.code)

    # -- closing -----------------------------------------------------------

    def close(self, reason: str, code: ErrorCode | None = None) -> None:
        """Send a final error (request id 0) if ``code``, then close."""
        if self.closed or self.transport is None:
            return
        self.writer.flush()
        self.closed = True
        self.writer.open = False
        if code is not None:
            self.transport.write(frame(MessageType.ERROR, 0, (int(code), reason)))
        log.log(self._level, "%s closed: %s", self.peer, reason)
        if self._stall is not None:
            # close() would wait for a client that does not read to take
            # what is buffered, holding the socket and the replies forever.
            self.transport.abort()
        else:
            self.transport.close()
            if self.transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(
                    self.limits.stall_timeout, self.transport.abort
                )
        self._cleanup()

    def _cleanup(self) -> None:
        self.server.connections.discard(self)
        self.server.unauthenticated.pop(self, None)
        for handle in (self._timer, self._stall, self._expiry):
            if handle is not None:
                handle.cancel()
        for future, callback, drop in self.watches.values():
            future.remove_done_callback(callback)
            drop()
        self.watches.clear()
        self.reader.discard()
        for task in list(self.tasks):
            if task not in self.shielded:
                task.cancel()
        for sid in list(self.snapshots):
            self.release(sid)
        self.ended.clear()

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_deadline)

    def _check_deadline(self) -> None:
        if not self.authenticated:
            self.close("no handshake within the deadline", ErrorCode.TIMEOUT)
            return
        now = time.monotonic()
        idle = now - self.last_heard
        if idle >= self.limits.idle_timeout and self._reading:
            self.close(f"silent for {idle:.0f} s", ErrorCode.TIMEOUT)
            return
        if self.reader.reserved_at:
            sending = now - self.reader.reserved_at
            if sending >= self.limits.frame_timeout:
                self.close(
                    f"a large frame still incomplete after {sending:.1f} s "
                    f"({self.reader.pending} bytes of it received)",
                    ErrorCode.TIMEOUT,
                )
                return
        self._arm(max(self.limits.idle_timeout - idle, 0.05))

    # -- handshake ---------------------------------------------------------

    def _hello(self, kind: int, request: int, body: bytes) -> None:
        if kind != MessageType.HELLO:
            self.close("the first frame must be HELLO", ErrorCode.AUTHENTICATION)
            return
        if request == 0:
            self.close("HELLO needs a request id", ErrorCode.INVALID_FIELDS)
            return
        try:
            fields = decode_body(body)
            check_fields(fields, int, bytes, str)
        except errors.ProtocolError as exc:
            self.close(f"invalid HELLO: {exc}", ErrorCode.INVALID_FIELDS)
            return
        version, token, client = fields
        # Digests of equal length, so that the comparison's time tells
        # nothing about the token, not even its length.
        if not hmac.compare_digest(hashlib.sha256(token).digest(), self.server.token_digest):
            self.server.refusals.warning("%s refused: wrong token", self.peer)
            self.close("wrong token", ErrorCode.AUTHENTICATION)
            return
        if version != PROTOCOL_VERSION:
            self.close(
                f"protocol version {version} is not supported; this server speaks "
                f"{PROTOCOL_VERSION}",
                ErrorCode.UNSUPPORTED_VERSION,
            )
            return
        self.authenticated = True
        self.server.unauthenticated.pop(self, None)
        self.reader.max_frame = self.limits.max_frame
        if self._timer is not None:
            self._timer.cancel()
        self._arm(self.limits.idle_timeout)
        log.info("%s authenticated (%r)", self.peer, client[:64])
        capabilities = self.server.db.engine.capabilities
        self.send(
            MessageType.HELLO | REPLY,
            request,
            (
                PROTOCOL_VERSION,
                f"shale-server {_version()}",
                self.limits.max_frame,
                self.limits.max_in_flight,
                float(self.limits.idle_timeout),
                capabilities.durable,
                capabilities.persistent,
                capabilities.old_snapshots,
            ),
        )

    # -- requests ----------------------------------------------------------

    def send(self, kind: int, request: int, fields: tuple[Any, ...], hold: bool = False) -> None:
        """Write a frame (see ``FrameWriter`` for ``hold``)."""
        if not self.closed:
            self.writer.write(frame(kind, request, fields), hold)

    def error(self, request: int, code: ErrorCode, message: str) -> None:
        self.send(MessageType.ERROR, request, (int(code), message))

    def _dispatch(self, kind: int, request: int, body: bytes) -> None:
        handler = HANDLERS.get(kind)
        if handler is None:
            self._refuse(request, ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {kind:#x}")
            return
        if self.server._stopping and kind not in _HOUSEKEEPING:
            if kind != MessageType.OPEN or request:
                self._refuse(request, ErrorCode.SHUTTING_DOWN, "server shutting down")
            # A one-way open is dropped: the read behind it is refused too.
            return
        if request == 0 and kind in _ANSWERED:
            self.close(f"{MessageType(kind).name} needs a request id", ErrorCode.INVALID_FIELDS)
            return
        if kind in _COUNTED and len(self.tasks) >= self.limits.max_in_flight:
            if kind == MessageType.COMMIT:
                self._release_named(body)
            self._refuse(
                request,
                ErrorCode.TOO_MANY_REQUESTS,
                f"more than {self.limits.max_in_flight} requests in flight",
            )
            return
        try:
            handler(self, request, decode_body(body))
        except FrameError as exc:
            if kind == MessageType.OPEN and exc.code == ErrorCode.TOO_MANY_REQUESTS:
                # Not garbage, so not worth the connection even without an id:
                # the reads sent behind it get UNKNOWN_SNAPSHOT, which says so.
                if request:
                    self.error(request, exc.code, f"OPEN: {exc}")
                return
            self._refuse(request, exc.code, f"{MessageType(kind).name}: {exc}")
        except errors.ProtocolError as exc:
            self._refuse(request, ErrorCode.INVALID_FIELDS, f"{MessageType(kind).name}: {exc}")
        except errors.ShaleError as exc:
            self._refuse(request, error_of(exc), str(exc))

    def _over_budget(self, kind: int, request: int) -> None:
        """Refuse a large frame the receive budget has no room for; its bytes
        are dropped as they arrive, and the connection goes on. Refusing it
        rather than pausing the connection until there is room: a paused
        connection would keep what it holds, and everything else pipelined
        on it would wait behind the frame; closing it would fail all of that
        instead. The client retries the request (``Unavailable``)."""
        length = self.reader.refused_length
        self.server.refusals.warning(
            "%s refused a frame of %d bytes: the receive buffer budget is in use",
            self.peer,
            length,
        )
        if kind == MessageType.COMMIT:
            # Its snapshot is released as for any refused commit, if the
            # id came with the header: a positive tuple-encoded int.
            head = self.reader.refused_head
            size = head[0] - 0x14 if head else 0
            if 0 < size <= 8 and len(head) > size:
                self.release(int.from_bytes(head[1 : 1 + size], "big"))
        name = MessageType(kind).name if kind in _NAMES else f"{kind:#x}"
        self._refuse(
            request,
            ErrorCode.UNAVAILABLE,
            f"{name}: a frame of {length} bytes does not fit in what is left of the "
            f"server's receive buffer budget ({self.limits.max_buffered} bytes); retry",
        )

    def _release_named(self, body: bytes) -> None:
        """Release the snapshot a refused commit names, if it names one."""
        try:
            fields = decode_body(body)
        except errors.ProtocolError:
            return
        if fields and type(fields[0]) is int and fields[0] > 0:
            self.release(fields[0])

    def _refuse(self, request: int, code: ErrorCode, message: str) -> None:
        """Answer a request with an error; one with no id to answer to
        cannot be told apart from garbage, so it ends the connection."""
        if request == 0:
            self.close(message, code)
        else:
            self.error(request, code, message)

    def spawn(
        self,
        kind: int,
        request: int,
        work: Coroutine[Any, Any, tuple[Any, ...]],
        shielded: bool = False,
    ) -> None:
        """Run ``work`` and answer ``request`` with its outcome. A shielded
        request runs to its end even if the connection drops first."""
        future = eager.start(work)
        if future.done():
            self._answer(kind, request, future)
            return
        self.tasks.add(future)
        if shielded:
            self.shielded.add(future)
        future.add_done_callback(lambda f: self._answer(kind, request, f))

    def _answer(self, kind: int, request: int, future: asyncio.Future[tuple[Any, ...]]) -> None:
        self.tasks.discard(future)
        self.shielded.discard(future)
        if future.cancelled():
            if kind == MessageType.COMMIT:
                self.error(request, ErrorCode.COMMIT_UNKNOWN_RESULT, "server shutting down")
            else:
                self.error(request, ErrorCode.SHUTTING_DOWN, "server shutting down")
            return
        exc = future.exception()
        if exc is None:
            if request:
                self.send(kind | REPLY, request, future.result())
        elif isinstance(exc, errors.ShaleError):
            if kind == MessageType.COMMIT:
                level = logging.DEBUG if isinstance(exc, _QUIET_FAILURES) else logging.WARNING
                log.log(level, "%s commit failed: %s: %s", self.peer, type(exc).__name__, exc)
            self.error(request, error_of(exc), str(exc))
        else:
            log.error("%s request %#x failed", self.peer, kind, exc_info=exc)
            self.error(request, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    # -- snapshots -----------------------------------------------------------

    def hold(self, sid: int, opening: asyncio.Future[EngineSnapshot]) -> None:
        """Keep an opened snapshot under ``sid`` until it is released or
        expires."""
        self.ended.pop(sid, None)
        loop = asyncio.get_running_loop()
        expires = loop.time() + self.server.db.max_transaction_age
        self.snapshots[sid] = (opening, expires)
        if self._expiry is None:
            self._expiry = loop.call_at(expires, self._expire)

    def refuse_open(self, sid: int) -> None:
        """Remember that ``sid``'s open was refused at ``max_snapshots``, so
        that the reads sent behind it are told so."""
        self._end(sid, ErrorCode.TOO_MANY_REQUESTS)

    def _expire(self) -> None:
        """Release the snapshots past the transaction age limit. A client
        that never releases its snapshots (leaked transactions) then holds
        at most the ones it opened within the limit, like any other."""
        self._expiry = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = []
        for sid, (_, expires) in self.snapshots.items():  # oldest first
            if expires > now:
                break
            due.append(sid)
        for sid in due:
            self.release(sid)
            self._end(sid, ErrorCode.TRANSACTION_TOO_OLD)
        if self.snapshots:
            _, expires = next(iter(self.snapshots.values()))
            # Not sooner than an eighth of the limit: under a steady leak,
            # one timer expires a batch rather than one snapshot at a time.
            slack = self.server.db.max_transaction_age / 8
            self._expiry = loop.call_at(max(expires, now + slack), self._expire)

    def _end(self, sid: int, code: ErrorCode) -> None:
        ended = self.ended
        ended[sid] = code
        ended.move_to_end(sid)
        if len(ended) > self.limits.max_snapshots:
            ended.popitem(last=False)

    def snapshot(self, sid: object) -> asyncio.Future[EngineSnapshot]:
        """The snapshot a read names.

        Raises:
            FrameError: ``sid`` holds no snapshot: the error it ended with
                (``TRANSACTION_TOO_OLD``, ``TOO_MANY_REQUESTS``), else
                ``UNKNOWN_SNAPSHOT``.
        """
        if type(sid) is int:
            held = self.snapshots.get(sid)
            if held is not None:
                return held[0]
            code = self.ended.get(sid)
            if code is ErrorCode.TRANSACTION_TOO_OLD:
                age = self.server.db.max_transaction_age
                raise FrameError(
                    code,
                    f"snapshot {sid} expired: it was open longer than the {age:g} s "
                    "transaction age limit; retry the transaction",
                )
            if code is not None:
                raise FrameError(
                    code, f"more than {self.limits.max_snapshots} open snapshots; release some"
                )
        raise FrameError(
            ErrorCode.UNKNOWN_SNAPSHOT,
            f"no open snapshot {sid!r} (never opened, released, or over max_snapshots)",
        )

    def release(self, sid: int) -> bool:
        """Release ``sid``'s snapshot or forget how it ended; whether the id
        was known."""
        held = self.snapshots.pop(sid, None)
        if held is None:
            return self.ended.pop(sid, None) is not None
        task = held[0]
        if task.done():
            release_snapshot(task)
        else:
            task.add_done_callback(release_snapshot)
        return True


class _TlsAccept(asyncio.Protocol):
    """A TLS connection just accepted, counted against
    ``max_unauthenticated`` before its handshake starts. ``create_server(
    ssl=...)`` would tell the protocol only once the handshake is done, so a
    peer that never sends its hello would hold a connection and its TLS
    buffers (about 300 KB) uncounted. This layers TLS on as ``create_server``
    does, with ``handshake_timeout`` for the handshake, then as long again
    for the ``HELLO``."""

    def __init__(self, server: Server, context: ssl.SSLContext) -> None:
        self.server = server
        self.context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        connection = Connection(self.server)
        connection.admitted = True
        connection.raw = raw
        connection.peer = _peer(raw)
        self.server.admit(connection)
        # The TLS layer waits for the next turn of the loop: asyncio accepts
        # connections in bursts, and those the burst evicts again must not
        # have allocated TLS buffers first. Not reading until then.
        raw.pause_reading()
        asyncio.get_running_loop().call_soon(self._start, connection, raw)

    def _start(self, connection: Connection, raw: asyncio.Transport) -> None:
        if connection not in self.server.unauthenticated or raw.is_closing():
            return  # evicted, or gone
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(connection.tls_done)
        tls = asyncio.sslproto.SSLProtocol(
            loop,
            connection,
            self.context,
            handshake,
            server_side=True,
            # typeshed says int; asyncio takes any positive number of seconds
            ssl_handshake_timeout=self.server.limits.handshake_timeout,  # type: ignore[arg-type]
        )
        raw.set_protocol(tls)
        tls.connection_made(raw)
        raw.resume_reading()


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _version() -> str:
    import shale

    return shale.__version__
