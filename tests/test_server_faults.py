"""The server under faults: killed, restarted, shut down, with clients busy.

Real ``shale serve`` processes (or in-process servers) and real sockets. A
``SIGKILL`` is the crash a server cannot prepare for: every commit whose
reply was in flight ends ``CommitUnknownResult`` at the client, and
``Database.run`` must resolve each one, through its idempotency id, to
"applied once" or "not applied", never twice. Timeouts here only stop a hang
from stalling the suite; nothing asserts how fast anything was.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import shale
from shale import tuple as tuples
from shale.server.server import serve

TOKEN = "fault-token"
COUNTERS = tuples.pack(("counter",))
LOG = tuples.pack(("log",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``python -m shale serve`` on a fixed port and file, which a test can
    kill, restart and stop; each run logs to its own file."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.tmp_path = tmp_path
        self.port = port
        self.path = tmp_path / "db.sqlite"
        self.token_file = tmp_path / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"shale://127.0.0.1:{self.port}"

    async def start(self) -> None:
        log = self.tmp_path / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        command = [
            sys.executable,
            "-m",
            "shale",
            "serve",
            f"sqlite:///{self.path}",
            "--token-file",
            str(self.token_file),
            "--port",
            str(self.port),
        ]
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL)
        for _ in range(300):  # 15 s
            if "shale: serving" in log.read_text():
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        self.process.kill()
        raise AssertionError(f"the server did not start:\n{log.read_text()}")

    async def wait(self, timeout: float) -> int:
        """The exit status, once the process has exited."""
        assert self.process is not None
        for _ in range(int(timeout / 0.02) + 1):
            status = self.process.poll()
            if status is not None:
                return status
            await asyncio.sleep(0.02)
        raise AssertionError(f"the server did not exit within {timeout} s")

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await self.wait(10) == -signal.SIGKILL

    def stop_now(self) -> None:
        """Leave nothing running, whatever the test did."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(tmp_path, free_port())
    await process.start()
    try:
        yield process
    finally:
        process.stop_now()


def counter_key(index: int) -> bytes:
    return COUNTERS + tuples.pack((index,))


def log_key(client: int, seq: int) -> bytes:
    return LOG + tuples.pack((client, seq))


async def read_all(db: shale.Database) -> tuple[dict[int, int], set[tuple[int, int]]]:
    """The counters and the log keys present."""

    async def read(tr: shale.Transaction) -> tuple[dict[int, int], set[tuple[int, int]]]:
        counters = {
            tuples.unpack(key, len(COUNTERS))[0]: int.from_bytes(value, "little")
            for key, value in await tr.get_range(COUNTERS, COUNTERS + b"\xff")
        }
        logged = {tuples.unpack(key, len(LOG)) for key, _ in await tr.get_range(LOG, LOG + b"\xff")}
        return counters, logged

    return await asyncio.wait_for(db.run(read, retries=50), 30)


async def increment(tr: shale.Transaction, counter: int, client: int, seq: int) -> None:
    """Read-modify-write the counter and log which run did it."""
    key = counter_key(counter)
    value = await tr.get(key)
    count = int.from_bytes(value, "little") if value else 0
    tr.set(key, (count + 1).to_bytes(8, "little"))
    tr.set(log_key(client, seq), b"")


@dataclass
class Tally:
    acknowledged: dict[tuple[int, int], int] = field(default_factory=dict)
    """(client, seq) -> counter, for each run that returned."""
    failed: dict[tuple[int, int], str] = field(default_factory=dict)
    """(client, seq) -> the error of each run that raised."""


# -- 50 clients, a server killed three times ---------------------------------


@pytest.mark.slow
async def test_fifty_clients_survive_three_kills(server: ServerProcess) -> None:
    clients, kills, after_kills, at_most = 50, 3, 5, 400
    tally = Tally()
    killed = asyncio.Event()
    rng = random.Random()
    deadline = time.monotonic() + 14

    async def client(n: int) -> None:
        db = await shale.open(server.url, token=TOKEN, connect_timeout=2.0)
        try:
            counter, seq, acked, acked_after = n % 5, 0, 0, 0
            # Busy through every kill, then a few more on the last server.
            while acked < at_most and acked_after < after_kills:
                if time.monotonic() > deadline:
                    break
                seq += 1
                try:
                    await db.run(increment, counter, n, seq, retries=50)
                except shale.ShaleError as exc:
                    tally.failed[n, seq] = type(exc).__name__
                    continue
                tally.acknowledged[n, seq] = counter
                acked += 1
                acked_after += killed.is_set()
        finally:
            await db.close()

    async def killer() -> None:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 2.0))
            await server.kill()
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            await server.start()
        killed.set()

    await asyncio.wait_for(asyncio.gather(killer(), *(client(n) for n in range(clients))), 60)
    assert len(server.logs) == 1 + kills

    async with await shale.open(server.url, token=TOKEN) as db:
        counters, logged = await read_all(db)

    acknowledged = set(tally.acknowledged)
    assert acknowledged <= logged, f"acknowledged runs lost: {sorted(acknowledged - logged)}"
    unexplained = logged - acknowledged - set(tally.failed)
    assert not unexplained, f"runs applied that nobody ran to completion: {sorted(unexplained)}"
    # A run that raised may still have been applied: its log key then says
    # so, and its counter must count it exactly once, like the others.
    applied = Counter(client % 5 for client, _ in logged)
    acked = Counter(tally.acknowledged.values())
    for counter in range(5):
        assert counters.get(counter, 0) == applied[counter] >= acked[counter]
    print(
        f"\n50 clients: {len(acknowledged)} acknowledged increments, "
        f"{len(tally.failed)} runs raised ({dict(Counter(tally.failed.values()))}), "
        f"{len(logged - acknowledged)} of them applied, {kills} kills"
    )


# -- SIGTERM: drain, answer, exit 0 --------------------------------------------


async def test_sigterm_answers_every_commit_and_exits_cleanly(server: ServerProcess) -> None:
    clients = 5
    acknowledged: set[bytes] = set()
    endings: Counter[str] = Counter()
    busy = asyncio.Event()

    async def client(n: int) -> None:
        db = await shale.open(server.url, token=TOKEN, connect_timeout=1.0)
        try:
            for seq in range(100_000):
                key = log_key(n, seq)
                try:
                    async with db.transaction() as tr:
                        tr.set(key, b"")
                except (shale.CommitUnknownResult, shale.Unavailable) as exc:
                    endings[type(exc).__name__] += 1
                    return
                acknowledged.add(key)
                if len(acknowledged) >= 100:
                    busy.set()
            endings["never stopped"] += 1
        finally:
            await db.close()

    committing = asyncio.gather(*(client(n) for n in range(clients)))
    await asyncio.wait_for(busy.wait(), 30)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert await server.wait(20) == 0
    await asyncio.wait_for(committing, 30)
    assert sum(endings.values()) == clients and not endings["never stopped"]

    async with await shale.open(f"sqlite:///{server.path}") as db:
        _, logged = await read_all(db)
    assert {log_key(*run) for run in logged} >= acknowledged

    log = server.logs[0].read_text()
    peers = re.findall(r" INFO (\S+) authenticated ", log)
    assert len(peers) == clients
    for peer in peers:
        assert re.search(rf"{re.escape(peer)} authenticated\b", log)
        assert re.search(rf"{re.escape(peer)} (closed: server shutting down|disconnected)", log)
    assert "signal received; shutting down" in log
    assert log.rstrip().endswith("INFO stopped")


# -- reconnecting ---------------------------------------------------------------


async def test_a_client_rides_out_a_restart_and_gives_up_after_connect_timeout(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    server = await serve(url, TOKEN, port=0)
    port = server.port
    address = f"shale://127.0.0.1:{port}"
    try:
        db = await shale.open(address, token=TOKEN, connect_timeout=5.0)
        impatient = await shale.open(address, token=TOKEN, connect_timeout=0.3)
        await db.set(b"before", b"1")
        tr = db.transaction()
        assert await tr.get(b"before") == b"1"

        await server.stop()
        server = await serve(url, TOKEN, port=port)

        # The transaction's snapshot died with the old server; retrying helps.
        with pytest.raises(shale.Unavailable):
            await asyncio.wait_for(tr.get(b"before"), 10)
        tr.close()
        assert await asyncio.wait_for(db.get(b"before"), 10) == b"1"
        await asyncio.wait_for(db.run(increment, 0, 0, 1), 10)
        assert await asyncio.wait_for(impatient.get(b"before"), 10) == b"1"

        await server.stop()
        for handle in (db, impatient):
            with pytest.raises(shale.Unavailable):
                await asyncio.wait_for(handle.get(b"before"), 10)

        server = await serve(url, TOKEN, port=port)
        counters, logged = await read_all(db)
        assert counters == {0: 1} and logged == {(0, 1)}
        await db.close()
        await impatient.close()
    finally:
        await server.stop()


# -- commits in flight when the server dies --------------------------------------


async def add_one(tr: shale.Transaction, client: int, seq: int) -> None:
    tr.add(counter_key(0), (1).to_bytes(8, "little"))
    tr.set(log_key(client, seq), b"")


@pytest.mark.slow
async def test_commits_cut_off_by_a_kill_apply_once(server: ServerProcess) -> None:
    """Blind increments retried by ``transact`` across a crash and restart:
    as many applied as acknowledged. Probes commit by hand alongside, to show
    that the kill cut commits off in flight."""
    clients, probes, kills = 10, 5, 2
    acknowledged: set[tuple[int, int]] = set()
    probe_acks: set[tuple[int, int]] = set()
    probe_unknown: set[tuple[int, int]] = set()
    killed = asyncio.Event()

    async def client(n: int) -> None:
        db = await shale.open(server.url, token=TOKEN)
        try:
            for seq in range(100_000):
                if killed.is_set() and seq >= 50:
                    return
                await db.run(add_one, n, seq, retries=50)
                acknowledged.add((n, seq))
        finally:
            await db.close()

    async def probe(n: int) -> None:
        db = await shale.open(server.url, token=TOKEN)
        try:
            for seq in range(100_000):
                if killed.is_set():
                    return
                try:
                    async with db.transaction() as tr:
                        tr.add(counter_key(1), (1).to_bytes(8, "little"))
                        tr.set(log_key(n, seq), b"")
                except shale.CommitUnknownResult:
                    probe_unknown.add((n, seq))
                except shale.Unavailable:
                    continue
                else:
                    probe_acks.add((n, seq))
        finally:
            await db.close()

    async def killer() -> None:
        for _ in range(kills):
            for _ in range(1000):
                if len(acknowledged) >= 30 * (len(server.logs)):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.uniform(0, 0.2))
            await server.kill()
            await asyncio.sleep(0.3)
            await server.start()
        killed.set()

    await asyncio.wait_for(
        asyncio.gather(
            killer(), *(client(n) for n in range(clients)), *(probe(100 + n) for n in range(probes))
        ),
        60,
    )
    assert probe_unknown, "no kill cut a commit off in flight"

    async with await shale.open(server.url, token=TOKEN) as db:
        counters, logged = await read_all(db)
    runs = {run for run in logged if run[0] < 100}
    assert runs == acknowledged
    assert counters[0] == len(acknowledged)
    probed = logged - runs
    assert probe_acks <= probed <= probe_acks | probe_unknown
    assert counters[1] == len(probed)
    print(
        f"\n{len(acknowledged)} acknowledged increments; probes: {len(probe_unknown)} "
        f"commits cut off, {len(probed - probe_acks)} of them applied"
    )
