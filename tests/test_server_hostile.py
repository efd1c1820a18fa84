"""``shale serve`` against clients that break the protocol, on purpose or not.

Every test runs a real server on loopback, in the test's event loop, and
talks to it through raw sockets. Each checks three things: what the hostile
connection got (the exact ``ERROR`` frame, then a close — or an error reply
to its request with the connection still usable), that a well-behaved client
opened before the attack is still served, and that nothing the hostile
connection sent was written. Timeouts are tiny so the deadlines fire fast;
``asyncio.wait_for(..., HANG)`` only guards against hangs and is never a
timing assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shale
from shale.server.protocol import (
    HANDSHAKE_LIMIT,
    HEADER,
    PROTOCOL_VERSION,
    REPLY,
    ErrorCode,
    FrameError,
    FrameReader,
    Limits,
    MessageType,
    decode_body,
    frame,
)
from shale.server.server import Connection, Server, serve

TOKEN = "correct-horse-battery-staple"
HANG = 5.0
"""Seconds before a wait counts as a hang: a guard, not a measurement."""

FAST = Limits(handshake_timeout=0.3, idle_timeout=0.5, stall_timeout=0.5)

GOOD = b"good/"
"""The well-behaved client writes only under this prefix."""


# -- the server, the good client, raw connections ----------------------------


@contextlib.asynccontextmanager
async def serving(limits: Limits = FAST) -> AsyncIterator[tuple[Server, shale.Database]]:
    """A server on a free loopback port and a good client connected to it."""
    server = await serve("memory://", TOKEN, host="127.0.0.1", port=0, limits=limits)
    try:
        good = await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN)
        try:
            yield server, good
        finally:
            await good.close()
    finally:
        await server.stop(drain=1.0)


@pytest.fixture
async def env() -> AsyncIterator[tuple[Server, shale.Database]]:
    async with serving() as pair:
        yield pair


async def still_serving(good: shale.Database, tag: bytes = b"probe") -> None:
    """The good client can commit and read its commit back."""
    key = GOOD + tag
    value = tag + b"-value"
    await asyncio.wait_for(good.set(key, value), HANG)
    assert await asyncio.wait_for(good.get(key), HANG) == value


async def nothing_written(good: shale.Database) -> None:
    """Every key in the user keyspace was written by the good client."""
    async with good.transaction() as tr:
        rows = await asyncio.wait_for(tr.get_range(b"", b"\xff"), HANG)
    assert [key for key, _ in rows if not key.startswith(GOOD)] == []


async def unharmed(good: shale.Database) -> None:
    await still_serving(good, b"after")
    await nothing_written(good)


class Raw:
    """A client that speaks frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Server) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    def send(self, kind: int, request: int, fields: tuple[Any, ...]) -> None:
        self.writer.write(frame(kind, request, fields))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self) -> tuple[int, int, tuple[Any, ...]]:
        (length,) = struct.unpack(">I", await asyncio.wait_for(self.reader.readexactly(4), HANG))
        rest = await asyncio.wait_for(self.reader.readexactly(length), HANG)
        kind, request = struct.unpack_from(">BI", rest)
        return kind, request, decode_body(rest[5:])

    async def call(self, kind: int, request: int, fields: tuple[Any, ...]) -> tuple[Any, ...]:
        """Send a request; its reply's fields, which must be a success."""
        self.send(kind, request, fields)
        got = await self.recv()
        assert got[:2] == (kind | REPLY, request), got
        return got[2]

    async def hello(self, token: str | bytes = TOKEN) -> tuple[Any, ...]:
        secret = token.encode() if isinstance(token, str) else token
        return await self.call(MessageType.HELLO, 1, (PROTOCOL_VERSION, secret, "hostile"))

    async def refused(self, request: int, code: ErrorCode, message: str) -> None:
        """The next frame is an error reply to ``request``."""
        assert await self.recv() == (MessageType.ERROR, request, (int(code), message))

    async def pings(self, request: int = 999) -> None:
        """The connection still answers."""
        assert await self.call(MessageType.PING, request, ()) == ()

    async def closed_with(self, code: ErrorCode, message: str) -> None:
        """The server sent its final error (request id 0), then closed."""
        assert await self.recv() == (MessageType.ERROR, 0, (int(code), message))
        await self.eof()

    async def eof(self) -> None:
        assert await asyncio.wait_for(self.reader.read(), HANG) == b""

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw(env: tuple[Server, shale.Database]) -> AsyncIterator[Raw]:
    client = await Raw.connect(env[0])
    yield client
    client.close()


@pytest.fixture
async def authed(raw: Raw) -> Raw:
    await raw.hello()
    return raw


def commit_fields(*mutations: tuple[int, bytes, bytes]) -> tuple[Any, ...]:
    """A ``COMMIT`` without a snapshot or conflict sets."""
    flat: list[Any] = []
    for mutation in mutations:
        flat += mutation
    return (0, 0, tuple(flat), (), (), (), (), False)


async def wait_until(predicate: Any) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), HANG)


# -- the raw client is able to write: the tests below can fail ----------------


async def test_a_valid_raw_commit_is_applied(
    env: tuple[Server, shale.Database], authed: Raw
) -> None:
    _, good = env
    (version,) = await authed.call(MessageType.OPEN, 2, (1, None))
    fields = list(commit_fields((0, b"evil", b"x")))
    fields[:2] = [1, version]
    await authed.call(MessageType.COMMIT, 3, tuple(fields))
    assert await good.get(b"evil") == b"x"
    with pytest.raises(AssertionError):
        await nothing_written(good)


# -- the handshake ------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [b"wrong", TOKEN[:-1].encode(), (TOKEN + "x").encode(), b"", TOKEN.upper().encode()],
    ids=["wrong", "prefix", "longer", "empty", "case"],
)
async def test_wrong_token_is_refused(
    env: tuple[Server, shale.Database], raw: Raw, token: bytes
) -> None:
    # One write, so the server has read the commit too when it closes.
    raw.send_bytes(
        frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, token, "hostile"))
        + frame(MessageType.COMMIT, 2, commit_fields((0, b"evil", b"x")))
    )
    await raw.closed_with(ErrorCode.AUTHENTICATION, "wrong token")
    await unharmed(env[1])


async def test_wrong_token_through_the_client(env: tuple[Server, shale.Database]) -> None:
    server, good = env
    with pytest.raises(shale.AuthenticationError, match="wrong token"):
        await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN[:-1])
    await unharmed(good)


async def test_no_token_fails_before_connecting(
    env: tuple[Server, shale.Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHALE_TOKEN", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        with pytest.raises(shale.AuthenticationError, match="no token"):
            await shale.open(f"shale://127.0.0.1:{port}")
        with pytest.raises(BlockingIOError):
            listener.accept()
    await unharmed(env[1])


async def test_first_frame_must_be_hello(env: tuple[Server, shale.Database], raw: Raw) -> None:
    raw.send(MessageType.COMMIT, 1, commit_fields((0, b"evil", b"x")))
    await raw.closed_with(ErrorCode.AUTHENTICATION, "the first frame must be HELLO")
    await unharmed(env[1])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((str(PROTOCOL_VERSION), TOKEN.encode(), "x"), "field 0 must be int, not str"),
        ((PROTOCOL_VERSION, TOKEN, "x"), "field 1 must be bytes, not str"),
        ((PROTOCOL_VERSION, TOKEN.encode(), None), "field 2 must be str, not NoneType"),
        ((True, TOKEN.encode(), "x"), "field 0 must be int, not bool"),
        ((PROTOCOL_VERSION, TOKEN.encode()), "expected 3 fields, got 2"),
    ],
    ids=["version-str", "token-str", "client-none", "version-bool", "short"],
)
async def test_hello_with_wrong_field_types(
    env: tuple[Server, shale.Database], raw: Raw, fields: tuple[Any, ...], message: str
) -> None:
    raw.send(MessageType.HELLO, 1, fields)
    await raw.closed_with(ErrorCode.INVALID_FIELDS, f"invalid HELLO: {message}")
    await unharmed(env[1])


async def test_unsupported_protocol_version(env: tuple[Server, shale.Database], raw: Raw) -> None:
    raw.send(MessageType.HELLO, 1, (PROTOCOL_VERSION + 1, TOKEN.encode(), "future"))
    await raw.closed_with(
        ErrorCode.UNSUPPORTED_VERSION,
        f"protocol version {PROTOCOL_VERSION + 1} is not supported; "
        f"this server speaks {PROTOCOL_VERSION}",
    )
    await unharmed(env[1])


async def test_version_is_not_revealed_before_the_token(
    env: tuple[Server, shale.Database], raw: Raw
) -> None:
    raw.send(MessageType.HELLO, 1, (PROTOCOL_VERSION + 1, b"wrong", "future"))
    await raw.closed_with(ErrorCode.AUTHENTICATION, "wrong token")
    await unharmed(env[1])


async def test_garbage_bytes(env: tuple[Server, shale.Database], raw: Raw) -> None:
    request = b"GET / HTTP/1.1\r\nHost: shale\r\n\r\n"
    raw.send_bytes(request)
    length = int.from_bytes(request[:4], "big")
    await raw.closed_with(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame length {length} is above the limit of {HANDSHAKE_LIMIT}",
    )
    await unharmed(env[1])


async def test_hello_whose_body_is_not_a_tuple(
    env: tuple[Server, shale.Database], raw: Raw
) -> None:
    body = b"\x01\xff\xfe"  # a byte string that never ends
    raw.send_bytes(HEADER.pack(len(body) + 5, MessageType.HELLO, 1) + body)
    kind, request, (code, message) = await raw.recv()
    assert (kind, request, code) == (MessageType.ERROR, 0, ErrorCode.INVALID_FIELDS)
    assert message.startswith("invalid HELLO: the body is not a valid tuple")
    await raw.eof()
    await unharmed(env[1])


async def test_silent_client_is_cut_at_the_handshake_deadline(
    env: tuple[Server, shale.Database], raw: Raw
) -> None:
    await still_serving(env[1], b"during")
    await raw.closed_with(ErrorCode.TIMEOUT, "no handshake within the deadline")
    await unharmed(env[1])


async def test_truncated_hello_then_silence(env: tuple[Server, shale.Database], raw: Raw) -> None:
    hello = frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "slow"))
    raw.send_bytes(hello[: len(hello) - 3])
    await still_serving(env[1], b"during")
    await raw.closed_with(ErrorCode.TIMEOUT, "no handshake within the deadline")
    await unharmed(env[1])


async def test_truncated_frame_after_auth_then_silence(
    env: tuple[Server, shale.Database], authed: Raw
) -> None:
    commit = frame(MessageType.COMMIT, 2, commit_fields((0, b"evil", b"x")))
    authed.send_bytes(commit[: len(commit) - 1])
    await still_serving(env[1], b"during")
    kind, request, (code, message) = await authed.recv()
    assert (kind, request, code) == (MessageType.ERROR, 0, ErrorCode.TIMEOUT)
    assert message.startswith("silent for ")
    await authed.eof()
    await unharmed(env[1])


async def test_authenticated_client_silent_past_idle_timeout(
    env: tuple[Server, shale.Database], authed: Raw
) -> None:
    kind, request, (code, message) = await authed.recv()
    assert (kind, request, code) == (MessageType.ERROR, 0, ErrorCode.TIMEOUT)
    assert message.startswith("silent for ")
    await authed.eof()
    await unharmed(env[1])


# -- frame lengths --------------------------------------------------------------


@pytest.mark.parametrize("length", [HANDSHAKE_LIMIT + 1, 0xFFFFFFFF])
async def test_oversized_length_before_auth(
    env: tuple[Server, shale.Database], raw: Raw, length: int
) -> None:
    # Only the length is sent: the refusal cannot have waited for a body.
    raw.send_bytes(length.to_bytes(4, "big"))
    await raw.closed_with(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame length {length} is above the limit of {HANDSHAKE_LIMIT}",
    )
    await unharmed(env[1])


@pytest.mark.parametrize("excess", [1, 1 << 20])
async def test_oversized_length_after_auth(
    env: tuple[Server, shale.Database], authed: Raw, excess: int
) -> None:
    server, good = env
    length = server.limits.max_frame + excess
    authed.send_bytes(length.to_bytes(4, "big"))
    await authed.closed_with(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame length {length} is above the limit of {server.limits.max_frame}",
    )
    await unharmed(good)


@pytest.mark.parametrize("length", range(5))
@pytest.mark.parametrize("after_auth", [False, True], ids=["before-auth", "after-auth"])
async def test_length_below_five(
    env: tuple[Server, shale.Database], raw: Raw, length: int, after_auth: bool
) -> None:
    if after_auth:
        await raw.hello()
    raw.send_bytes(length.to_bytes(4, "big") + b"\x14\x00\x00\x00\x07")
    await raw.closed_with(ErrorCode.BAD_FRAME, f"frame length {length} is below the minimum of 5")
    await unharmed(env[1])


# -- requests after the handshake --------------------------------------------------


@pytest.mark.parametrize("kind", [0x00, 0x55, MessageType.HELLO, MessageType.GET | REPLY])
async def test_unknown_message_type_after_auth(
    env: tuple[Server, shale.Database], authed: Raw, kind: int
) -> None:
    authed.send(kind, 7, (b"evil",))
    await authed.refused(7, ErrorCode.UNKNOWN_MESSAGE, f"unknown message type {kind:#x}")
    await authed.pings()
    await unharmed(env[1])


async def test_unknown_message_type_without_a_request_id(
    env: tuple[Server, shale.Database], authed: Raw
) -> None:
    authed.send(0x55, 0, ())
    await authed.closed_with(ErrorCode.UNKNOWN_MESSAGE, "unknown message type 0x55")
    await unharmed(env[1])


async def test_garbage_body_after_auth(env: tuple[Server, shale.Database], authed: Raw) -> None:
    body = b"\x01\xff\xfe"
    authed.send_bytes(HEADER.pack(len(body) + 5, MessageType.GET, 5) + body)
    kind, request, (code, message) = await authed.recv()
    assert (kind, request, code) == (MessageType.ERROR, 5, ErrorCode.INVALID_FIELDS)
    assert message.startswith("GET: the body is not a valid tuple")
    await authed.pings()
    await unharmed(env[1])


STAMP_AT_5 = b"evil" + bytes(10) + struct.pack("<I", 5)
"""A versionstamped key whose offset leaves only 9 bytes for the stamp."""

INVALID_REQUESTS = [
    pytest.param(
        MessageType.GET,
        (1, 5),
        ErrorCode.INVALID_FIELDS,
        "GET: field 1 must be bytes, not int",
        id="get-int-key",
    ),
    pytest.param(
        MessageType.GET_RANGE,
        (1, b"a", b"z", -1, False),
        ErrorCode.INVALID_FIELDS,
        "GET_RANGE: limit must be >= 0, not -1",
        id="get-range-negative-limit",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (99, b"evil2", b"x")),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: mutation 1 has unknown type 99",
        id="unknown-mutation",
    ),
    pytest.param(
        MessageType.COMMIT,
        (0, 0, (0, b"evil", b"x", 0, b"evil2", 5), (), (), (), (), False),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: mutation 1 must be (int, bytes, bytes)",
        id="mutation-int-param",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (2, b"z", b"a")),
        ErrorCode.INVERTED_RANGE,
        "a clear range's begin is after its end",
        id="inverted-clear-range",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (13, STAMP_AT_5, b"x")),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: a versionstamp offset does not leave 10 bytes in place",
        id="stamp-offset",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (14, b"evil2", b"\x00\x00")),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: a versionstamp offset does not leave 10 bytes in place",
        id="stamp-short-value",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (0, b"e" * 10_001, b"x")),
        ErrorCode.KEY_TOO_LARGE,
        "key of 10001 bytes exceeds the limit",
        id="key-too-large",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields((0, b"evil", b"x"), (0, b"evil2", b"v" * 100_001)),
        ErrorCode.VALUE_TOO_LARGE,
        "value of 100001 bytes exceeds the limit",
        id="value-too-large",
    ),
    pytest.param(
        MessageType.COMMIT,
        commit_fields(*[(0, b"evil%d" % i, b"v" * 100_000) for i in range(101)]),
        ErrorCode.TRANSACTION_TOO_LARGE,
        "the commit's writes and conflict ranges exceed 10000000 bytes",
        id="transaction-too-large",
    ),
    pytest.param(
        MessageType.COMMIT,
        (
            0,
            0,
            (0, b"evil", b"x"),
            (),
            tuple(b"r%04d" % i + b"r" * 9_995 for i in range(1_004)),
            (),
            (),
            False,
        ),
        ErrorCode.TRANSACTION_TOO_LARGE,
        "the commit's writes and conflict ranges exceed 10000000 bytes",
        id="conflict-ranges-too-large",
    ),
    pytest.param(
        MessageType.COMMIT,
        (0, 0, (0, b"evil", b"x"), (), (), (), ()),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: expected 8 fields, got 7",
        id="commit-short",
    ),
    pytest.param(
        MessageType.COMMIT,
        (0, 0, (0, b"evil", b"x"), (), (b"a",), (), (), False),
        ErrorCode.INVALID_FIELDS,
        "COMMIT: read ranges must be (begin, end) pairs",
        id="odd-read-ranges",
    ),
]


@pytest.mark.parametrize(("kind", "fields", "code", "message"), INVALID_REQUESTS)
async def test_valid_frame_with_invalid_fields(
    env: tuple[Server, shale.Database],
    authed: Raw,
    kind: int,
    fields: tuple[Any, ...],
    code: ErrorCode,
    message: str,
) -> None:
    await authed.call(MessageType.OPEN, 2, (1, None))
    authed.send(kind, 3, fields)
    await authed.refused(3, code, message)
    await authed.pings()
    await unharmed(env[1])


WHY = " (never opened, released, or over max_snapshots)"


async def test_get_on_an_unknown_snapshot(env: tuple[Server, shale.Database], authed: Raw) -> None:
    authed.send(MessageType.GET, 3, (42, b"k"))
    await authed.refused(3, ErrorCode.UNKNOWN_SNAPSHOT, "GET: no open snapshot 42" + WHY)
    authed.send(MessageType.COMMIT, 4, (42, 1, (0, b"evil", b"x"), (), (), (), (), False))
    await authed.refused(4, ErrorCode.UNKNOWN_SNAPSHOT, "COMMIT: no open snapshot 42" + WHY)
    await authed.pings()
    await unharmed(env[1])


async def test_released_snapshot_is_unknown(
    env: tuple[Server, shale.Database], authed: Raw
) -> None:
    await authed.call(MessageType.OPEN, 2, (1, None))
    await authed.call(MessageType.RELEASE, 3, (1,))
    authed.send(MessageType.GET, 4, (1, b"k"))
    await authed.refused(4, ErrorCode.UNKNOWN_SNAPSHOT, "GET: no open snapshot 1" + WHY)
    await unharmed(env[1])


# -- resource limits ---------------------------------------------------------------


async def test_too_many_requests_in_flight() -> None:
    async with serving(Limits(max_in_flight=4, idle_timeout=5.0)) as (server, good):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            (version,) = await raw.call(MessageType.OPEN, 2, (1, None))
            # A commit waits for the engine's next group commit, so four sent
            # in one write are all in flight when the requests behind them
            # are read. These four write nothing.
            empty = (0, version, (), (), (), (), (), False)
            burst = [frame(MessageType.COMMIT, r, empty) for r in range(10, 14)]
            burst.append(frame(MessageType.GET, 20, (1, b"k")))
            burst.append(frame(MessageType.COMMIT, 21, commit_fields((0, b"evil", b"x"))))
            burst.append(frame(MessageType.PING, 22, ()))
            raw.send_bytes(b"".join(burst))
            await raw.refused(20, ErrorCode.TOO_MANY_REQUESTS, "more than 4 requests in flight")
            await raw.refused(21, ErrorCode.TOO_MANY_REQUESTS, "more than 4 requests in flight")
            assert await raw.recv() == (MessageType.PING | REPLY, 22, ())
            answered = {(await raw.recv())[:2] for _ in range(4)}
            assert answered == {(MessageType.COMMIT | REPLY, r) for r in range(10, 14)}
            # The slots are free again.
            await unharmed(good)
            assert await raw.call(MessageType.GET, 31, (1, b"k")) == (None, version)
        finally:
            raw.close()


async def test_too_many_watches() -> None:
    async with serving(Limits(max_watches=2, idle_timeout=5.0)) as (server, good):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            raw.send(MessageType.WATCH_FEED, 10, ("feed",))
            raw.send(MessageType.WATCH_FEED, 11, ("feed",))
            raw.send(MessageType.WATCH_FEED, 12, ("feed",))
            await raw.refused(12, ErrorCode.TOO_MANY_REQUESTS, "WATCH_FEED: more than 2 watches")
            await raw.pings()
            # The good client's commit answers the watches (the feed is not
            # declared, so any commit does).
            await unharmed(good)
            answered = {await raw.recv() for _ in range(2)}
            assert answered == {(MessageType.WATCH_FEED | REPLY, r, ()) for r in (10, 11)}
        finally:
            raw.close()


async def test_too_many_open_snapshots() -> None:
    async with serving(Limits(max_snapshots=2, idle_timeout=5.0)) as (server, good):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            await raw.call(MessageType.OPEN, 2, (1, None))
            await raw.call(MessageType.OPEN, 3, (2, None))
            raw.send(MessageType.OPEN, 4, (3, None))
            await raw.refused(
                4, ErrorCode.TOO_MANY_REQUESTS, "OPEN: more than 2 open snapshots; release some"
            )
            await raw.call(MessageType.RELEASE, 5, (1,))
            await raw.call(MessageType.OPEN, 6, (3, None))
            await unharmed(good)
        finally:
            raw.close()


async def test_too_many_connections() -> None:
    async with serving(Limits(max_connections=2, idle_timeout=5.0)) as (server, good):
        first = await Raw.connect(server)
        try:
            await wait_until(lambda: len(server.connections) == 2)
            second = await Raw.connect(server)
            try:
                await second.closed_with(ErrorCode.TOO_MANY_CONNECTIONS, "too many connections")
            finally:
                second.close()
            await unharmed(good)
        finally:
            first.close()
        await wait_until(lambda: len(server.connections) == 1)
        third = await Raw.connect(server)
        try:
            await third.hello()
            await third.pings()
        finally:
            third.close()


async def test_client_that_never_reads_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="shale.server")
    limits = Limits(stall_timeout=1.0, idle_timeout=5.0)
    async with serving(limits) as (server, good):
        async with good.transaction() as tr:
            for i in range(16):
                tr.set(GOOD + b"big/%02d" % i, bytes(64 << 10))
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            me = f"127.0.0.1:{sock.getsockname()[1]}"
            hello = frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "stalled"))
            await loop.sock_sendall(sock, hello)
            await wait_until(
                lambda: any(c.peer == me and c.authenticated for c in server.connections)
            )
            conn: Connection = next(c for c in server.connections if c.peer == me)
            # Each reply is about a megabyte, more than the socket buffers
            # hold, and this socket is never read.
            scan = (1, GOOD + b"big/", GOOD + b"big0", 0, False)
            requests = [frame(MessageType.OPEN, 2, (1, None))]
            requests += [frame(MessageType.GET_RANGE, 3 + i, scan) for i in range(8)]
            await loop.sock_sendall(sock, b"".join(requests))
            transport = conn.transport
            assert transport is not None
            await wait_until(lambda: not transport.is_reading())
            assert not conn.closed
            await still_serving(good, b"during")
            await wait_until(lambda: conn.closed)
            assert conn not in server.connections
            assert f"{me} closed: client stopped reading" in caplog.messages
            # Aborted, not closed politely: close() would wait forever for
            # this client to take what is buffered, holding it in memory.
            await wait_until(lambda: transport.get_extra_info("socket").fileno() == -1)
            assert transport.get_write_buffer_size() == 0
        await unharmed(good)


# -- the frame decoder, by property ---------------------------------------------------

FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.binary(max_size=40),
    st.text(max_size=20),
)
FRAMES = st.tuples(
    st.integers(0, 255), st.integers(0, 2**32 - 1), st.lists(FIELD, max_size=6).map(tuple)
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def reencode(kind: int, request: int, body: bytes) -> bytes:
    return HEADER.pack(len(body) + 5, kind, request) + body


@settings(max_examples=500)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(FRAMES.map(lambda f: frame(*f)) | st.binary(max_size=12), max_size=6).map(
            b"".join
        ),
    ),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    max_frame=st.integers(min_value=5, max_value=300),
)
def test_frame_reader_consumes_exactly_what_it_yields(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    reader = FrameReader(max_frame)
    out = bytearray()
    fed = 0
    try:
        for chunk in split(data, cuts):
            fed += len(chunk)
            for kind, request, body in reader.feed(chunk):
                assert 0 <= len(body) <= max_frame - 5
                out += reencode(kind, request, body)
    except FrameError as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.FRAME_TOO_LARGE)
        assert data.startswith(bytes(out))
        return
    assert bytes(out) == data[: fed - reader.pending]
    assert fed == len(data)
    assert reader.pending < 4 + max_frame


@settings(max_examples=500)
@given(st.binary(max_size=100))
def test_decode_body_returns_a_tuple_or_raises_protocol_error(body: bytes) -> None:
    try:
        fields = decode_body(body)
    except shale.ProtocolError:
        return
    assert isinstance(fields, tuple)


@settings(max_examples=300)
@given(frames=st.lists(FRAMES, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_frames_survive_any_split(
    frames: list[tuple[int, int, tuple[Any, ...]]], cuts: list[int]
) -> None:
    stream = b"".join(frame(*f) for f in frames)
    reader = FrameReader(1 << 20)
    got: list[tuple[int, int, tuple[Any, ...]]] = []
    for chunk in split(stream, cuts):
        got += [(k, r, decode_body(b)) for k, r, b in reader.feed(chunk)]
    assert reader.pending == 0

    def typed(value: tuple[Any, ...]) -> list[tuple[type, Any]]:
        return [(type(v), v) for v in value]

    assert [(k, r, typed(f)) for k, r, f in got] == [(k, r, typed(f)) for k, r, f in frames]


# -- a live server against random bytes ------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.binary(max_size=40)
        | FRAMES.map(lambda f: frame(*f))
        | st.tuples(
            st.sampled_from(list(MessageType)), st.integers(0, 9), st.binary(max_size=30)
        ).map(lambda t: HEADER.pack(len(t[2]) + 5, t[0], t[1]) + t[2]),
        max_size=8,
    ).map(b"".join)
)
async def test_random_bytes_after_hello(noise: bytes) -> None:
    async with serving(Limits(idle_timeout=5.0)) as (server, good):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            raw.send_bytes(noise)
            raw.writer.write_eof()
            # Whatever the server answered is whole frames, then it closes.
            received = await asyncio.wait_for(raw.reader.read(), HANG)
        except ConnectionResetError:
            received = b""
        finally:
            raw.close()
        reader = FrameReader(server.limits.max_frame)
        for _, _, body in reader.feed(received):
            decode_body(body)
        assert reader.pending == 0
        await unharmed(good)
