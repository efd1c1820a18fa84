"""A group-commit batch is all-or-nothing per transaction: one that fails
while it is written fails alone, and nothing reported failed is applied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import shale
from shale.engines.base import CommitRequest, Engine, MutationType
from shale.engines.feedlog import FeedSpec, encode_declaration, feed_log, feed_state_key
from shale.engines.memory import MemoryEngine
from shale.engines.sqlite import SQLiteEngine

FEED = FeedSpec("f", b"p/", max_entries=10)


@pytest.fixture(params=["memory", "sqlite"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
    if request.param == "memory":
        opened: Engine = await MemoryEngine.open("memory://", {})
    else:
        opened = await SQLiteEngine.open(f"sqlite:///{tmp_path}/batch.db", {})
    yield opened
    await opened.close()


def _set(key: bytes, value: bytes, feeds: tuple[FeedSpec, ...] = ()) -> CommitRequest:
    return CommitRequest(
        read_version=-1,
        mutations=[(MutationType.SET, key, value)],
        write_keys=frozenset({key}),
        feeds=feeds,
    )


async def _read(engine: Engine, key: bytes) -> bytes | None:
    snap = await engine.snapshot()
    try:
        return await snap.get(key)
    finally:
        snap.release()


async def test_a_transaction_failing_inside_the_engine_fails_alone(engine: Engine) -> None:
    # A corrupt feed state, as only a write around the core's checks can
    # leave it: the feed's retention cannot decode it.
    await engine.commit(_set(feed_state_key("f"), b"garbage"))
    first, bad, last = await asyncio.gather(
        engine.commit(_set(b"a", b"1")),
        engine.commit(_set(b"p/1", b"logged", (FEED,))),
        engine.commit(_set(b"c", b"3")),
        return_exceptions=True,
    )
    assert isinstance(bad, shale.EngineError)
    assert "undone" in str(bad)
    assert not isinstance(first, BaseException) and not isinstance(last, BaseException)
    assert first.version == last.version, "the three were one batch"
    assert await _read(engine, b"a") == b"1"
    assert await _read(engine, b"c") == b"3"
    assert await _read(engine, b"p/1") is None, "a commit reported failed was applied"


async def test_a_batch_whose_every_transaction_fails_writes_nothing(engine: Engine) -> None:
    await engine.commit(_set(feed_state_key("f"), b"garbage"))
    before = (await engine.snapshot()).read_version
    results = await asyncio.gather(
        *(engine.commit(_set(b"p/%d" % i, b"x", (FEED,))) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, shale.EngineError) for r in results)
    assert all([await _read(engine, b"p/%d" % i) is None for i in range(3)])
    assert (await engine.snapshot()).read_version == before + 1, "the version is spent"


@pytest.mark.parametrize("engine_url", ["memory://", "sqlite:///{tmp}/spent.db"])
async def test_after_a_wholly_failed_batch_conflicts_and_reads_stay_right(
    engine_url: str, tmp_path: Path
) -> None:
    """A batch whose every transaction failed still spends its version: the
    next batch must not commit at a version readers already read at (a lost
    update and stale reads followed on SQLite), and the resolver's floor
    must never pass the newest committed version (every read failed
    TransactionTooOld once the failed batch left the window)."""
    url = engine_url.format(tmp=tmp_path)
    async with await shale.open(url, max_transaction_age=0.3) as db:
        await db.engine.commit(_set(feed_state_key("f"), b"garbage"))
        db.feeds["f"] = FEED
        await db.set(b"counter", b"0")
        with pytest.raises(shale.EngineError, match="undone"):
            await db.set(b"p/1", b"fails in the engine, alone in its batch")
        first, second = db.transaction(), db.transaction()
        await first.get(b"counter")
        await second.get(b"counter")
        second.set(b"counter", b"1")
        await second.commit()
        assert await db.get(b"counter") == b"1", "a read after a commit returned missed it"
        first.set(b"counter", b"1")
        with pytest.raises(shale.ConflictError):
            await first.commit()
        del db.feeds["f"]
        await asyncio.sleep(0.5)  # the failed batch leaves the window
        assert await db.get(b"counter") == b"1"


DECLARATION = b"\xff\x02feeds\x00\x02f\x00"
_AT0 = (0).to_bytes(4, "little")  # a versionstamp offset of 0

BAD_SYSTEM_WRITES = [
    ("a declaration that does not decode", "set", None, b"junk"),
    ("a declaration naming another feed", "set", None, encode_declaration(FeedSpec("g", b"q/"))),
    ("an atomic op on a declaration", "add", None, b"\x01"),
    ("a state that does not decode", "set", feed_state_key("f"), b"short"),
    ("a state whose horizon is another feed's", "set", feed_state_key("f"), b"\x00" * 8 + b"x"),
    ("an atomic op on a state", "add", feed_state_key("f"), b"\x01"),
    ("a declaration with an empty prefix", "set", None, encode_declaration(FeedSpec("f", b""))),
    (
        "a declaration in the system keyspace",
        "set",
        None,
        encode_declaration(FeedSpec("f", b"\xff")),
    ),
    (
        "a versionstamped state",
        "set_versionstamped_value",
        feed_state_key("f"),
        b"\x00" * 18 + _AT0,
    ),
    ("a log entry", "set", feed_log("f") + b"\x33" + b"\x00" * 12, b"garbage"),
    (
        "a versionstamped declaration key",
        "set_versionstamped_key",
        DECLARATION + b"\x00" * 10 + _AT0,
        b"v",
    ),
    (
        "a versionstamped feed key",
        "set_versionstamped_key",
        feed_state_key("f") + b"\x00" * 10 + _AT0,
        b"v",
    ),
]


@pytest.mark.parametrize(("what", "op", "key", "value"), BAD_SYSTEM_WRITES)
async def test_corrupting_feed_writes_are_refused_and_nothing_is_written(
    what: str, op: str, key: bytes | None, value: bytes
) -> None:
    key = key or DECLARATION
    async with await shale.open("memory://") as db:
        tr = db.transaction()
        tr.access_system_keys = True
        tr.set(b"before", b"1")
        with pytest.raises(shale.UsageError, match="refused write"):
            getattr(tr, op)(key, value)
        with pytest.raises(shale.UsageError):
            await tr.commit()
        check = db.transaction()
        check.access_system_keys = True
        assert await check.get_range(b"", b"\xff\xff") == [], what
