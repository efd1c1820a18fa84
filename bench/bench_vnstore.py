"""vnstore: applying changes, ``ask``, ``select`` now and ``as_of`` an old change.

    python -m bench.bench_vnstore [--changes 1000] [--per-change 10]

A store of 3-item tuples ``(entity, "tag", n)`` is built by ``--changes``
changes of ``--per-change`` additions each, every change created, filled
and applied in one transaction (10 nstore keys per event, plus the change's
record, significance and log keys). Then: ``ask`` of every tuple, one
transaction per 100 asks; ``select`` of each entity's tags (rows/s); the
same ``select`` as of the first change. Every figure is checked against
what the workload must produce, so a run that does nothing fails.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import shale
from shale.layers.vnstore import VNStore, var

__all__ = ["TITLE", "describe", "main", "run"]

TITLE = "vnstore: change sets with commit-ordered history"
DEFAULT_CHANGES = 1000
DEFAULT_PER_CHANGE = 10
ASKS_PER_TRANSACTION = 100
ENTITIES = 20


def _check(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: got {got}, expected {expected}; the benchmark is broken")


def _tuples(changes: int, per_change: int) -> list[list[tuple[Any, ...]]]:
    return [
        [
            (f"e{(c * per_change + i) % ENTITIES}", "tag", c * per_change + i)
            for i in range(per_change)
        ]
        for c in range(changes)
    ]


async def _measure(url: str, changes: int, per_change: int) -> dict[str, Any]:
    batches = _tuples(changes, per_change)
    async with await shale.open(url) as db:
        store = await VNStore.open(db, ("bench",), ("entity", "key", "value"))

        async def apply(tr: shale.Transaction, batch: list[tuple[Any, ...]]) -> Any:
            cid = await store.change_create(tr)
            for items in batch:
                await store.add(tr, *items)
            await store.change_apply(tr, cid)
            return cid

        started = time.perf_counter()
        ids = [await db.transact(apply, batch) for batch in batches]
        apply_s = time.perf_counter() - started

        everything = [items for batch in batches for items in batch]

        async def asks(tr: shale.Transaction, chunk: Sequence[tuple[Any, ...]]) -> int:
            return sum([await store.ask(tr, *items) for items in chunk])

        started = time.perf_counter()
        alive = 0
        for i in range(0, len(everything), ASKS_PER_TRANSACTION):
            alive += await db.transact(asks, everything[i : i + ASKS_PER_TRANSACTION])
        ask_s = time.perf_counter() - started
        _check("live tuples", alive, len(everything))

        async def select(tr: shale.Transaction, as_of: Any) -> int:
            count = 0
            for e in range(ENTITIES):
                async for _ in store.select(tr, f"e{e}", "tag", var("n"), as_of=as_of):
                    count += 1
            return count

        started = time.perf_counter()
        rows = await db.transact(select, None)
        select_s = time.perf_counter() - started
        _check("selected rows", rows, len(everything))
        started = time.perf_counter()
        old_rows = await db.transact(select, ids[0])
        as_of_s = time.perf_counter() - started
        _check("rows as of the first change", old_rows, per_change)
    return {
        "changes/s": changes / apply_s,
        "tuples added/s": len(everything) / apply_s,
        "asks/s": len(everything) / ask_s,
        "select rows/s": rows / select_s,
        "as_of select, tuples scanned/s": len(everything) / as_of_s,
    }


def run(
    changes: int = DEFAULT_CHANGES, per_change: int = DEFAULT_PER_CHANGE
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, url in [
            ("memory", "memory://"),
            ("sqlite", f"sqlite:///{Path(tmp) / 'vn.db'}"),
        ]:
            rows.append({"engine": engine, **asyncio.run(_measure(url, changes, per_change))})
    return rows


def describe(changes: int = DEFAULT_CHANGES, per_change: int = DEFAULT_PER_CHANGE) -> str:
    return (
        f"{changes} changes of {per_change} tuples (3 columns, {ENTITIES} entities), "
        f"one transaction per change; asks {ASKS_PER_TRANSACTION} per transaction."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_vnstore", description=__doc__)
    parser.add_argument("--changes", type=int, default=DEFAULT_CHANGES)
    parser.add_argument("--per-change", type=int, default=DEFAULT_PER_CHANGE)
    args = parser.parse_args(argv)
    from bench.run import table

    print(describe(args.changes, args.per_change), "\n")
    print(table(run(args.changes, args.per_change)))


if __name__ == "__main__":
    main()
