"""The SQLite engine under pressure and misuse: transaction age on shared
readers, the cap on open readers, and use after close."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import shale
from shale.engines.base import CommitRequest, MutationType
from shale.engines.sqlite import MAX_READERS, SQLiteEngine


def url_of(path: Path) -> str:
    return f"sqlite:////{str(path).lstrip('/')}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- 1. a transaction's age is its own -----------------------------------------


async def test_young_transactions_sharing_an_old_reader_are_not_too_old(tmp_path: Path) -> None:
    """240 transactions of 50 ms, one starting every 5 ms for 1.2 s: without
    commits in between they all share one WAL read transaction, which lives
    far beyond the 0.5 s limit while no transaction does."""
    async with await shale.open(url_of(tmp_path / "age.db"), max_transaction_age=0.5) as db:
        await db.set(b"k", b"v")
        too_old: list[shale.TransactionTooOld] = []

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.005)
            tr = db.transaction()
            try:
                assert await tr.get(b"k") == b"v"
                await asyncio.sleep(0.05)
                assert await tr.get_range(b"k", b"l") == [(b"k", b"v")]
                await tr.commit()
            except shale.TransactionTooOld as exc:
                too_old.append(exc)
            finally:
                tr.close()

        await asyncio.gather(*(one(i) for i in range(240)))
    assert too_old == [], f"{len(too_old)} of 240 young transactions failed: {too_old[0]}"


async def test_young_writers_are_not_too_old(tmp_path: Path) -> None:
    """The same with a commit every fourth transaction, so readers at several
    versions come and go while others are shared."""
    async with await shale.open(url_of(tmp_path / "age.db"), max_transaction_age=0.5) as db:
        await db.set(b"k", b"v")
        too_old: list[shale.TransactionTooOld] = []

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.005)
            tr = db.transaction()
            try:
                assert await tr.get(b"k") == b"v"
                await asyncio.sleep(0.05)
                if i % 4 == 0:
                    tr.set(b"w/%03d" % i, b"x")
                await tr.commit()
            except shale.TransactionTooOld as exc:
                too_old.append(exc)
            finally:
                tr.close()

        await asyncio.gather(*(one(i) for i in range(240)))
        assert too_old == [], f"{len(too_old)} of 240 young transactions failed: {too_old[0]}"
        async with db.transaction() as tr:
            assert len(await tr.get_range(b"w/", b"w0")) == 60


async def test_a_transaction_older_than_the_limit_still_fails(tmp_path: Path) -> None:
    async with await shale.open(url_of(tmp_path / "age.db"), max_transaction_age=0.5) as db:
        await db.set(b"k", b"v")
        old = db.transaction()
        assert await old.get(b"k") == b"v"
        old.set(b"written", b"by the old one")
        for _ in range(7):  # young joiners keep the shared reader alive meanwhile
            young = db.transaction()
            assert await young.get(b"k") == b"v"
            await asyncio.sleep(0.1)
            young.close()
        with pytest.raises(shale.TransactionTooOld):
            await old.get(b"k")
        with pytest.raises(shale.TransactionTooOld):
            await old.commit()
        assert await db.get(b"written") is None


async def test_a_forgotten_snapshot_is_still_ended_by_the_sweep(tmp_path: Path) -> None:
    """The engine's own backstop: a read transaction nobody joined for longer
    than the window is ended, so it cannot pin the WAL."""
    async with await shale.open(url_of(tmp_path / "age.db"), max_transaction_age=0.3) as db:
        engine = db.engine
        await db.set(b"k", b"v")
        forgotten = await engine.snapshot()
        await asyncio.sleep(0.4)
        fresh = await engine.snapshot()
        with pytest.raises(shale.TransactionTooOld):
            await forgotten.get(b"k")
        assert await fresh.get(b"k") == b"v"
        forgotten.release()
        fresh.release()


# -- 4. open readers are capped --------------------------------------------------


async def _hold_readers(db: shale.Database, count: int) -> list[shale.Transaction]:
    """``count`` transactions reading at distinct versions."""
    held = []
    for i in range(count):
        await db.set(b"k", b"%d" % i)
        tr = db.transaction()
        assert await tr.get(b"k") == b"%d" % i
        held.append(tr)
    return held


async def test_readers_at_distinct_versions_are_capped(tmp_path: Path) -> None:
    async with await shale.open(url_of(tmp_path / "cap.db") + "?max_readers=4") as db:
        held = await _hold_readers(db, 4)
        await db.set(b"k", b"new")
        refused = db.transaction()
        with pytest.raises(shale.Unavailable, match=r"4 snapshots .*max_readers=4") as info:
            await refused.get(b"k")
        assert isinstance(info.value, shale.RetryableError)
        refused.close()
        joiner = db.transaction()  # joins a held version: no new reader
        joiner.set_read_version(await held[-1].get_read_version())
        assert await joiner.get(b"k") == b"3"
        held[0].close()
        fresh = db.transaction()
        assert await fresh.get(b"k") == b"new"
        for tr in [*held, joiner, fresh]:
            tr.close()


async def test_open_fds_stay_bounded_with_many_snapshots(tmp_path: Path) -> None:
    async with await shale.open(url_of(tmp_path / "fds.db")) as db:
        before = open_fds()
        held = await _hold_readers(db, MAX_READERS)
        refused = 0
        for i in range(200):
            await db.set(b"k", b"extra %d" % i)
            tr = db.transaction()
            try:
                await tr.get(b"k")
            except shale.Unavailable:
                refused += 1
            finally:
                tr.close()
        grown = open_fds() - before
        assert refused == 200
        assert grown <= 3 * MAX_READERS + 16, f"{grown} fds for {MAX_READERS} readers"
        for tr in held:
            tr.close()
        async with db.transaction() as tr:
            assert await tr.get(b"k") == b"extra 199"


@pytest.mark.parametrize("raw", ["0", "-3", "many", "2.5", ""])
async def test_a_bad_max_readers_in_the_url_is_refused(tmp_path: Path, raw: str) -> None:
    path = tmp_path / "x.db"
    with pytest.raises(shale.EngineError, match=r"max_readers must be a positive integer"):
        await shale.open(url_of(path) + f"?max_readers={raw}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("raw", [0, -1, 2.5, True, None])
async def test_a_bad_max_readers_option_is_refused(tmp_path: Path, raw: object) -> None:
    with pytest.raises(shale.EngineError, match=r"max_readers must be a positive integer"):
        await shale.open(url_of(tmp_path / "x.db"), max_readers=raw)
    assert list(tmp_path.iterdir()) == []


# -- 5. use after close ------------------------------------------------------


def _set(key: bytes, value: bytes, read_version: int) -> CommitRequest:
    return CommitRequest(
        read_version=read_version,
        mutations=[(MutationType.SET, key, value)],
        write_keys=frozenset({key}),
    )


async def test_use_after_close_raises_database_closed_promptly(tmp_path: Path) -> None:
    url = url_of(tmp_path / "closed.db")
    engine = await SQLiteEngine.open(url, {})
    snap = await engine.snapshot()
    queued = asyncio.ensure_future(engine.commit(_set(b"queued", b"1", snap.read_version)))
    await asyncio.sleep(0)
    await asyncio.wait_for(engine.close(), 5)
    assert (await asyncio.wait_for(queued, 5)).version == 1, "an accepted commit was dropped"
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(engine.commit(_set(b"late", b"1", snap.read_version)), 2)
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(engine.snapshot(), 2)
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(snap.get(b"queued"), 2)
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(snap.get_range(b"", b"\xff", 0, False), 2)
    snap.release()
    await asyncio.wait_for(engine.close(), 2)

    reopened = await SQLiteEngine.open(url, {})
    try:
        view = await reopened.snapshot()
        assert await view.get(b"queued") == b"1"
        assert await view.get(b"late") is None
        view.release()
    finally:
        await reopened.close()


async def test_a_transaction_of_a_closed_database_raises_database_closed(tmp_path: Path) -> None:
    db = await shale.open(url_of(tmp_path / "closed.db"))
    await db.set(b"k", b"v")
    reading, fresh = db.transaction(), db.transaction()
    assert await reading.get(b"k") == b"v"
    fresh.set(b"w", b"1")
    await db.close()
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(reading.get(b"k"), 2)
    with pytest.raises(shale.DatabaseClosed):
        await asyncio.wait_for(fresh.commit(), 2)
