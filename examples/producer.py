"""Write a message with a timestamp every second to a Shale server.

    SHALE_TOKEN=$(cat .shale-token) python examples/producer.py [--count N] [--interval S]

Each message is one transaction that sets ``("messages", <versionstamp>)``
to ``(text, unix time)``. The versionstamp is the commit's own position, so
keys sort in commit order and never collide, even between producers.
``db.transact`` retries the transaction; over the server it also tags it
with an idempotency id, so a commit whose reply was lost is not written
twice. ``examples/consumer.py`` prints the messages as they commit.

``SHALE_URL`` names the server (default ``shale://127.0.0.1:7480``) and
``SHALE_TOKEN`` its token, as ``make run`` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import time

import shale
from shale import tuple as tuples
from shale.feeds import Feed

MESSAGES = shale.Subspace(("messages",))
FEED = Feed("messages", MESSAGES)
"""The consumer's feed, declared here too: the log holds only the commits
made after the declaration, so it must exist before the first message."""


async def send(tr: shale.Transaction, text: str) -> None:
    key = MESSAGES.pack_with_versionstamp((tuples.Versionstamp.incomplete(),))
    tr.set_versionstamped_key(key, tuples.pack((text, time.time())))


async def main(count: int, interval: float) -> None:
    url = os.environ.get("SHALE_URL", "shale://127.0.0.1:7480")
    async with await shale.open(url, token=os.environ.get("SHALE_TOKEN")) as db:
        await FEED.declare(db)  # a no-op if the consumer declared it first
        for i in itertools.islice(itertools.count(), count or None):
            if i:
                await asyncio.sleep(interval)
            await db.transact(send, f"message_{i}")
            print(f"sent message_{i}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=0, help="stop after N messages (0: never)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(main(args.count, args.interval))
