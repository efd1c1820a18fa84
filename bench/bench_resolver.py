"""The in-process resolver under load and under attack (``memory://``).

    python -m bench.bench_resolver [--repeat 5]

Four workloads, through the public API only (so the module also runs
against older checkouts, for a before/after comparison):

- ``old check``: the commit of a transaction whose read version is
  ``AGE`` commits old (it read one key nobody wrote since, so it commits);
- ``30k ranges``: one commit with 30,000 write conflict ranges, then 20
  transactions with 3,000 read ranges each committing after a commit with
  30,000 more write ranges (the attack that froze a server for 39 s);
  ``inf`` if the checks outlast the 60 s transaction age limit;
- ``rmw``: read-modify-write transactions of one key, sequential;
- ``load``: 10 transactions of 10,000 new keys each.

The workloads take turns within each round, ``--repeat`` rounds, and the
median and the spread (min-max) of each are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import shale

__all__ = ["TITLE", "describe", "main", "run"]

TITLE = "Resolver: conflict checks under load and attack (memory://)"
AGE = 20_000
DEFAULT_REPEAT = 5


async def _old_check() -> float:
    async with await shale.open("memory://", max_transaction_age=60) as db:
        old = db.transaction()
        await old.get(b"untouched")
        for i in range(AGE):
            await db.set(b"k%d" % (i % 500), b"v")
        old.set(b"z", b"1")
        started = time.perf_counter()
        await old.commit()
        return time.perf_counter() - started


async def _many_ranges() -> float:
    async with await shale.open("memory://", max_transaction_age=60) as db:
        started = time.perf_counter()
        tr = db.transaction()
        for i in range(30_000):
            tr.add_write_conflict_range(b"w%06d" % i, b"w%06d\x01" % i)
        tr.set(b"x", b"1")
        await tr.commit()
        readers = []
        for _ in range(20):
            reader = db.transaction()
            await reader.get_read_version()
            for i in range(0, 30_000, 10):
                reader.add_read_conflict_range(b"r%06d" % i, b"r%06d\x01" % i)
            reader.set(b"y", b"1")
            readers.append(reader)
        writer = db.transaction()
        for i in range(30_000):
            writer.add_write_conflict_range(b"r%06d\x05" % i, b"r%06d\x06" % i)
        writer.set(b"q", b"1")
        await writer.commit()
        try:
            for reader in readers:
                await reader.commit()  # no overlap: each must commit
        except shale.TransactionTooOld:
            return float("inf")  # the checks outlasted the 60 s age limit
        return time.perf_counter() - started


async def _rmw() -> float:
    count = 20_000
    async with await shale.open("memory://") as db:
        started = time.perf_counter()
        for i in range(count):
            async with db.transaction() as tr:
                key = b"k%d" % (i % 1000)
                await tr.get(key)
                tr.set(key, b"x")
        return count / (time.perf_counter() - started)


async def _load() -> float:
    async with await shale.open("memory://") as db:
        started = time.perf_counter()
        for j in range(10):
            async with db.transaction() as tr:
                for i in range(10_000):
                    tr.set(b"L%d-%d" % (j, i), b"x" * 20)
        return 100_000 / (time.perf_counter() - started)


WORKLOADS: dict[str, tuple[str, Callable[[], Awaitable[float]]]] = {
    f"old check ({AGE:,} commits old)": ("µs", _old_check),
    "30k ranges + 20 readers": ("s", _many_ranges),
    "rmw": ("txn/s", _rmw),
    "load": ("keys/s", _load),
}
_SCALE = {"µs": 1e6, "s": 1.0, "txn/s": 1.0, "keys/s": 1.0}


def describe() -> str:
    return f"memory://, {DEFAULT_REPEAT} interleaved rounds, median (min-max)"


def run(repeat: int = DEFAULT_REPEAT) -> list[dict[str, object]]:
    samples: dict[str, list[float]] = {name: [] for name in WORKLOADS}
    for _ in range(repeat):
        for name, (_, workload) in WORKLOADS.items():
            samples[name].append(asyncio.run(workload()))
    rows: list[dict[str, object]] = []
    for name, (unit, _) in WORKLOADS.items():
        scaled = [value * _SCALE[unit] for value in samples[name]]
        rows.append(
            {
                "workload": name,
                "unit": unit,
                "median": f"{statistics.median(scaled):,.3g}",
                "spread": f"{min(scaled):,.3g}-{max(scaled):,.3g}",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    args = parser.parse_args()
    for row in run(args.repeat):
        print(row)


if __name__ == "__main__":
    main()
