"""``sqlite:///relative/path`` and ``sqlite:////absolute/path`` — the embedded default.

Storage is one SQLite file in WAL mode (stdlib ``sqlite3``): a ``kv`` table
of ``BLOB`` keys, which SQLite orders bytewise as Shale needs, and a
``meta`` table holding the format version, the last commit version and the
path SQLite opens the file by (see ``_Stored.name``).

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

One process holds a database at a time, enforced by ``flock`` on the
database file itself, so every name of the file (a symlink, a hard link, a
relative path) contends for the one lock; the kernel drops it when the
process dies, so a crash never leaves a stale lock. To share a database,
serve it with ``shale serve``.

A file that does not exist or is empty becomes a Shale database. Any other
file must already be one: another program's SQLite database, or a file
that is not SQLite at all, is refused with ``ForeignDatabaseError`` and
left byte for byte as it was.

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
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from shale.engines.atomic import apply_atomic
from shale.engines.base import Capabilities, CommitRequest, CommitResult, Mutation, MutationType
from shale.engines.feedlog import FeedCapture
from shale.engines.local import BatchItem, GroupCommitter, Resolver, failed_in_engine, stamp_of
from shale.engines.options import window_option
from shale.errors import (
    DatabaseClosed,
    DatabaseLockedError,
    EngineError,
    ForeignDatabaseError,
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

_SQLITE_MAGIC = b"SQLite format 3\x00"

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
    options: ClassVar[frozenset[str]] = frozenset({"synchronous", "max_readers"})
    capabilities = Capabilities(
        durable=True, persistent=True, multi_process=False, old_snapshots=False
    )

    def __init__(
        self,
        path: str,
        file: str,
        lock: _FileLock,
        settings: _Settings,
        stored: _Stored,
        read_only: bool,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self._file = file
        self._lock = lock
        self._window = settings.window
        self._max_readers = settings.max_readers
        self._closed = False
        record = None if read_only or stored.name == file else file
        self._writer, version = _open_writer(
            path, file, settings.synchronous, fresh=stored.format is None, record=record
        )
        self._idle: list[sqlite3.Connection] = []
        self._readers: dict[int, _Reader] = {}
        self._committer = GroupCommitter(Resolver(settings.window, version), self._apply, version)
        # Batches are written on a thread, so reads and the next batch go on
        # meanwhile. Without an fsync a write is shorter than the hop to the
        # thread, but writing on the loop stops it gathering the next batch:
        # through a server, 16 clients commit 1.8x faster this way, and one
        # client 5% slower.
        self._thread = _WriterThread(path)

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> SQLiteEngine:
        path = sqlite_path(url)
        settings = _Settings.parse(options)
        lock = _FileLock(path)
        lock.acquire()
        try:
            with _mapped(path):
                # Checked under the lock, so no other Shale is creating the
                # file meanwhile, and before the pid file, so a refused
                # foreign file gets nothing written beside it either.
                stored = _inspect(path, lock.real)
                read_only = stored.format is not None and _format_is_read_only(path, stored.format)
                file = lock.real
                if stored.name is not None and lock.is_this_file(stored.name):
                    file = stored.name
                lock.claim_pid_file(file)
                return cls(path, file, lock, settings, stored, read_only)
        except BaseException:
            lock.release()
            raise

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._file, isolation_level=None, check_same_thread=False)

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
            self._lock.release()


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


@dataclass(frozen=True, slots=True)
class _Settings:
    """The engine's options, validated before anything is opened."""

    synchronous: str
    window: float
    max_readers: int

    @classmethod
    def parse(cls, options: Mapping[str, object]) -> _Settings:
        mode = str(options.get("synchronous", "full")).lower()
        if mode not in _SYNCHRONOUS:
            raise EngineError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {mode!r}")
        return cls(_SYNCHRONOUS[mode], window_option(options), _max_readers_option(options))


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


def _open_writer(
    path: str, file: str, synchronous: str, *, fresh: bool, record: str | None
) -> tuple[sqlite3.Connection, int]:
    """The writer's connection and the last commit version. A ``fresh``
    file gets the schema; ``record`` is a new name to keep in ``meta``."""
    conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
    try:
        if fresh:
            # Before WAL is on, so that the schema and the format row land in
            # one rolled-back-journal transaction on the empty file: a crash
            # leaves it empty (a new database next time), never a SQLite file
            # without Shale's tables, which the next open would refuse.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta VALUES ('format', ?), ('version', '0'), ('path', ?)",
                (_FORMAT, file),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if record is not None and not fresh:
            # Checkpointed at once, so the name is in the main file, where
            # an open under any other name reads it (see ``_Stored.name``).
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('path', ?)", (record,))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        row = conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        if row is None:
            raise EngineError(f"{path} has no version in its meta table; the file is damaged")
        return conn, int(row[0])
    except BaseException:
        conn.close()
        raise


def _format_is_read_only(path: str, stored: str) -> bool:
    """Whether a database of format ``stored`` opens read-only; raise if it
    cannot be opened at all."""
    try:
        major, minor = (int(part) for part in stored.split("."))
    except ValueError:
        raise FormatVersionError(f"{path}: unreadable format version {stored!r}") from None
    if major > FORMAT_VERSION[0]:
        raise FormatVersionError(
            f"{path} has format {stored}, newer than this Shale reads "
            f"({FORMAT_VERSION[0]}.x); upgrade shaledb"
        )
    return (major, minor) > FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class _Stored:
    """What a file says about itself, read before anything is written."""

    format: str | None
    """The format row; ``None`` for an empty file, which becomes a database."""
    name: str | None
    """The path SQLite last opened the file by. SQLite names its WAL after
    that path, so after a crash the committed tail of the database is in a
    ``-wal`` beside that name only: opened under another name (a hard link)
    SQLite would not see it, and would lose those commits. While this name
    still is the same file, every open goes through it."""


def _inspect(path: str, file: str) -> _Stored:
    """What ``file`` holds; ``ForeignDatabaseError`` if it is neither empty
    nor a Shale database.

    Writes nothing: the check reads through a read-only connection, before
    WAL is switched on. The one write it may cause is SQLite's recovery of
    a hot journal left by a crash, which a read-only connection cannot do
    and every reader of the file would do first.
    """
    for _ in range(2):
        header = _header(path, file)
        if not header:
            return _Stored(None, None)
        # A crash in the first transaction can leave page 1 unwritten: with
        # a journal beside the file, only SQLite can tell what it is.
        journal = os.path.exists(file + "-journal")
        if not header.startswith(_SQLITE_MAGIC) and not journal:
            raise _foreign(path, "it is not a SQLite file")
        try:
            return _read_meta(path, file, header)
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB:
                raise _foreign(path, "it is not a SQLite file") from exc
            if exc.sqlite_errorcode != sqlite3.SQLITE_READONLY_ROLLBACK:
                raise
        conn = sqlite3.connect(file)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    raise EngineError(f"{path}: SQLite could not recover the journal a crash left beside it")


def _header(path: str, file: str) -> bytes:
    try:
        with open(file, "rb") as f:
            return f.read(100)
    except OSError as exc:
        raise EngineError(f"cannot read the database at {path}: {exc.strerror}") from exc


def _read_meta(path: str, file: str, header: bytes) -> _Stored:
    # Bytes 18 and 19 of the header are 2 in WAL mode. A WAL file with no
    # -wal beside it is whole in the main file, and even a read-only
    # connection would create -wal and -shm files: read it as immutable.
    whole = header[18:19] == b"\x02" and not os.path.exists(file + "-wal")
    mode = "immutable=1" if whole else "mode=ro"
    conn = sqlite3.connect(f"file:{quote(file)}?{mode}", uri=True)
    try:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        if ("meta",) not in tables:
            raise _foreign(path, "it has no Shale meta table")
        try:
            sql = "SELECT name, value FROM meta WHERE name IN ('format', 'path')"
            meta = {str(name): str(value) for name, value in conn.execute(sql)}
        except sqlite3.OperationalError:  # a meta table of another shape
            meta = {}
    finally:
        conn.close()
    if "format" not in meta:
        raise _foreign(path, "its meta table has no Shale format row")
    return _Stored(meta["format"], meta.get("path"))


def _foreign(path: str, why: str) -> ForeignDatabaseError:
    return ForeignDatabaseError(
        f"{path} is not a Shale database ({why}); Shale refuses it and leaves it "
        "untouched. Give the path of a new or empty file, or of a Shale database"
    )


class _FileLock:
    """The one-process lock of a database file, held under every name of it.

    It is an ``flock`` on the database file itself: a lock file named after
    the path would give a symlink or a hard link a lock of its own, and two
    processes would each run a resolver on one file, losing commits. SQLite
    locks the file with POSIX ``fcntl`` locks, which on Linux are
    independent of ``flock`` (a test holds one while SQLite works). On NFS,
    Linux emulates ``flock`` with ``fcntl`` locks; SQLite's WAL needs a
    local file system anyway.

    The ``-lock`` file beside the name SQLite opens the file by holds the
    pid for messages, and is locked too, keeping out older Shales that lock
    only that.
    """

    _held: ClassVar[set[tuple[int, int]]] = set()
    """(st_dev, st_ino) of the files this process holds, so that a second
    open here is told so instead of blaming another process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.real = os.path.realpath(path)
        self._fds: list[int] = []
        self._identity: tuple[int, int] | None = None

    def acquire(self) -> None:
        """Lock the database file, creating it empty if it does not exist."""
        try:
            status = os.stat(self.real)
        except OSError:
            pass
        else:
            if (status.st_dev, status.st_ino) in self._held:
                # Refused before a descriptor of the file is opened: closing
                # one would drop every POSIX lock this process holds on it,
                # SQLite's own included (fcntl locks belong to the process).
                raise self._refusal((status.st_dev, status.st_ino))
        fd = self._open(self.real, os.O_RDONLY | os.O_CREAT)
        status = os.fstat(fd)
        identity = (status.st_dev, status.st_ino)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal(identity) from None
        self._fds.append(fd)
        self._identity = identity
        self._held.add(identity)

    def is_this_file(self, name: str) -> bool:
        """Whether ``name`` is a name of the locked file."""
        try:
            status = os.stat(name)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) == self._identity

    def claim_pid_file(self, file: str) -> None:
        """Lock ``file``'s ``-lock`` and write this process's pid in it."""
        fd = self._open(file + "-lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refusal(None) from None
        self._fds.append(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Drop the locks; idempotent."""
        if self._identity is not None:
            self._held.discard(self._identity)
            self._identity = None
        while self._fds:
            os.close(self._fds.pop())

    def _open(self, file: str, flags: int) -> int:
        try:
            return os.open(file, flags, 0o644)
        except OSError as exc:
            raise EngineError(f"cannot open the database at {self.path}: {exc.strerror}") from exc

    def _refusal(self, identity: tuple[int, int] | None) -> DatabaseLockedError:
        if identity in self._held:
            return DatabaseLockedError(
                f"{self.path} is already open in this process (perhaps under another "
                "name); use that Database, or close it before opening again"
            )
        return DatabaseLockedError(
            f"{self.path} is open in another process (pid {_holder_pid(self.real)}); one "
            "process holds a sqlite database at a time — to share it, run `shale serve` "
            "and connect with shale://host:port"
        )


def _holder_pid(file: str) -> str:
    """The pid in ``file``'s pid file if its writer still holds it: a stale
    pid, left by a process that used another name, would mislead."""
    try:
        fd = os.open(file + "-lock", os.O_RDONLY)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)
    return "unknown"
