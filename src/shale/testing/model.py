"""A randomized serializability check of an engine's committed history.

Many concurrent transactions read random keys and ranges and write values
derived from what they read. Every committed writer records what it read
and wrote together with its versionstamp. Serializability (in commit order)
means: replaying the writers one by one, in versionstamp order, against a
plain dict, every recorded read matches the dict at that point, and the
final dict equals the database. A lost update, write skew or phantom breaks
one of those equalities.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import RetryableError

__all__ = ["Record", "check_serializable", "run_random_history"]

PREFIX = b"model/"


@dataclass
class Record:
    """What one committed transaction saw and did."""

    stamp: bytes = b""
    point_reads: dict[bytes, bytes | None] = field(default_factory=dict)
    range_reads: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    writes: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def _key(i: int) -> bytes:
    return PREFIX + b"%03d" % i


async def _one(tr: Transaction, rng: random.Random, keys: int, record: Record) -> None:
    seen = 0
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.7:
            key = _key(rng.randrange(keys))
            value = await tr.get(key)
            record.point_reads.setdefault(key, value)
            seen += len(value or b"")
        else:
            a, b = sorted(rng.sample(range(keys + 1), 2))
            begin, end = _key(a), _key(b)
            rows = await tr.get_range(begin, end)
            record.range_reads.append((begin, end, rows))
            seen += len(rows)
    for _ in range(rng.randint(1, 3)):
        key = _key(rng.randrange(keys))
        roll = rng.random()
        if roll < 0.6:
            value = b"%d:%d" % (seen, rng.randrange(1000))
            tr.set(key, value)
            record.writes.append(("set", key, value))
        elif roll < 0.8:
            tr.clear(key)
            record.writes.append(("clear", key, b""))
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
    else:
        old = int.from_bytes(state.get(key, b"").ljust(2, b"\x00")[:2], "little")
        state[key] = ((old + int.from_bytes(param, "little")) % 65536).to_bytes(2, "little")


async def check_serializable(db: Database, records: list[Record]) -> None:
    """Raise ``AssertionError`` unless ``records`` replay serially in
    versionstamp order to the database's current contents."""
    state: dict[bytes, bytes] = {}
    for record in sorted(records, key=lambda r: r.stamp):
        for key, value in record.point_reads.items():
            assert state.get(key) == value, f"read of {key!r} not serializable at {record.stamp!r}"
        for begin, end, rows in record.range_reads:
            expected = sorted((k, v) for k, v in state.items() if begin <= k < end)
            assert rows == expected, f"range [{begin!r}, {end!r}) not serializable"
        for op, key, param in record.writes:
            _apply(state, op, key, param)
    async with db.transaction() as tr:
        final = await tr.get_range(PREFIX, PREFIX + b"\xff")
    assert dict(final) == state, "final state differs from the serial replay"
