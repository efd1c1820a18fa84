"""The SQLite engine under pressure and misuse: transaction age on shared
readers, the one-process lock under every name of the file, files that are
not Shale's, the cap on open readers, and use after close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import shale
from shale.cli import main as cli_main
from shale.engines.base import CommitRequest, MutationType
from shale.engines.sqlite import MAX_READERS, SQLiteEngine


def url_of(path: Path) -> str:
    return f"sqlite:////{str(path).lstrip('/')}"


def files_in(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime: what "left untouched" compares."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- 1. a transaction's age is its own -----------------------------------------


@pytest.mark.parametrize("writer_every", [0, 4])
async def test_young_transactions_sharing_an_old_reader_are_not_too_old(
    tmp_path: Path, writer_every: int
) -> None:
    """240 transactions of 50 ms, one starting every 5 ms for 1.2 s. Without
    commits in between they all share one WAL read transaction, which lives
    far beyond the 0.5 s limit while no transaction does; with a commit
    every fourth transaction, readers at several versions come and go
    while others are shared."""
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
                if writer_every and i % writer_every == 0:
                    tr.set(b"w/%03d" % i, b"x")
                await tr.commit()
            except shale.TransactionTooOld as exc:
                too_old.append(exc)
            finally:
                tr.close()

        await asyncio.gather(*(one(i) for i in range(240)))
        assert too_old == [], f"{len(too_old)} of 240 young transactions failed: {too_old[0]}"
        async with db.transaction() as tr:
            written = await tr.get_range(b"w/", b"w0")
        assert len(written) == (240 // writer_every if writer_every else 0)


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


# -- 2. the one-process lock holds for every name of the file -----------------

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


@contextlib.contextmanager
def held_by_another_process(url: str) -> Iterator[int]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        yield holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


async def test_every_name_of_a_file_held_by_another_process_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "real.db"
    with held_by_another_process(url_of(real)) as pid:
        (tmp_path / "symlink.db").symlink_to(real)
        os.link(real, tmp_path / "hardlink.db")
        (tmp_path / "dirlink").symlink_to(tmp_path, target_is_directory=True)
        monkeypatch.chdir(tmp_path)
        names = set(os.listdir(tmp_path))
        urls = {
            "symlink": url_of(tmp_path / "symlink.db"),
            "hard link": url_of(tmp_path / "hardlink.db"),
            "relative path": "sqlite:///real.db",
            "symlinked directory": url_of(tmp_path / "dirlink" / "real.db"),
        }
        for name, url in urls.items():
            with pytest.raises(shale.DatabaseLockedError, match="open in another process") as info:
                await shale.open(url)
            if name != "hard link":  # a hard link's own name has no pid file to read
                assert f"pid {pid}" in str(info.value), name
        assert set(os.listdir(tmp_path)) == names, "a refused open created files"


async def test_a_second_open_in_the_same_process_is_refused_under_every_name(
    tmp_path: Path,
) -> None:
    real = tmp_path / "twice.db"
    async with await shale.open(url_of(real)) as db:
        await db.set(b"k", b"v")
        (tmp_path / "symlink.db").symlink_to(real)
        os.link(real, tmp_path / "hardlink.db")
        for name in ("twice.db", "symlink.db", "hardlink.db"):
            with pytest.raises(
                shale.DatabaseLockedError, match="already open in this process"
            ) as info:
                await shale.open(url_of(tmp_path / name))
            assert "another process" not in str(info.value)
            assert str(os.getpid()) not in str(info.value)
        assert await db.get(b"k") == b"v"
    async with await shale.open(url_of(tmp_path / "hardlink.db")) as db:
        assert await db.get(b"k") == b"v"


COMMITTER = textwrap.dedent(
    """
    import asyncio, sys, shale
    async def main():
        db = await shale.open(sys.argv[1])
        for i in range(50):
            await db.set(b"k/%02d" % i, b"acknowledged")
        print("committed", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


async def test_a_crash_under_one_name_loses_nothing_when_opened_under_another(
    tmp_path: Path,
) -> None:
    """SQLite keeps the WAL beside the name it opened the file by; after a
    crash, the acknowledged tail of the database is only there. An open
    through a hard link must still find it."""
    real, link = tmp_path / "real.db", tmp_path / "link.db"
    async with await shale.open(url_of(real)) as db:
        await db.set(b"before", b"1")
    os.link(real, link)
    writer = subprocess.Popen(
        [sys.executable, "-c", COMMITTER, url_of(real)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "committed"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert (tmp_path / "real.db-wal").stat().st_size > 0
    for name in (link, real, link):
        async with await shale.open(url_of(name)) as db, db.transaction() as tr:
            assert len(await tr.get_range(b"k/", b"k0")) == 50, name
            await db.set(b"after " + name.name.encode(), b"1")
    async with await shale.open(url_of(real)) as db:
        assert await db.get(b"after link.db") == await db.get(b"after real.db") == b"1"


INCREMENTER = textwrap.dedent(
    """
    import asyncio, sys, shale
    async def main(url, count):
        try:
            db = await shale.open(url)
        except shale.DatabaseLockedError:
            print("refused", flush=True)
            return
        print("open", flush=True)
        sys.stdin.readline()
        async def bump(tr):
            tr.set(b"n", b"%d" % (int(await tr.get(b"n") or b"0") + 1))
        async def worker():
            for _ in range(count // 4):
                await db.run(bump)
        await asyncio.gather(*(worker() for _ in range(4)))
        await db.close()
        print("done", flush=True)
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_two_processes_through_two_names_lose_no_increment(tmp_path: Path, link: str) -> None:
    """Both processes open before either writes (each waits for a go on
    stdin while holding the database), so without a shared lock both would
    run their resolvers side by side and lose increments."""
    real, other = tmp_path / "count.db", tmp_path / "other.db"
    async with await shale.open(url_of(real)) as db:
        await db.set(b"n", b"0")
    if link == "symlink":
        other.symlink_to(real)
    else:
        os.link(real, other)
    count = 200
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTER, url_of(path), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in (real, other)
    ]
    try:
        states = []
        for proc in procs:
            assert proc.stdout is not None
            states.append(proc.stdout.readline().strip())
        for proc, state in zip(procs, states, strict=True):
            out, _ = proc.communicate("go\n" if state == "open" else "", timeout=120)
            assert proc.returncode == 0
            assert state == "refused" or out.strip() == "done"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    acknowledged = count * states.count("open")
    async with await shale.open(url_of(real)) as db:
        final = int(await db.get(b"n") or b"0")
    assert final == acknowledged, f"{acknowledged - final} of {acknowledged} increments lost"
    assert sorted(states) == ["open", "refused"]


FLOCKER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fds = [os.open(path, os.O_RDONLY | os.O_CREAT) for path in sys.argv[1:]]
    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_works_while_another_process_holds_a_flock_on_the_file(
    tmp_path: Path, journal_mode: str
) -> None:
    """The lock is an flock on the database file itself. SQLite locks with
    POSIX fcntl locks, which on Linux are independent of flock: with a zero
    busy timeout, any interference would be an immediate "database is
    locked" here."""
    path = tmp_path / "plain.db"
    flocker = subprocess.Popen(
        [sys.executable, "-c", FLOCKER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert flocker.stdout is not None
        assert flocker.stdout.readline().strip() == "locked"
        with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as conn:
            assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone() == (journal_mode,)
            conn.execute("CREATE TABLE t (x)")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
            conn.execute("COMMIT")
            with contextlib.closing(sqlite3.connect(path, timeout=0)) as reader:
                assert reader.execute("SELECT count(*) FROM t").fetchone() == (100,)
    finally:
        flocker.kill()
        flocker.wait()


# -- 3. a file that is not Shale's is refused and left untouched ---------------


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
async def test_a_foreign_sqlite_database_is_refused_untouched(
    tmp_path: Path, journal_mode: str
) -> None:
    path = tmp_path / "theirs.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine, not Shale''s')")
        conn.commit()
    before = files_in(tmp_path)
    assert list(before) == ["theirs.db"]
    with pytest.raises(shale.ForeignDatabaseError, match=re.escape(str(path))) as info:
        await shale.open(url_of(path))
    assert "not a Shale database" in str(info.value)
    assert files_in(tmp_path) == before


async def test_a_foreign_meta_table_without_a_format_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('owner', 'someone else')")
        conn.commit()
    before = files_in(tmp_path)
    with pytest.raises(shale.ForeignDatabaseError, match=re.escape(str(path))):
        await shale.open(url_of(path))
    assert files_in(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am a text file\n",
        bytes(range(256)) * 64,
        b"SQLite format 3\x00" + b"\x00" * 84,
        b"SQLite format 3\x00" + b"\x10\x00\x02\x02" + b"\x00" * 80,
    ],
    ids=["text", "binary", "truncated-header", "truncated-wal-header"],
)
async def test_a_file_that_is_not_sqlite_is_refused_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    before = files_in(tmp_path)
    with pytest.raises(shale.ForeignDatabaseError, match=re.escape(str(path))):
        await shale.open(url_of(path))
    assert files_in(tmp_path) == before


def test_shale_ls_refuses_a_foreign_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "theirs.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.commit()
    before = files_in(tmp_path)
    assert cli_main(["ls", "--url", url_of(path)]) != 0
    assert "not a Shale database" in capsys.readouterr().err
    assert files_in(tmp_path) == before


async def test_an_empty_file_becomes_a_shale_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    async with await shale.open(url_of(path)) as db:
        await db.set(b"k", b"v")
    async with await shale.open(url_of(path)) as db:
        assert await db.get(b"k") == b"v"


CRASH_IN_FIRST_TRANSACTION = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size=1")  # spill pages into the file before the commit
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE big (b BLOB)")
    conn.executemany("INSERT INTO big VALUES (?)", [(os.urandom(2000),) for _ in range(200)])
    os._exit(0)
    """
)


async def test_a_crash_in_an_empty_files_first_transaction_leaves_it_empty(
    tmp_path: Path,
) -> None:
    """A hot rollback journal cannot be read through a read-only connection;
    the engine recovers it as any SQLite reader would, and the file is
    empty again."""
    path = tmp_path / "crashed.db"
    path.touch()
    subprocess.run([sys.executable, "-c", CRASH_IN_FIRST_TRANSACTION, str(path)], check=True)
    assert (tmp_path / "crashed.db-journal").exists() and path.stat().st_size > 0
    async with await shale.open(url_of(path)) as db:
        await db.set(b"k", b"v")
        assert await db.get(b"k") == b"v"


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


async def test_a_refused_second_open_keeps_the_first_ones_sqlite_locks(tmp_path: Path) -> None:
    """POSIX locks belong to the process: closing any descriptor of the file
    drops them all, SQLite's included. A refused second open must not open
    one, or another program could take the database out of WAL mode under
    the first."""
    path = tmp_path / "held.db"
    async with await shale.open(url_of(path)) as db:
        await db.set(b"k", b"v")
        reader = db.transaction()
        assert await reader.get(b"k") == b"v"
        with pytest.raises(shale.DatabaseLockedError, match="already open in this process"):
            await shale.open(url_of(path))
        other = textwrap.dedent(
            f"""
            import sqlite3
            conn = sqlite3.connect({str(path)!r}, timeout=0, isolation_level=None)
            try:
                print(conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0])
            except sqlite3.OperationalError as exc:
                print(exc)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", other], capture_output=True, text=True, timeout=60
        )
        assert result.stdout.strip() == "database is locked"
        reader.close()
        assert await db.get(b"k") == b"v"
