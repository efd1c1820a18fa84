"""Layer format versions: recorded on first open, checked on every open."""

from __future__ import annotations

import pytest

import shale
from shale import tuple as tuples
from shale.layers.format import LayerFormat, check_format, refuse_if_read_only

FMT = LayerFormat("demo", 1, 2)
KEY = b"demo-meta"


async def test_first_open_records_the_format() -> None:
    async with await shale.open("memory://") as db:
        assert await check_format(db, KEY, FMT) is True
        assert await db.get(KEY) == tuples.pack(("demo", 1, 2))
        assert await check_format(db, KEY, FMT) is True
        assert await check_format(db, KEY, LayerFormat("demo", 1, 5)) is True


@pytest.mark.parametrize(
    ("stored", "error"),
    [
        (tuples.pack(("demo", 2, 0)), "newer than this Shale reads"),
        (tuples.pack(("other", 1, 0)), "holds a other layer, not demo"),
        (b"\xffgarbage", "unreadable demo metadata"),
    ],
)
async def test_refused_formats(stored: bytes, error: str) -> None:
    async with await shale.open("memory://") as db:
        await db.set(KEY, stored)
        with pytest.raises(shale.FormatVersionError, match=error):
            await check_format(db, KEY, FMT)
        assert await db.get(KEY) == stored


async def test_newer_minor_is_read_only() -> None:
    async with await shale.open("memory://") as db:
        await db.set(KEY, tuples.pack(("demo", 1, 3)))
        writable = await check_format(db, KEY, FMT)
        assert writable is False
        with pytest.raises(shale.ReadOnlyError, match="open read-only"):
            refuse_if_read_only(writable, FMT)
        refuse_if_read_only(True, FMT)
