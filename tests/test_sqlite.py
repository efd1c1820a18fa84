"""What only the SQLite engine promises: URLs, the process lock, the format
version, group commit and crash safety."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import shale
from shale.engines.sqlite import SQLiteEngine, sqlite_path


def url_of(path: Path) -> str:
    return f"sqlite:///{path}" if not path.is_absolute() else f"sqlite:////{str(path).lstrip('/')}"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data.db", "data.db"),
        ("sqlite:///dir/data.db", "dir/data.db"),
        ("sqlite:////abs/data.db", "/abs/data.db"),
        ("sqlite:////abs/data.db?synchronous=normal", "/abs/data.db"),
    ],
)
def test_url_paths(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:///", "sqlite:///dir/", "sqlite:x"])
async def test_malformed_urls_are_refused(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(shale.EngineError, match="sqlite"):
        await shale.open(url)
    assert list(tmp_path.iterdir()) == []


async def test_bad_options_are_refused(tmp_path: Path) -> None:
    url = url_of(tmp_path / "x.db")
    with pytest.raises(shale.EngineError, match="synchronous must be one of"):
        await shale.open(url + "?synchronous=sometimes")
    with pytest.raises(shale.EngineError, match="max_transaction_age must be positive"):
        await shale.open(url, max_transaction_age=0)
    with pytest.raises(shale.EngineError, match="No such file or directory"):
        await shale.open(url_of(tmp_path / "missing" / "x.db"))
    assert not (tmp_path / "x.db").exists()


async def test_default_url_is_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHALE_URL", raising=False)
    async with await shale.open() as db:
        await db.set(b"k", b"v")
        assert isinstance(db.engine, SQLiteEngine)
    assert (tmp_path / "shale.db").exists()
    monkeypatch.setenv("SHALE_URL", "memory://")
    async with await shale.open() as db:
        assert await db.get(b"k") is None


async def test_normal_synchronous_mode_round_trips(tmp_path: Path) -> None:
    url = url_of(tmp_path / "fast.db") + "?synchronous=normal"
    async with await shale.open(url) as db:
        await db.set(b"k", b"v")
    async with await shale.open(url) as db:
        assert await db.get(b"k") == b"v"


HOLDER = textwrap.dedent(
    """
    import asyncio, sys, shale
    async def main():
        db = await shale.open(sys.argv[1])
        await db.set(b"held", b"1")
        print("ready", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


async def test_second_process_is_refused_and_lock_dies_with_holder(tmp_path: Path) -> None:
    url = url_of(tmp_path / "held.db")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(shale.DatabaseLockedError, match=r"shale serve") as info:
            await shale.open(url)
        assert str(holder.pid) in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    async with await shale.open(url) as db:
        assert await db.get(b"held") == b"1"


async def test_same_process_cannot_open_twice(tmp_path: Path) -> None:
    url = url_of(tmp_path / "twice.db")
    async with await shale.open(url):
        with pytest.raises(shale.DatabaseLockedError):
            await shale.open(url)
    async with await shale.open(url):
        pass


def _set_format(path: Path, value: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE name = 'format'", (value,))


async def test_newer_major_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with await shale.open(url_of(path)) as db:
        await db.set(b"k", b"v")
    _set_format(path, "2.0")
    with pytest.raises(shale.FormatVersionError, match="newer than this Shale reads"):
        await shale.open(url_of(path))
    _set_format(path, "garbage")
    with pytest.raises(shale.FormatVersionError, match="unreadable format version"):
        await shale.open(url_of(path))


async def test_newer_minor_format_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    async with await shale.open(url_of(path)) as db:
        await db.set(b"k", b"v")
    _set_format(path, "1.9")
    async with await shale.open(url_of(path)) as db:
        assert await db.get(b"k") == b"v"
        with pytest.raises(shale.ReadOnlyError):
            await db.set(b"k", b"changed")
        assert await db.get(b"k") == b"v"


async def test_concurrent_commits_share_one_write(tmp_path: Path) -> None:
    async with await shale.open(url_of(tmp_path / "g.db")) as db:
        engine = db.engine
        assert isinstance(engine, SQLiteEngine)
        await db.set(b"warm", b"up")
        before = engine._committer.batches

        async def one(i: int) -> None:
            async with db.transaction() as tr:
                tr.set(b"g/%02d" % i, b"x")

        await asyncio.gather(*(one(i) for i in range(32)))
        batches = engine._committer.batches - before
        assert batches <= 2, f"32 concurrent commits took {batches} engine writes"
        async with db.transaction() as tr:
            assert len(await tr.get_range(b"g/", b"g0")) == 32


async def test_group_commit_resolves_conflicts_inside_a_batch(tmp_path: Path) -> None:
    async with await shale.open(url_of(tmp_path / "g.db")) as db:
        await db.set(b"n", b"0")
        trs = [db.transaction() for _ in range(8)]
        for tr in trs:
            value = int(await tr.get(b"n") or b"0")
            tr.set(b"n", b"%d" % (value + 1))
        results = await asyncio.gather(*(tr.commit() for tr in trs), return_exceptions=True)
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, shale.ConflictError) for r in results if r is not None)
        assert await db.get(b"n") == b"1"


WRITER = textwrap.dedent(
    """
    import asyncio, sys, shale
    async def main(url, start):
        db = await shale.open(url)
        async def worker(first):
            i = first
            while True:
                async with db.transaction() as tr:
                    tr.set(b"a/%08d" % i, b"%d" % i)
                    tr.set(b"b/%08d" % i, b"%d" % i)
                print(i, flush=True)
                i += 8
        await asyncio.gather(*(worker(start + w) for w in range(8)))
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_sigkill_during_commits_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    url = url_of(tmp_path / "crash.db")
    acknowledged: set[int] = set()
    for round_ in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(round_ * 10_000_000)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        for _ in range(100 + 70 * round_):
            line = writer.stdout.readline()
            assert line, "the writer died before being killed"
            acknowledged.add(int(line))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        acknowledged.update(int(line) for line in writer.stdout.read().split())
        async with await shale.open(url) as db, db.transaction() as tr:
            a = {int(v) for _, v in await tr.get_range(b"a/", b"a0")}
            b = {int(v) for _, v in await tr.get_range(b"b/", b"b0")}
        assert a == b, "a transaction was half applied"
        assert acknowledged <= a, f"lost acknowledged commits: {sorted(acknowledged - a)[:5]}"
