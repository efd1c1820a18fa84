"""Change feeds beyond the per-engine suite (``shale.testing.feeds``):
exactly-once consumers under SIGKILL, and the BigchainDB-style
``ChangeFeed`` adapter — its queue, its reconnects and ``HistoryLost``."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import shale
from shale.core.retry import FullJitterBackoff
from shale.feeds import DELETE, INSERT, UPDATE, Change, Consumer, Feed, HistoryLost
from shale.feeds.changefeed import ChangeFeed
from shale.testing.feeds import HANG_GUARD


def url_of(path: Path) -> str:
    return f"sqlite:////{str(path.resolve()).lstrip('/')}"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[shale.Database]:
    database = await shale.open(url_of(tmp_path / "feeds.db"))
    yield database
    await database.close()


async def get(queue: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(queue.get(), HANG_GUARD)


async def get_change(changes: AsyncIterator[Change]) -> Change:
    return await asyncio.wait_for(anext(changes), HANG_GUARD)


async def wait_until_following(db: shale.Database) -> None:
    """Wait until a subscription started without a cursor has fixed where it
    starts. It waits for the next commit only once it has, and that wait is
    the one sign of it a test can see from outside."""

    async def poll() -> None:
        while not db._next_change:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), HANG_GUARD)


async def connected(feed: ChangeFeed, other_than: shale.Database | None = None) -> shale.Database:
    """The database ``feed`` has open, once it has one (other than ``other_than``)."""

    async def poll() -> shale.Database:
        while feed._db is None or feed._db is other_than:
            await asyncio.sleep(0.005)
        return feed._db

    return await asyncio.wait_for(poll(), HANG_GUARD)


def drop_connections(db: shale.Database) -> None:
    """Close the SQLite engine's pooled driver connections under it.

    An embedded engine has no server to kill; a connection that goes away
    under the engine is the nearest real failure, and its error takes the
    engine's own path (``sqlite3`` error -> ``EngineError``).
    """
    idle = db.engine._idle  # type: ignore[attr-defined]
    assert idle, "no pooled connection to drop"
    for connection in idle:
        connection.close()


async def stop(task: asyncio.Task[None], feed: ChangeFeed) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await feed._disconnect()


# -- exactly once, with SIGKILL --------------------------------------------

CONSUMER = textwrap.dedent(
    """
    import asyncio, sys, shale
    from shale.feeds import Consumer, Feed

    ONE = (1).to_bytes(8, "little")

    async def handle(tr, change):
        tr.add(b"count", ONE)
        tr.add(b"effect/" + change.key, ONE)

    async def main(url, total):
        db = await shale.open(url)
        consumer = Consumer(await Feed.open(db, "jobs"), "worker")
        while True:
            count = int.from_bytes(await db.get(b"count") or bytes(8), "little")
            print(count, flush=True)
            if count >= total:
                break
            await consumer.process(db, handle, limit=1)
        await db.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_consumer_is_exactly_once_under_sigkill(tmp_path: Path) -> None:
    url = url_of(tmp_path / "jobs.db")
    jobs = [b"job/%03d/%d" % (t, k) for t in range(75) for k in range(4)]
    async with await shale.open(url) as db:
        await Feed("jobs", b"job/").declare(db)
        for t in range(75):
            async with db.transaction() as tr:
                for key in jobs[4 * t : 4 * t + 4]:
                    tr.set(key, b"todo")
    total = len(jobs)
    rng = random.Random()
    kills = 0
    for threshold in (*range(30, total - 30, 30), total):
        child = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, url, str(total)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        try:
            while True:
                line = child.stdout.readline()
                assert line, f"the consumer died (exit status {child.wait()})"
                if int(line) >= threshold:
                    break
            if threshold < total:
                # Land anywhere in the handling of the next few changes, the
                # gap between an effect's commit and its cursor's included.
                time.sleep(rng.uniform(0, 0.003))
                os.kill(child.pid, signal.SIGKILL)
                kills += 1
            assert child.wait(timeout=HANG_GUARD) in (0, -signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
    assert kills == 8
    async with await shale.open(url) as db, db.transaction() as tr:
        count = await tr.get(b"count")
        effects = dict(await tr.get_range(b"effect/", b"effect0"))
        cursor = await Consumer(await Feed.open(db, "jobs"), "worker").cursor(tr)
    twice = [key for key, value in effects.items() if value != (1).to_bytes(8, "little")]
    assert twice == [], f"handled more than once: {twice[:5]}"
    assert sorted(effects) == [b"effect/" + key for key in jobs], "some changes never handled"
    assert count == total.to_bytes(8, "little")
    async with await shale.open(url) as db:
        reader = Consumer(await Feed.open(db, "jobs"), "reader").changes(db)
        log = [await get_change(reader) for _ in range(total)]
    assert [c.key for c in log] == jobs
    assert cursor == log[-1].cursor


# -- ChangeFeed --------------------------------------------------------------


async def test_changefeed_outputs_prefeed_items_then_matching_changes(
    db: shale.Database,
) -> None:
    feed = ChangeFeed(
        b"p/", ChangeFeed.INSERT | ChangeFeed.DELETE, prefeed=["first", "second"], db=db
    )
    task = asyncio.ensure_future(feed.run_forever())
    try:
        assert [await get(feed.outqueue), await get(feed.outqueue)] == ["first", "second"]
        await wait_until_following(db)
        await db.set(b"p/a", b"1")
        await db.set(b"p/a", b"2")
        await db.clear(b"p/a")
        await db.set(b"elsewhere", b"1")
        await db.set(b"p/b", b"1")
        changes = [await get(feed.outqueue) for _ in range(3)]
        assert [(c.op, c.key, c.value) for c in changes] == [
            (INSERT, b"p/a", b"1"),
            (DELETE, b"p/a", None),
            (INSERT, b"p/b", b"1"),
        ]
        assert feed.cursor == changes[-1].cursor
        assert feed.outqueue.empty()
    finally:
        await stop(task, feed)


async def test_changefeed_prefeed_true_joins_the_snapshot_to_live_changes(
    db: shale.Database,
) -> None:
    await db.set(b"p/a", b"1")
    await db.set(b"p/b", b"1")
    feed = ChangeFeed(b"p/", prefeed=True, db=db, name="snap")
    task = asyncio.ensure_future(feed.run_forever())
    try:
        prefeed = [await get(feed.outqueue), await get(feed.outqueue)]
        assert [(c.key, c.op, c.prefeed) for c in prefeed] == [
            (b"p/a", INSERT, True),
            (b"p/b", INSERT, True),
        ]
        await db.set(b"p/a", b"2")
        change = await get(feed.outqueue)
        assert (change.op, change.key, change.value, change.prefeed) == (
            UPDATE,
            b"p/a",
            b"2",
            False,
        )
        assert feed.cursor == change.cursor
    finally:
        await stop(task, feed)


async def test_changefeed_waits_for_a_slow_reader_instead_of_buffering(
    db: shale.Database,
) -> None:
    feed = ChangeFeed(b"p/", prefeed=True, db=db, name="slow", maxsize=2)
    await db.set(b"p/000", b"0")
    task = asyncio.ensure_future(feed.run_forever())
    try:
        assert (await get(feed.outqueue)).key == b"p/000"
        for i in range(1, 31):
            await db.set(b"p/%03d" % i, b"%d" % i)
        for _ in range(20):
            await asyncio.sleep(0)
        assert feed.outqueue.full() and feed.outqueue.qsize() == 2
        keys = [(await get(feed.outqueue)).key for _ in range(30)]
        assert keys == [b"p/%03d" % i for i in range(1, 31)]
        assert feed.outqueue.empty()
    finally:
        await stop(task, feed)


async def test_changefeed_reconnect_resumes_from_its_cursor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(tmp_path / "reconnect.db")
    async with await shale.open(url) as db:
        await db.set(b"p/0", b"0")
    feed = ChangeFeed(b"p/", prefeed=True, url=url, name="cf", maxsize=1, backoff=_fast())
    task = asyncio.ensure_future(feed.run_forever())
    try:
        assert (await get(feed.outqueue)).key == b"p/0"
        first = feed._db
        assert first is not None
        for i in range(1, 5):
            await first.set(b"p/%d" % i, b"x")
        with caplog.at_level(logging.WARNING, logger="shale.feeds"):
            drop_connections(first)
            await first.set(b"p/5", b"x")
            keys = [(await get(feed.outqueue)).key for _ in range(5)]
            assert keys == [b"p/1", b"p/2", b"p/3", b"p/4", b"p/5"]
            assert "reconnecting" in caplog.text
        second = feed._db
        assert second is not None and second is not first
        await second.set(b"p/6", b"x")
        change = await get(feed.outqueue)
        assert (change.key, change.prefeed) == (b"p/6", False)
        assert feed.outqueue.empty()
    finally:
        await stop(task, feed)


HOLDER = textwrap.dedent(
    """
    import asyncio, sys, shale
    async def main():
        db = await shale.open(sys.argv[1])
        print("ready", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


async def test_changefeed_retries_while_another_process_holds_the_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(tmp_path / "held.db")
    async with await shale.open(url) as db:
        await db.set(b"p/0", b"0")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    feed = ChangeFeed(b"p/", prefeed=True, url=url, backoff=_fast())
    task: asyncio.Task[None] | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with caplog.at_level(logging.WARNING, logger="shale.feeds"):
            task = asyncio.ensure_future(feed.run_forever())

            async def refused() -> None:
                while "open in another process" not in caplog.text:
                    await asyncio.sleep(0.005)

            await asyncio.wait_for(refused(), HANG_GUARD)
        holder.kill()
        holder.wait()
        change = await get(feed.outqueue)
        assert (change.key, change.prefeed) == (b"p/0", True)
        await (await connected(feed)).set(b"p/1", b"1")
        change = await get(feed.outqueue)
        assert (change.key, change.prefeed) == (b"p/1", False)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        if task is not None:
            await stop(task, feed)


@pytest.mark.parametrize("prefeed", [None, True])
async def test_changefeed_reconnect_before_any_change_loses_and_repeats_nothing(
    tmp_path: Path, prefeed: bool | None
) -> None:
    """Until its first live change, a ``ChangeFeed`` has no cursor; a
    reconnect then must still resume where it started, neither skipping
    what was committed meanwhile nor repeating its prefeed."""
    url = url_of(tmp_path / "early.db")
    async with await shale.open(url) as db:
        await db.set(b"p/0", b"0")
    feed = ChangeFeed(b"p/", prefeed=prefeed, url=url, name="cf", backoff=_fast())
    task = asyncio.ensure_future(feed.run_forever())
    try:
        if prefeed:
            assert (await get(feed.outqueue)).key == b"p/0"
        first = await connected(feed)
        await wait_until_following(first)
        drop_connections(first)
        await first.set(b"p/a", b"committed before the reconnect")
        second = await connected(feed, other_than=first)
        await wait_until_following(second)
        await second.set(b"p/b", b"committed after the reconnect")
        changes = [await get(feed.outqueue)]
        while changes[-1].key != b"p/b":
            changes.append(await get(feed.outqueue))
        assert [(c.key, c.prefeed) for c in changes] == [(b"p/a", False), (b"p/b", False)]
    finally:
        await stop(task, feed)


async def test_changefeed_slow_reader_during_the_prefeed_gets_no_duplicates(
    tmp_path: Path,
) -> None:
    """A reader slower than the transaction age limit stalls the prefeed's
    snapshot until it is too old; the retry must not output it again."""
    db = await shale.open(url_of(tmp_path / "slow.db"), max_transaction_age=0.3)
    async with db.transaction() as tr:
        for i in range(600):
            tr.set(b"p/%03d" % i, b"x")
    feed = ChangeFeed(b"p/", prefeed=True, db=db, maxsize=10, backoff=_fast())
    task = asyncio.ensure_future(feed.run_forever())
    try:
        prefeed = [await get(feed.outqueue)]
        await asyncio.sleep(0.5)  # a slow reader: longer than the 0.3 s age limit
        assert await db.get(b"elsewhere") is None  # meanwhile the application goes on
        while len({c.key for c in prefeed}) < 600:
            prefeed.append(await get(feed.outqueue))
        await db.set(b"p/~sentinel", b"x")
        while (change := await get(feed.outqueue)).key != b"p/~sentinel":
            prefeed.append(change)
        assert all(c.prefeed for c in prefeed)
        repeated = len(prefeed) - 600
        assert repeated == 0, f"{repeated} prefeed items output twice"
    finally:
        await stop(task, feed)
        await db.close()


async def test_changefeed_history_lost_propagates(db: shale.Database) -> None:
    await db.set(b"h/0", b"0")
    await db.set(b"h/00", b"0")
    feed = ChangeFeed(b"h/", prefeed=True, db=db, name="cf", maxsize=1)
    task = asyncio.ensure_future(feed.run_forever())
    received: list[Change] = []
    try:

        async def full() -> None:
            while not feed.outqueue.full():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(full(), HANG_GUARD)
        # The feed now waits inside its prefeed, its snapshot taken; retention
        # then trims changes after the snapshot before it can read them.
        await (await Feed.open(db, "cf")).drop(db)
        await Feed("cf", b"h/", max_entries=2).declare(db)
        for i in range(1, 7):
            await db.set(b"h/%d" % i, b"x")

        async def drain_until_done() -> None:
            while not task.done():
                getter = asyncio.ensure_future(feed.outqueue.get())
                await asyncio.wait({getter, task}, return_when="FIRST_COMPLETED")
                if getter.done():
                    received.append(getter.result())
                else:
                    getter.cancel()
            while not feed.outqueue.empty():
                received.append(feed.outqueue.get_nowait())

        await asyncio.wait_for(drain_until_done(), HANG_GUARD)
        with pytest.raises(HistoryLost) as lost:
            await task
        assert lost.value.oldest is not None
        assert [(c.key, c.prefeed) for c in received] == [(b"h/0", True), (b"h/00", True)]
    finally:
        if not task.done():
            await stop(task, feed)


def _fast() -> FullJitterBackoff:
    return FullJitterBackoff(base=0.001, cap=0.01)


def test_feed_benchmark_checks_itself() -> None:
    """A tiny run of ``bench/bench_feeds.py``: its own delivery checks pass."""
    from bench import bench_feeds

    rows = bench_feeds.run(bulk=5, single=20, latency=5, repeat=1)
    assert rows
    assert "| engine |" in bench_feeds.markdown(rows)


async def test_a_feed_declared_by_a_newer_major_format_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from shale import tuple as tuples
    from shale.core.database import FEED_DECLARATIONS

    url = f"sqlite:////{str(tmp_path).lstrip('/')}/newer.db"
    async with await shale.open(url) as db:
        await Feed("future", b"f/").declare(db)
    key = FEED_DECLARATIONS + tuples.pack(("future",))
    newer = tuples.pack((2, 0, "future", b"f/", False, None, None))
    with sqlite3.connect(tmp_path / "newer.db") as conn:
        conn.execute("UPDATE kv SET v = ? WHERE k = ?", (newer, key))
    for _ in range(2):  # the second time proves the failed open released the lock
        with pytest.raises(shale.FormatVersionError, match="newer than this Shale reads"):
            await shale.open(url)


async def test_only_commits_under_a_feed_wake_its_subscribers() -> None:
    async with await shale.open("memory://") as db:
        await Feed("woken", b"a/").declare(db)
        waiting = db.next_change("woken")
        await db.set(b"b/elsewhere", b"1")
        async with db.transaction() as tr:
            tr.clear_range(b"0", b"a/")  # ends where the prefix begins
        await asyncio.sleep(0)
        assert not waiting.done(), "an unrelated commit woke the subscriber"
        async with db.transaction() as tr:
            tr.clear_range(b"0", b"a/\x00")
        await asyncio.sleep(0)
        assert waiting.done()
        again = db.next_change("woken")
        await db.set(b"a/key", b"1")
        assert again.done()


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_clearing_more_than_a_transaction_can_log_is_refused(
    engine: str, tmp_path: Path
) -> None:
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path}/big.db"
    async with await shale.open(url) as db:
        await Feed("big", b"big/").declare(db)
        for chunk in range(12):  # 12 MB under the feed, in 1 MB transactions
            async with db.transaction() as tr:
                for i in range(10):
                    tr.set(b"big/%03d" % (chunk * 10 + i), os.urandom(100_000))
        tr = db.transaction()
        tr.clear_range(b"big/", b"big0")
        with pytest.raises(shale.TransactionTooLarge, match="feed 'big'"):
            await tr.commit()
        async with db.transaction() as tr:
            assert len(await tr.get_range(b"big/", b"big0")) == 120, "nothing was cleared"
        for start in range(0, 120, 60):  # in pieces, it goes through and is logged
            async with db.transaction() as tr:
                tr.clear_range(b"big/%03d" % start, b"big/%03d" % (start + 60))
        async with db.transaction() as tr:
            assert await tr.get_range(b"big/", b"big0") == []
