"""Resource attacks on ``shale serve``, each replayed in bounded form.

Every test starts a server in a subprocess on loopback, measures its
memory from ``/proc/<pid>/status``, runs one attack against it from this
process, and checks two things: a legitimate client is served throughout
(every read it makes is answered within ``LIVE`` seconds, a liveness bound,
not a measurement), and the server's peak resident memory grows by no more
than the budget the test states. The attacks are bounded in count and time
so that the whole module runs in well under a minute; each one's docstring
says what it did to the server before the fix that this test keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import shale
from shale.server.protocol import PROTOCOL_VERSION, REPLY, MessageType, frame

TOKEN = "attack-token"
LIVE = 5.0
"""Seconds within which the legitimate client must be answered."""
HANG = 30.0
"""Seconds before a step of an attack counts as a hang."""
MB = 1 << 20

SERVE = """
import asyncio, json, ssl, sys
from shale.server import Limits, serve

async def main():
    config = json.loads(sys.argv[1])
    context = None
    if config["tls"]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*config["tls"])
    server = await serve(
        config["url"], config["token"], port=0, limits=Limits(**config["limits"]),
        ssl_context=context, **config["options"],
    )
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class ServerProcess:
    """A server in a subprocess, whose memory the test reads."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, tls: bool) -> None:
        self.process = process
        self.port = port
        self.scheme = "shale+tls" if tls else "shale"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def memory(self) -> tuple[int, int]:
        """Resident and peak resident bytes."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value
        return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


@contextlib.asynccontextmanager
async def server_process(
    tmp_path: Path,
    limits: dict[str, Any] | None = None,
    tls: tuple[str, str] | None = None,
    url: str = "memory://",
    **options: object,
) -> AsyncIterator[ServerProcess]:
    config = {
        "url": url,
        "token": TOKEN,
        "limits": limits or {},
        "tls": tls,
        "options": options,
    }
    with (tmp_path / "server.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVE,
            json.dumps(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), HANG)
        assert line, (tmp_path / "server.log").read_text()
        yield ServerProcess(process, int(line), tls is not None)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """The server's certificate and key files, and the CA file that checks them."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    return str(cert), str(key), str(ca)


async def connect(server: ServerProcess, **options: object) -> shale.Database:
    return await asyncio.wait_for(shale.open(server.url, token=TOKEN, **options), HANG)


async def served(db: shale.Database, tag: bytes = b"probe") -> None:
    """The legitimate client commits and reads its commit back, in time."""
    await asyncio.wait_for(db.set(b"legit/" + tag, tag), LIVE)
    assert await asyncio.wait_for(db.get(b"legit/" + tag), LIVE) == tag


@contextlib.asynccontextmanager
async def probing(db: shale.Database) -> AsyncIterator[None]:
    """Reads through ``db`` over and over while the block runs; each read
    must be answered within ``LIVE`` seconds."""
    late: list[BaseException] = []
    done = asyncio.Event()

    async def probe() -> None:
        # Stopped by the event, not by cancelling it: on Python 3.11,
        # wait_for swallows a cancellation that comes as its read completes.
        while not done.is_set():
            try:
                await asyncio.wait_for(db.get(b"legit/probe"), LIVE)
            except TimeoutError as exc:
                late.append(exc)
                return
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(probe())
    try:
        yield
    finally:
        done.set()
        await asyncio.wait([task], timeout=LIVE + 1)
        task.cancel()
    assert not late, f"a read waited more than {LIVE} s while the attack ran"


def grown(server: ServerProcess, baseline: int) -> int:
    """How far the server's peak memory rose above ``baseline``."""
    return server.memory()[1] - baseline


async def baseline(server: ServerProcess, db: shale.Database) -> int:
    """The server's memory once warm: a client served, nothing else."""
    await served(db, b"warm")
    return server.memory()[0]


async def open_socket(server: ServerProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), HANG)


class Raw:
    """An authenticated connection speaking frames by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: ServerProcess) -> Raw:
        raw = cls(*await open_socket(server))
        raw.writer.write(frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "raw")))
        length = int.from_bytes(await asyncio.wait_for(raw.reader.readexactly(4), HANG), "big")
        reply = await raw.reader.readexactly(length)
        assert reply[0] == MessageType.HELLO | REPLY
        return raw

    async def ping(self) -> None:
        """Sent after everything else, so answered after it was read."""
        self.writer.write(frame(MessageType.PING, 0xFFFF, ()))
        while True:
            length = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(4), HANG), "big")
            reply = await self.reader.readexactly(length)
            if reply[:5] == bytes([MessageType.PING | REPLY]) + (0xFFFF).to_bytes(4, "big"):
                return

    def close(self) -> None:
        self.writer.close()


# -- A: snapshots leaked by a client ------------------------------------------------


LEAK_BUDGET = 16 * MB


async def test_leaked_snapshots(tmp_path: Path) -> None:
    """A client that opens transactions and never ends them. Before: the
    connection reached ``max_snapshots`` and every later read on it failed
    with a non-retryable protocol error, forever."""
    limits = {"max_snapshots": 1000}
    async with server_process(tmp_path, limits, max_transaction_age=1.0) as server:
        legit, leaker = await connect(server), await connect(server)
        try:
            before = await baseline(server, legit)
            leaked: list[shale.Transaction] = []  # held, so nothing releases them
            refused = 0
            async with probing(legit):
                loop = asyncio.get_running_loop()
                until = loop.time() + 3.0
                while loop.time() < until:
                    tr = leaker.transaction()
                    try:
                        await asyncio.wait_for(tr.get(b"legit/probe"), LIVE)
                    except shale.Unavailable:  # at max_snapshots: retryable
                        refused += 1
                        await asyncio.sleep(0.01)
                    leaked.append(tr)
            assert refused > 0 and len(leaked) > limits["max_snapshots"]

            # The server expires what the client never released: on the
            # leaking connection, Database.run retries the refusals until
            # the oldest snapshots have expired.
            async def read(tr: shale.Transaction) -> bytes | None:
                return await tr.get(b"legit/probe")

            await asyncio.wait_for(leaker.run(read, retries=100), LIVE)
            await served(legit)
            assert grown(server, before) <= LEAK_BUDGET
        finally:
            await legit.close()
            await leaker.close()


# -- B: connections that never authenticate -----------------------------------------


IDLE_SOCKETS = 1000
IDLE_BUDGET = 40 * MB
"""The default ``max_unauthenticated`` (64) at about 300 KB each during a
TLS handshake is 20 MB; 1,000 sockets would have been 300 MB."""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_unauthenticated_and_pre_tls_sockets(
    tmp_path: Path, certificate: tuple[str, str, str], tls: bool
) -> None:
    """Sockets that connect and send nothing, not even a TLS hello. Before:
    they counted against ``max_connections`` (locking out every client
    with the token) and, before their TLS handshake, not at all (4,000
    took 1.2 GB)."""
    cert, key, ca = certificate
    # More sockets than max_connections, and a long handshake timeout: only
    # max_unauthenticated can leave room, and bound what they hold.
    limits = {"handshake_timeout": 60.0, "max_connections": IDLE_SOCKETS // 2}
    options = {"ca": ca} if tls else {}
    async with server_process(tmp_path, limits, (cert, key) if tls else None) as server:
        legit = await connect(server, **options)
        attackers: list[asyncio.StreamWriter] = []
        try:
            before = await baseline(server, legit)
            async with probing(legit):
                for _ in range(IDLE_SOCKETS):
                    _, writer = await open_socket(server)
                    attackers.append(writer)
                # A new client with the token gets in, and is served.
                newcomer = await asyncio.wait_for(connect(server, **options), LIVE)
                try:
                    await served(newcomer, b"newcomer")
                finally:
                    await newcomer.close()
            await served(legit)
            assert grown(server, before) <= IDLE_BUDGET
        finally:
            for writer in attackers:
                writer.close()
            await legit.close()


# -- C: large frames sent slowly ----------------------------------------------------


SLOW_SENDERS = 20
FRAME = 15 * MB
SENT = 10 * MB
"""Of each frame, what a slow sender sends before it stalls."""
MAX_BUFFERED = 32 * MB
FRAME_BUDGET = MAX_BUFFERED + 48 * MB
"""The receive budget, plus what asyncio and a connection hold besides.
Unbounded, the 20 senders held 200 MB."""


async def test_slow_half_sent_large_frames(tmp_path: Path) -> None:
    """Connections that each send most of a 15 MB frame and stall. Before:
    every partial frame was buffered, with no server-wide bound (120 such
    connections held 1.8 GB)."""
    async with server_process(tmp_path, {"max_buffered": MAX_BUFFERED}) as server:
        legit = await connect(server)
        slow: list[Raw] = []
        try:
            before = await baseline(server, legit)
            header = (FRAME - 4).to_bytes(4, "big") + bytes([MessageType.COMMIT])
            chunk = b"\x01" + b"x" * (MB - 1)
            async with probing(legit):
                for n in range(SLOW_SENDERS):
                    raw = await Raw.open(server)
                    slow.append(raw)
                    raw.writer.write(header + (10 + n).to_bytes(4, "big"))
                for _ in range(SENT // MB):
                    for raw in slow:
                        raw.writer.write(chunk)
                        await asyncio.wait_for(raw.writer.drain(), HANG)
                await served(legit, b"during")
            assert grown(server, before) <= FRAME_BUDGET
        finally:
            for raw in slow:
                raw.close()
            await legit.close()


# -- C: feed watches on names that are not feeds ---------------------------------------


WATCHED_NAMES = 100_000
ROUNDS = 3
NAMES_BUDGET = 24 * MB
"""What the server may keep after the rounds beyond the first. Before, every
name stayed registered: each round of 100,000 added about 30 MB."""


async def test_watch_feed_on_many_unknown_names(tmp_path: Path) -> None:
    """Rounds of 100,000 ``WATCH_FEED`` on distinct names that are not
    feeds, each round from connections that then go away. Before: the
    server kept an entry per name for good."""
    async with server_process(tmp_path, {"max_watches": WATCHED_NAMES // 4}) as server:
        legit = await connect(server)
        try:
            await baseline(server, legit)
            after_first = 0
            async with probing(legit):
                for round_ in range(ROUNDS):
                    watchers = [await Raw.open(server) for _ in range(4)]
                    for n, raw in enumerate(watchers):
                        raw.writer.write(
                            b"".join(
                                frame(MessageType.WATCH_FEED, 2 + i, (f"r{round_}-c{n}-{i}",))
                                for i in range(WATCHED_NAMES // 4)
                            )
                        )
                    for raw in watchers:
                        await raw.ping()
                        raw.close()
                    # Read, not commit: a commit wakes every watch of a name that
                    # is not a feed, which would hide what the rounds leave.
                    await asyncio.wait_for(legit.get(b"legit/probe"), LIVE)
                    if round_ == 0:
                        after_first = server.memory()[0]
            assert server.memory()[0] - after_first <= NAMES_BUDGET
        finally:
            await legit.close()


# -- the resolver and watches: one commit that is costly to check ------------------------


WRITE_RANGES = 30_000
READERS = 5
READ_RANGES = 3_000
RANGES_BUDGET = 64 * MB


async def test_a_commit_with_30000_write_conflict_ranges(tmp_path: Path) -> None:
    """One commit with 30,000 write conflict ranges, then commits with
    thousands of read conflict ranges checked against it. Before: the
    server checked every read range against every write range, and froze
    for 39 s."""
    async with server_process(tmp_path) as server:
        legit, attacker = await connect(server), await connect(server)
        try:
            before = await baseline(server, legit)
            readers = [attacker.transaction() for _ in range(READERS)]
            for n, tr in enumerate(readers):
                await asyncio.wait_for(tr.get(b"attack/%d" % n), LIVE)
                for i in range(READ_RANGES):
                    tr.add_read_conflict_range(b"attack/r%07d" % i, b"attack/r%07d\x00" % i)
                tr.set(b"attack/%d" % n, b"x")
            writer = attacker.transaction()
            for i in range(WRITE_RANGES):
                writer.add_write_conflict_range(b"attack/w%07d" % i, b"attack/w%07d\x00" % i)
            writer.set(b"attack/writer", b"x")
            async with probing(legit):
                await asyncio.wait_for(writer.commit(), HANG)
                results = await asyncio.wait_for(
                    asyncio.gather(*(tr.commit() for tr in readers), return_exceptions=True),
                    HANG,
                )
                await served(legit, b"during")
            assert all(r is None or isinstance(r, shale.ConflictError) for r in results), results
            assert grown(server, before) <= RANGES_BUDGET
        finally:
            await legit.close()
            await attacker.close()


KEY_WATCHES = 100_000
CLEARED_RANGES = 2_000
WATCHES_BUDGET = 300 * MB
"""100,000 pending key watches cost the server about 180 MB at peak."""


async def test_100000_key_watches_and_a_commit_clearing_2000_ranges(tmp_path: Path) -> None:
    """100,000 key watches (what ``tr.watch`` sends, sent raw to spare this
    process the cost), then one commit clearing 2,000 ranges. Before: the
    server compared every watched key with every range, and froze for 12 s."""
    connections = 4
    limits = {"max_watches": KEY_WATCHES // connections}
    async with server_process(tmp_path, limits) as server:
        legit = await connect(server)
        watchers: list[Raw] = []
        try:
            before = await baseline(server, legit)
            for n in range(connections):
                raw = await Raw.open(server)
                watchers.append(raw)
                per = KEY_WATCHES // connections
                raw.writer.write(
                    b"".join(
                        frame(MessageType.WATCH_KEY, 2 + i, (b"watched/%07d" % (n * per + i), None))
                        for i in range(per)
                    )
                )
            for raw in watchers:
                await raw.ping()
            step = KEY_WATCHES // CLEARED_RANGES
            async with probing(legit):
                async with legit.transaction() as tr:
                    for i in range(CLEARED_RANGES):
                        tr.clear_range(
                            b"watched/%07d" % (i * step), b"watched/%07d\x00" % (i * step)
                        )
                await served(legit, b"during")
            assert grown(server, before) <= WATCHES_BUDGET
        finally:
            for raw in watchers:
                raw.close()
            await legit.close()


OLD_BY = 20_000
OLD_READ_RANGES = 5_000
OLD_BUDGET = 32 * MB


async def test_a_transaction_20000_commits_old(tmp_path: Path) -> None:
    """A transaction reads, 20,000 commits land one by one, then it commits
    with 5,000 read ranges. Before: its check visited every batch committed
    since its read version, bisecting each for every range."""
    async with server_process(tmp_path, max_transaction_age=120.0) as server:
        legit, busy = await connect(server, max_transaction_age=120.0), await connect(server)
        try:
            before = await baseline(server, legit)
            old = legit.transaction()
            await asyncio.wait_for(old.get(b"old/key"), LIVE)
            for i in range(OLD_READ_RANGES):
                old.add_read_conflict_range(b"old/r%05d" % i, b"old/r%05d\x00" % i)
            old.set(b"old/key", b"x")
            for i in range(OLD_BY):
                async with busy.transaction() as tr:
                    tr.set(b"busy/%05d" % i, b"")
            async with probing(busy):
                await asyncio.wait_for(old.commit(), LIVE)
            assert await asyncio.wait_for(legit.get(b"old/key"), LIVE) == b"x"
            assert grown(server, before) <= OLD_BUDGET
        finally:
            await legit.close()
            await busy.close()
