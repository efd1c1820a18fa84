"""The fixtures of ``shale.found``'s tests, shared by ``test_found.py`` and
``test_found_errors.py``: the engines of ``engine_urls``."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import shale.found as found
from engine_urls import ENGINES, engine_url
from shale.errors import ShaleError

__all__ = ["Opener", "db", "dump", "le", "opener", "raises", "url"]

Opener = Callable[..., Awaitable[found.Database]]


@pytest.fixture(params=ENGINES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with engine_url(request.param, tmp_path, "found.db") as served:
        yield served


async def _purge(tx: found.Transaction) -> None:
    await found.clear(tx, b"", b"\xff")


@pytest.fixture
async def opener(url: str) -> AsyncIterator[Opener]:
    """Opens ``url`` like found's test helper: open, then clear everything."""
    opened: list[found.Database] = []

    async def open_db(**options: Any) -> found.Database:
        db = await found.open(url, **options)
        opened.append(db)
        await found.transactional(db, _purge)
        return db

    yield open_db
    for db in opened:
        await found.close(db)


@pytest.fixture
async def db(opener: Opener) -> found.Database:
    return await opener()


async def dump(db: found.Database) -> list[tuple[bytes, bytes]]:
    async def scan(tx: found.Transaction) -> list[tuple[bytes, bytes]]:
        return await found.all(found.query(tx, b"", b"\xff"))

    return await found.transactional(db, scan)


def le(n: int) -> bytes:
    return struct.pack("<q", n)


async def raises(code: int, action: Awaitable[Any]) -> found.FoundException:
    with pytest.raises(found.FoundException) as info:
        await action
    assert info.value.code == code
    assert isinstance(info.value.__cause__, ShaleError | None)
    return info.value
