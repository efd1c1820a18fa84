"""The wire protocol between ``shale serve`` and the ``shale://`` engine.

Every message is one frame::

    u32 length | u8 type | u32 request id | body

in network byte order; ``length`` counts everything after itself (so it is
at least 5). The body is a FoundationDB tuple (``shale.tuple``), a
documented, language-neutral encoding that carries only data. The client
numbers its requests; a reply carries the request's id and type with the
high bit set, or ``ERROR``. Id 0 is for messages that get no reply, and for
errors that end the connection. ``docs/protocol.md`` is the full
description; this module is its executable half, and must agree with it.
"""

from __future__ import annotations

import asyncio
import enum
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shale import errors
from shale import tuple as tuples
from shale.core.transaction import MAX_KEY_SIZE, MAX_TRANSACTION_SIZE
from shale.engines.atomic import MAX_VALUE_SIZE
from shale.engines.base import CommitRequest, KeyRange, Mutation, MutationType
from shale.engines.feedlog import check_system_write

__all__ = [
    "HANDSHAKE_LIMIT",
    "HEADER",
    "PROTOCOL_VERSION",
    "REPLY",
    "SMALL_FRAME",
    "ErrorCode",
    "FrameError",
    "FrameReader",
    "FrameWriter",
    "Limits",
    "MessageType",
    "ReceiveBudget",
    "check_fields",
    "decode_body",
    "decode_commit",
    "encode_commit",
    "error_from",
    "error_of",
    "frame",
]

PROTOCOL_VERSION = 1

HEADER = struct.Struct(">IBI")
"""Length (of what follows it), message type, request id."""

HANDSHAKE_LIMIT = 4096
"""The largest first frame the server reads before the token is checked."""

REPLY = 0x80
"""Set on the type of a successful reply: ``GET`` is answered by ``GET | REPLY``."""

SMALL_FRAME = 64 << 10
"""Frames up to this size (length field included) are received without
asking the ``ReceiveBudget``: every connection may hold one partly received."""


class MessageType(enum.IntEnum):
    """What a frame is. Replies reuse the request's value with ``REPLY`` set."""

    HELLO = 0x01
    PING = 0x02
    OPEN = 0x10
    GET = 0x11
    GET_RANGE = 0x12
    RELEASE = 0x13
    COMMIT = 0x14
    WATCH_FEED = 0x15
    WATCH_KEY = 0x16
    VERSION = 0x17
    ERROR = 0x7F


class ErrorCode(enum.IntEnum):
    """The ``code`` of an ``ERROR`` frame; stable across versions."""

    CONFLICT = 1
    TRANSACTION_TOO_OLD = 2
    COMMIT_UNKNOWN_RESULT = 3
    UNAVAILABLE = 4
    KEY_TOO_LARGE = 10
    VALUE_TOO_LARGE = 11
    TRANSACTION_TOO_LARGE = 12
    USAGE = 20
    READ_VERSION = 21
    INVERTED_RANGE = 22
    ENGINE = 30
    READ_ONLY = 31
    HISTORY_LOST = 32
    BAD_FRAME = 40
    UNKNOWN_MESSAGE = 41
    INVALID_FIELDS = 42
    FRAME_TOO_LARGE = 43
    TOO_MANY_REQUESTS = 44
    TOO_MANY_CONNECTIONS = 45
    TIMEOUT = 46
    UNKNOWN_SNAPSHOT = 47
    AUTHENTICATION = 50
    UNSUPPORTED_VERSION = 51
    SHUTTING_DOWN = 60
    INTERNAL = 99


# Most specific first: error_of walks this in order.
_CODES: tuple[tuple[type[errors.ShaleError], ErrorCode], ...] = (
    (errors.ConflictError, ErrorCode.CONFLICT),
    (errors.TransactionTooOld, ErrorCode.TRANSACTION_TOO_OLD),
    (errors.CommitUnknownResult, ErrorCode.COMMIT_UNKNOWN_RESULT),
    (errors.Unavailable, ErrorCode.UNAVAILABLE),
    (errors.KeyTooLarge, ErrorCode.KEY_TOO_LARGE),
    (errors.ValueTooLarge, ErrorCode.VALUE_TOO_LARGE),
    (errors.TransactionTooLarge, ErrorCode.TRANSACTION_TOO_LARGE),
    (errors.ReadVersionError, ErrorCode.READ_VERSION),
    (errors.InvertedRange, ErrorCode.INVERTED_RANGE),
    (errors.UsageError, ErrorCode.USAGE),
    (errors.ReadOnlyError, ErrorCode.READ_ONLY),
    (errors.HistoryLost, ErrorCode.HISTORY_LOST),
    (errors.AuthenticationError, ErrorCode.AUTHENTICATION),
    (errors.ProtocolError, ErrorCode.INVALID_FIELDS),
    (errors.EngineError, ErrorCode.ENGINE),
)

_PROTOCOL_CODES = frozenset(
    {
        ErrorCode.BAD_FRAME,
        ErrorCode.UNKNOWN_MESSAGE,
        ErrorCode.INVALID_FIELDS,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.TIMEOUT,
        ErrorCode.UNKNOWN_SNAPSHOT,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)

_AT_A_LIMIT = frozenset(
    {ErrorCode.TOO_MANY_REQUESTS, ErrorCode.TOO_MANY_CONNECTIONS, ErrorCode.SHUTTING_DOWN}
)
"""Refusals that say "not now": the same request may succeed once the
server has room again, so the client raises the retryable ``Unavailable``."""


def error_of(exc: BaseException) -> ErrorCode:
    """The code that carries ``exc`` to the client."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def error_from(code: int, message: str) -> errors.ShaleError:
    """The exception a client raises for an ``ERROR`` frame."""
    if code == ErrorCode.HISTORY_LOST:
        return errors.HistoryLost(None, message)
    for cls, known in _CODES:
        if known == code and code != ErrorCode.INVALID_FIELDS:
            return cls(message)
    if code in _AT_A_LIMIT:
        return errors.Unavailable(message)
    if code in _PROTOCOL_CODES:
        return errors.ProtocolError(message)
    return errors.EngineError(f"server error {code}: {message}")


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's hard limits; the ``HELLO`` reply tells the client the
    ones it must respect."""

    max_frame: int = 16 << 20
    """Largest frame either side accepts: a 10 MB transaction plus framing."""
    max_in_flight: int = 256
    """``GET``, ``GET_RANGE``, ``VERSION`` and ``COMMIT`` requests per
    connection awaiting a reply; more are refused with ``TOO_MANY_REQUESTS``."""
    max_connections: int = 1024
    """Connections open at once (after their TLS handshake, if any); one more
    is refused with ``TOO_MANY_CONNECTIONS``."""
    max_unauthenticated: int = 64
    """Connections not yet authenticated, counted from their accept (so TLS
    ones during their handshake too); one more is closed at once, a plain
    one with ``TOO_MANY_CONNECTIONS``. Peers without the token can hold no
    more than this, whatever ``max_connections`` is."""
    max_snapshots: int = 10_000
    """Snapshots one connection may hold open (one per live transaction).
    Each expires ``max_transaction_age`` (of the served database) after its
    ``OPEN``, so a client that never releases them does not keep the slots."""
    max_watches: int = 10_000
    """Feed and key watches one connection may hold (FoundationDB's default)."""
    handshake_timeout: float = 5.0
    """Seconds a new connection has to authenticate."""
    idle_timeout: float = 60.0
    """Seconds without a frame before an authenticated connection is closed;
    clients ping at a third of it."""
    stall_timeout: float = 30.0
    """Seconds a client may leave the server unable to send before it is
    dropped."""
    range_bytes: int = 1 << 20
    """A ``GET_RANGE`` reply stops at about this many bytes of rows."""
    max_buffered: int = 256 << 20
    """Bytes the whole server may hold of frames larger than ``SMALL_FRAME``
    that are partly received, each counted whole from its first bytes. A
    frame that does not fit is refused with ``UNAVAILABLE`` and skipped as
    it arrives; the connection goes on."""
    frame_timeout: float = 60.0
    """Seconds a frame counted against ``max_buffered`` may take to arrive
    whole; a connection still sending it after that is closed, so a sender
    trickling bytes cannot hold its share of the budget for ever. (Checked
    with the idle timer: a frame may get up to ``idle_timeout`` more.)"""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise errors.UsageError(f"Limits.{name} must be a positive number, not {value!r}")


def frame(kind: int, request: int, fields: Sequence[Any]) -> bytes:
    """One encoded frame."""
    body = tuples.pack(tuple(fields))
    return HEADER.pack(len(body) + 5, kind, request) + body


class FrameError(errors.ProtocolError):
    """A refusal that carries its own code: a bad frame length (which ends
    the connection), or a limit or unknown snapshot (which answers the
    request)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ReceiveBudget:
    """Bytes of partly received large frames, shared by every connection
    of a server, so that many slow senders of large frames cannot hold
    ``max_frame`` each. A frame is counted whole from its first bytes
    until it is complete (or its connection ends)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Count ``size`` bytes if they fit in what is left."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class FrameReader:
    """Cuts a byte stream into frames, refusing bad lengths before buffering
    a frame's body. With a ``budget``, a frame larger than ``SMALL_FRAME``
    is buffered only if the budget has room for all of it; otherwise it is
    yielded with ``None`` for a body as soon as its type and id are known,
    and its bytes are dropped as they arrive."""

    def __init__(self, max_frame: int, budget: ReceiveBudget | None = None) -> None:
        self.max_frame = max_frame
        self.budget = budget
        self._buffer = bytearray()
        self._reserved = 0
        """What the frame being received holds of the budget."""
        self.reserved_at = 0.0
        """When that frame's first bytes came (``time.monotonic``), if it
        holds any of the budget."""
        self._skip = 0
        """Bytes still to drop of a refused frame."""
        self.refused_length = 0
        """The length field of the last frame refused."""
        self.refused_head = b""
        """Up to 16 bytes of the refused frame's body: what arrived with its header."""

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def discard(self) -> None:
        """Drop what is buffered and give back its budget: the stream ended."""
        self._buffer.clear()
        self._skip = 0
        if self._reserved and self.budget is not None:
            self.budget.give(self._reserved)
        self._reserved = 0
        self.reserved_at = 0.0

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes | None]]:
        """Add ``data``; yield ``(type, request id, body)`` for each complete
        frame, and ``(type, request id, None)`` for one refused for the
        budget.

        Raises:
            FrameError: a length below 5 or above ``max_frame``.
        """
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = memoryview(data)[dropped:]  # type: ignore[assignment]
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        try:
            while end - start >= 4:
                length = int.from_bytes(buffer[start : start + 4], "big")
                if length < 5:
                    raise FrameError(
                        ErrorCode.BAD_FRAME, f"frame length {length} is below the minimum of 5"
                    )
                if length > self.max_frame:
                    raise FrameError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame length {length} is above the limit of {self.max_frame}",
                    )
                stop = start + 4 + length
                if stop > end:
                    if self._reserved or length + 4 <= SMALL_FRAME or self.budget is None:
                        break
                    if self.budget.take(length + 4):
                        self._reserved = length + 4
                        self.reserved_at = time.monotonic()
                        break
                    if end - start < 9:
                        break  # its type and id first, to answer it by
                    _, kind, request = HEADER.unpack_from(buffer, start)
                    self.refused_length = length
                    self.refused_head = bytes(buffer[start + 9 : min(end, start + 25)])
                    self._skip = stop - end
                    start = end
                    yield kind, request, None
                    break
                _, kind, request = HEADER.unpack_from(buffer, start)
                body = bytes(buffer[start + 9 : stop])
                # Consumed before it is yielded: a caller that stops after
                # this frame (to apply backpressure) leaves only the rest.
                start = stop
                if self._reserved:
                    self.budget.give(self._reserved)  # type: ignore[union-attr]
                    self._reserved = 0
                    self.reserved_at = 0.0
                yield kind, request, body
        finally:
            del buffer[:start]


class FrameWriter:
    """Writes encoded frames to a transport, or with ``hold`` keeps one for
    the next write (or the next turn of the loop), so that two frames that
    belong together — an open and the first read, or their replies — leave
    in one system call. Holding every frame would batch more, but it delays
    each by a turn of the loop, which costs more under load than it saves.
    """

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.open = True
        """Cleared by the owner when the connection ends: writes then drop."""
        self._held: list[bytes] = []

    def write(self, data: bytes, hold: bool = False) -> None:
        if hold:
            if not self._held:
                asyncio.get_running_loop().call_soon(self.flush)
            self._held.append(data)
        elif self._held:
            self._held.append(data)
            self.flush()
        elif self.open and self.transport is not None:
            self.transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, []
        if held and self.open and self.transport is not None:
            self.transport.write(b"".join(held))


def decode_body(body: bytes) -> tuple[Any, ...]:
    """The fields of a frame body.

    Raises:
        ProtocolError: the body is not a tuple encoding.
    """
    try:
        return tuples.unpack(body)
    except ValueError as exc:
        raise errors.ProtocolError(f"the body is not a valid tuple: {exc}") from None


def check_fields(fields: tuple[Any, ...], *kinds: type | tuple[type, ...]) -> None:
    """Raise ``ProtocolError`` unless ``fields`` has exactly these types.

    ``bool`` is not accepted for ``int``: the encoding tells them apart.
    """
    if len(fields) != len(kinds):
        raise errors.ProtocolError(f"expected {len(kinds)} fields, got {len(fields)}")
    for index, (value, kind) in enumerate(zip(fields, kinds, strict=True)):
        allowed = kind if isinstance(kind, tuple) else (kind,)
        if type(value) not in allowed:
            names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
            raise errors.ProtocolError(f"field {index} must be {names}, not {type(value).__name__}")


# -- commits ----------------------------------------------------------------


def encode_commit(snapshot: int, request: CommitRequest) -> tuple[Any, ...]:
    """The fields of a ``COMMIT`` frame. Feeds are not sent: the server's
    own declarations decide what is logged. Nor are the write conflicts
    that the mutations imply, since the server derives those itself."""
    mutations: list[Any] = []
    written = set()
    for kind, key, param in request.mutations:
        mutations += (int(kind), key, param)
        if kind not in _NOT_KEYS:
            written.add(key)
    return (
        snapshot,
        request.read_version,
        tuple(mutations),
        tuple(request.read_keys),
        _flat(request.read_ranges),
        tuple(k for k in request.write_keys if k not in written),
        _flat(request.write_ranges),
        request.versionstamped,
    )


_NOT_KEYS = frozenset({MutationType.CLEAR_RANGE, MutationType.SET_VERSIONSTAMPED_KEY})
"""Mutations whose key is not the key they write: the server derives no
write conflict on it, so the client must send one if it has it."""


def _flat(ranges: Sequence[KeyRange]) -> tuple[bytes, ...]:
    out: list[bytes] = []
    for begin, end in ranges:
        out += (begin, end)
    return tuple(out)


def decode_commit(fields: tuple[Any, ...]) -> tuple[int, CommitRequest]:
    """``(snapshot id, request)`` from a ``COMMIT`` frame's fields.

    Raises:
        ProtocolError: a field has the wrong type or shape.
    """
    check_fields(fields, int, int, tuple, tuple, tuple, tuple, tuple, bool)
    snapshot, read_version, flat, read_keys, read_ranges, write_keys, write_ranges, stamped = fields
    if len(flat) % 3:
        raise errors.ProtocolError("mutations must be (type, key, param) triples")
    mutations: list[Mutation] = []
    for i in range(0, len(flat), 3):
        kind, key, param = flat[i : i + 3]
        if type(kind) is not int or type(key) is not bytes or type(param) is not bytes:
            raise errors.ProtocolError(f"mutation {i // 3} must be (int, bytes, bytes)")
        try:
            mutations.append((MutationType(kind), key, param))
        except ValueError:
            raise errors.ProtocolError(f"mutation {i // 3} has unknown type {kind}") from None
    conflicts = sum(map(len, read_keys)) + sum(map(len, read_ranges))
    conflicts += sum(map(len, write_keys)) + sum(map(len, write_ranges))
    written, cleared = _check_mutations(mutations, conflicts)
    request = CommitRequest(
        read_version=read_version,
        mutations=mutations,
        read_keys=frozenset(_keys(read_keys, "read keys")),
        read_ranges=_ranges(read_ranges, "read ranges"),
        write_keys=frozenset(_keys(write_keys, "write keys")) | written,
        write_ranges=_ranges(write_ranges, "write ranges") + cleared,
        versionstamped=stamped
        or any(m[0] >= MutationType.SET_VERSIONSTAMPED_KEY for m in mutations),
    )
    return snapshot, request


_STAMP_OFFSET = struct.Struct("<I")
_SIZE_SLACK = 4096
"""What the server allows beyond the client's own count: the client adds
its idempotency id (a read key and a write) after it checks the limit."""


def _check_mutations(
    mutations: list[Mutation], size: int
) -> tuple[frozenset[bytes], list[KeyRange]]:
    """Apply the core's limits and system-keyspace checks again, since
    engines trust them, and return the keys and ranges the mutations write:
    the server does not rely on a client's conflict sets to protect other
    clients. ``size`` is what the commit's conflict ranges count toward the
    transaction size.

    Raises:
        LimitError: a key, value or the whole commit is too large.
        InvertedRange: a clear range's begin is after its end.
        ProtocolError: a bad versionstamp offset, or a write that would
            corrupt a feed's metadata.
    """
    written: set[bytes] = set()
    cleared: list[KeyRange] = []
    for kind, key, param in mutations:
        size += len(key) + len(param)
        stamped_key = kind is MutationType.SET_VERSIONSTAMPED_KEY
        stamped_value = kind is MutationType.SET_VERSIONSTAMPED_VALUE
        if len(key) > MAX_KEY_SIZE + 4 * stamped_key:
            raise errors.KeyTooLarge(f"key of {len(key)} bytes exceeds the limit")
        if kind is MutationType.CLEAR_RANGE:
            if key > param:
                raise errors.InvertedRange("a clear range's begin is after its end")
            cleared.append((key, param))
            continue
        if len(param) > MAX_VALUE_SIZE + 4 * stamped_value:
            raise errors.ValueTooLarge(f"value of {len(param)} bytes exceeds the limit")
        if stamped_key or stamped_value:
            _check_stamp(key if stamped_key else param)
        if key >= b"\xff" and (
            problem := check_system_write(kind, key[:-4] if stamped_key else key, param)
        ):
            raise errors.ProtocolError(f"refused write to {key[:48]!r}: {problem}")
        if not stamped_key:
            written.add(key)
    if size > MAX_TRANSACTION_SIZE + _SIZE_SLACK:
        raise errors.TransactionTooLarge(
            f"the commit's writes and conflict ranges exceed {MAX_TRANSACTION_SIZE} bytes"
        )
    return frozenset(written), cleared


def _check_stamp(data: bytes) -> None:
    if len(data) < 4 or _STAMP_OFFSET.unpack_from(data, len(data) - 4)[0] + 10 > len(data) - 4:
        raise errors.ProtocolError("a versionstamp offset does not leave 10 bytes in place")


def _keys(values: tuple[Any, ...], what: str) -> tuple[bytes, ...]:
    if any(type(v) is not bytes for v in values):
        raise errors.ProtocolError(f"{what} must all be bytes")
    return values


def _ranges(values: tuple[Any, ...], what: str) -> list[KeyRange]:
    _keys(values, what)
    if len(values) % 2:
        raise errors.ProtocolError(f"{what} must be (begin, end) pairs")
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
