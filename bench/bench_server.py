"""The Shale server against Redis WATCH/MULTI/EXEC and PostgreSQL SERIALIZABLE: same work, same run.

    python -m bench.bench_server [--seconds 3] [--clients 1,16,64] [--reads 2000]
                                 [--system NAME ...] [--in-process]

Every system does the same read-modify-write transactions, driven from this
process by one asyncio task per client, each client with its own connection:

* **Shale**: ``python -m shale serve`` as a subprocess on a free loopback
  port, on ``sqlite://`` (the default engine, fsync per commit), on
  ``sqlite://...?synchronous=normal`` (no fsync: atomic and safe from a
  process crash, not from power loss) and on ``memory://``. Each client is
  its own ``shale.open("shale://...")``. The transaction body is
  ``v = await tr.get(key); tr.set(key, v + 1)``, run by ``db.run``
  (``db.transact`` with the bound on retries raised, below).
* **Redis**: ``WATCH key; GET key; MULTI; SET key; EXEC``, retried on
  ``WatchError`` (redis-py's ``pipeline(transaction=True)``), one
  ``redis.asyncio`` client per task. Database number ``REDIS_DB`` whatever
  the URL says, because every run starts with ``FLUSHDB``.
* **PostgreSQL**: ``BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT v; UPDATE;
  COMMIT`` on a table ``shale_bench_kv(k bytea primary key, v bigint)``, one
  row per key, retried on SQLSTATE 40001 and 40P01, one psycopg
  ``AsyncConnection`` per task with ``enable_seqscan = off`` (see
  ``PostgresSystem._connect``). The table is dropped and created before
  every run.

The retry policy is the same for all: at most ``MAX_RETRIES`` retries with
the full-jitter backoff ``db.transact`` uses (10 ms doubling to 1 s). The
bound is raised from ``transact``'s 10 because 64 clients on one key can
lose 10 races in a row; a transaction that runs out fails the benchmark.

Workloads, each for ``--seconds`` per client count:

* **rmw-distinct**: each client increments a counter of its own.
* **rmw-hot**: every client increments one shared counter.
* **point reads**: one client, ``--reads`` sequential reads of keys picked at
  random among ``LOADED`` existing ones; p50 and p99 latency.

Throughput is committed transactions over the time from the start to the
last client's last commit (each client finishes the transaction it started
before the deadline). Retries are the attempts that did not commit.

Every run checks itself: each distinct counter must equal its client's
commits, the hot counter the sum of all commits, every read the value
loaded. Redis and PostgreSQL come from ``SHALE_TEST_REDIS_URL`` and
``SHALE_TEST_POSTGRES_URL`` (defaults below); one that is not reachable is
skipped with the reason printed, Shale never is. ``--in-process`` adds, for
debugging, Shale without the server: one ``Database`` shared by all clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import shale

__all__ = ["TITLE", "describe", "markdown", "run"]

TITLE = "Server: transactions/s through Shale's server vs Redis WATCH and PostgreSQL SERIALIZABLE"

DEFAULT_SECONDS = 3.0
DEFAULT_CLIENTS = (1, 16, 64)
DEFAULT_READS = 2_000
LOADED = 1_000
"""Keys loaded before the point reads."""
READ_WARM_UP = 50
"""Untimed reads before the timed ones; the first opens the server's reader."""
SEED_BATCH = 1_000
MAX_RETRIES = 100
SEED = 20_240_601
PREFIX = b"shale-bench/"
HOT_KEY = PREFIX + b"hot"

REDIS_DB = 15
"""The Redis database flushed before every run: never 0, which holds someone's data."""
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_TABLE = "shale_bench_kv"

SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0

DISTINCT = "rmw-distinct"
HOT = "rmw-hot"
WORKLOADS = (DISTINCT, HOT)

SYSTEMS = {
    "shale-sqlite": "shale sqlite",
    "shale-sqlite-normal": "shale sqlite normal",
    "shale-memory": "shale memory",
    "redis": "redis WATCH",
    "postgresql": "postgresql SERIALIZABLE",
}
"""Name on the command line: label in the tables. Run by default."""
IN_PROCESS = {
    "shale-sqlite-in-process": "shale sqlite, in-process",
    "shale-memory-in-process": "shale memory, in-process",
}
"""For debugging: the same engines without the server."""
REFERENCE = "redis"


def _check(what: str, got: object, expected: object) -> None:
    """A benchmark that silently lost increments would report a great number."""
    if got != expected:
        raise RuntimeError(f"{what}: got {got!r}, expected {expected!r}; the benchmark is broken")


def _distinct_key(client: int) -> bytes:
    return PREFIX + b"c/%04d" % client


def _read_key(i: int) -> bytes:
    return PREFIX + b"r/%06d" % i


async def _retrying(
    attempt: Callable[[], Awaitable[None]], retryable: tuple[type[Exception], ...]
) -> int:
    """Run ``attempt`` until it commits, as ``db.transact`` would; returns the retries."""
    backoff = shale.FullJitterBackoff()
    for retries in range(MAX_RETRIES + 1):
        try:
            await attempt()
        except retryable as exc:
            if retries == MAX_RETRIES:
                exc.add_note(f"gave up after {retries + 1} attempts")
                raise
            await asyncio.sleep(backoff.delay(retries + 1))
        else:
            return retries
    raise AssertionError("unreachable: the last attempt returns or raises")


# -- the systems ---------------------------------------------------------------


class Client(Protocol):
    """One connection, used by one task at a time."""

    async def increment(self, key: bytes) -> int:
        """Read ``key``'s counter and write it plus one, in one transaction
        committed before returning; returns how many attempts were retried."""
        ...

    async def read(self, key: bytes) -> int | None:
        """The counter at ``key``, or None if there is none."""
        ...

    async def close(self) -> None: ...


class System(Protocol):
    """A store under test. ``start`` raises ``Unreachable`` for a peer that is not there."""

    label: str
    durability: str
    """What a commit survives, as the system itself reports it."""

    async def start(self) -> None: ...

    async def reset(self, counters: Sequence[tuple[bytes, int]]) -> None:
        """Remove every key a previous run left, then set ``counters``."""
        ...

    async def client(self) -> Client: ...

    async def value(self, key: bytes) -> int | None: ...

    async def stop(self) -> None: ...


class Unreachable(Exception):
    """A peer is not installed or not answering; it is skipped, with this as the reason."""


# Shale


async def _inc(tr: shale.Transaction, key: bytes, attempts: list[int]) -> None:
    attempts[0] += 1
    v = await tr.get(key)
    tr.set(key, str(int(v or b"0") + 1).encode())


class _ShaleClient:
    def __init__(self, db: shale.Database, owned: bool) -> None:
        self.db = db
        self.owned = owned

    async def increment(self, key: bytes) -> int:
        attempts = [0]
        await self.db.run(_inc, key, attempts, retries=MAX_RETRIES)
        return attempts[0] - 1

    async def read(self, key: bytes) -> int | None:
        value = await self.db.get(key)
        return None if value is None else int(value)

    async def close(self) -> None:
        if self.owned:
            await self.db.close()


def _free_port() -> int:
    """A port nothing listens on now; the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    """``python -m shale serve URL`` as a subprocess on a free loopback port."""

    def __init__(self, engine_url: str, workdir: str) -> None:
        self.engine_url = engine_url
        self.workdir = workdir
        self.token = secrets.token_urlsafe(32)
        self.token_file = os.path.join(workdir, "token")
        self.stderr_path = os.path.join(workdir, "server.stderr")
        self.port = _free_port()
        self.url = f"shale://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def _stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as err:
            return err.read()

    async def start(self) -> None:
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.token + "\n")
        command = [sys.executable, "-m", "shale", "serve", self.engine_url]
        command += ["--token-file", self.token_file, "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        # A file, not a pipe: nobody reads the pipe while the bench runs, and
        # a full one would stall the server.
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"`{' '.join(command)}` exited with {self.process.returncode} before "
                    f"accepting connections; its stderr:\n{self._stderr()}"
                )
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline:
                    await self.stop()
                    raise RuntimeError(
                        f"the server did not accept connections within "
                        f"{SERVER_START_TIMEOUT:g} s; its stderr:\n{self._stderr()}"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise RuntimeError(
                f"the server did not exit within {SERVER_STOP_TIMEOUT:g} s of SIGTERM; "
                f"its stderr:\n{self._stderr()}"
            ) from None


_DURABILITY = {
    "sqlite": "fsync per commit",
    "sqlite-normal": "synchronous=normal: atomic, survives a process crash, not power loss",
    "memory": "none (memory)",
}


class ShaleSystem:
    """Shale on ``engine`` through the server, or in-process with one shared ``Database``."""

    def __init__(self, label: str, engine: str, in_process: bool) -> None:
        self.label = label
        self.engine = engine
        self.in_process = in_process
        self.durability = _DURABILITY[engine]
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: _Server | None = None
        self._admin: shale.Database | None = None

    async def start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="shale-bench-server-")
        engine_url = (
            "memory://"
            if self.engine == "memory"
            else f"sqlite:///{os.path.join(self._tmp.name, 'bench.db')}"
        )
        if self.engine == "sqlite-normal":
            engine_url += "?synchronous=normal"
        if self.in_process:
            self._admin = await shale.open(engine_url)
            return
        self._server = _Server(engine_url, self._tmp.name)
        await self._server.start()
        self._admin = await self._open()

    async def _open(self) -> shale.Database:
        assert self._server is not None
        return await shale.open(self._server.url, token=self._server.token)

    @property
    def admin(self) -> shale.Database:
        if self._admin is None:
            raise RuntimeError(f"{self.label} is not started")
        return self._admin

    async def reset(self, counters: Sequence[tuple[bytes, int]]) -> None:
        async with self.admin.transaction() as tr:
            tr.clear_range_startswith(PREFIX)
        for start in range(0, len(counters), SEED_BATCH):
            async with self.admin.transaction() as tr:
                for key, value in counters[start : start + SEED_BATCH]:
                    tr.set(key, str(value).encode())

    async def client(self) -> Client:
        if self.in_process:
            return _ShaleClient(self.admin, owned=False)
        return _ShaleClient(await self._open(), owned=True)

    async def value(self, key: bytes) -> int | None:
        value = await self.admin.get(key)
        return None if value is None else int(value)

    async def stop(self) -> None:
        try:
            if self._admin is not None:
                await self._admin.close()
            if self._server is not None:
                await self._server.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
            self._admin = self._server = self._tmp = None


# Redis


def _redacted(url: str) -> str:
    """``url`` without its password, to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _redis_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{REDIS_DB}"))


class _RedisClient:
    def __init__(self, client: Any) -> None:
        self.client = client

    async def increment(self, key: bytes) -> int:
        from redis.exceptions import WatchError

        async def attempt() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                value = int(await pipe.get(key) or b"0")
                pipe.multi()
                pipe.set(key, value + 1)
                await pipe.execute()

        return await _retrying(attempt, (WatchError,))

    async def read(self, key: bytes) -> int | None:
        value = await self.client.get(key)
        return None if value is None else int(value)

    async def close(self) -> None:
        await self.client.aclose()


class RedisSystem:
    label = SYSTEMS["redis"]

    def __init__(self, url: str) -> None:
        self.url = _redis_url(url)
        self.durability = "unknown"
        self._admin: Any = None

    async def _connect(self) -> Any:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url)
        await client.ping()
        return client

    async def start(self) -> None:
        try:
            import redis.exceptions
        except ImportError as exc:
            raise Unreachable(f"{exc}; install the bench extra: pip install -e '.[bench]'") from exc
        try:
            self._admin = await self._connect()
        except (OSError, redis.exceptions.ConnectionError) as exc:
            raise Unreachable(f"{_redacted(self.url)}: {exc}") from exc
        config = await self._admin.config_get("appendonly")
        config.update(await self._admin.config_get("save"))
        self.durability = ", ".join(f"{k}={v or '(none)'}" for k, v in config.items())

    async def reset(self, counters: Sequence[tuple[bytes, int]]) -> None:
        await self._admin.flushdb()
        for start in range(0, len(counters), SEED_BATCH):
            await self._admin.mset(dict(counters[start : start + SEED_BATCH]))

    async def client(self) -> Client:
        return _RedisClient(await self._connect())

    async def value(self, key: bytes) -> int | None:
        value = await self._admin.get(key)
        return None if value is None else int(value)

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.flushdb()
            await self._admin.aclose()
            self._admin = None


# PostgreSQL

_PG_SELECT = f"SELECT v FROM {PG_TABLE} WHERE k = %s"
_PG_UPDATE = f"UPDATE {PG_TABLE} SET v = %s WHERE k = %s"


class _PostgresClient:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def increment(self, key: bytes) -> int:
        import psycopg.errors

        async def attempt() -> None:
            try:
                await self.conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                cursor = await self.conn.execute(_PG_SELECT, (key,))
                (value,) = await cursor.fetchone()
                await self.conn.execute(_PG_UPDATE, (value + 1, key))
                await self.conn.execute("COMMIT")
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise

        failures = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        return await _retrying(attempt, failures)

    async def read(self, key: bytes) -> int | None:
        cursor = await self.conn.execute(_PG_SELECT, (key,))
        row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def close(self) -> None:
        await self.conn.close()


class PostgresSystem:
    label = SYSTEMS["postgresql"]

    def __init__(self, url: str) -> None:
        self.url = url
        self.durability = "unknown"
        self._admin: Any = None

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        # On a table this small, once autovacuum has analyzed it, the planner
        # prefers a sequential scan, which takes a predicate lock on the whole
        # relation and turns every pair of SERIALIZABLE increments into a
        # conflict. An application's real, larger table gets index scans; the
        # PostgreSQL manual ("Serializable Isolation Level") advises the same.
        await conn.execute("SET enable_seqscan = off")
        return conn

    async def start(self) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise Unreachable(f"{exc}; install the bench extra: pip install -e '.[bench]'") from exc
        try:
            self._admin = await self._connect()
        except psycopg.OperationalError as exc:
            raise Unreachable(f"{_redacted(self.url)}: {exc}") from exc
        settings = []
        for name in ("fsync", "synchronous_commit"):
            cursor = await self._admin.execute(f"SHOW {name}")
            (value,) = await cursor.fetchone()
            settings.append(f"{name}={value}")
        self.durability = ", ".join(settings)

    async def reset(self, counters: Sequence[tuple[bytes, int]]) -> None:
        await self._admin.execute(f"DROP TABLE IF EXISTS {PG_TABLE}")
        await self._admin.execute(
            f"CREATE TABLE {PG_TABLE} (k bytea PRIMARY KEY, v bigint NOT NULL)"
        )
        async with self._admin.cursor() as cursor:
            await cursor.executemany(f"INSERT INTO {PG_TABLE} (k, v) VALUES (%s, %s)", counters)

    async def client(self) -> Client:
        return _PostgresClient(await self._connect())

    async def value(self, key: bytes) -> int | None:
        cursor = await self._admin.execute(_PG_SELECT, (key,))
        row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.execute(f"DROP TABLE IF EXISTS {PG_TABLE}")
            await self._admin.close()
            self._admin = None


def _system(name: str, redis_url: str, postgres_url: str) -> System:
    if name == "redis":
        return RedisSystem(redis_url)
    if name == "postgresql":
        return PostgresSystem(postgres_url)
    in_process = name in IN_PROCESS
    label = IN_PROCESS[name] if in_process else SYSTEMS[name]
    engine = name.removeprefix("shale-").removesuffix("-in-process")
    return ShaleSystem(label, engine, in_process)


# -- the workloads -------------------------------------------------------------


@dataclass
class _Tally:
    commits: int = 0
    retries: int = 0


async def _drive(client: Client, key: bytes, deadline: float) -> _Tally:
    tally = _Tally()
    while time.perf_counter() < deadline:
        tally.retries += await client.increment(key)
        tally.commits += 1
    return tally


async def _clients(system: System, count: int) -> list[Client]:
    clients: list[Client] = []
    try:
        for _ in range(count):
            clients.append(await system.client())
    except BaseException:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        raise
    return clients


async def _throughput(
    system: System, workload: str, count: int, seconds: float
) -> dict[str, object]:
    """One timed run: ``count`` clients incrementing until ``seconds`` have passed."""
    keys = [HOT_KEY] * count if workload == HOT else [_distinct_key(i) for i in range(count)]
    await system.reset([(key, 0) for key in dict.fromkeys(keys)])
    clients = await _clients(system, count)
    try:
        started = time.perf_counter()
        deadline = started + seconds
        tallies = await asyncio.gather(
            *(_drive(c, k, deadline) for c, k in zip(clients, keys, strict=True))
        )
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    commits = sum(t.commits for t in tallies)
    what = f"{system.label}, {workload}, {count} clients"
    if workload == HOT:
        _check(f"{what}: the shared counter", await system.value(HOT_KEY), commits)
    else:
        for i, tally in enumerate(tallies):
            _check(f"{what}: client {i}'s counter", await system.value(keys[i]), tally.commits)
    _check(f"{what}: every client committed", min(t.commits for t in tallies) > 0, True)
    return {
        "table": "throughput",
        "system": system.label,
        "workload": workload,
        "clients": count,
        "commits": commits,
        "retries": sum(t.retries for t in tallies),
        "seconds": elapsed,
        "commits_per_s": commits / elapsed,
    }


async def _latency(system: System, reads: int) -> dict[str, object]:
    """``reads`` sequential point reads of loaded keys by one client."""
    await system.reset([(_read_key(i), i) for i in range(LOADED)])
    order = random.Random(SEED)
    picks = [order.randrange(LOADED) for _ in range(READ_WARM_UP + reads)]
    (client,) = await _clients(system, 1)
    times: list[float] = []
    try:
        for n, i in enumerate(picks):
            started = time.perf_counter()
            got = await client.read(_read_key(i))
            took = time.perf_counter() - started
            _check(f"{system.label}: read {_read_key(i)!r}", got, i)
            if n >= READ_WARM_UP:
                times.append(took * 1e6)
    finally:
        await client.close()
    return {
        "table": "latency",
        "system": system.label,
        "reads": reads,
        "p50_us": statistics.median(times),
        "p99_us": statistics.quantiles(times, n=100, method="inclusive")[98],
    }


async def _measure_system(
    system: System, seconds: float, clients: Sequence[int], reads: int
) -> list[dict[str, object]]:
    try:
        await system.start()
    except Unreachable as exc:
        reason = " ".join(str(exc).split())  # one line, to fit in a table cell
        print(f"bench_server: skipped {system.label}: {reason}", file=sys.stderr)
        return [{"table": "skipped", "system": system.label, "reason": reason}]
    rows: list[dict[str, object]] = [
        {"table": "system", "system": system.label, "durability": system.durability}
    ]
    try:
        for workload in WORKLOADS:
            for count in clients:
                rows.append(await _throughput(system, workload, count, seconds))
        rows.append(await _latency(system, reads))
    finally:
        await system.stop()
    return rows


def run(
    seconds: float = DEFAULT_SECONDS,
    clients: Sequence[int] = DEFAULT_CLIENTS,
    reads: int = DEFAULT_READS,
    systems: Sequence[str] = tuple(SYSTEMS),
    redis_url: str | None = None,
    postgres_url: str | None = None,
) -> list[dict[str, object]]:
    """Rows for each system in turn: its durability, its throughput runs, its
    latency run; or one ``skipped`` row for a peer that is not reachable.

    The URLs default to ``SHALE_TEST_REDIS_URL`` and ``SHALE_TEST_POSTGRES_URL``,
    then to ``DEFAULT_REDIS_URL`` and ``DEFAULT_POSTGRES_URL``.
    """
    if seconds <= 0 or not clients or min(clients) < 1 or reads < 2:
        raise ValueError("seconds must be positive, clients at least 1 each, reads at least 2")
    unknown = set(systems) - set(SYSTEMS) - set(IN_PROCESS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; have {[*SYSTEMS, *IN_PROCESS]}")
    redis_url = redis_url or os.environ.get("SHALE_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    postgres_url = postgres_url or os.environ.get("SHALE_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL

    async def measure() -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for name in systems:
            system = _system(name, redis_url, postgres_url)
            rows += await _measure_system(system, seconds, clients, reads)
        return rows

    return asyncio.run(measure())


# -- the tables ----------------------------------------------------------------


def _rate(row: dict[str, object]) -> str:
    rate = f"{row['commits_per_s']:,.0f}"
    retries = row["retries"]
    return f"{rate} ({retries:,} retries)" if retries else rate


def _ratio(shale_value: object, reference: object) -> str:
    if not isinstance(shale_value, float) or not isinstance(reference, float) or not reference:
        return "—"
    return f"{shale_value / reference:.2f}x"


def _throughput_table(rows: list[dict[str, object]], workload: str) -> list[str]:
    cells = {
        (r["system"], r["clients"]): r
        for r in rows
        if r["table"] == "throughput" and r["workload"] == workload
    }
    counts = sorted({int(str(c)) for _, c in cells})
    labels = list(dict.fromkeys(str(s) for s, _ in cells))
    header = " | ".join(f"{c} client{'s' if c > 1 else ''}" for c in counts)
    lines = [f"| system | {header} |", "|---|" + "--:|" * len(counts)]
    for label in labels:
        row = " | ".join(_rate(cells[label, c]) if (label, c) in cells else "—" for c in counts)
        lines.append(f"| {label} | {row} |")
    reference = SYSTEMS[REFERENCE]
    for label in labels:
        if not label.startswith("shale") or reference not in labels:
            continue
        ratios = " | ".join(
            _ratio(
                cells.get((label, c), {}).get("commits_per_s"),
                cells.get((reference, c), {}).get("commits_per_s"),
            )
            for c in counts
        )
        lines.append(f"| *{label} / {reference}* | {ratios} |")
    return lines


def _latency_table(rows: list[dict[str, object]]) -> list[str]:
    latency = [r for r in rows if r["table"] == "latency"]
    by_label = {r["system"]: r for r in latency}
    reference = by_label.get(SYSTEMS[REFERENCE], {})
    lines = [
        f"| system | reads | p50 µs | p99 µs | p50 / {SYSTEMS[REFERENCE]} |",
        "|---|--:|--:|--:|--:|",
    ]
    for row in latency:
        ratio = _ratio(row["p50_us"], reference.get("p50_us"))
        lines.append(
            f"| {row['system']} | {row['reads']:,} | {row['p50_us']:,.0f} "
            f"| {row['p99_us']:,.0f} | {ratio} |"
        )
    return lines


def markdown(rows: list[dict[str, object]]) -> str:
    """The systems and their durability, a table per workload, then read latency."""
    lines = ["| system | durability |", "|---|---|"]
    lines += [f"| {r['system']} | {r['durability']} |" for r in rows if r["table"] == "system"]
    lines += [
        f"| {r['system']} | **skipped**: {r['reason']} |" for r in rows if r["table"] == "skipped"
    ]
    for workload in WORKLOADS:
        what = "a counter per client" if workload == DISTINCT else "one shared counter"
        lines += ["", f"**{workload}** ({what}): commits/s, and retried attempts if any", ""]
        lines += _throughput_table(rows, workload)
    lines += ["", "**point reads**, one client, sequential; latency in µs", ""]
    lines += _latency_table(rows)
    return "\n".join(lines)


def describe(
    seconds: float = DEFAULT_SECONDS,
    clients: Sequence[int] = DEFAULT_CLIENTS,
    reads: int = DEFAULT_READS,
    systems: Sequence[str] = tuple(SYSTEMS),
) -> str:
    """One line naming the parameters, to print above the tables."""
    counts = ",".join(str(c) for c in clients)
    if list(systems) == list(SYSTEMS):
        which = ""
    elif list(systems) == [*SYSTEMS, *IN_PROCESS]:
        which = " --in-process"
    else:
        which = "".join(f" --system {name}" for name in systems)
    return (
        f"read-modify-write transactions for {seconds:g} s per run with {counts} clients, "
        f"each its own connection and asyncio task in one process; {reads:,} point reads "
        f"of {LOADED:,} keys; at most {MAX_RETRIES} retries with full-jitter backoff; "
        f"`python -m bench.bench_server --seconds {seconds:g} --clients {counts} "
        f"--reads {reads}{which}`"
    )


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="per run")
    parser.add_argument(
        "--clients", type=_counts, default=DEFAULT_CLIENTS, help="comma-separated counts"
    )
    parser.add_argument("--reads", type=int, default=DEFAULT_READS)
    parser.add_argument(
        "--system", action="append", choices=[*SYSTEMS, *IN_PROCESS], help="default: all"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="also Shale without the server (debugging)"
    )
    args = parser.parse_args(argv)
    systems = args.system or [*SYSTEMS, *(IN_PROCESS if args.in_process else ())]
    rows = run(args.seconds, args.clients, args.reads, systems)
    print(describe(args.seconds, args.clients, args.reads, systems))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    _main()
