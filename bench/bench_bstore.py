"""The blob store on ``memory://`` and ``sqlite://``: one large blob
written and read over many transactions, and many small blobs.

    python -m bench.bench_bstore [--megabytes 50] [--small 2000]

The large blob is random bytes, stored with ``put`` (4 MB of chunks per
transaction) and read back with ``read`` from the database (as many
transactions); the read is checked byte for byte. The small blobs are
distinct 1 kB blobs, 100 ``get_or_create`` per transaction, then the same
blobs again (the deduplicating path: one read and one atomic add each),
then all read back with ``get``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import shale
from shale.layers.bstore import BStore

__all__ = ["TITLE", "describe", "main", "run"]

TITLE = "bstore: content-addressed blobs"

DEFAULT_MEGABYTES = 50
DEFAULT_SMALL = 2_000
SMALL_SIZE = 1_000
PER_TRANSACTION = 100
MB = 1_000_000


def _check(what: str, ok: bool) -> None:
    if not ok:
        raise RuntimeError(f"benchmark result is wrong: {what}")


async def _large(db: shale.Database, store: BStore, blob: bytes) -> tuple[float, float, uuid.UUID]:
    start = time.perf_counter()
    uid = await store.put(db, blob)
    wrote = time.perf_counter() - start
    digest = hashlib.blake2b()
    size = 0
    start = time.perf_counter()
    async for piece in store.read(db, uid):
        digest.update(piece)
        size += len(piece)
    read = time.perf_counter() - start
    _check("large blob read back", size == len(blob))
    _check("large blob digest", digest.digest() == hashlib.blake2b(blob).digest())
    return wrote, read, uid


async def _small(
    db: shale.Database, store: BStore, blobs: Sequence[bytes]
) -> tuple[float, float, float]:
    async def batch(tr: shale.Transaction, part: Sequence[bytes]) -> list[uuid.UUID]:
        return [await store.get_or_create(tr, blob) for blob in part]

    async def fetch(tr: shale.Transaction, part: Sequence[uuid.UUID]) -> list[bytes]:
        return [await store.get(tr, uid) for uid in part]

    timings, results = [], []
    for _ in range(2):  # the second round deduplicates
        start = time.perf_counter()
        uids: list[uuid.UUID] = []
        for low in range(0, len(blobs), PER_TRANSACTION):
            uids += await db.transact(batch, blobs[low : low + PER_TRANSACTION])
        timings.append(time.perf_counter() - start)
        results.append(uids)
    _check("distinct small blobs", len(set(results[0])) == len(blobs))
    _check("dedup returns the same uids", results[0] == results[1])
    start = time.perf_counter()
    back: list[bytes] = []
    for low in range(0, len(blobs), PER_TRANSACTION):
        back += await db.transact(fetch, results[0][low : low + PER_TRANSACTION])
    timings.append(time.perf_counter() - start)
    _check("small blobs read back", back == list(blobs))
    return timings[0], timings[1], timings[2]


async def _measure(url: str, engine: str, blob: bytes, small: int) -> list[dict[str, object]]:
    db = await shale.open(url)
    try:
        store = await BStore.open(db, ("bench",))
        wrote, read, uid = await _large(db, store, blob)
        info = await db.transact(store.stat, uid)
        _check("stat of the large blob", info.length == len(blob) and info.references == 1)
        blobs = [i.to_bytes(8, "big") * (SMALL_SIZE // 8) for i in range(small)]
        created, deduped, fetched = await _small(db, store, blobs)
    finally:
        await db.close()
    mb = len(blob) / MB
    return [
        {
            "engine": engine,
            "operation": f"put {mb:g} MB",
            "seconds": wrote,
            "rate": f"{mb / wrote:.1f} MB/s",
        },
        {
            "engine": engine,
            "operation": f"read {mb:g} MB",
            "seconds": read,
            "rate": f"{mb / read:.1f} MB/s",
        },
        {
            "engine": engine,
            "operation": f"get_or_create {small:,} new 1 kB blobs",
            "seconds": created,
            "rate": f"{small / created:,.0f} blobs/s",
        },
        {
            "engine": engine,
            "operation": f"get_or_create {small:,} existing (dedup)",
            "seconds": deduped,
            "rate": f"{small / deduped:,.0f} blobs/s",
        },
        {
            "engine": engine,
            "operation": f"get {small:,} small blobs",
            "seconds": fetched,
            "rate": f"{small / fetched:,.0f} blobs/s",
        },
    ]


def run(megabytes: int = DEFAULT_MEGABYTES, small: int = DEFAULT_SMALL) -> list[dict[str, object]]:
    """Rows per engine and operation."""
    blob = os.urandom(megabytes * MB)

    async def both() -> list[dict[str, object]]:
        rows = await _measure("memory://", "memory", blob, small)
        with tempfile.TemporaryDirectory() as tmp:
            rows += await _measure(f"sqlite:///{Path(tmp) / 'blobs.db'}", "sqlite", blob, small)
        return rows

    return asyncio.run(both())


def describe(megabytes: int = DEFAULT_MEGABYTES, small: int = DEFAULT_SMALL) -> str:
    return (
        f"one {megabytes} MB blob, {small:,} blobs of 1 kB; "
        f"`python -m bench.bench_bstore --megabytes {megabytes} --small {small}`"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_bstore", description=__doc__)
    parser.add_argument("--megabytes", type=int, default=DEFAULT_MEGABYTES)
    parser.add_argument("--small", type=int, default=DEFAULT_SMALL)
    args = parser.parse_args(argv)
    from bench.run import table

    print(describe(args.megabytes, args.small), "\n")
    print(table(run(args.megabytes, args.small)))


if __name__ == "__main__":
    main()
