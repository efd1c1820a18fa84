"""nstore: loading triples, a two-pattern join, and what the planner gains.

    python -m bench.bench_nstore [--subjects 33334] [--batch 1000]

Each subject gets three triples: its type (10% ``person``, 30% ``company``,
60% ``city``), a name and a size. They are loaded ``--batch`` triples per
transaction twice, each time into a fresh database: with ``add`` (one call
per triple) and with ``add_many`` (one call per batch, counters changed
once per batch). The join is ``(?s, "name", ?n), (?s, "type", "person")``:

* planned: ``NStore.query`` reads the counts and starts from the 10% of
  persons (one scan), then reads each person's name (one small scan each);
* left to right, as found: every name first (one scan over all of them),
  then one lookup per subject to test whether it is a person.

Each join runs in one transaction, on ``memory://`` and ``sqlite://``;
both must return exactly the persons, and the same rows. The gain is
planned results/s over left-to-right results/s. A run takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import shale
from shale.layers.nstore import NStore, var

__all__ = ["TITLE", "describe", "main", "markdown", "run"]

TITLE = "nstore: triple load, 2-pattern join, planner gain"

DEFAULT_SUBJECTS = 33_334
"""Three triples each: 100,002 triples."""
DEFAULT_BATCH = 1_000
TYPES = (("person", 1), ("company", 3), ("city", 6))
"""Types with their weight out of 10."""
JOIN_AGE = 60.0
"""Seconds a join transaction may live: the left-to-right order is the slow
one on purpose, and must not hit the 5-second default on a busy machine."""

PATTERNS: tuple[tuple[Any, ...], ...] = (
    (var("s"), "name", var("n")),
    (var("s"), "type", "person"),
)
"""The bad order first: found's left-to-right join starts with every name."""


def _kind(subject: int) -> str:
    slot = subject % 10
    for kind, weight in TYPES:
        if slot < weight:
            return kind
        slot -= weight
    raise AssertionError("the weights add up to 10")


def _triples(subjects: int) -> list[tuple[Any, str, Any]]:
    out: list[tuple[Any, str, Any]] = []
    for subject in range(subjects):
        out.append((subject, "type", _kind(subject)))
        out.append((subject, "name", f"subject-{subject:06d}"))
        out.append((subject, "size", subject % 97))
    return out


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise AssertionError(f"{what}: got {got!r}, expected {expected!r}")


async def _add_each(tr: shale.Transaction, store: NStore, chunk: Sequence[tuple[Any, ...]]) -> None:
    for triple in chunk:
        await store.add(tr, *triple)


async def _add_many(tr: shale.Transaction, store: NStore, chunk: Sequence[tuple[Any, ...]]) -> None:
    await store.add_many(tr, chunk)


async def _load(
    url: str, triples: Sequence[tuple[Any, ...]], batch: int, many: bool
) -> tuple[float, shale.Database, NStore]:
    """Seconds to load ``triples`` into a new store, with the open database."""
    db = await shale.open(url, max_transaction_age=JOIN_AGE)
    store = await NStore.open(db, ("bench", "nstore"), 3)
    write = _add_many if many else _add_each
    start = time.perf_counter()
    for first in range(0, len(triples), batch):
        await db.transact(write, store, triples[first : first + batch])
    seconds = time.perf_counter() - start
    async with db.transaction() as tr:
        _check("triples stored", await store.total(tr), len(triples))
        _check(
            "rows in index 0", len(await tr.get_range(*store.subspace.range((0,)))), len(triples)
        )
    return seconds, db, store


async def _join(
    db: shale.Database, store: NStore, planned: bool
) -> tuple[float, list[dict[str, Any]]]:
    async with db.transaction() as tr:
        start = time.perf_counter()
        rows = [row async for row in store.query(tr, *PATTERNS, planned=planned)]
        return time.perf_counter() - start, rows


async def _measure(urls: tuple[str, str], subjects: int, batch: int) -> dict[str, float]:
    """Load with ``add_many`` into the first database, with ``add`` into the
    second, and join there."""
    triples = _triples(subjects)
    persons = sum(1 for s in range(subjects) if _kind(s) == "person")
    many, db, _ = await _load(urls[0], triples, batch, many=True)
    await db.close()
    load, db, store = await _load(urls[1], triples, batch, many=False)
    async with db:
        async with db.transaction() as tr:
            _check("persons counted", await store.count(tr, 2, "person"), persons)
            plan = await store.plan(tr, *PATTERNS)
        _check("planned order", [p for p, _ in plan], [PATTERNS[1], PATTERNS[0]])
        planned_seconds, planned = await _join(db, store, planned=True)
        naive_seconds, naive = await _join(db, store, planned=False)
    _check("planned join results", len(planned), persons)
    _check("same rows either way", sorted(r["s"] for r in planned), sorted(r["s"] for r in naive))
    return {
        "load": len(triples) / load,
        "load_many": len(triples) / many,
        "planned": len(planned) / planned_seconds,
        "naive": len(naive) / naive_seconds,
    }


def run(subjects: int = DEFAULT_SUBJECTS, batch: int = DEFAULT_BATCH) -> list[dict[str, object]]:
    """One row per engine: load and join throughputs, and the planner's gain."""
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-nstore-") as tmp:
        sqlite = [f"sqlite:///{os.path.join(tmp, name)}" for name in ("many.db", "add.db")]
        urls = {"memory": ("memory://", "memory://"), "sqlite": (sqlite[0], sqlite[1])}
        for engine, pair in urls.items():
            rates = asyncio.run(_measure(pair, subjects, batch))
            rows.append(
                {
                    "engine": engine,
                    "add (triples/s)": round(rates["load"]),
                    "add_many (triples/s)": round(rates["load_many"]),
                    "join planned (results/s)": round(rates["planned"]),
                    "join left-to-right (results/s)": round(rates["naive"]),
                    "planner gain": round(rates["planned"] / rates["naive"], 1),
                }
            )
    return rows


def describe(subjects: int = DEFAULT_SUBJECTS, batch: int = DEFAULT_BATCH) -> str:
    return (
        f"{3 * subjects:,} triples ({subjects:,} subjects x type/name/size; 10% persons), "
        f"{batch:,} per transaction; join `(?s, name, ?n), (?s, type, person)`, "
        "planned vs left to right"
    )


def markdown(rows: Sequence[dict[str, object]]) -> str:
    """The rows as a Markdown table."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|--:" * (len(columns) - 1) + "|"]
    for row in rows:
        cells = [f"{v:,}" if isinstance(v, int) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    args = parser.parse_args(argv)
    print(describe(args.subjects, args.batch))
    print()
    print(markdown(run(args.subjects, args.batch)))


if __name__ == "__main__":
    main()
