"""The server's and client's protocol duties: backpressure, request ids,
in-flight limits, shutdown replies, and feed declarations kept by the server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import shale
from shale import tuple as tuples
from shale.engines.base import CommitRequest, Mutation, MutationType
from shale.engines.feedlog import feed_log, feed_state_key
from shale.feeds import Feed
from shale.server import Limits, Server, serve
from shale.server.protocol import (
    PROTOCOL_VERSION,
    REPLY,
    ErrorCode,
    FrameReader,
    MessageType,
    encode_commit,
    frame,
)

TOKEN = "protocol-token"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    served = await serve(f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0)
    yield served
    await served.stop(drain=1.0)


async def connect(server: Server, **options: Any) -> shale.Database:
    return await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN, **options)


class Raw:
    """A socket speaking frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(1 << 26)
        self.ready: list[tuple[int, int, bytes]] = []

    @classmethod
    async def open(cls, server: Server) -> Raw:
        raw = cls(*await asyncio.open_connection("127.0.0.1", server.port))
        raw.send(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "raw"))
        kind, _, _ = await raw.recv()
        assert kind == MessageType.HELLO | REPLY
        return raw

    def send(self, kind: int, request: int, fields: tuple[Any, ...]) -> None:
        self.writer.write(frame(kind, request, fields))

    async def recv(self) -> tuple[int, int, tuple[Any, ...]]:
        while not self.ready:
            data = await asyncio.wait_for(self.reader.read(1 << 16), 5)
            if not data:
                raise EOFError
            self.ready += self.frames.feed(data)
        kind, request, body = self.ready.pop(0)
        return kind, request, tuples.unpack(body)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def commits_waiting(server: Server) -> None:
    """Until the server has commits waiting on the engine."""
    for _ in range(500):
        if any(c.tasks for c in server.connections):
            return
        await asyncio.sleep(0)


async def stop_during_a_commit(server: Server, raw: Raw) -> asyncio.Future[None]:
    """Send a commit (request 10), and start stopping the server while the
    engine has it; the future of the stop."""
    commit = CommitRequest(-1, [(MutationType.SET, b"k", b"v")])
    raw.send(MessageType.COMMIT, 10, encode_commit(0, commit))
    await raw.writer.drain()
    await commits_waiting(server)
    stopping = asyncio.ensure_future(server.stop(drain=5.0))
    await asyncio.sleep(0)
    return stopping


async def test_a_client_that_does_not_read_has_its_frames_held(tmp_path: Path) -> None:
    # 1 MB replies to 200 pipelined range reads that are never read: the
    # server stops taking frames off the socket once it cannot write, so it
    # buffers about one reply, not 200.
    server = await serve(
        f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0, limits=Limits(stall_timeout=30)
    )
    try:
        db = await connect(server)
        async with db.transaction() as tr:
            for i in range(40):
                tr.set(b"big%02d" % i, bytes(60_000))
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        writer.write(frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "lazy")))
        writer.write(frame(MessageType.OPEN, 2, (1, None)))
        for request in range(3, 203):
            writer.write(frame(MessageType.GET_RANGE, request, (1, b"big", b"bih", 0, False)))
        await writer.drain()
        await asyncio.sleep(0.5)
        port = writer.get_extra_info("sockname")[1]
        lazy = next(c for c in server.connections if c.peer.endswith(f":{port}"))
        assert not lazy._reading
        assert lazy.reader.pending > 0  # frames wait, unparsed
        assert lazy.transport is not None
        assert lazy.transport.get_write_buffer_size() < 3 * server.limits.range_bytes
        assert await db.get(b"big00") == bytes(60_000)  # everyone else is served
        writer.close()
        await db.close()
    finally:
        await server.stop(drain=1.0)


@pytest.mark.parametrize("kind", [MessageType.GET, MessageType.COMMIT, MessageType.WATCH_KEY])
async def test_a_request_that_needs_a_reply_needs_an_id(server: Server, kind: int) -> None:
    raw = await Raw.open(server)
    raw.send(kind, 0, ())
    name = MessageType(kind).name
    assert await raw.recv() == (
        MessageType.ERROR,
        0,
        (ErrorCode.INVALID_FIELDS, f"{name} needs a request id"),
    )
    with pytest.raises(EOFError):
        await raw.recv()


async def test_hello_needs_an_id(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(MessageType.HELLO, 0, (PROTOCOL_VERSION, TOKEN.encode(), "raw")))
    raw = Raw(reader, writer)
    assert await raw.recv() == (
        MessageType.ERROR,
        0,
        (ErrorCode.INVALID_FIELDS, "HELLO needs a request id"),
    )


async def test_every_request_sent_before_shutdown_is_answered(tmp_path: Path) -> None:
    server = await serve(f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0)
    raw = await Raw.open(server)
    requests = range(10, 60)
    for request in requests:
        commit = CommitRequest(-1, [(MutationType.SET, b"k%d" % request, b"v")])
        raw.send(MessageType.COMMIT, request, encode_commit(0, commit))
    await raw.writer.drain()
    await commits_waiting(server)
    stopping = asyncio.ensure_future(server.stop(drain=0.0))
    answered: dict[int, tuple[Any, ...]] = {}
    final = None
    while final is None:
        kind, request, fields = await raw.recv()
        if request == 0:
            final = fields
        else:
            answered[request] = (kind, fields[0] if kind == MessageType.ERROR else "ok")
    await stopping
    assert final == (ErrorCode.SHUTTING_DOWN, "server shutting down")
    assert set(answered) == set(requests)
    outcomes = set(answered.values())
    assert outcomes <= {
        (MessageType.COMMIT | REPLY, "ok"),
        (MessageType.ERROR, ErrorCode.COMMIT_UNKNOWN_RESULT),
        (MessageType.ERROR, ErrorCode.SHUTTING_DOWN),
    }
    # Commits cut short by the shutdown said so, rather than going silent.
    assert (MessageType.ERROR, ErrorCode.COMMIT_UNKNOWN_RESULT) in outcomes


async def test_request_ids_wrap_around(server: Server) -> None:
    db = await connect(server)
    try:
        link = db.engine._link  # type: ignore[attr-defined]
        link._last_id = 0xFFFF_FFFF - 2
        for i in range(6):
            await db.set(b"k", b"%d" % i)
        assert link._last_id < 10
        assert await db.get(b"k") == b"5"
    finally:
        await db.close()


async def test_the_client_keeps_to_the_servers_in_flight_limit(tmp_path: Path) -> None:
    server = await serve(
        f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0, limits=Limits(max_in_flight=3)
    )
    db = await connect(server)
    try:

        async def bump(tr: shale.Transaction, i: int) -> None:
            tr.set(b"n%03d" % i, b"x")

        await asyncio.gather(*(db.transact(bump, i) for i in range(60)))
        async with db.transaction() as tr:
            assert len(await tr.get_range(b"n", b"o")) == 60
    finally:
        await db.close()
        await server.stop(drain=1.0)


async def test_a_stamped_value_does_not_wake_unrelated_feeds(server: Server) -> None:
    # Every commit through the server carries a versionstamped idempotency id:
    # that must not count as "wrote anywhere".
    db = await connect(server)
    try:
        await Feed("f", b"feed/").declare(db)
        woken = server.db.next_change("f")
        await db.set(b"elsewhere", b"v")
        await asyncio.sleep(0.05)
        assert not woken.done()
        await db.set(b"feed/x", b"v")
        await asyncio.wait_for(asyncio.shield(woken), 5)
    finally:
        await db.close()


async def test_a_range_clear_of_the_declarations_drops_the_feeds(server: Server) -> None:
    db = await connect(server)
    try:
        await Feed("a", b"a/").declare(db)
        await Feed("b", b"b/").declare(db)
        assert set(server.db.feeds) == {"a", "b"}

        async def wipe(tr: shale.Transaction) -> None:
            tr.access_system_keys = True
            begin = b"\xff" + tuples.pack(("feeds",))
            tr.clear_range(begin, begin + b"\xff")

        await db.transact(wipe)
        assert server.db.feeds == {}
    finally:
        await db.close()


async def test_an_invalid_declaration_changes_no_feed(server: Server) -> None:
    db = await connect(server)
    raw = await Raw.open(server)
    try:
        await Feed("a", b"a/").declare(db)
        before = dict(server.db.feeds)
        # Sent raw: the Python client refuses such writes before they leave.
        declarations = b"\xff" + tuples.pack(("feeds",))
        mutations = (
            (MutationType.SET, declarations + tuples.pack(("a",)), b""),
            (MutationType.SET, declarations + tuples.pack(("z",)), b"garbage"),
        )
        raw.send(MessageType.COMMIT, 2, encode_commit(0, CommitRequest(-1, list(mutations))))
        kind, request, (code, message) = await raw.recv()
        assert (kind, request, code) == (MessageType.ERROR, 2, ErrorCode.INVALID_FIELDS)
        assert message.startswith("COMMIT: refused write")
        assert "not a feed declaration" in message
        assert server.db.feeds == before
    finally:
        await raw.close()
        await db.close()


@pytest.mark.parametrize(
    ("what", "mutation"),
    [
        ("a corrupt feed state", (MutationType.SET, feed_state_key("a"), b"short")),
        (
            "a versionstamped feed state",
            (MutationType.SET_VERSIONSTAMPED_VALUE, feed_state_key("a"), bytes(18) + bytes(4)),
        ),
        ("a feed log entry", (MutationType.SET, feed_log("a") + bytes(13), b"garbage")),
    ],
)
async def test_writes_corrupting_a_feed_are_refused_raw(
    server: Server, what: str, mutation: Mutation
) -> None:
    """The server checks what the Python client checks before sending: a
    raw client cannot corrupt a feed (a forged state once let retention
    clear the whole user keyspace)."""
    db = await connect(server)
    raw = await Raw.open(server)
    try:
        await Feed("a", b"a/").declare(db)
        await db.set(b"a/1", b"kept")
        request = CommitRequest(-1, [(MutationType.SET, b"a/2", b"x"), mutation])
        raw.send(MessageType.COMMIT, 2, encode_commit(0, request))
        kind, _, (code, message) = await raw.recv()
        assert (kind, code) == (MessageType.ERROR, ErrorCode.INVALID_FIELDS), what
        assert "refused write" in message
        assert await db.get(b"a/2") is None
        await db.set(b"a/3", b"still logged")
        assert await db.get(b"a/1") == b"kept"
    finally:
        await raw.close()
        await db.close()


async def test_watches_do_not_hold_back_requests(tmp_path: Path) -> None:
    server = await serve(
        f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0, limits=Limits(max_in_flight=4)
    )
    db = await connect(server)
    try:
        async with db.transaction() as tr:
            watches = [tr.watch(b"w%d" % i) for i in range(6)]
        await asyncio.wait_for(db.set(b"k", b"v"), 5)
        assert await asyncio.wait_for(db.get(b"k"), 5) == b"v"
        assert not any(w.done() for w in watches)
    finally:
        await db.close()
        await server.stop(drain=1.0)


async def test_a_release_during_shutdown_does_not_cut_running_commits(tmp_path: Path) -> None:
    server = await serve(f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0)
    raw = await Raw.open(server)
    stopping = await stop_during_a_commit(server, raw)
    raw.send(MessageType.RELEASE, 0, (99,))
    raw.send(MessageType.PING, 11, ())
    replies = {(kind, request) for kind, request, _ in [await raw.recv(), await raw.recv()]}
    assert replies == {(MessageType.COMMIT | REPLY, 10), (MessageType.PING | REPLY, 11)}
    await stopping


DECLARATIONS = b"\xff" + tuples.pack(("feeds",))


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (tuples.pack(("1", 0, "f", b"f/", False, None, None)), MutationType.SET),
        (tuples.pack((1, 0, "f", "f/", False, None, None)), MutationType.SET),
        (tuples.pack((1, 0, "f", b"f/")), MutationType.SET),
        (tuples.pack((1, 0, "f", b"f/", False, None, None)), MutationType.APPEND_IF_FITS),
    ],
    ids=["string-version", "text-prefix", "short", "atomic-op"],
)
async def test_a_bad_declaration_is_refused_and_harms_no_one(
    server: Server, value: bytes, kind: MutationType
) -> None:
    raw = await Raw.open(server)
    key = DECLARATIONS + tuples.pack(("f",))
    commit = CommitRequest(-1, [(MutationType.SET, b"mine", b"v"), (kind, key, value)])
    raw.send(MessageType.COMMIT, 5, encode_commit(0, commit))
    kind_back, request, (code, _) = await raw.recv()
    assert (kind_back, request, code) == (MessageType.ERROR, 5, ErrorCode.INVALID_FIELDS)
    assert server.db.feeds == {}
    db = await connect(server)
    try:
        assert await db.get(b"mine") is None
        await db.set(b"other", b"fine")  # the engine is unharmed
    finally:
        await db.close()


async def test_a_refused_commit_releases_its_snapshot(server: Server) -> None:
    raw = await Raw.open(server)
    raw.send(MessageType.OPEN, 2, (7, None))
    assert (await raw.recv())[0] == MessageType.OPEN | REPLY
    bad = CommitRequest(-1, [(MutationType.CLEAR_RANGE, b"z", b"a")])
    raw.send(MessageType.COMMIT, 3, encode_commit(7, bad))
    assert (await raw.recv())[2][0] == ErrorCode.INVERTED_RANGE
    connection = next(iter(server.connections))
    assert 7 not in connection.snapshots


async def test_a_one_way_open_over_the_limit_keeps_the_connection(tmp_path: Path) -> None:
    server = await serve(
        f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0, limits=Limits(max_snapshots=1)
    )
    try:
        raw = await Raw.open(server)
        raw.send(MessageType.OPEN, 0, (1, None))
        raw.send(MessageType.OPEN, 0, (2, None))  # over the limit: dropped
        raw.send(MessageType.GET, 5, (2, b"k"))
        # The read behind it is told why, with a code the client retries.
        kind, request, (code, message) = await raw.recv()
        assert (kind, request, code) == (MessageType.ERROR, 5, ErrorCode.TOO_MANY_REQUESTS)
        assert message == "GET: more than 1 open snapshots; release some"
        raw.send(MessageType.GET, 6, (1, b"k"))
        assert (await raw.recv())[:2] == (MessageType.GET | REPLY, 6)
    finally:
        await server.stop(drain=1.0)


async def test_a_one_way_open_during_shutdown_keeps_running_commits(tmp_path: Path) -> None:
    server = await serve(f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0)
    raw = await Raw.open(server)
    stopping = await stop_during_a_commit(server, raw)
    raw.send(MessageType.OPEN, 0, (1, None))
    raw.send(MessageType.GET, 11, (1, b"k"))
    replies = {(kind, request) for kind, request, _ in [await raw.recv(), await raw.recv()]}
    assert replies == {(MessageType.COMMIT | REPLY, 10), (MessageType.ERROR, 11)}
    await stopping


async def test_a_feed_watch_is_on_the_wire_before_next_change_returns(server: Server) -> None:
    # The subscriber reads right after asking for the wake-up: the watch must
    # reach the server first, or a commit between the read's snapshot and
    # the watch's registration would wake no one.
    db = await connect(server)
    try:
        await Feed("f", b"feed/").declare(db)
        link = db.engine._link  # type: ignore[attr-defined]
        woken = db.next_change("f")
        kinds = [kind for _, kind in link.pending.values()]
        assert MessageType.WATCH_FEED in kinds
        await db.set(b"feed/x", b"v")
        await asyncio.wait_for(woken, 5)
    finally:
        await db.close()


async def test_the_server_registers_a_watch_before_the_next_frame(server: Server) -> None:
    # A watch and a commit under the feed in one write: the commit must see
    # the watch registered, whatever the server does with the watch later.
    db = await connect(server)
    try:
        await Feed("f", b"feed/").declare(db)
    finally:
        await db.close()
    raw = await Raw.open(server)
    commit = CommitRequest(-1, [(MutationType.SET, b"feed/k", b"v")])
    raw.writer.write(
        frame(MessageType.WATCH_FEED, 7, ("f",))
        + frame(MessageType.COMMIT, 8, encode_commit(0, commit))
    )
    replies = {(kind, request) for kind, request, _ in [await raw.recv(), await raw.recv()]}
    assert replies == {(MessageType.WATCH_FEED | REPLY, 7), (MessageType.COMMIT | REPLY, 8)}


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (frame(MessageType.HELLO | REPLY, 1, (2, "future", 1 << 20)), "not a protocol 1 HELLO"),
        (b"\x00\x00\x00\x02!!", "bad frame"),
    ],
    ids=["another-version", "garbage"],
)
async def test_a_server_that_breaks_the_protocol_is_refused(reply: bytes, match: str) -> None:
    # The client holds servers to the protocol too: a hostile or newer one
    # gets a precise error, not a crash deep inside the engine.
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(reply)
        await writer.drain()
        await reader.read()
        writer.close()

    listener = await asyncio.start_server(impostor, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        with pytest.raises(shale.ProtocolError, match=match):
            await shale.open(f"shale://127.0.0.1:{port}", token=TOKEN, connect_timeout=2)
    finally:
        listener.close()
        await listener.wait_closed()


async def test_transactions_leave_no_snapshot_open_on_the_server(server: Server) -> None:
    # A commit names its snapshot and the client sends no RELEASE after it:
    # the server must release it, or every transaction would leak one.
    db = await connect(server)
    try:

        async def bump(tr: shale.Transaction) -> None:
            tr.set(b"n", b"%d" % int(await tr.get(b"n") or b"0"))

        for _ in range(20):
            await db.transact(bump)
        for _ in range(20):
            await db.get(b"n")  # read-only: released with a RELEASE frame
        await asyncio.sleep(0.05)  # the last RELEASE leaves on the next turn
        assert [len(c.snapshots) for c in server.connections] == [0]
    finally:
        await db.close()
