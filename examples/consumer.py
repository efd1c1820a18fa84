"""Print the messages of examples/producer.py as they are committed.

    SHALE_TOKEN=$(cat .shale-token) python examples/consumer.py [--count N]

The consumer does not scan the messages for new ones: it follows the
change feed on their prefix, and the server wakes it when a commit writes
there. It is the named
consumer ``printer``, whose cursor is stored in the database after each
message, so a restarted consumer continues after the last message it
printed. (Printing is outside the database: a consumer killed between
printing and storing the cursor prints that one message again.)

``SHALE_URL`` names the server (default ``shale://127.0.0.1:7480``) and
``SHALE_TOKEN`` its token, as ``make run`` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from datetime import datetime

import shale
from shale import tuple as tuples
from shale.feeds import INSERT, Change, Consumer, Feed

MESSAGES = shale.Subspace(("messages",))
FEED = Feed("messages", MESSAGES)
"""Declared identically by the producer; declaring it again is a no-op."""


async def main(count: int) -> None:
    url = os.environ.get("SHALE_URL", "shale://127.0.0.1:7480")
    async with await shale.open(url, token=os.environ.get("SHALE_TOKEN")) as db:
        feed = await FEED.declare(db)
        printer = Consumer(feed, "printer")
        async with db.transaction() as tr:
            cursor = await printer.cursor(tr)  # None the first time
        start = cursor or await feed.origin(db)  # the origin: before its first change

        async def advance(tr: shale.Transaction, change: Change) -> None:
            printer.advance(tr, change)

        printed = 0
        changes = feed.subscribe(db, start, operations=INSERT)
        async with contextlib.aclosing(changes):
            async for change in changes:
                assert change.value is not None  # inserts carry their value
                text, sent = tuples.unpack(change.value)
                when = datetime.fromtimestamp(sent).strftime("%H:%M:%S.%f")[:-3]
                print(f"{text}  sent at {when}", flush=True)
                await db.transact(advance, change)
                printed += 1
                if printed == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(main(args.count))
