"""A first program: store, query and print data on the embedded default engine.

    .venv/bin/python examples/quickstart.py

Runs against a fresh SQLite file in a temporary directory unless SHALE_URL
names another database.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import shale
from shale import tuple as tuples


async def main(url: str) -> None:
    async with await shale.open(url) as db:
        people = shale.Subspace(("people",))
        by_city = shale.Subspace(("by-city",))

        @shale.transactional
        async def add_person(tr: shale.Transaction, name: str, city: str, age: int) -> None:
            tr.set(people.pack((name,)), tuples.pack((city, age)))
            tr.set(by_city.pack((city, name)), b"")

        for name, city, age in [
            ("ada", "london", 36),
            ("grace", "new york", 85),
            ("alan", "london", 41),
            ("edsger", "austin", 72),
        ]:
            await add_person(db, name, city, age)

        async with db.transaction() as tr:
            print("everyone, in key order:")
            async for key, value in tr.get_range(*people.range()):
                (name,) = people.unpack(key)
                city, age = tuples.unpack(value)
                print(f"  {name:8} {city:10} {age}")
            print("who lives in london (an index range scan):")
            for key, _ in await tr.get_range(*by_city.range(("london",))):
                print(f"  {by_city.unpack(key)[1]}")

        visits = b"visits"
        await asyncio.gather(*(db.transact(_bump, visits) for _ in range(10)))
        count = int.from_bytes(await db.get(visits) or b"", "little")
        print(f"10 concurrent atomic increments -> {count}")

        tr = db.transaction()
        tr.set_versionstamped_key(
            shale.Subspace(("log",)).pack_with_versionstamp((tuples.Versionstamp.incomplete(),)),
            b"hello",
        )
        stamp = tr.get_versionstamp()
        await tr.commit()
        print(f"committed a log entry at versionstamp {(await stamp).hex()}")


async def _bump(tr: shale.Transaction, key: bytes) -> None:
    tr.add(key, (1).to_bytes(8, "little"))


if __name__ == "__main__":
    url = os.environ.get("SHALE_URL")
    if url:
        asyncio.run(main(url))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(f"sqlite:////{tmp.lstrip('/')}/quickstart.db"))
