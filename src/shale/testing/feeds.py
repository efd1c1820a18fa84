"""The change-feed tests every engine must pass, as methods of ``FeedSuite``.

Engines write the feed log themselves, inside the commit it describes
(``shale.engines.feedlog``), so what a feed delivers is part of the engine
contract. ``FeedSuite`` is a mixin in the manner of ZODB's ``BasicStorage``:
it uses the ``db`` and ``opener`` fixtures of the suite it is composed into,
and ``ConformanceSuite`` inherits it, so an engine that passes the
conformance suite passes these too.

Waiting for a change is bounded by ``HANG_GUARD`` only so that a missing
change fails the test instead of hanging it; no test asserts on elapsed
time. Tests that need "nothing else arrived" write a sentinel change and
check that it is the next one delivered.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest

from shale import tuple as tuples
from shale.core.database import FEED_DECLARATIONS, Database
from shale.core.transaction import MAX_KEY_SIZE, Transaction, strinc
from shale.engines.atomic import MAX_VALUE_SIZE
from shale.engines.feedlog import feed_log
from shale.errors import ConflictError, EngineError, HistoryLost, UsageError
from shale.feeds import ALL, DELETE, INSERT, UPDATE, Change, Consumer, Feed
from shale.subspace import Subspace

__all__ = ["HANG_GUARD", "FeedSuite"]

HANG_GUARD = 10.0
"""Seconds a test waits for a change before failing: a guard against hangs."""

Opener = Callable[..., Awaitable[Database]]
Row = tuple[int, bytes, bytes | None, bytes | None]
"""``(op, key, value, old)``: a change without its position, for comparisons."""


def _le(n: int) -> bytes:
    return n.to_bytes(8, "little")


def _row(change: Change) -> Row:
    return (change.op, change.key, change.value, change.old)


async def _close(changes: AsyncIterator[Change]) -> None:
    aclose = getattr(changes, "aclose", None)
    if aclose is not None:
        await aclose()


async def _next(changes: AsyncIterator[Change], count: int) -> list[Change]:
    """The next ``count`` changes, leaving the subscription open."""
    return [await asyncio.wait_for(anext(changes), HANG_GUARD) for _ in range(count)]


async def _take(changes: AsyncIterator[Change], count: int) -> list[Change]:
    """The next ``count`` changes; then the subscription is closed."""
    try:
        return await _next(changes, count)
    finally:
        await _close(changes)


async def _until(changes: AsyncIterator[Change], key: bytes) -> list[Change]:
    """Changes up to and including the first one of ``key``."""

    async def collect() -> list[Change]:
        out: list[Change] = []
        async for change in changes:
            out.append(change)
            if change.key == key:
                return out
        raise AssertionError("the subscription ended")

    try:
        return await asyncio.wait_for(collect(), 3 * HANG_GUARD)
    finally:
        await _close(changes)


def _log(feed: Feed, db: Database, operations: int = ALL) -> AsyncIterator[Change]:
    """Every change the feed logged since it was declared: a consumer that
    never commits its cursor starts at the beginning of the log."""
    return Consumer(feed, "probe").changes(db, operations=operations)


async def _outcome(changes: AsyncIterator[Change]) -> BaseException | Change:
    """What the next step of a subscription gives: a change, an error, or
    ``TimeoutError`` if it is still waiting after ``HANG_GUARD``."""
    try:
        return await asyncio.wait_for(anext(changes), HANG_GUARD)
    except (UsageError, EngineError, TimeoutError) as exc:
        return exc
    finally:
        await _close(changes)


async def _first_error(changes: AsyncIterator[Change]) -> BaseException:
    """The error the first step of a subscription raises."""
    outcome = await _outcome(changes)
    assert isinstance(outcome, UsageError | EngineError), f"the subscription gave {outcome!r}"
    return outcome


def _groups(changes: list[Change]) -> list[list[Change]]:
    """Split live changes into transactions, checking how they are tagged:
    consecutive per transaction, stamps and cursors strictly increasing,
    keys in order, and ``last`` on exactly the final change of each."""
    groups: list[list[Change]] = []
    for change in changes:
        assert not change.prefeed, change
        if groups and groups[-1][0].stamp == change.stamp:
            groups[-1].append(change)
        else:
            assert not groups or groups[-1][0].stamp < change.stamp, (
                f"transaction {change.stamp.hex()} is split or out of commit order"
            )
            groups.append([change])
    for group in groups:
        keys = [c.key for c in group]
        assert keys == sorted(set(keys)), f"keys of one transaction out of order: {keys}"
        assert [c.last for c in group] == [False] * (len(group) - 1) + [True]
        assert all(c.version == int.from_bytes(c.stamp[:8], "big") for c in group)
    cursors = [c.cursor for c in changes]
    assert cursors == sorted(set(cursors)), "cursors do not strictly increase"
    return groups


def _replay(state: dict[bytes, bytes], changes: Iterable[Change], *, old_values: bool) -> None:
    """Apply changes to ``state``, failing on any a gapless, duplicate-free
    feed could not have produced."""
    for change in changes:
        current = state.get(change.key)
        if change.op == INSERT:
            assert current is None, f"insert of present key {change.key!r}: a duplicate"
            assert change.value is not None
            state[change.key] = change.value
        elif change.op == UPDATE:
            assert current is not None, f"update of absent key {change.key!r}: a gap"
            assert change.value is not None and change.value != current
            state[change.key] = change.value
        elif change.op == DELETE:
            assert current is not None, f"delete of absent key {change.key!r}: a gap"
            assert change.value is None
            del state[change.key]
        else:
            raise AssertionError(f"unknown op {change.op}")
        if old_values and not change.prefeed:
            assert change.old == current, f"old value of {change.key!r} is not the one replaced"


async def _state(db: Database, prefix: bytes) -> dict[bytes, bytes]:
    async with db.transaction() as tr:
        return dict(await tr.get_range(prefix, strinc(prefix)))


async def _system_rows(db: Database, begin: bytes) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        tr.access_system_keys = True
        return await tr.get_range(begin, strinc(begin))


def _feed_keys(name: str) -> bytes:
    """Where everything of feed ``name`` lives: log, state and consumers."""
    return b"\xff" + tuples.pack(("feed", name))


async def _write(db: Database, *keys: bytes, value: bytes = b"v") -> None:
    """One transaction setting ``keys``."""
    async with db.transaction() as tr:
        for key in keys:
            tr.set(key, value)


class FeedSuite:
    """Change feeds, on every engine. A mixin: see the module docstring."""

    # -- what gets logged --------------------------------------------------

    @pytest.mark.parametrize("old_values", [False, True])
    async def test_feed_classifies_inserts_updates_deletes(
        self, db: Database, old_values: bool
    ) -> None:
        feed = await Feed("ops", b"p/", old_values=old_values).declare(db)
        await _write(db, b"p/a", b"p/b", value=b"1")
        async with db.transaction() as tr:
            tr.set(b"p/a", b"2")
            tr.clear(b"p/b")
            tr.set(b"p/c", b"3")
            tr.clear(b"p/never")
        await _write(db, b"p/", value=b"the prefix itself")
        old = b"1" if old_values else None
        assert [_row(c) for c in await _take(_log(feed, db), 6)] == [
            (INSERT, b"p/a", b"1", None),
            (INSERT, b"p/b", b"1", None),
            (UPDATE, b"p/a", b"2", old),
            (DELETE, b"p/b", None, old),
            (INSERT, b"p/c", b"3", None),
            (INSERT, b"p/", b"the prefix itself", None),
        ]

    async def test_feed_ignores_noop_writes_and_keys_outside_its_prefix(self, db: Database) -> None:
        feed = await Feed("quiet", b"p/").declare(db)
        await _write(db, b"p/a", value=b"same")
        await _write(db, b"p/a", value=b"same")
        async with db.transaction() as tr:
            tr.set(b"p/b", b"x")
            tr.clear(b"p/b")
        for outside in (b"p", b"p0", b"o/a", b"q/a", b"P/a"):
            await _write(db, outside)
        async with db.transaction() as tr:
            tr.set(b"p/a", b"same")
            tr.set(b"q/b", b"x")
            tr.set(b"p/z", b"sentinel")
        changes = await _until(_log(feed, db), b"p/z")
        assert [_row(c) for c in changes] == [
            (INSERT, b"p/a", b"same", None),
            (INSERT, b"p/z", b"sentinel", None),
        ]
        assert changes[0].stamp < changes[1].stamp

    async def test_feed_clear_range_across_the_prefix_boundary(self, db: Database) -> None:
        feed = await Feed("span", b"p/", old_values=True).declare(db)
        await _write(db, b"o/x", b"p/a", b"p/b", b"p/c", b"q/x")
        async with db.transaction() as tr:
            tr.clear_range(b"o", b"p/b")
        async with db.transaction() as tr:
            tr.clear_range(b"p/c", b"r")
        async with db.transaction() as tr:
            tr.set(b"p/new", b"n")
            tr.clear_range(b"p/", b"p0")
            tr.set(b"p/z", b"z")
        changes = await _take(_log(feed, db), 7)
        assert [_row(c) for c in changes] == [
            (INSERT, b"p/a", b"v", None),
            (INSERT, b"p/b", b"v", None),
            (INSERT, b"p/c", b"v", None),
            (DELETE, b"p/a", None, b"v"),
            (DELETE, b"p/c", None, b"v"),
            (DELETE, b"p/b", None, b"v"),
            (INSERT, b"p/z", b"z", None),
        ]
        assert len(_groups(changes)) == 4
        assert await db.get(b"q/x") is None and await db.get(b"o/x") is None

    async def test_feed_logs_atomic_ops_by_their_result(self, db: Database) -> None:
        feed = await Feed("atomic", b"a/", old_values=True).declare(db)
        async with db.transaction() as tr:
            tr.add(b"a/n", _le(1))
        async with db.transaction() as tr:
            tr.add(b"a/n", _le(2))
        async with db.transaction() as tr:
            tr.add(b"a/n", _le(0))
            tr.max(b"a/m", b"\x05")
        async with db.transaction() as tr:
            tr.compare_and_clear(b"a/n", _le(3))
            tr.byte_min(b"a/m", b"\x09")
        await _write(db, b"a/z")
        assert [_row(c) for c in await _take(_log(feed, db), 5)] == [
            (INSERT, b"a/n", _le(1), None),
            (UPDATE, b"a/n", _le(3), _le(1)),
            (INSERT, b"a/m", b"\x05", None),
            (DELETE, b"a/n", None, _le(3)),
            (INSERT, b"a/z", b"v", None),
        ]

    async def test_feed_logs_versionstamped_keys_and_values_as_committed(
        self, db: Database
    ) -> None:
        space = Subspace(("stamped",))
        feed = await Feed("stamped", space).declare(db)
        tr = db.transaction()
        tr.set_versionstamped_key(
            space.pack_with_versionstamp((tuples.Versionstamp.incomplete(7),)), b"by key"
        )
        tr.set_versionstamped_value(
            space.pack(("latest",)), b"at:" + bytes(10) + struct.pack("<I", 3)
        )
        stamp = tr.get_versionstamp()
        await tr.commit()
        committed = await stamp
        changes = await _take(_log(feed, db), 2)
        assert {c.stamp for c in changes} == {committed}
        assert sorted(_row(c) for c in changes) == sorted(
            [
                (INSERT, space.pack((tuples.Versionstamp(committed, 7),)), b"by key", None),
                (INSERT, space.pack(("latest",)), b"at:" + committed, None),
            ]
        )

    async def test_overlapping_feeds_each_log_their_own_keys(self, db: Database) -> None:
        outer = await Feed("outer", b"o/").declare(db)
        inner = await Feed("inner", b"o/i/").declare(db)
        await _write(db, b"o/a", b"o/i/b", b"o/j")
        assert [c.key for c in await _take(_log(outer, db), 3)] == [b"o/a", b"o/i/b", b"o/j"]
        await _write(db, b"o/i/z")
        assert [c.key for c in await _take(_log(inner, db), 2)] == [b"o/i/b", b"o/i/z"]

    # -- transactions arrive whole -------------------------------------------

    async def test_feed_delivers_a_transaction_together(self, db: Database) -> None:
        feed = await Feed("whole", b"w/").declare(db)
        await _write(db, b"w/0")
        async with db.transaction() as tr:
            for key in (b"w/e", b"w/a", b"w/d", b"w/c", b"w/b"):
                tr.set(key, b"x")
            tr.set(b"elsewhere", b"x")
        await _write(db, b"w/z")
        groups = _groups(await _take(_log(feed, db), 7))
        assert [[c.key for c in g] for g in groups] == [
            [b"w/0"],
            [b"w/a", b"w/b", b"w/c", b"w/d", b"w/e"],
            [b"w/z"],
        ]

    async def test_feed_delivers_a_large_transaction_whole_and_in_key_order(
        self, db: Database
    ) -> None:
        feed = await Feed("large", b"L/", old_values=True).declare(db)
        await _write(db, b"L/0")
        async with db.transaction() as tr:
            for i in reversed(range(40)):
                tr.set(b"L/k%02d" % i, bytes([i]) * 9_000)
        await _write(db, b"L/z")
        log = feed_log("large")
        stamps = [
            tuples.unpack(k[len(log) :])[0].tr_version for k, _ in await _system_rows(db, log)
        ]
        assert max(stamps.count(s) for s in stamps) >= 3, "the transaction was not split"
        expected = [(INSERT, b"L/k%02d" % i, bytes([i]) * 9_000, None) for i in range(40)]
        for batch_size in (1, 2, 256):
            first = (await _take(_log(feed, db), 1))[0]
            changes = await _take(feed.subscribe(db, first.cursor, batch_size=batch_size), 41)
            groups = _groups(changes)
            assert [len(g) for g in groups] == [40, 1]
            assert [_row(c) for c in groups[0]] == expected
            middle = groups[0][25].cursor
            rest = await _take(feed.subscribe(db, middle, batch_size=batch_size), 15)
            assert [c.key for c in rest] == [b"L/k%02d" % i for i in range(26, 40)] + [b"L/z"]

    async def test_feed_log_parts_stay_below_the_value_limit(self, db: Database) -> None:
        """The log is written below the 100,000-byte value limit
        (``shale.engines.feedlog``), even for a change that is itself
        near the limit: a legal user write must not become an illegal one."""
        await Feed("limit", b"B/", old_values=True).declare(db)
        key = b"B/".ljust(MAX_KEY_SIZE, b"k")
        await _write(db, key, value=b"a" * MAX_VALUE_SIZE)
        await _write(db, key, value=b"b" * MAX_VALUE_SIZE)
        sizes = [len(v) for _, v in await _system_rows(db, feed_log("limit"))]
        assert sizes and max(sizes) <= MAX_VALUE_SIZE, f"log parts of {sizes} bytes"

    # -- order, and the prefeed boundary -------------------------------------

    async def test_feed_order_under_concurrent_committers(self, db: Database) -> None:
        feed = await Feed("race", b"r/", old_values=True).declare(db)

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(12):
                plan = [(rng.randrange(6), b"r/%02d" % rng.randrange(24)) for _ in range(3)]
                await db.transact(_apply_plan, plan, rng.choice([b"0", b"1", b"2"]))

        await asyncio.gather(*(writer(seed) for seed in range(16)))
        await _write(db, b"r/~sentinel")
        changes = await _until(_log(feed, db), b"r/~sentinel")
        _groups(changes)
        state: dict[bytes, bytes] = {}
        _replay(state, changes, old_values=True)
        assert state == await _state(db, b"r/")

    async def test_feed_prefeed_joins_live_changes_while_writers_race(self, db: Database) -> None:
        feed = await Feed("boundary", b"b/", old_values=True).declare(db)
        async with db.transaction() as tr:
            for i in range(400):
                tr.set(b"b/%03d" % i, b"0")
        warmed_up = asyncio.Event()

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            for i in range(25):
                plan = [(rng.randrange(6), b"b/%03d" % rng.randrange(420)) for _ in range(2)]
                await db.transact(_apply_plan, plan, rng.choice([b"0", b"1", b"2"]))
                if i == 3:
                    warmed_up.set()

        async def writers_then_sentinel() -> None:
            await asyncio.gather(*(writer(seed) for seed in range(6)))
            await _write(db, b"b/~sentinel")

        writing = asyncio.ensure_future(writers_then_sentinel())
        try:
            await asyncio.wait_for(warmed_up.wait(), HANG_GUARD)
            state: dict[bytes, bytes] = {}
            live: list[Change] = []
            subscription = feed.subscribe(db, prefeed=True)
            for change in await _until(_yielding(subscription), b"b/~sentinel"):
                if change.prefeed:
                    assert not live, "a prefeed change after a live one"
                    _replay(state, [change], old_values=True)
                else:
                    live.append(change)
            _groups(live)
            _replay(state, live, old_values=True)
        finally:
            await writing
        assert state == await _state(db, b"b/")

    # -- filters -------------------------------------------------------------

    @pytest.mark.parametrize("mask", range(1, ALL + 1))
    async def test_feed_operations_mask_filters(self, db: Database, mask: int) -> None:
        feed = await Feed("masked", b"m/").declare(db)
        await _write(db, b"m/a", b"m/b")
        async with db.transaction() as tr:
            tr.set(b"m/a", b"2")
            tr.clear(b"m/b")
            tr.set(b"m/c", b"3")
        async with db.transaction() as tr:
            tr.set(b"m/d", b"4")
            tr.set(b"m/c", b"5")
            tr.clear(b"m/a")
        everything = await _take(_log(feed, db), 8)
        assert {c.op for c in everything} == {INSERT, UPDATE, DELETE}
        expected = [c for c in everything if c.op & mask]
        filtered = await _take(_log(feed, db, mask), len(expected))
        assert [(c.cursor, _row(c)) for c in filtered] == [(c.cursor, _row(c)) for c in expected]

    async def test_feed_prefeed_honours_the_mask(self, db: Database) -> None:
        feed = await Feed("masked", b"m/").declare(db)
        await _write(db, b"m/a", b"m/b")
        subscription = feed.subscribe(db, prefeed=True, operations=INSERT)
        prefeed = await _next(subscription, 2)
        assert [(c.key, c.op, c.prefeed) for c in prefeed] == [
            (b"m/a", INSERT, True),
            (b"m/b", INSERT, True),
        ]
        await _write(db, b"m/a", value=b"updated")
        await _write(db, b"m/c")
        assert [_row(c) for c in await _take(subscription, 1)] == [(INSERT, b"m/c", b"v", None)]

    # -- cursors and resuming ------------------------------------------------

    async def test_feed_resumes_right_after_a_cursor(self, db: Database) -> None:
        feed = await Feed("resume", b"c/").declare(db)
        await _write(db, b"c/a", b"c/b", b"c/c")
        await _write(db, b"c/d", b"c/e")
        log = await _take(_log(feed, db), 5)
        keys = [c.key for c in log]

        async def after(cursor: bytes, count: int) -> list[bytes]:
            return [c.key for c in await _take(feed.subscribe(db, cursor), count)]

        assert await after(log[1].cursor, 3) == keys[2:], "mid-transaction resume"
        assert await after(log[2].cursor, 2) == keys[3:], "resume after a transaction's last"
        assert await after(log[0].cursor, 4) == keys[1:]
        waiting = feed.subscribe(db, log[4].cursor)
        await _write(db, b"c/f")
        assert [c.key for c in await _take(waiting, 1)] == [b"c/f"]

        snapshot = feed.subscribe(db, prefeed=True)
        prefeed = await _take(snapshot, 6)
        assert [c.key for c in prefeed] == [*keys, b"c/f"]
        assert all(c.prefeed and not c.last for c in prefeed)
        assert len({c.cursor for c in prefeed}) == 1
        await _write(db, b"c/g")
        assert await after(prefeed[0].cursor, 1) == [b"c/g"]

    async def test_feed_history_lost_by_count(self, db: Database) -> None:
        feed = await Feed("counted", b"h/", max_entries=2).declare(db)
        await _write(db, b"h/1")
        first = (await _take(_log(feed, db), 1))[0]
        for i in range(2, 7):
            await _write(db, b"h/%d" % i)
        lost = await _first_error(feed.subscribe(db, first.cursor))
        assert isinstance(lost, HistoryLost) and isinstance(lost.oldest, bytes)
        assert lost.oldest.hex() in str(lost)
        retained = feed.subscribe(db, lost.oldest)
        assert [c.key for c in await _next(retained, 2)] == [b"h/5", b"h/6"]
        await _write(db, b"h/7")
        assert [c.key for c in await _take(retained, 1)] == [b"h/7"]
        assert isinstance(await _first_error(_log(feed, db)), HistoryLost)

    async def test_feed_history_lost_by_age(self, db: Database) -> None:
        feed = await Feed("aged", b"h/", max_age=0.05).declare(db)
        await _write(db, b"h/0")
        await _write(db, b"h/1")
        first = (await _take(_log(feed, db), 1))[0]
        await asyncio.sleep(0.2)  # past max_age; the next logged commit trims
        await _write(db, b"h/2")
        lost = await _first_error(feed.subscribe(db, first.cursor))
        assert isinstance(lost, HistoryLost) and lost.oldest is not None
        assert [c.key for c in await _take(feed.subscribe(db, lost.oldest), 1)] == [b"h/2"]

    async def test_feed_history_lost_while_following(self, db: Database) -> None:
        feed = await Feed("behind", b"h/", max_entries=2).declare(db)
        await _write(db, b"h/1")
        following = _log(feed, db)
        assert [c.key for c in await _next(following, 1)] == [b"h/1"]
        for i in range(2, 7):
            await _write(db, b"h/%d" % i)
        with pytest.raises(HistoryLost):
            await _take(following, 1)

    async def test_feed_resuming_at_the_retention_edge_loses_nothing(self, db: Database) -> None:
        """A consumer that handled everything up to the newest trimmed
        transaction has lost nothing, so resuming it is no ``HistoryLost``."""
        feed = await Feed("edge", b"h/", max_entries=2).declare(db)
        consumer = Consumer(feed, "edge")
        seen: list[bytes] = []

        async def handle(tr: Transaction, change: Change) -> None:
            seen.append(change.key)

        await _write(db, b"h/1")
        await _write(db, b"h/2")
        assert await asyncio.wait_for(consumer.process(db, handle, limit=2), HANG_GUARD) == 2
        await _write(db, b"h/3")
        await _write(db, b"h/4")
        await asyncio.wait_for(consumer.process(db, handle, limit=2), HANG_GUARD)
        assert seen == [b"h/1", b"h/2", b"h/3", b"h/4"]

    async def test_feed_cursor_from_before_a_drop_is_history_lost(self, db: Database) -> None:
        """Changes made while a feed was dropped were never logged; a cursor
        from before the drop must not silently skip them."""
        feed = await Feed("again", b"g/").declare(db)
        await _write(db, b"g/1")
        before = (await _take(_log(feed, db), 1))[0].cursor
        await feed.drop(db)
        await _write(db, b"g/unlogged")
        await Feed("again", b"g/").declare(db)
        await _write(db, b"g/2")
        outcome = await _outcome(feed.subscribe(db, before))
        assert isinstance(outcome, HistoryLost), f"silently skipped to {outcome}"

    async def test_feed_following_a_dropped_feed_fails_loudly(self, db: Database) -> None:
        """Nothing will ever be logged again: a subscription that outlives
        its feed's drop must end with an error, not wait forever."""
        feed = await Feed("doomed", b"d/").declare(db)
        await _write(db, b"d/1")
        following = _log(feed, db)
        assert [c.key for c in await _next(following, 1)] == [b"d/1"]
        await feed.drop(db)
        await _write(db, b"d/2")
        outcome = await _outcome(following)
        assert isinstance(outcome, (UsageError, EngineError)), f"after the drop: {outcome!r}"

    async def test_feed_last_marks_the_final_delivered_change(self, db: Database) -> None:
        """Under a filter, ``last`` still closes each transaction's group."""
        feed = await Feed("grouped", b"q/").declare(db)
        await _write(db, b"q/z")
        inserts = feed.subscribe(db, await feed.position(db), operations=INSERT)
        async with db.transaction() as tr:
            tr.set(b"q/a", b"1")
            tr.clear(b"q/z")  # sorts after q/a: the transaction's final change
        await _write(db, b"q/b")
        first, second = await _take(inserts, 2)
        assert (first.key, first.last) == (b"q/a", True)
        assert (second.key, second.last) == (b"q/b", True)

    # -- conflicts and wake-ups -----------------------------------------------

    async def test_feed_adds_no_read_conflicts(self, db: Database) -> None:
        feed = await Feed("blind", b"n/").declare(db)
        first, second = db.transaction(), db.transaction()
        await first.get_read_version()
        await second.get_read_version()
        first.set(b"n/a", b"1")
        second.set(b"n/b", b"1")
        await first.commit()
        await second.commit()
        third, fourth = db.transaction(), db.transaction()
        await third.get_read_version()
        await fourth.get_read_version()
        third.set(b"n/c", b"1")
        fourth.clear_range(b"n/a", b"n/b")
        await asyncio.gather(third.commit(), fourth.commit())

        outside, inside = db.transaction(), db.transaction()
        assert await outside.get(b"out/x") is None
        assert await outside.get_range(b"out/", b"out0") == []
        assert await inside.get(b"n/x") is None
        outside.set(b"out/y", b"1")
        inside.set(b"n/y", b"1")
        await _write(db, b"n/d")
        await outside.commit()
        await inside.commit()
        keys = {c.key for c in await _take(_log(feed, db), 6)}
        assert keys == {b"n/a", b"n/b", b"n/c", b"n/d", b"n/y"}

    async def test_feed_writers_still_conflict_on_user_keys(self, db: Database) -> None:
        await Feed("still", b"s/").declare(db)
        await _write(db, b"s/n", value=b"0")
        first, second = db.transaction(), db.transaction()
        assert await first.get(b"s/n") == await second.get(b"s/n") == b"0"
        first.set(b"s/n", b"1")
        second.set(b"s/n", b"2")
        await first.commit()
        with pytest.raises(ConflictError):
            await second.commit()

    async def test_feed_wakes_subscribers_without_polling(self, db: Database) -> None:
        feed = await Feed("wake", b"w/").declare(db)
        await _write(db, b"w/0")
        subscription = feed.subscribe(db, prefeed=True, poll=3600)
        assert [c.key for c in await _next(subscription, 1)] == [b"w/0"]
        for i in range(1, 4):
            waiting = asyncio.ensure_future(anext(subscription))
            for _ in range(10):  # let it catch up and wait, if it is going to
                await asyncio.sleep(0)
            await _write(db, b"w/%d" % i)
            assert (await asyncio.wait_for(waiting, HANG_GUARD)).key == b"w/%d" % i
        await _close(subscription)

    # -- consumers -------------------------------------------------------------

    async def test_consumer_handles_each_change_once(self, db: Database) -> None:
        feed = await Feed("jobs", b"j/").declare(db)
        handled: list[bytes] = []

        async def handle(tr: Transaction, change: Change) -> None:
            handled.append(change.key)
            tr.add(b"done/" + change.key, _le(1))

        await _write(db, b"j/a", b"j/b", b"j/c")
        assert await _process(Consumer(feed, "worker"), db, handle, 3) == 3
        await _write(db, b"j/d")
        assert await _process(Consumer(feed, "worker"), db, handle, 1) == 1
        assert handled == [b"j/a", b"j/b", b"j/c", b"j/d"]
        for key in handled:
            assert await db.get(b"done/" + key) == _le(1)
        last = (await _take(_log(feed, db), 4))[-1]
        async with db.transaction() as tr:
            assert await Consumer(feed, "worker").cursor(tr) == last.cursor
            assert await Consumer(feed, "other").cursor(tr) is None
        others: list[bytes] = []

        async def note(tr: Transaction, change: Change) -> None:
            others.append(change.key)

        assert await _process(Consumer(feed, "other"), db, note, 4) == 4
        assert others == handled

    async def test_consumer_handler_failure_redelivers_the_change(self, db: Database) -> None:
        feed = await Feed("jobs", b"j/").declare(db)
        consumer = Consumer(feed, "worker")

        async def handle(tr: Transaction, change: Change) -> None:
            tr.add(b"done/" + change.key, _le(1))

        async def fail(tr: Transaction, change: Change) -> None:
            tr.add(b"done/" + change.key, _le(1))
            raise RuntimeError(f"cannot handle {change.key!r}")

        await _write(db, b"j/a")
        await _process(consumer, db, handle, 1)
        async with db.transaction() as tr:
            stored = await consumer.cursor(tr)
        await _write(db, b"j/b")
        with pytest.raises(RuntimeError, match="cannot handle"):
            await _process(consumer, db, fail, 1)
        assert await db.get(b"done/j/b") is None
        async with db.transaction() as tr:
            assert await consumer.cursor(tr) == stored
        assert await _process(consumer, db, handle, 1) == 1
        assert await db.get(b"done/j/b") == _le(1)
        assert await db.get(b"done/j/a") == _le(1)

    # -- declaring and dropping ---------------------------------------------

    async def test_feed_declaration(self, db: Database) -> None:
        with pytest.raises(UsageError, match="no feed named"):
            await Feed.open(db, "nope")
        feed = await Feed("decl", b"d/", old_values=True, max_entries=10).declare(db)
        await Feed("decl", b"d/", old_values=True, max_entries=10).declare(db)
        assert (await Feed.open(db, "decl")).spec == feed.spec
        stored = await _system_rows(db, FEED_DECLARATIONS)
        for different in (
            Feed("decl", b"e/", old_values=True, max_entries=10),
            Feed("decl", b"d/", max_entries=10),
            Feed("decl", b"d/", old_values=True, max_entries=11),
            Feed("decl", b"d/", old_values=True, max_entries=10, max_age=60.0),
        ):
            with pytest.raises(UsageError, match="declared differently"):
                await different.declare(db)
        assert await _system_rows(db, FEED_DECLARATIONS) == stored
        assert db.feeds == {"decl": feed.spec}
        assert (await Feed.open(db, "decl")).spec == feed.spec

    async def test_feed_drop(self, db: Database) -> None:
        kept = await Feed("kept", b"k/").declare(db)
        gone = await Feed("gone", b"g/", max_entries=100).declare(db)
        await _write(db, b"g/a", b"k/a")

        async def ignore(tr: Transaction, change: Change) -> None:
            pass

        await _process(Consumer(gone, "c"), db, ignore, 1)
        # log, state, declaration stamp, consumer
        assert len(await _system_rows(db, _feed_keys("gone"))) == 4
        await gone.drop(db)
        with pytest.raises(UsageError):
            await Feed.open(db, "gone")
        assert list(db.feeds) == ["kept"]
        await _write(db, b"g/b", b"k/b")
        assert await _system_rows(db, _feed_keys("gone")) == []
        assert len(await _system_rows(db, FEED_DECLARATIONS)) == 1
        assert [c.key for c in await _take(_log(kept, db), 2)] == [b"k/a", b"k/b"]

    async def test_feed_declarations_survive_reopen(self, opener: Opener) -> None:
        db = await opener()
        if not db.engine.capabilities.persistent:
            pytest.skip("engine does not persist (capabilities.persistent)")
        feed = Feed("kept", b"k/", old_values=True, max_age=3600.0, max_entries=50)
        await feed.declare(db)
        dropped = await Feed("dropped", b"x/").declare(db)
        await dropped.drop(db)
        await _write(db, b"k/a")
        cursor = (await _take(_log(feed, db), 1))[0].cursor
        await db.close()
        db = await opener()
        assert db.feeds == {"kept": feed.spec}
        assert (await Feed.open(db, "kept")).spec == feed.spec
        await _write(db, b"k/a", value=b"after reopen")
        (change,) = await _take(feed.subscribe(db, cursor), 1)
        assert _row(change) == (UPDATE, b"k/a", b"after reopen", b"v")

    # -- misuse -------------------------------------------------------------

    async def test_feed_bad_declarations_are_refused(self, db: Database) -> None:
        names: list[Any] = ["", 7, None]
        prefixes: list[Any] = [b"", "p/", bytearray(b"p/"), None, b"\xff", b"\xffp/"]
        prefixes.append(Subspace(("p",), raw_prefix=b"\xff"))
        retention: list[dict[str, Any]] = [
            *({"max_age": age} for age in (0, -1.0, math.nan)),
            *({"max_entries": count} for count in (0, -3, 1.5, "3")),
        ]
        cases = [(n, b"p/", {}) for n in names] + [("f", p, {}) for p in prefixes]
        for name, prefix, options in cases + [("f", b"p/", r) for r in retention]:
            with pytest.raises(UsageError):
                Feed(name, prefix, **options)
        feed = Feed("f", b"p/")
        for consumer_name in ("", None, b"c"):
            with pytest.raises(UsageError):
                Consumer(feed, consumer_name)  # type: ignore[arg-type]
        assert db.feeds == {}
        assert await _system_rows(db, b"\xff" + tuples.pack(("feed",))) == []
        assert await _system_rows(db, FEED_DECLARATIONS) == []

    async def test_feed_retention_of_the_wrong_type_is_a_usage_error(self, db: Database) -> None:
        bad: list[dict[str, Any]] = [{"max_age": "10"}, {"max_age": b"10"}, {"max_entries": b"3"}]
        for options in bad:
            with pytest.raises(UsageError):
                Feed("f", b"p/", **options)

    async def test_feed_bad_subscriptions_are_refused(self, db: Database) -> None:
        feed = await Feed("subs", b"s/").declare(db)
        await _write(db, b"s/a")
        cursor = (await _take(_log(feed, db), 1))[0].cursor
        bad: list[dict[str, Any]] = [
            *({"operations": mask} for mask in (0, ALL + 1, -1)),
            *({"cursor": bad} for bad in (b"", b"short", cursor + b"\x00", cursor.hex())),
            {"batch_size": 0},
            {"cursor": cursor, "prefeed": True},
        ]
        for arguments in bad:
            error = await _first_error(feed.subscribe(db, **arguments))
            assert isinstance(error, UsageError), (arguments, error)
        await _write(db, b"s/b")
        assert [c.key for c in await _take(feed.subscribe(db, cursor), 1)] == [b"s/b"]


async def _yielding(changes: AsyncIterator[Change]) -> AsyncIterator[Change]:
    """``changes``, handing the loop to other tasks after each one, so
    concurrent writers commit while a prefeed is being read."""
    try:
        async for change in changes:
            yield change
            await asyncio.sleep(0)
    finally:
        await _close(changes)


async def _process(
    consumer: Consumer,
    db: Database,
    handler: Callable[[Transaction, Change], Awaitable[Any]],
    limit: int,
) -> int:
    return await asyncio.wait_for(consumer.process(db, handler, limit=limit), HANG_GUARD)


async def _apply_plan(tr: Transaction, plan: list[tuple[int, bytes]], value: bytes) -> None:
    """One random transaction of the concurrency tests: every kind of write,
    some of them no-ops, and a read so that some commits conflict."""
    for kind, key in plan:
        if kind == 0:
            tr.set(key, value)
        elif kind == 1:
            tr.clear(key)
        elif kind == 2:
            tr.clear_range(key, key[:-1] + b"9")
        elif kind == 3:
            tr.add(key, b"\x01")
        elif kind == 4:
            current = await tr.get(key)
            tr.set(key, (current or b"")[:4] + value)
        else:
            tr.set(b"outside/" + key, value)
