"""The ``shale://`` client after ``Database.close()``: every operation on its
engine raises ``DatabaseClosed`` at once, whether it starts after the close
or was waiting on the server when it came, and nothing hangs.

Real servers on loopback: ``shale serve`` in the test's loop, or a bare
socket server that answers ``HELLO`` and then nothing, for requests that
would otherwise wait forever. ``asyncio.wait_for(..., HANG)`` turns a hang
into a failure; it measures nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import shale
from shale.engines.base import CommitRequest, MutationType
from shale.engines.remote import RemoteEngine
from shale.server.protocol import PROTOCOL_VERSION, REPLY, MessageType, frame
from shale.server.server import Server, serve

TOKEN = "close-token"
HANG = 5.0
"""Seconds before a wait counts as a hang: a liveness bound, not a measurement."""


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await serve("memory://", TOKEN, port=0)
    yield running
    await running.stop(drain=1.0)


def engine_of(db: shale.Database) -> RemoteEngine:
    engine = db.engine
    assert isinstance(engine, RemoteEngine)
    return engine


async def closed_promptly(attempt: Callable[[], Awaitable[object]]) -> None:
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(attempt(), HANG)


async def test_every_operation_after_close_raises_database_closed(server: Server) -> None:
    db = await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN)
    engine = engine_of(db)
    await db.set(b"k", b"v")
    snapshot = await engine.snapshot()
    assert await snapshot.get(b"k") == b"v"
    async with db.transaction() as tr:
        watched = tr.watch(b"k")
    await asyncio.sleep(0)  # the watch is on its way to the server
    await asyncio.wait_for(db.close(), HANG)

    await closed_promptly(engine.snapshot)
    await closed_promptly(lambda: snapshot.get(b"k"))
    await closed_promptly(lambda: snapshot.get_range(b"", b"\xff", 0, False))
    await closed_promptly(lambda: engine.commit(CommitRequest(-1, [(MutationType.SET, b"x", b"")])))
    later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    engine.watch(b"k", b"v", later)
    await closed_promptly(lambda: later)
    await closed_promptly(lambda: engine.next_change("feed"))
    # A watch pending at the close is cancelled, as in every engine.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(watched, HANG)
    assert watched.cancelled()
    snapshot.release()  # a no-op now, and no error


class Silent:
    """A server that answers ``HELLO`` (while ``answering``) and
    ``GET_RANGE`` (with no rows: ``shale.open`` reads the feed declarations),
    and nothing else: other requests wait until the client gives up on them."""

    def __init__(self) -> None:
        self.answering = True
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                kind, request = struct.unpack(">BI", await reader.readexactly(5))
                await reader.readexactly(length - 5)
                if kind == MessageType.HELLO and self.answering:
                    reply = (PROTOCOL_VERSION, "silent", 1 << 20, 16, 60.0, True, True, True)
                    writer.write(frame(MessageType.HELLO | REPLY, request, reply))
                elif kind == MessageType.GET_RANGE:
                    writer.write(frame(MessageType.GET_RANGE | REPLY, request, (False, 1)))

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def stop(self) -> None:
        self.drop_connections()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    server = Silent()
    await server.start()
    yield server
    await server.stop()


async def test_requests_waiting_on_the_server_end_at_close(silent: Silent) -> None:
    db = await asyncio.wait_for(shale.open(f"shale://127.0.0.1:{silent.port}", token=TOKEN), HANG)
    engine = engine_of(db)
    snapshot = await engine.snapshot()
    reading = asyncio.ensure_future(snapshot.get(b"k"))
    committing = asyncio.ensure_future(engine.commit(CommitRequest(-1, [])))
    watched: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    engine.watch(b"k", None, watched)
    await asyncio.sleep(0.1)
    assert not reading.done() and not committing.done()
    await asyncio.wait_for(db.close(), HANG)
    await closed_promptly(lambda: reading)
    # The commit was sent: whether it was applied is unknown.
    with pytest.raises(shale.CommitUnknownResult):
        await asyncio.wait_for(committing, HANG)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(watched, HANG)
    assert watched.cancelled()


async def test_a_reconnect_in_progress_ends_at_close(silent: Silent) -> None:
    url = f"shale://127.0.0.1:{silent.port}"
    db = await asyncio.wait_for(shale.open(url, token=TOKEN, connect_timeout=60), HANG)
    engine = engine_of(db)
    pending = (await engine.snapshot()).get(b"k")
    silent.answering = False
    silent.drop_connections()
    with pytest.raises(shale.Unavailable):
        await asyncio.wait_for(pending, HANG)
    # The next request reconnects, and the server never answers its HELLO.
    opening = asyncio.ensure_future(engine.snapshot())
    await asyncio.sleep(0.1)
    assert not opening.done()
    await asyncio.wait_for(db.close(), HANG)
    await closed_promptly(lambda: opening)
