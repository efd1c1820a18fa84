"""``sqlite:///relative/path`` and ``sqlite:////absolute/path`` — the embedded default.

Storage is one SQLite file in WAL mode (stdlib ``sqlite3``): a ``kv`` table
of ``BLOB`` keys, which SQLite orders bytewise as Shale needs, and a
``meta`` table holding the format version and the last commit version.

Reads run on the event loop's thread, straight from SQLite's page cache:
a point read costs a few microseconds, less than a thread hop would. Each
snapshot is a WAL read transaction; transactions that start at the same
version share one. Commits go through the in-process resolver and are
grouped: a writer thread applies each batch in one SQLite transaction and
one fsync while the next batch gathers.

Durability (the ``synchronous`` URL option):

- ``full`` (default): a commit returns after its fsync; it survives power
  loss.
- ``normal``: no fsync per commit (SQLite's WAL ``synchronous=NORMAL``);
  still crash-safe and atomic, and a process crash loses nothing, but the
  last commits before a power loss or OS crash may be lost.

One process holds a database at a time, enforced by ``flock`` on a
``-lock`` file beside it, which the kernel drops when the process dies, so
a crash never leaves a stale lock. To share a database, serve it with
``shale serve``.

SQLite keeps only the newest version of each key, so ``snapshot(version)``
can serve an older version only while another transaction still holds it
open (``capabilities.old_snapshots`` is false). Each version held open
costs a connection; at most ``max_readers`` (URL option, default
``MAX_READERS``) are open at once, and a snapshot at yet another version is
refused with ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from shale.engines.atomic import apply_atomic
from shale.engines.base import Capabilities, CommitRequest, CommitResult, Mutation, MutationType
from shale.engines.feedlog import FeedCapture
from shale.engines.local import BatchItem, GroupCommitter, Resolver, failed_in_engine, stamp_of
from shale.engines.options import window_option
from shale.errors import (
    DatabaseClosed,
    DatabaseLockedError,
    EngineError,
    FormatVersionError,
    ReadOnlyError,
    ReadVersionError,
    TransactionTooOld,
    Unavailable,
)

__all__ = ["FORMAT_VERSION", "MAX_READERS", "SQLiteEngine", "sqlite_path"]

FORMAT_VERSION = (1, 0)
"""(major, minor) of the on-disk layout. A newer major is refused; a newer
minor is opened read-only."""

_FORMAT = "{}.{}".format(*FORMAT_VERSION)
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
_IDLE_READERS = 8

MAX_READERS = 64
"""Read transactions (one connection and about two file descriptors each)
open at once by default: snapshots at that many distinct versions. The
``max_readers`` URL option changes it."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _error(path: str, exc: sqlite3.Error) -> EngineError:
    """The one place ``sqlite3`` errors become Shale errors."""
    return EngineError(f"sqlite error on {path}: {exc}")


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _error(path, exc) from exc


def sqlite_path(url: str) -> str:
    """The file path a ``sqlite://`` URL names.

    Three slashes make a path relative to the working directory, four an
    absolute one, as in SQLAlchemy.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise EngineError(
            f"malformed sqlite URL {url!r}: use sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = parts.path[1:]
    if not path or path.endswith("/"):
        raise EngineError(f"sqlite URL {url!r} names no file")
    return path


class _Reader:
    """A WAL read transaction, shared by every snapshot at its version.

    ``joined`` is when its newest snapshot joined: the sweep goes by it, not
    by when the read transaction began (see ``SQLiteEngine._sweep``).
    """

    __slots__ = ("conn", "joined", "refs", "version")

    def __init__(self, conn: sqlite3.Connection, version: int) -> None:
        self.conn = conn
        self.version = version
        self.refs = 0
        self.joined = time.monotonic()


class SQLiteSnapshot:
    """A read view of a ``SQLiteEngine`` at one version."""

    __slots__ = ("_engine", "_reader", "read_version")

    def __init__(self, engine: SQLiteEngine, reader: _Reader) -> None:
        self._engine = engine
        self._reader: _Reader | None = reader
        self.read_version = reader.version
        reader.refs += 1

    def _conn(self) -> sqlite3.Connection:
        reader = self._reader
        if reader is None or reader.refs <= 0:
            if self._engine.closed:
                raise DatabaseClosed(f"{self._engine.path} is closed; open it again to read")
            raise TransactionTooOld(
                f"snapshot at version {self.read_version} is no longer readable"
            )
        return reader.conn

    async def version(self) -> int:
        return self.read_version

    async def get(self, key: bytes) -> bytes | None:
        conn = self._conn()
        try:
            row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        except sqlite3.Error as exc:  # inline, not _mapped: this is the hottest path
            raise _error(self._engine.path, exc) from exc
        return None if row is None else row[0]

    async def get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool
    ) -> list[tuple[bytes, bytes]]:
        conn = self._conn()
        order = "DESC" if reverse else "ASC"
        sql = f"SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k {order} LIMIT ?"
        with _mapped(self._engine.path):
            return conn.execute(sql, (begin, end, limit or -1)).fetchall()

    def release(self) -> None:
        if self._reader is not None:
            self._engine.release(self._reader)
            self._reader = None


class _WriterThread:
    """One long-lived thread for batch writes: a queue and a loop callback
    cost a fraction of ``asyncio.to_thread``'s executor round trip."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stopped = False
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"shale-sqlite-writer:{path}", daemon=True
        )
        self._thread.start()

    async def run(self, fn: Callable[..., None], *args: Any) -> None:
        if self._stopped:  # a job queued behind the stop would wait forever
            raise DatabaseClosed(f"{self._path} is closed; write refused")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, loop, future = job
            try:
                fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, None)

    def stop(self) -> None:
        self._stopped = True
        self._jobs.put(None)
        self._thread.join()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class SQLiteEngine:
    """The embedded default engine. See the module docstring."""

    scheme: ClassVar[str] = "sqlite"
    capabilities = Capabilities(
        durable=True, persistent=True, multi_process=False, old_snapshots=False
    )

    def __init__(
        self, path: str, synchronous: str, window: float, max_readers: int, lock_fd: int
    ) -> None:
        self.path = path
        self.read_only = False
        self._synchronous = synchronous
        self._window = window
        self._max_readers = max_readers
        self._lock_fd = lock_fd
        self._closed = False
        self._writer = self._connect()
        self._writer.execute(f"PRAGMA synchronous={synchronous}")
        version = self._initialize()
        self._idle: list[sqlite3.Connection] = []
        self._readers: dict[int, _Reader] = {}
        self._committer = GroupCommitter(Resolver(window, version), self._apply, version)
        # Batches are written on a thread, so reads and the next batch go on
        # meanwhile. Without an fsync a write is shorter than the hop to the
        # thread, but writing on the loop stops it gathering the next batch:
        # through a server, 16 clients commit 1.8x faster this way, and one
        # client 5% slower.
        self._thread = _WriterThread(path)

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> SQLiteEngine:
        path = sqlite_path(url)
        mode = str(options.get("synchronous", "full")).lower()
        if mode not in _SYNCHRONOUS:
            raise EngineError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {mode!r}")
        window = window_option(options)
        max_readers = _max_readers_option(options)
        lock_fd = _lock(path)
        try:
            with _mapped(path):
                return cls(path, _SYNCHRONOUS[mode], window, max_readers, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def _initialize(self) -> int:
        """Create or check the schema; return the last commit version."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            if not meta:
                conn.execute(
                    "INSERT INTO meta VALUES ('format', ?), ('version', '0')",
                    (_FORMAT,),
                )
                meta = {"format": _FORMAT, "version": "0"}
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._check_format(meta.get("format", ""))
        return int(meta["version"])

    def _check_format(self, stored: str) -> None:
        try:
            major, minor = (int(part) for part in stored.split("."))
        except ValueError:
            raise FormatVersionError(f"{self.path}: unreadable format version {stored!r}") from None
        if major > FORMAT_VERSION[0]:
            raise FormatVersionError(
                f"{self.path} has format {stored}, newer than this Shale reads "
                f"({FORMAT_VERSION[0]}.x); upgrade shaledb"
            )
        if (major, minor) > FORMAT_VERSION:
            self.read_only = True

    async def snapshot(self, version: int | None = None) -> SQLiteSnapshot:
        if self._closed:
            raise DatabaseClosed(f"{self.path} is closed; open it again to read")
        now = time.monotonic()
        self._sweep(now)
        latest = self._committer.version
        wanted = latest if version is None else version
        reader = self._readers.get(wanted)
        if reader is None:
            if version is not None and version > latest:
                raise ReadVersionError(f"version {version} is in the future (latest: {latest})")
            if version is not None and version < latest:
                raise TransactionTooOld(
                    f"version {version} is not held open by any transaction; the sqlite "
                    f"engine can only serve the latest version ({latest}) or one in use"
                )
            reader = self._begin_reader()
        reader.joined = now
        snapshot = SQLiteSnapshot(self, reader)
        if version is not None and reader.version != version:
            snapshot.release()
            raise TransactionTooOld(f"version {version} was superseded while opening it")
        return snapshot

    def _begin_reader(self) -> _Reader:
        if len(self._readers) >= self._max_readers:
            # Each version held open costs a connection and its files:
            # unbounded, a few hundred slow transactions run the process out
            # of file descriptors. Joining a version already open is free.
            raise Unavailable(
                f"{len(self._readers)} snapshots at distinct versions are open on "
                f"{self.path} (max_readers={self._max_readers}); finish or close "
                "long-running transactions, or open the database with a higher max_readers"
            )
        conn = self._idle.pop() if self._idle else self._connect()
        with _mapped(self.path):
            conn.execute("BEGIN")
            (raw,) = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        reader = _Reader(conn, int(raw))
        existing = self._readers.get(reader.version)
        if existing is not None:
            self._end_reader(reader)
            return existing
        self._readers[reader.version] = reader
        return reader

    def release(self, reader: _Reader) -> None:
        reader.refs -= 1
        if reader.refs == 0 and self._readers.get(reader.version) is reader:
            del self._readers[reader.version]
            self._end_reader(reader)

    def _end_reader(self, reader: _Reader) -> None:
        with _mapped(self.path):
            reader.conn.execute("COMMIT")
        if len(self._idle) < _IDLE_READERS and not self._closed:
            self._idle.append(reader.conn)
        else:
            reader.conn.close()

    def _sweep(self, now: float) -> None:
        """End read transactions that no snapshot joined within the window,
        so a forgotten transaction cannot pin the WAL forever.

        Going by the newest joiner, not by when the read transaction began,
        keeps a transaction's age its own: a young transaction that joined
        an old shared reader is not cut off with it (the core checks each
        transaction's age exactly). The WAL stays bounded all the same, as
        snapshots join a reader only while its version is the latest (or
        by ``set_read_version`` to a version in use): once a commit moves
        on, nothing refreshes it and it ends one window later. Opening a
        fresh reader instead of joining an old one would also work, but
        costs a connection per window and two readers at one version.
        """
        horizon = now - self._window
        for reader in [r for r in self._readers.values() if r.joined < horizon]:
            del self._readers[reader.version]
            reader.refs = 0
            self._end_reader(reader)

    async def commit(self, request: CommitRequest) -> CommitResult:
        if self._closed:
            raise DatabaseClosed(f"{self.path} is closed; commit refused")
        if self.read_only:
            raise ReadOnlyError(f"{self.path} is open read-only (its format is newer)")
        return await self._committer.commit(request)

    async def _apply(self, version: int, batch: list[BatchItem]) -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        await self._thread.run(self._write_batch, version, batch, outcomes)
        return outcomes

    def _write_batch(
        self, version: int, batch: list[BatchItem], outcomes: list[Exception | None]
    ) -> None:
        conn = self._writer
        state = _Current(conn)
        with _mapped(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for order, item in enumerate(batch):
                    outcomes.append(self._write_one(conn, state, stamp_of(version, order), item))
                conn.execute("UPDATE meta SET value = ? WHERE name = 'version'", (str(version),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _write_one(
        self, conn: sqlite3.Connection, state: _Current, stamp: bytes, item: BatchItem
    ) -> Exception | None:
        """Write one transaction of a batch inside a savepoint, so that one
        failing half-way (a corrupt feed state, say) is undone alone: a
        commit reported failed is never applied, and its batch-mates are."""
        mutations, feeds = item
        conn.execute("SAVEPOINT tx")
        try:
            capture = FeedCapture(feeds, mutations, state) if feeds else None
            _write_mutations(conn, mutations)
            if capture is not None:
                _write_mutations(conn, capture.finish(state, stamp))
        except Exception as exc:
            conn.execute("ROLLBACK TO tx")
            conn.execute("RELEASE tx")
            return failed_in_engine(
                _error(self.path, exc) if isinstance(exc, sqlite3.Error) else exc
            )
        conn.execute("RELEASE tx")
        return None

    async def close(self) -> None:
        if self._closed:
            return
        # Closed first, so no snapshot opens while accepted commits drain;
        # the committer refuses new commits and lets queued ones finish.
        self._closed = True
        try:
            await self._committer.close()
        finally:
            for reader in list(self._readers.values()):
                reader.refs = 0
                reader.conn.close()
            self._readers.clear()
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._thread.stop()
            self._writer.close()
            os.close(self._lock_fd)


class _Current:
    """The state inside the writer's open transaction, for feed capture."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def get(self, key: bytes) -> bytes | None:
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        found: dict[bytes, bytes] = {}
        for i in range(0, len(keys), 500):  # below SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._conn.execute(f"SELECT k, v FROM kv WHERE k IN ({marks})", chunk))
        return [found.get(key) for key in keys]

    def scan(self, begin: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        sql = "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
        return self._conn.execute(sql, (begin, end, limit or -1)).fetchall()


def _write_mutations(conn: sqlite3.Connection, mutations: Sequence[Mutation]) -> None:
    """Apply one transaction's mutations in order; runs sets in bulk."""
    upsert = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
    pending: list[tuple[bytes, bytes]] = []
    for op, key, param in mutations:
        if op is MutationType.SET:
            pending.append((key, param))
            continue
        if pending:
            conn.executemany(upsert, pending)
            pending = []
        if op is MutationType.CLEAR:
            conn.execute("DELETE FROM kv WHERE k = ?", (key,))
        elif op is MutationType.CLEAR_RANGE:
            conn.execute("DELETE FROM kv WHERE k >= ? AND k < ?", (key, param))
        else:
            row = conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
            value = apply_atomic(op, None if row is None else row[0], param)
            if value is None:
                conn.execute("DELETE FROM kv WHERE k = ?", (key,))
            else:
                conn.execute(upsert, (key, value))
    if pending:
        conn.executemany(upsert, pending)


def _max_readers_option(options: Mapping[str, object]) -> int:
    """The ``max_readers`` option, checked as ``window_option`` checks its own.

    A float or a bool is refused rather than truncated: ``2.5`` readers is a
    mistake to report, not a value to guess at.
    """
    raw = options.get("max_readers", MAX_READERS)
    value = 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        with contextlib.suppress(ValueError):
            value = int(raw)
    if value < 1:
        raise EngineError(f"max_readers must be a positive integer, not {raw!r}")
    return value


def _lock(path: str) -> int:
    """Take the one-process lock of the database at ``path``; return its fd."""
    lock_path = path + "-lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise EngineError(f"cannot open the database at {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DatabaseLockedError(
            f"{path} is open in another process (pid {holder}); one process holds a "
            "sqlite database at a time — to share it, run `shale serve` and connect "
            "with shale://host:port"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
