"""Change feeds: what a declared feed costs writers, and how soon a subscriber sees a commit.

    python -m bench.bench_feeds [--bulk 200] [--single 2000] [--latency 1000] [--repeat 3]

Issue 4's performance points, on ``memory://`` and on ``sqlite://`` with
``synchronous=full`` (the default) and ``normal`` (which drops the fsync that
dominates ``full``):

* **Write throughput**, with and without a feed. The prefix is first loaded
  with 10,000 keys of 100-byte values, untimed and before any feed exists.
  Then the timed writes replace those values, each with a different one, so
  every write is logged and ``old_values=True`` logs twice the bytes: the
  worst case for a feed. Bulk transactions write ``KEYS_PER_BULK`` keys each;
  single-key transactions one. Each is run with no feed, with a feed on
  another prefix (what every commit pays once any feed is declared), with a
  feed on the written prefix (new values only) and with ``old_values=True``.
  The slowdown is the no-feed rate over the feed's; the target is at most
  2x. Every run starts from a fresh database; each cell is the best of
  ``--repeat`` runs, as single runs on a shared machine vary by a fifth.
* **Commit-to-delivery latency**: one subscriber task
  (``feed.subscribe(db)``) and one writer task in the same process, on the
  same ``Database``; ``--latency`` commits of one key each. *Delivery* is
  from the moment ``await tr.commit()`` returned to the moment the
  subscriber's ``async for`` yields that change; *end to end* is from just
  before ``commit()`` was called. In *lockstep* the writer awaits each
  delivery before its next commit; in *back to back* it commits without
  waiting, so deliveries compete with the next commits on the event loop.

Every run checks itself: after a throughput run with a feed, a consumer
reads the whole log back and must find exactly one change per write, the
last one carrying the last value written; every latency run must deliver
each committed change exactly once, in commit order. A run that writes or
delivers nothing fails instead of printing a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import cast

import shale
from shale.feeds import UPDATE, Change, Consumer, Feed

__all__ = ["TITLE", "describe", "markdown", "run"]

TITLE = "Change feeds: write cost and commit-to-delivery latency"

DEFAULT_BULK = 200
"""Bulk transactions per throughput run."""
DEFAULT_SINGLE = 2_000
"""Single-key transactions per throughput run."""
DEFAULT_LATENCY = 1_000
"""Commits per latency run."""
DEFAULT_REPEAT = 3
KEYS_PER_BULK = 100
VALUE_SIZE = 100
LOADED = 10_000
"""Keys under the prefix before the timed writes, which update them."""
LOAD_BATCH = 1_000
PREFIX = b"items/"
OTHER_PREFIX = b"elsewhere/"
TARGET = 2.0
"""Issue 4: writes with a feed at most this many times slower than without."""
WARM_UP = 20
"""Untimed commits before each latency run; the first positions the subscriber."""
DELIVERY_TIMEOUT = 5.0
"""Seconds a latency run waits for a change before it fails."""
STALL_TIMEOUT = 5.0
"""Seconds reading a feed's log back may wait for its next change before it fails."""

ENGINES = ("memory", "sqlite full", "sqlite normal")
MODES = ("no feed", "feed on another prefix", "feed, new values", "feed, old_values=True")
WORKLOADS = ("bulk", "single")

Timing = tuple[float, float, float]
"""When one latency commit's ``commit()`` was called, returned, and the change was yielded."""


def _check(what: str, got: object, expected: object) -> None:
    """A benchmark that silently wrote or delivered nothing would report a great number."""
    if got != expected:
        raise RuntimeError(f"{what}: got {got!r}, expected {expected!r}; the benchmark is broken")


def _key(i: int) -> bytes:
    return PREFIX + b"%08d" % (i % LOADED)


def _value(i: int) -> bytes:
    """The value of write ``i``: different from every other write's and the load's."""
    return b"%0*d" % (VALUE_SIZE, i + 1)


@contextlib.asynccontextmanager
async def _database(engine: str) -> AsyncIterator[shale.Database]:
    """A fresh, empty database on ``engine``."""
    if engine == "memory":
        async with await shale.open("memory://") as db:
            yield db
        return
    mode = engine.split()[1]
    with tempfile.TemporaryDirectory(prefix="shale-bench-") as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'feeds.db')}?synchronous={mode}"
        async with await shale.open(url) as db:
            yield db


# -- write throughput ----------------------------------------------------------


def _feed_for(mode: str) -> Feed | None:
    if mode == "no feed":
        return None
    if mode == "feed on another prefix":
        return Feed("bench", OTHER_PREFIX)
    return Feed("bench", PREFIX, old_values=mode == "feed, old_values=True")


async def _load(db: shale.Database) -> None:
    for start in range(0, LOADED, LOAD_BATCH):
        async with db.transaction() as tr:
            for i in range(start, start + LOAD_BATCH):
                tr.set(_key(i), b"x" * VALUE_SIZE)


async def _write(db: shale.Database, transactions: int, per_transaction: int) -> int:
    """The timed writes; returns how many keys were written."""
    for t in range(transactions):
        async with db.transaction() as tr:
            for i in range(t * per_transaction, (t + 1) * per_transaction):
                tr.set(_key(i), _value(i))
    return transactions * per_transaction


async def _read_back(db: shale.Database, feed: Feed, writes: int) -> None:
    """Read the whole log through a consumer: exactly one update per write, in
    the order written (each transaction's keys are consecutive, so key order
    within a transaction is write order too)."""
    # ``changes`` is annotated as an AsyncIterator, but is a generator to close.
    changes = cast(AsyncGenerator[Change, None], Consumer(feed, "bench-check").changes(db))
    try:
        for i in range(writes):
            try:
                change = await asyncio.wait_for(anext(changes), STALL_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(f"the feed logged {i} changes for {writes} writes") from None
            _check(f"logged change {i}", (change.key, change.value), (_key(i), _value(i)))
            _check("logged operation", change.op, UPDATE)
            _check("old value logged", change.old is not None, feed.spec.old_values)
    finally:
        await changes.aclose()


async def _throughput(engine: str, workload: str, mode: str, bulk: int, single: int) -> float:
    """Keys written per second by one run."""
    transactions, per = (bulk, KEYS_PER_BULK) if workload == "bulk" else (single, 1)
    async with _database(engine) as db:
        await _load(db)
        feed = _feed_for(mode)
        if feed is not None:
            await feed.declare(db)
        started = time.perf_counter()
        writes = await _write(db, transactions, per)
        elapsed = time.perf_counter() - started
        last = writes - 1
        _check(f"{engine} {workload}: last value", await db.get(_key(last)), _value(last))
        if feed is not None and feed.prefix == PREFIX:
            await _read_back(db, feed, writes)
    return writes / elapsed


# -- latency -------------------------------------------------------------------


class _Arrivals:
    """What the subscriber yields, each change's key with the time it was yielded."""

    def __init__(self, db: shale.Database, feed: Feed) -> None:
        self.queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self.follower = asyncio.create_task(self._follow(db, feed))

    async def _follow(self, db: shale.Database, feed: Feed) -> None:
        async for change in feed.subscribe(db):
            self.queue.put_nowait((change.key, time.perf_counter()))

    async def next(self, timeout: float = DELIVERY_TIMEOUT) -> tuple[bytes, float]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            if self.follower.done() and not self.follower.cancelled():
                raise RuntimeError("the subscriber failed") from self.follower.exception()
            raise

    async def stop(self) -> None:
        self.follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.follower


async def _commit_one(db: shale.Database, key: bytes, value: bytes) -> tuple[float, float]:
    """Commit ``key``; when ``commit()`` was called and when it returned."""
    tr = db.transaction()
    tr.set(key, value)
    called = time.perf_counter()
    await tr.commit()
    return called, time.perf_counter()


async def _warm_up(db: shale.Database, arrivals: _Arrivals) -> None:
    """Commit until the subscriber delivers: it takes its starting version
    when it first runs, and a commit before that is (rightly) not its."""
    delivered = 0
    for i in range(WARM_UP):
        key = b"%swarm/%04d" % (PREFIX, i)
        await _commit_one(db, key, b"w")
        try:
            got, _ = await arrivals.next(0.5)
        except TimeoutError:
            if delivered:
                raise RuntimeError("the subscriber stopped delivering during warm-up") from None
            continue
        _check("warm-up change", got, key)
        delivered += 1
    if not delivered:
        raise RuntimeError(f"the subscriber delivered none of {WARM_UP} warm-up commits")


async def _delivered(arrivals: _Arrivals) -> tuple[bytes, float]:
    try:
        return await arrivals.next()
    except TimeoutError:
        late = f"a committed change was not delivered within {DELIVERY_TIMEOUT:g} s"
        raise RuntimeError(late) from None


async def _lockstep(db: shale.Database, arrivals: _Arrivals, commits: int) -> list[Timing]:
    times: list[Timing] = []
    for i in range(commits):
        called, returned = await _commit_one(db, _key(i), _value(i))
        key, yielded = await _delivered(arrivals)
        _check(f"change {i}", key, _key(i))
        times.append((called, returned, yielded))
    return times


async def _back_to_back(db: shale.Database, arrivals: _Arrivals, commits: int) -> list[Timing]:
    sent = [await _commit_one(db, _key(i), _value(i)) for i in range(commits)]
    times: list[Timing] = []
    for i, (called, returned) in enumerate(sent):
        key, yielded = await _delivered(arrivals)
        _check(f"change {i}", key, _key(i))
        times.append((called, returned, yielded))
    return times


async def _latency(engine: str, pattern: str, commits: int) -> dict[str, float]:
    async with _database(engine) as db:
        feed = await Feed("bench-latency", PREFIX).declare(db)
        arrivals = _Arrivals(db, feed)
        try:
            await _warm_up(db, arrivals)
            measure = _lockstep if pattern == "lockstep" else _back_to_back
            times = await measure(db, arrivals, commits)
            await asyncio.sleep(0.05)
            _check("changes delivered beyond those committed", arrivals.queue.qsize(), 0)
        finally:
            await arrivals.stop()
    return _latency_figures(times)


def _latency_figures(times: Sequence[Timing]) -> dict[str, float]:
    """Median and p99, in microseconds, of each interval."""
    commit = [(r - c) * 1e6 for c, r, _ in times]
    delivery = [(y - r) * 1e6 for _, r, y in times]
    end_to_end = [(y - c) * 1e6 for c, _, y in times]

    def p99(data: list[float]) -> float:
        return statistics.quantiles(data, n=100, method="inclusive")[98]

    return {
        "commits": len(times),
        "commit_p50_us": statistics.median(commit),
        "delivery_p50_us": statistics.median(delivery),
        "delivery_p99_us": p99(delivery),
        "end_to_end_p50_us": statistics.median(end_to_end),
        "end_to_end_p99_us": p99(end_to_end),
    }


# -- the tables ----------------------------------------------------------------


def run(
    bulk: int = DEFAULT_BULK,
    single: int = DEFAULT_SINGLE,
    latency: int = DEFAULT_LATENCY,
    repeat: int = DEFAULT_REPEAT,
    engines: Sequence[str] = ENGINES,
) -> list[dict[str, object]]:
    """Throughput rows (best of ``repeat``) then latency rows (one run each)."""
    if min(bulk, single, repeat) < 1 or latency < 2:
        raise ValueError("bulk, single and repeat must be at least 1, latency at least 2")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; have {list(ENGINES)}")
    best: dict[tuple[str, str, str], float] = {}
    for _ in range(repeat):
        for engine in engines:
            for workload in WORKLOADS:
                for mode in MODES:
                    rate = asyncio.run(_throughput(engine, workload, mode, bulk, single))
                    cell = (engine, workload, mode)
                    best[cell] = max(best.get(cell, 0.0), rate)
    rows: list[dict[str, object]] = []
    for (engine, workload, mode), rate in best.items():
        slowdown = best[(engine, workload, "no feed")] / rate
        judged = mode.startswith("feed,")
        rows.append(
            {
                "table": "throughput",
                "engine": engine,
                "workload": workload,
                "feed": mode,
                "items_per_s": rate,
                "slowdown": slowdown,
                "met": slowdown <= TARGET if judged else None,
            }
        )
    for engine in engines:
        for pattern in ("lockstep", "back to back"):
            figures = asyncio.run(_latency(engine, pattern, latency))
            rows.append({"table": "latency", "engine": engine, "pattern": pattern, **figures})
    return rows


def _workload_name(workload: str) -> str:
    if workload == "bulk":
        return f"bulk, {KEYS_PER_BULK} keys/tr"
    return "single key/tr"


def markdown(rows: list[dict[str, object]]) -> str:
    """Two tables: throughput with slowdowns, then latency in microseconds."""
    lines = [
        "| engine | workload | feed | items/s | slowdown vs no feed | ≤ 2x? |",
        "|---|---|---|--:|--:|:-:|",
    ]
    for row in rows:
        if row["table"] != "throughput":
            continue
        met = "—" if row["met"] is None else "yes" if row["met"] else "**no**"
        lines.append(
            f"| {row['engine']} | {_workload_name(str(row['workload']))} | {row['feed']} "
            f"| {row['items_per_s']:,.0f} | {row['slowdown']:.2f}x | {met} |"
        )
    lines += [
        "",
        "Latency in µs; delivery is from `commit()` returning to the subscriber yielding "
        "the change, end to end from `commit()` being called.",
        "",
        "| engine | writer | commits | commit p50 | delivery p50 | delivery p99 "
        "| end to end p50 | end to end p99 |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        if row["table"] != "latency":
            continue
        lines.append(
            f"| {row['engine']} | {row['pattern']} | {row['commits']:,} "
            f"| {row['commit_p50_us']:,.0f} | {row['delivery_p50_us']:,.0f} "
            f"| {row['delivery_p99_us']:,.0f} | {row['end_to_end_p50_us']:,.0f} "
            f"| {row['end_to_end_p99_us']:,.0f} |"
        )
    return "\n".join(lines)


def describe(
    bulk: int = DEFAULT_BULK,
    single: int = DEFAULT_SINGLE,
    latency: int = DEFAULT_LATENCY,
    repeat: int = DEFAULT_REPEAT,
) -> str:
    """One line naming the parameters, to print above the tables."""
    return (
        f"updates of {LOADED:,} loaded keys, {VALUE_SIZE}-byte values: {bulk:,} transactions "
        f"of {KEYS_PER_BULK} keys, {single:,} single-key transactions, best of {repeat}; "
        f"{latency:,} commits per latency run; "
        f"`python -m bench.bench_feeds --bulk {bulk} --single {single} "
        f"--latency {latency} --repeat {repeat}`"
    )


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_feeds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bulk", type=int, default=DEFAULT_BULK)
    parser.add_argument("--single", type=int, default=DEFAULT_SINGLE)
    parser.add_argument("--latency", type=int, default=DEFAULT_LATENCY)
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="best of N runs")
    parser.add_argument("--engine", action="append", choices=ENGINES, help="default: all")
    args = parser.parse_args(argv)
    rows = run(args.bulk, args.single, args.latency, args.repeat, args.engine or ENGINES)
    print(describe(args.bulk, args.single, args.latency, args.repeat))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    _main()
