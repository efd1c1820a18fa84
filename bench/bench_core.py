"""Shale against raw ``sqlite3``: same data, same durability, same run.

The baseline is what an application would write by hand for the same job:
one connection, WAL, a ``WITHOUT ROWID`` table like Shale's, explicit
``BEGIN``/``COMMIT``. Shale runs the same operations on ``sqlite://`` and,
for reference only, on ``memory://``. Each system starts from a fresh
directory, and each measurement runs once after a short warm-up on keys
outside the measured set (the first commit starts Shale's writer thread, the
first read opens a reader connection; neither belongs in a throughput).

    python -m bench.bench_core [--keys 100000] [--synchronous full]

The targets are the issue's: Shale on SQLite reaches at least 60% of raw
sqlite3 on bulk load, point reads and scans, and 32 concurrent single-key
committers reach at least 5x the throughput of one (group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import shale

__all__ = ["TITLE", "Workload", "describe", "markdown", "run"]

TITLE = "Core operations: Shale vs raw sqlite3"

DEFAULT_KEYS = 100_000
DEFAULT_COMMITS = 4_000
KEY_FORMAT = b"key:%013d"
"""17-byte keys that sort in numeric order."""
SCRATCH_FORMAT = b"tmp:%013d"
"""Warm-up keys. They sort after every measured key, and the load warm-up's
are cleared again, so scans count exactly the loaded keys."""
VALUE_SIZE = 100
LOAD_BATCH = 1_000
READS_PER_TRANSACTION = 100
WRITERS = 32
WARM_UP = 100
SEED = 20_240_601
LOAD_TARGET = 0.6
"""Shale on SQLite / raw sqlite3, for load, point reads and scans."""
GROUP_TARGET = 5.0
"""32 concurrent committers / 1 committer, on Shale's SQLite engine."""
RAW = "raw sqlite3"

_RAW_SCHEMA = "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
_UPSERT = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
_WHOLE = (b"", b"\xff")

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """The data every system gets, generated once so all see the same bytes."""

    items: list[tuple[bytes, bytes]]
    reads: list[bytes]
    single_keys: list[bytes]
    """Fresh keys for the one-writer commits."""
    group_keys: list[bytes]
    """Fresh keys for the concurrent commits, disjoint from ``single_keys``."""
    value: bytes

    @classmethod
    def make(cls, keys: int, reads: int, commits: int, seed: int) -> Workload:
        items = [(KEY_FORMAT % i, b"%0*d" % (VALUE_SIZE, i)) for i in range(keys)]
        order = random.Random(seed)
        picked = [order.randrange(keys) for _ in range(reads)]
        fresh = [KEY_FORMAT % i for i in range(keys, keys + 2 * commits)]
        return cls(
            items=items,
            reads=[KEY_FORMAT % i for i in picked],
            single_keys=fresh[:commits],
            group_keys=fresh[commits:],
            value=b"v" * VALUE_SIZE,
        )


def _scratch(count: int) -> list[bytes]:
    return [SCRATCH_FORMAT % i for i in range(count)]


def _chunks(seq: Sequence[T], size: int) -> list[Sequence[T]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _fresh_range(work: Workload) -> tuple[bytes, bytes]:
    """The keys the commit measurements write, and no other."""
    return work.single_keys[0], (work.group_keys or work.single_keys)[-1] + b"\x00"


def _check(what: str, got: int, expected: int) -> None:
    """A benchmark that silently read nothing would report a great number."""
    if got != expected:
        raise RuntimeError(f"{what}: got {got} items, expected {expected}")


# -- raw sqlite3 ---------------------------------------------------------


def _raw_sqlite(path: str, work: Workload, synchronous: str) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(_RAW_SCHEMA)
        return _raw_measure(conn, work)
    finally:
        conn.close()


def _raw_load(conn: sqlite3.Connection, items: Sequence[tuple[bytes, bytes]]) -> None:
    for chunk in _chunks(items, LOAD_BATCH):
        conn.execute("BEGIN")
        conn.executemany(_UPSERT, chunk)
        conn.execute("COMMIT")


def _raw_reads(conn: sqlite3.Connection, keys: Sequence[bytes]) -> int:
    found = 0
    for chunk in _chunks(keys, READS_PER_TRANSACTION):
        conn.execute("BEGIN")
        for key in chunk:
            if conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone() is not None:
                found += 1
        conn.execute("COMMIT")
    return found


def _raw_scan(conn: sqlite3.Connection, stream: bool) -> int:
    conn.execute("BEGIN")
    cursor = conn.execute("SELECT k, v FROM kv ORDER BY k")
    count = sum(1 for _ in cursor) if stream else len(cursor.fetchall())
    conn.execute("COMMIT")
    return count


def _raw_commits(conn: sqlite3.Connection, keys: Sequence[bytes], value: bytes) -> None:
    for key in keys:
        conn.execute("BEGIN")
        conn.execute(_UPSERT, (key, value))
        conn.execute("COMMIT")


def _raw_measure(conn: sqlite3.Connection, work: Workload) -> dict[str, float]:
    n = len(work.items)
    scratch = _scratch(LOAD_BATCH)
    _raw_load(conn, [(k, work.value) for k in scratch])
    conn.execute("DELETE FROM kv")

    rates: dict[str, float] = {}
    start = time.perf_counter()
    _raw_load(conn, work.items)
    rates["load"] = n / (time.perf_counter() - start)

    _raw_reads(conn, work.reads[:WARM_UP])
    start = time.perf_counter()
    found = _raw_reads(conn, work.reads)
    rates["reads"] = len(work.reads) / (time.perf_counter() - start)
    _check("raw point reads", found, len(work.reads))

    for stream, name in ((False, "scan"), (True, "scan_stream")):
        start = time.perf_counter()
        count = _raw_scan(conn, stream)
        rates[name] = count / (time.perf_counter() - start)
        _check(f"raw {name}", count, n)

    _raw_commits(conn, scratch[:WARM_UP], work.value)
    start = time.perf_counter()
    _raw_commits(conn, work.single_keys, work.value)
    rates["commit_1"] = len(work.single_keys) / (time.perf_counter() - start)
    (committed,) = conn.execute(
        "SELECT count(*) FROM kv WHERE k >= ? AND k < ?", _fresh_range(work)
    ).fetchone()
    _check("raw single-key commits", committed, len(work.single_keys))
    return rates


# -- Shale -----------------------------------------------------------------


async def _timed(count: int, operation: Awaitable[T]) -> tuple[float, T]:
    """Items per second over ``count`` items, and the operation's result."""
    start = time.perf_counter()
    result = await operation
    return count / (time.perf_counter() - start), result


async def _shale_load(db: shale.Database, items: Sequence[tuple[bytes, bytes]]) -> None:
    for chunk in _chunks(items, LOAD_BATCH):
        async with db.transaction() as tr:
            for key, value in chunk:
                tr.set(key, value)


async def _shale_reads(db: shale.Database, keys: Sequence[bytes]) -> int:
    found = 0
    for chunk in _chunks(keys, READS_PER_TRANSACTION):
        async with db.transaction() as tr:
            for key in chunk:
                if await tr.get(key) is not None:
                    found += 1
    return found


async def _shale_scan(db: shale.Database) -> int:
    async with db.transaction() as tr:
        return len(await tr.get_range(*_WHOLE))


async def _shale_stream(db: shale.Database) -> int:
    count = 0
    async with db.transaction() as tr:
        async for _ in tr.get_range(*_WHOLE):
            count += 1
    return count


async def _shale_commits(db: shale.Database, keys: Sequence[bytes], value: bytes) -> None:
    for key in keys:
        async with db.transaction() as tr:
            tr.set(key, value)


async def _shale_group(db: shale.Database, keys: Sequence[bytes], value: bytes) -> None:
    await asyncio.gather(*(_shale_commits(db, keys[w::WRITERS], value) for w in range(WRITERS)))


async def _shale(url: str, work: Workload) -> dict[str, float]:
    db = await shale.open(url)
    try:
        return await _shale_measure(db, work)
    finally:
        await db.close()


async def _shale_measure(db: shale.Database, work: Workload) -> dict[str, float]:
    n = len(work.items)
    scratch = _scratch(LOAD_BATCH)
    await _shale_load(db, [(k, work.value) for k in scratch])
    async with db.transaction() as tr:
        tr.clear_range(scratch[0], scratch[-1] + b"\x00")

    rates: dict[str, float] = {}
    rates["load"], _ = await _timed(n, _shale_load(db, work.items))

    await _shale_reads(db, work.reads[:WARM_UP])
    rates["reads"], found = await _timed(len(work.reads), _shale_reads(db, work.reads))
    _check("Shale point reads", found, len(work.reads))

    rates["scan"], count = await _timed(n, _shale_scan(db))
    _check("Shale scan", count, n)
    rates["scan_stream"], count = await _timed(n, _shale_stream(db))
    _check("Shale streamed scan", count, n)

    await _shale_group(db, scratch[:WARM_UP], work.value)
    single = _shale_commits(db, work.single_keys, work.value)
    rates["commit_1"], _ = await _timed(len(work.single_keys), single)
    group = _shale_group(db, work.group_keys, work.value)
    rates["commit_32"], _ = await _timed(len(work.group_keys), group)
    async with db.transaction() as tr:
        committed = await tr.get_range(*_fresh_range(work))
    _check("Shale single-key commits", len(committed), len(work.single_keys + work.group_keys))
    return rates


# -- the table -------------------------------------------------------------

_OPERATIONS: list[tuple[str, str]] = [
    ("load", f"bulk load, {LOAD_BATCH:,} keys per transaction"),
    ("reads", f"random point reads, {READS_PER_TRANSACTION} per transaction"),
    ("scan", "full ordered scan, list (`await get_range`)"),
    ("scan_stream", "full ordered scan, streamed (`async for`)"),
    ("commit_1", "single-key commits, 1 writer"),
    ("commit_32", f"single-key commits, {WRITERS} concurrent writers"),
]


def _rows(
    raw: dict[str, float], on_sqlite: dict[str, float], in_memory: dict[str, float]
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for key, operation in _OPERATIONS:
        ratio: float | None = None
        target: float | None = None
        reference = RAW
        if key == "commit_32":
            ratio, target = on_sqlite[key] / on_sqlite["commit_1"], GROUP_TARGET
            reference = "1 writer"
        elif key in raw:
            ratio = on_sqlite[key] / raw[key]
            target = None if key == "commit_1" else LOAD_TARGET
        rows.append(
            {
                "id": key,
                "operation": operation,
                "raw_sqlite3": raw.get(key),
                "shale_sqlite": on_sqlite[key],
                "shale_memory": in_memory[key],
                "ratio": ratio,
                "ratio_of": reference,
                "target": target,
                "met": None if target is None or ratio is None else ratio >= target,
            }
        )
    return rows


def _rate(value: object) -> str:
    return "—" if value is None else f"{value:,.0f}"


def markdown(rows: list[dict[str, object]]) -> str:
    """The rows as a Markdown table (throughputs in items per second)."""
    lines = [
        "| operation | raw sqlite3 (items/s) | Shale sqlite (items/s) "
        "| Shale memory (items/s) | ratio (Shale sqlite / raw) | target | met? |",
        "|---|--:|--:|--:|--:|--:|:-:|",
    ]
    for row in rows:
        versus = "" if row["ratio_of"] == RAW else f" vs {row['ratio_of']}"
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}×{versus}"
        target = "—" if row["target"] is None else f"≥ {row['target']:.2f}×{versus}"
        met = "—" if row["met"] is None else "yes" if row["met"] else "**no**"
        lines.append(
            f"| {row['operation']} | {_rate(row['raw_sqlite3'])} | {_rate(row['shale_sqlite'])} "
            f"| {_rate(row['shale_memory'])} | {ratio} | {target} | {met} |"
        )
    return "\n".join(lines)


def run(
    keys: int = DEFAULT_KEYS,
    synchronous: str = "full",
    reads: int | None = None,
    commits: int = DEFAULT_COMMITS,
    seed: int = SEED,
    repeat: int = 1,
) -> list[dict[str, object]]:
    """Measure every operation on raw sqlite3, Shale sqlite and Shale memory.

    ``reads`` defaults to ``keys`` (random, so some repeat); ``commits`` is
    the number of single-key commits per commit measurement. ``repeat`` runs
    everything that many times, each in fresh directories, and keeps each
    cell's best: on a shared machine one run can be off by a third.
    """
    mode = synchronous.upper()
    if mode not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
    if min(keys, commits, repeat) < 1 or (reads is not None and reads < 1):
        raise ValueError("keys, reads, commits and repeat must all be at least 1")
    work = Workload.make(keys, keys if reads is None else reads, commits, seed)
    raw: dict[str, float] = {}
    on_sqlite: dict[str, float] = {}
    in_memory: dict[str, float] = {}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="shale-bench-") as tmp:
            _keep_best(raw, _raw_sqlite(os.path.join(tmp, "raw.db"), work, mode))
        with tempfile.TemporaryDirectory(prefix="shale-bench-") as tmp:
            url = f"sqlite:///{os.path.join(tmp, 'shale.db')}?synchronous={mode.lower()}"
            _keep_best(on_sqlite, asyncio.run(_shale(url, work)))
        _keep_best(in_memory, asyncio.run(_shale("memory://", work)))
    return _rows(raw, on_sqlite, in_memory)


def _keep_best(best: dict[str, float], rates: dict[str, float]) -> None:
    for name, rate in rates.items():
        best[name] = max(best.get(name, 0.0), rate)


def describe(
    keys: int = DEFAULT_KEYS,
    synchronous: str = "full",
    commits: int = DEFAULT_COMMITS,
    repeat: int = 1,
) -> str:
    """One line naming the parameters, to print above the table."""
    runs = "one run" if repeat == 1 else f"best of {repeat} runs"
    return (
        f"{keys:,} keys of {len(KEY_FORMAT % 0)} bytes, {VALUE_SIZE}-byte values, WAL, "
        f"synchronous={synchronous.upper()}, {commits:,} commits per commit measurement, {runs}"
    )


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_core",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full")
    parser.add_argument("--reads", type=int, default=None, help="point reads (default: --keys)")
    parser.add_argument("--commits", type=int, default=DEFAULT_COMMITS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--repeat", type=int, default=1, help="keep the best of N runs")
    args = parser.parse_args(argv)
    rows = run(args.keys, args.synchronous, args.reads, args.commits, args.seed, args.repeat)
    print(describe(args.keys, args.synchronous, args.commits, args.repeat))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    _main()
