"""Change feeds through ``shale serve``: pushes, declarations, restarts,
slow subscribers.

In-process servers over a real SQLite file and real sockets. Subscribers
poll once an hour (``poll=3600``), so every change that reaches them in a
test was pushed by the server (``WATCH_FEED``) or found after a reconnect,
never polled for. Timeouts only stop a hang from stalling the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import shale
from shale.feeds import Change, Feed, HistoryLost
from shale.feeds.changefeed import ChangeFeed
from shale.server.server import Server, serve

TOKEN = "feed-token"
HANG_GUARD = 10.0
"""Seconds a test waits for something before failing: a guard against hangs."""
HOUR = 3600.0


class Served:
    """An in-process server over one SQLite file, restartable on its port."""

    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"
        self.port = 0
        self.server: Server | None = None
        self.clients: list[shale.Database] = []

    async def start(self) -> None:
        self.server = await serve(self.url, TOKEN, port=self.port)
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def address(self) -> str:
        return f"shale://127.0.0.1:{self.port}"

    async def client(self) -> shale.Database:
        db = await shale.open(self.address, token=TOKEN)
        self.clients.append(db)
        return db


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    running = Served(tmp_path / "db.sqlite")
    await running.start()
    try:
        yield running
    finally:
        for db in running.clients:
            await db.close()
        await running.stop()


async def write(db: shale.Database, key: bytes, value: bytes) -> None:
    async def set_it(tr: shale.Transaction) -> None:
        tr.set(key, value)

    await asyncio.wait_for(db.run(set_it, retries=50), HANG_GUARD)


async def next_change(changes: AsyncIterator[Change]) -> Change:
    return await asyncio.wait_for(anext(changes), HANG_GUARD)


async def watching(served: Served, count: int = 1) -> None:
    """Wait until the server holds ``count`` feed watches: the subscribers
    have caught up and wait for a push."""

    async def poll() -> None:
        assert served.server is not None
        while sum(len(conn.watches) for conn in served.server.connections) < count:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), HANG_GUARD)


async def cancel(task: asyncio.Future[Any]) -> None:
    """Stop ``task`` and wait for it, if a test ends without it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, shale.ShaleError):
        await task


def number(change: Change) -> int:
    return int(change.value or b"-1")


# -- pushes --------------------------------------------------------------------


async def test_a_push_delivers_another_clients_commit(served: Served) -> None:
    writer, reader = await served.client(), await served.client()
    feed = await Feed("orders", b"orders/").declare(writer)
    changes = feed.subscribe(reader, await feed.position(reader), poll=HOUR)
    pending = asyncio.ensure_future(anext(changes))
    try:
        for n in range(3):
            await watching(served)
            await write(writer, b"orders/%d" % n, b"%d" % n)
            await write(writer, b"elsewhere", b"%d" % n)  # not under the prefix
            change = await asyncio.wait_for(pending, HANG_GUARD)
            assert (change.key, number(change)) == (b"orders/%d" % n, n)
            pending = asyncio.ensure_future(anext(changes))
    finally:
        await cancel(pending)
        await changes.aclose()


async def test_a_feed_declared_by_another_client_is_found(served: Served) -> None:
    early, other, writer = await served.client(), await served.client(), await served.client()
    with pytest.raises(shale.UsageError, match="no feed named"):
        await Feed.open(early, "late")
    await Feed("late", b"late/").declare(writer)

    opened = await Feed.open(early, "late")
    assert opened.prefix == b"late/"
    # Subscribing with a feed built locally finds the declaration too.
    changes = Feed("late", b"late/").subscribe(other, await opened.position(other), poll=HOUR)
    pending = asyncio.ensure_future(anext(changes))
    try:
        await watching(served)
        await write(writer, b"late/a", b"1")
        change = await asyncio.wait_for(pending, HANG_GUARD)
        assert (change.key, change.value) == (b"late/a", b"1")
    finally:
        await cancel(pending)
        await changes.aclose()


# -- restarts --------------------------------------------------------------------


async def test_a_subscriber_resumes_across_a_server_restart(served: Served) -> None:
    total, restart_at = 30, 10
    writer, reader = await served.client(), await served.client()
    feed = await Feed("seq", b"seq/").declare(writer)
    start = await feed.position(reader)
    received: list[Change] = []
    reached = asyncio.Event()

    async def consume() -> None:
        async for change in feed.subscribe(reader, start, poll=HOUR):
            received.append(change)
            if len(received) == restart_at:
                reached.set()
            if len(received) == total:
                return

    async def produce() -> None:
        for n in range(total):
            await write(writer, b"seq/%03d" % n, b"%d" % n)

    consuming = asyncio.ensure_future(consume())
    producing = asyncio.ensure_future(produce())
    try:
        await asyncio.wait_for(reached.wait(), HANG_GUARD)
        # The writer goes on committing while the server is away.
        await served.restart()
        await asyncio.wait_for(asyncio.gather(producing, consuming), 3 * HANG_GUARD)
    finally:
        await cancel(producing)
        await cancel(consuming)
    assert [number(c) for c in received] == list(range(total))

    # A stored cursor resumes with a new connection, right after its change.
    fresh = await served.client()
    changes = feed.subscribe(fresh, received[restart_at - 1].cursor, poll=HOUR)
    try:
        again = [await next_change(changes) for _ in range(total - restart_at)]
    finally:
        await changes.aclose()
    assert [number(c) for c in again] == list(range(restart_at, total))
    assert [c.cursor for c in again] == [c.cursor for c in received[restart_at:]]


# -- flow control ------------------------------------------------------------------


async def test_a_slow_subscriber_costs_the_server_nothing_and_loses_history(
    served: Served,
) -> None:
    writer, reader = await served.client(), await served.client()
    feed = await Feed("slow", b"slow/", max_entries=5).declare(writer)
    start = await feed.position(reader)
    first = asyncio.Event()
    wake = asyncio.Event()
    seen: list[Change] = []

    async def slow() -> None:
        async for change in feed.subscribe(reader, start, poll=HOUR):
            seen.append(change)
            first.set()
            await wake.wait()  # asleep while the writer races ahead

    subscriber = asyncio.ensure_future(slow())
    try:
        await watching(served)
        await write(writer, b"slow/0", b"0")
        await asyncio.wait_for(first.wait(), HANG_GUARD)
        assert served.server is not None
        most = {"tasks": 0, "watches": 0, "buffered": 0}
        for n in range(1, 200):
            await write(writer, b"slow/%d" % n, b"%d" % n)
            for conn in served.server.connections:
                assert conn.transport is not None
                most["tasks"] = max(most["tasks"], len(conn.tasks))
                most["watches"] = max(most["watches"], len(conn.watches))
                most["buffered"] = max(most["buffered"], conn.transport.get_write_buffer_size())
        # One watch at most (the subscriber's, fired by the next commit and
        # not renewed while it sleeps), no work left behind, nothing queued.
        assert most["tasks"] <= 2 and most["watches"] <= 1
        assert most["buffered"] <= 64 * 1024
        wake.set()
        with pytest.raises(HistoryLost):
            await asyncio.wait_for(subscriber, HANG_GUARD)
    finally:
        await cancel(subscriber)
    assert [number(c) for c in seen] == [0]


# -- ChangeFeed ----------------------------------------------------------------------


@pytest.mark.parametrize("by", ["db", "url"])
async def test_changefeed_delivers_across_a_restart(served: Served, by: str) -> None:
    writer = await served.client()
    options: dict[str, Any] = (
        {"db": await served.client()}
        if by == "db"
        else {"url": f"shale://:{TOKEN}@127.0.0.1:{served.port}"}
    )
    changefeed = ChangeFeed(b"cf/", **options)
    running = asyncio.ensure_future(changefeed.run_forever())

    async def positioned() -> None:
        while changefeed.cursor is None:
            await asyncio.sleep(0.005)

    async def take(count: int) -> list[int]:
        return [
            number(await asyncio.wait_for(changefeed.outqueue.get(), HANG_GUARD))
            for _ in range(count)
        ]

    try:
        await asyncio.wait_for(positioned(), HANG_GUARD)
        for n in range(5):
            await write(writer, b"cf/%d" % n, b"%d" % n)
        assert await take(5) == list(range(5))
        await served.restart()
        for n in range(5, 10):
            await write(writer, b"cf/%d" % n, b"%d" % n)
        assert await take(5) == list(range(5, 10))
        await write(writer, b"cf/end", b"-1")
        assert await take(1) == [-1]  # nothing repeated before the sentinel
    finally:
        await cancel(running)
        if changefeed._db is not None and by == "url":
            await changefeed._db.close()


# -- commits whose client went away ----------------------------------------------


async def send_and_vanish(db: shale.Database, key: bytes, value: bytes) -> None:
    """Send a commit, then close the connection before its reply: the server
    has the commit and no one to answer."""
    tr = db.transaction()
    tr.set(key, value)
    committing = asyncio.ensure_future(tr.commit())
    await asyncio.sleep(0)  # the frame is written in the task's first step
    await db.close()
    with contextlib.suppress(shale.CommitUnknownResult, shale.Unavailable):
        await asyncio.wait_for(committing, HANG_GUARD)


async def landed(db: shale.Database, key: bytes) -> None:
    """Wait until ``key`` is written: a commit the server received is
    applied, whether or not its client is still there for the reply."""

    async def poll() -> None:
        while await db.get(key) is None:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), HANG_GUARD)


async def test_a_commit_from_a_client_that_vanished_still_wakes_subscribers(
    served: Served,
) -> None:
    writer, reader = await served.client(), await served.client()
    feed = await Feed("orphans", b"orphans/").declare(writer)
    changes = feed.subscribe(reader, await feed.position(reader), poll=HOUR)
    pending = asyncio.ensure_future(anext(changes))
    try:
        for n in range(5):
            await watching(served)
            vanishing = await served.client()
            await send_and_vanish(vanishing, b"orphans/%d" % n, b"%d" % n)
            await landed(writer, b"orphans/%d" % n)
            change = await asyncio.wait_for(pending, HANG_GUARD)
            assert (change.key, number(change)) == (b"orphans/%d" % n, n)
            pending = asyncio.ensure_future(anext(changes))
    finally:
        await cancel(pending)
        await changes.aclose()


async def test_a_feed_declared_by_a_client_that_vanished_still_logs(served: Served) -> None:
    vanishing, writer, reader = [await served.client() for _ in range(3)]
    assert served.server is not None
    server_db = served.server.db
    declaring = asyncio.ensure_future(Feed("ghost", b"ghost/").declare(vanishing))

    async def dispatched() -> None:
        # The server takes a declaration on as it reads the declaring commit.
        while "ghost" not in server_db.feeds:
            await asyncio.sleep(0)

    await asyncio.wait_for(dispatched(), HANG_GUARD)
    await vanishing.close()
    # Its retry finds the handle closed under it.
    with contextlib.suppress(shale.UsageError):
        await asyncio.wait_for(declaring, HANG_GUARD)

    async def declared() -> Feed:
        while True:
            with contextlib.suppress(shale.UsageError):
                return await Feed.open(reader, "ghost")
            await asyncio.sleep(0.01)

    feed = await asyncio.wait_for(declared(), HANG_GUARD)
    changes = feed.subscribe(reader, await feed.origin(reader), poll=HOUR)
    try:
        await write(writer, b"ghost/a", b"1")
        change = await next_change(changes)
        assert (change.key, change.value) == (b"ghost/a", b"1")
    finally:
        await changes.aclose()
