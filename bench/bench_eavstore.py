"""The EAV store on ``memory://`` and ``sqlite://``: create, get, query,
query_many and update of many small dicts.

    python -m bench.bench_eavstore [--entities 10000]

Each entity is ``{"name": str, "group": 0..99, "age": 0..89, "active":
bool}`` (four data keys and four index keys). Creates and updates go 500
per transaction; gets 100 per transaction. Each query returns one group (1%
of the entities), each ``query_many`` one group's active half. Every count
is checked, so a run that reads nothing fails instead of looking fast.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import shale
from shale.layers.eavstore import EAVStore

__all__ = ["TITLE", "describe", "main", "run"]

TITLE = "eavstore: dicts as entity/attribute/value triples"

DEFAULT_ENTITIES = 10_000
GROUPS = 100
WRITE_BATCH = 500
READ_BATCH = 100
QUERIES = 200
UPDATES = 2_000
SEED = 20_240_603

T = TypeVar("T")


def _entity(i: int) -> dict[str, Any]:
    active = (i // GROUPS) % 2 == 0  # half of every group
    return {"name": f"user-{i:06d}", "group": i % GROUPS, "age": i % 90, "active": active}


def _check(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: got {got}, expected {expected}")


async def _timed(operation: Awaitable[T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = await operation
    return time.perf_counter() - start, result


async def _create(db: shale.Database, store: EAVStore, n: int) -> list[Any]:
    async def batch(tr: shale.Transaction, low: int, high: int) -> list[Any]:
        return [await store.create(tr, _entity(i)) for i in range(low, high)]

    uids: list[Any] = []
    for low in range(0, n, WRITE_BATCH):
        uids += await db.transact(batch, low, min(low + WRITE_BATCH, n))
    return uids


async def _gets(db: shale.Database, store: EAVStore, uids: Sequence[Any]) -> int:
    async def batch(tr: shale.Transaction, part: Sequence[Any]) -> int:
        return sum([len(await store.get(tr, uid)) for uid in part])

    attrs = 0
    for low in range(0, len(uids), READ_BATCH):
        attrs += await db.transact(batch, uids[low : low + READ_BATCH])
    return attrs


async def _queries(db: shale.Database, store: EAVStore, groups: Sequence[int]) -> int:
    async def one(tr: shale.Transaction, group: int) -> int:
        return len([uid async for uid in store.query(tr, "group", group)])

    return sum([await db.transact(one, group) for group in groups])


async def _queries_many(db: shale.Database, store: EAVStore, groups: Sequence[int]) -> int:
    async def one(tr: shale.Transaction, group: int) -> int:
        criteria = {"group": group, "active": True}
        return len([uid async for uid in store.query_many(tr, criteria)])

    return sum([await db.transact(one, group) for group in groups])


async def _updates(db: shale.Database, store: EAVStore, uids: Sequence[Any]) -> None:
    async def batch(tr: shale.Transaction, part: Sequence[Any]) -> None:
        for uid in part:
            await store.patch(tr, uid, {"group": GROUPS})  # moves it to a new group

    for low in range(0, len(uids), WRITE_BATCH):
        await db.transact(batch, uids[low : low + WRITE_BATCH])


async def _measure(url: str, engine: str, n: int) -> list[dict[str, object]]:
    rng = random.Random(SEED)
    db = await shale.open(url)
    try:
        store = await EAVStore.open(db, ("bench",))
        rows: list[dict[str, object]] = []

        def row(operation: str, items: int, seconds: float) -> None:
            rows.append(
                {
                    "engine": engine,
                    "operation": operation,
                    "items": items,
                    "seconds": round(seconds, 3),
                    "items/s": round(items / seconds),
                }
            )

        seconds, uids = await _timed(_create(db, store, n))
        _check("created", len(set(uids)), n)
        row(f"create ({WRITE_BATCH}/transaction)", n, seconds)

        picked = [rng.choice(uids) for _ in range(n)]
        seconds, attrs = await _timed(_gets(db, store, picked))
        _check("attributes read", attrs, 4 * n)
        row(f"get ({READ_BATCH}/transaction)", n, seconds)

        groups = [rng.randrange(GROUPS) for _ in range(QUERIES)]
        members = [_entity(i) for i in range(n)]
        expected = sum(1 for g in groups for e in members if e["group"] == g)
        seconds, found = await _timed(_queries(db, store, groups))
        _check("uids queried", found, expected)
        row(f"query, ~{n // GROUPS} uids each", QUERIES, seconds)
        row("query: uids streamed", found, seconds)

        expected = sum(1 for g in groups for e in members if e["group"] == g and e["active"])
        seconds, found = await _timed(_queries_many(db, store, groups))
        _check("uids matched", found, expected)
        row("query_many, 2 criteria", QUERIES, seconds)

        moved = uids[: min(UPDATES, n)]
        seconds, _ = await _timed(_updates(db, store, moved))
        row(f"patch 1 indexed attr ({WRITE_BATCH}/transaction)", len(moved), seconds)
        async with db.transaction() as tr:
            moved_count = len([uid async for uid in store.query(tr, "group", GROUPS)])
        _check("uids in the new group", moved_count, len(moved))
        return rows
    finally:
        await db.close()


def run(entities: int = DEFAULT_ENTITIES) -> list[dict[str, object]]:
    """Rows per engine and operation."""

    async def both() -> list[dict[str, object]]:
        rows = await _measure("memory://", "memory", entities)
        with tempfile.TemporaryDirectory() as tmp:
            rows += await _measure(f"sqlite:///{Path(tmp) / 'eav.db'}", "sqlite", entities)
        return rows

    return asyncio.run(both())


def describe(entities: int = DEFAULT_ENTITIES) -> str:
    return (
        f"{entities:,} entities of 4 attributes, {GROUPS} groups; `python -m bench.bench_eavstore "
        f"--entities {entities}`"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_eavstore", description=__doc__)
    parser.add_argument("--entities", type=int, default=DEFAULT_ENTITIES)
    args = parser.parse_args(argv)
    from bench.run import table

    print(describe(args.entities), "\n")
    print(table(run(args.entities)))


if __name__ == "__main__":
    main()
