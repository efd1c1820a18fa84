"""A producer and an exactly-once consumer of a change feed, on SQLite.

    python examples/feed_consumer.py

The producer commits orders, one per transaction. The consumer keeps each
customer's total in the same database, committing each new total together
with its feed cursor (``Consumer.process``). Part way through, the consumer
task is cancelled wherever it happens to be, as a crash would stop it, and
the database is closed. A new process (here: a reopened database and a new
``Consumer``) continues from the stored cursor. At the end the totals are
checked against the orders: none was counted twice or missed.

Runs against a fresh SQLite file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile

import shale
from shale import tuple as tuples
from shale.feeds import INSERT, Change, Consumer, Feed

ORDERS = shale.Subspace(("orders",))
TOTALS = shale.Subspace(("totals",))
HANDLED = b"handled"
CUSTOMERS = ("ada", "alan", "grace")
COUNT = 200
CRASH_AFTER = 60


def order(i: int) -> tuple[str, int]:
    """Order ``i``: its customer and amount."""
    return CUSTOMERS[i % len(CUSTOMERS)], 10 + i


async def produce(db: shale.Database) -> None:
    for i in range(COUNT):
        async with db.transaction() as tr:
            tr.set(ORDERS.pack((i,)), tuples.pack(order(i)))
        await asyncio.sleep(0.001)


async def add_order(tr: shale.Transaction, change: Change) -> None:
    """The effect of one order, written in the transaction that advances the cursor."""
    if change.op != INSERT or change.value is None:
        return
    customer, amount = tuples.unpack(change.value)
    key = TOTALS.pack((customer,))
    tr.set(key, b"%d" % (int(await tr.get(key) or b"0") + amount))
    tr.set(HANDLED, b"%d" % (int(await tr.get(HANDLED) or b"0") + 1))


async def handled(db: shale.Database) -> int:
    return int(await db.get(HANDLED) or b"0")


async def first_run(url: str) -> None:
    """Produce everything; consume until CRASH_AFTER, then stop abruptly."""
    async with await shale.open(url) as db:
        feed = await Feed("orders", ORDERS).declare(db)
        producer = asyncio.create_task(produce(db))
        consumer = asyncio.create_task(Consumer(feed, "totals").process(db, add_order))
        while await handled(db) < CRASH_AFTER:
            await asyncio.sleep(0.005)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        await producer
        print(f"first run: {COUNT} orders produced, {await handled(db)} handled, then stopped")


async def second_run(url: str) -> None:
    """Reopen, resume from the stored cursor, and check the totals."""
    async with await shale.open(url) as db:
        feed = await Feed.open(db, "orders")
        remaining = COUNT - await handled(db)
        done = await Consumer(feed, "totals").process(db, add_order, limit=remaining)
        print(f"second run: resumed and handled the remaining {done}")

        expected: dict[str, int] = {}
        for i in range(COUNT):
            customer, amount = order(i)
            expected[customer] = expected.get(customer, 0) + amount
        async with db.transaction() as tr:
            rows = await tr.get_range(*TOTALS.range())
        totals = {TOTALS.unpack(key)[0]: int(value) for key, value in rows}
        assert totals == expected, (totals, expected)
        assert await handled(db) == COUNT
        for customer, total in sorted(totals.items()):
            print(f"  {customer:6} {total:6}")
        print("every order counted exactly once")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shale-feed-") as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'shop.db')}"
        asyncio.run(first_run(url))
        asyncio.run(second_run(url))


if __name__ == "__main__":
    main()
