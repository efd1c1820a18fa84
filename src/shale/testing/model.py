"""A randomized serializability check of an engine's committed history.

Many concurrent transactions read random keys and ranges and write values
derived from what they read. Ranges are read every way a program can:
awaited whole or streamed, forward or reverse, with or without a limit,
bounded by keys or by key selectors, and streams are often abandoned after
a few rows (``break``) — what a transaction saw before it stopped must
still be protected. Writes include ``clear_range``. Every committed writer records what it read
and wrote together with its versionstamp. Serializability (in commit order)
means: replaying the writers one by one, in versionstamp order, against a
plain dict, every recorded read matches the dict at that point, and the
final dict equals the database. A lost update, write skew or phantom breaks
one of those equalities.

The database must hold no keys but the model's (``PREFIX``) while it runs:
key selectors resolve against everything in it.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from dataclasses import dataclass, field

from shale.core.database import Database
from shale.core.selectors import KeySelector
from shale.core.transaction import Transaction
from shale.errors import RetryableError

__all__ = ["RangeRead", "Record", "check_serializable", "run_random_history"]

PREFIX = b"model/"


Bound = bytes | KeySelector


@dataclass
class RangeRead:
    """One range read: how it was asked, and the rows it gave before the
    reader stopped (``complete`` is false if it stopped early)."""

    begin: Bound
    end: Bound
    limit: int
    reverse: bool
    rows: list[tuple[bytes, bytes]]
    complete: bool


@dataclass
class Record:
    """What one committed transaction saw and did."""

    stamp: bytes = b""
    point_reads: dict[bytes, bytes | None] = field(default_factory=dict)
    range_reads: list[RangeRead] = field(default_factory=list)
    writes: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def _key(i: int) -> bytes:
    return PREFIX + b"%03d" % i


def _bound(rng: random.Random, i: int) -> Bound:
    if rng.random() < 0.7:
        return _key(i)
    return KeySelector(_key(i), rng.random() < 0.5, rng.randint(-1, 2))


async def _range_read(tr: Transaction, rng: random.Random, keys: int) -> RangeRead:
    a, b = sorted(rng.sample(range(keys + 1), 2))
    begin, end = _bound(rng, a), _bound(rng, b)
    limit = rng.choice((0, 0, 1, 2, 5))
    reverse = rng.random() < 0.3
    rows: list[tuple[bytes, bytes]] = []
    if rng.random() < 0.3:
        rows = await tr.get_range(begin, end, limit=limit, reverse=reverse)
        return RangeRead(begin, end, limit, reverse, rows, True)
    stop = rng.randint(1, 4) if rng.random() < 0.6 else None
    complete = True
    batch = rng.choice((1, 2, 256))
    async for pair in tr.get_range(begin, end, limit=limit, reverse=reverse, batch_size=batch):
        rows.append(pair)
        if stop is not None and len(rows) >= stop:
            complete = False
            break  # the iterator is abandoned, as a `break` in a program does
    return RangeRead(begin, end, limit, reverse, rows, complete)


async def _one(tr: Transaction, rng: random.Random, keys: int, record: Record) -> None:
    seen = 0
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.6:
            key = _key(rng.randrange(keys))
            value = await tr.get(key)
            record.point_reads.setdefault(key, value)
            seen += len(value or b"")
        else:
            read = await _range_read(tr, rng, keys)
            record.range_reads.append(read)
            seen += sum(len(v) for _, v in read.rows)
    for _ in range(rng.randint(1, 3)):
        key = _key(rng.randrange(keys))
        roll = rng.random()
        if roll < 0.55:
            value = b"%d:%d" % (seen, rng.randrange(1000))
            tr.set(key, value)
            record.writes.append(("set", key, value))
        elif roll < 0.7:
            tr.clear(key)
            record.writes.append(("clear", key, b""))
        elif roll < 0.8:
            a, b = sorted(rng.sample(range(keys + 1), 2))
            tr.clear_range(_key(a), _key(b))
            record.writes.append(("clear_range", _key(a), _key(b)))
        else:
            tr.add(key + b"/n", b"\x01\x00")
            record.writes.append(("add", key + b"/n", b"\x01\x00"))


async def run_random_history(
    db: Database, *, transactions: int = 300, workers: int = 8, keys: int = 12, seed: int = 0
) -> list[Record]:
    """Run ``transactions`` random transactions on ``workers`` concurrent
    tasks; return the records of those that committed."""
    committed: list[Record] = []
    rng = random.Random(seed)
    seeds = [rng.randrange(2**32) for _ in range(transactions)]

    async def worker(mine: list[int]) -> None:
        for s in mine:
            local = random.Random(s)
            record = Record()
            tr = db.transaction()
            try:
                await _one(tr, local, keys, record)
                stamp = tr.get_versionstamp()
                await asyncio.sleep(0)  # let other workers commit in between
                await tr.commit()
                record.stamp = await stamp
                committed.append(record)
            except RetryableError:
                tr.close()

    await asyncio.gather(*(worker(seeds[i::workers]) for i in range(workers)))
    return committed


def _apply(state: dict[bytes, bytes], op: str, key: bytes, param: bytes) -> None:
    if op == "set":
        state[key] = param
    elif op == "clear":
        state.pop(key, None)
    elif op == "clear_range":
        for victim in [k for k in state if key <= k < param]:
            del state[victim]
    else:
        old = int.from_bytes(state.get(key, b"").ljust(2, b"\x00")[:2], "little")
        state[key] = ((old + int.from_bytes(param, "little")) % 65536).to_bytes(2, "little")


def _resolve(keys: list[bytes], bound: Bound) -> bytes:
    """Where ``bound`` lands among ``keys`` (sorted), as the core resolves
    a selector: ``b""`` before the first key, ``b"\\xff"`` after the last."""
    if isinstance(bound, bytes):
        return bound
    below = (
        bisect.bisect_right(keys, bound.key)
        if bound.or_equal
        else bisect.bisect_left(keys, bound.key)
    )
    index = below - 1 + bound.offset
    if index < 0:
        return b""
    return keys[index] if index < len(keys) else b"\xff"


def _expected(state: dict[bytes, bytes], read: RangeRead) -> list[tuple[bytes, bytes]]:
    keys = sorted(state)
    begin, end = _resolve(keys, read.begin), _resolve(keys, read.end)
    rows = [(k, state[k]) for k in keys if begin <= k < end]
    if read.reverse:
        rows.reverse()
    if read.limit:
        rows = rows[: read.limit]
    return rows if read.complete else rows[: len(read.rows)]


async def check_serializable(db: Database, records: list[Record]) -> None:
    """Raise ``AssertionError`` unless ``records`` replay serially in
    versionstamp order to the database's current contents."""
    state: dict[bytes, bytes] = {}
    for record in sorted(records, key=lambda r: r.stamp):
        for key, value in record.point_reads.items():
            assert state.get(key) == value, f"read of {key!r} not serializable at {record.stamp!r}"
        for read in record.range_reads:
            assert read.rows == _expected(state, read), f"{read} not serializable"
        for op, key, param in record.writes:
            _apply(state, op, key, param)
    async with db.transaction() as tr:
        final = await tr.get_range(PREFIX, PREFIX + b"\xff")
    assert dict(final) == state, "final state differs from the serial replay"
