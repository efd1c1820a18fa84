"""The server's resource limits, each against the client that reaches it.

Real servers on loopback, in the test's event loop, and real sockets: the
``shale://`` client, or raw frames where the wire itself is the point. Every
wait is bounded by ``HANG``, a liveness guard ("served within HANG
seconds"), never a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
import trustme

import shale
from shale.server.protocol import ErrorCode, Limits, MessageType, frame
from shale.server.server import Connection, Server, serve
from test_server_hostile import Raw

TOKEN = "correct-horse-battery-staple"
HANG = 10.0
"""Seconds before a wait counts as a hang: a liveness bound, not a measurement."""


@contextlib.asynccontextmanager
async def serving(
    limits: Limits | None = None, **options: object
) -> AsyncIterator[tuple[Server, shale.Database]]:
    """A server on a free loopback port (``options`` open its database) and
    a client connected to it."""
    server = await serve(
        "memory://", TOKEN, host="127.0.0.1", port=0, limits=limits or Limits(), **options
    )
    try:
        client = await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN)
        try:
            yield server, client
        finally:
            await client.close()
    finally:
        await server.stop(drain=1.0)


async def wait_until(predicate: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), HANG)


def authenticated(server: Server) -> list[Connection]:
    return [c for c in server.connections if c.authenticated]


def snapshots_held(server: Server) -> int:
    return sum(len(c.snapshots) for c in server.connections)


async def read_in_new_transaction(db: shale.Database, key: bytes = b"k") -> bytes | None:
    async with db.transaction() as tr:
        return await asyncio.wait_for(tr.get(key), HANG)


# -- A: snapshots a client never releases ----------------------------------------


async def test_dropped_transactions_release_their_snapshots() -> None:
    async with serving(Limits(max_snapshots=4)) as (server, db):
        await db.set(b"k", b"v")
        for _ in range(20):
            tr = db.transaction()
            assert await asyncio.wait_for(tr.get(b"k"), HANG) == b"v"
            del tr  # never committed nor closed
            gc.collect()
        assert await read_in_new_transaction(db) == b"v"
        await wait_until(lambda: snapshots_held(server) == 0)


async def test_leaked_snapshots_that_are_still_referenced_expire() -> None:
    async with serving(Limits(max_snapshots=4), max_transaction_age=0.5) as (server, db):
        await db.set(b"k", b"v")
        leaked = [db.transaction() for _ in range(4)]
        for tr in leaked:
            assert await asyncio.wait_for(tr.get(b"k"), HANG) == b"v"
        assert snapshots_held(server) == 4
        # The server's age limit frees them, although the client holds them.
        await wait_until(lambda: snapshots_held(server) == 0)
        assert await read_in_new_transaction(db) == b"v"
        # A leaked transaction that reads again learns that it is too old,
        # which is retryable, rather than a protocol error.
        with pytest.raises(shale.TransactionTooOld):
            await asyncio.wait_for(leaked[0].get(b"other"), HANG)
        for tr in leaked:
            tr.close()


async def test_a_full_connection_refuses_new_snapshots_retryably() -> None:
    async with serving(Limits(max_snapshots=2)) as (_, db):
        held = [db.transaction() for _ in range(2)]
        for tr in held:
            await asyncio.wait_for(tr.get(b"k"), HANG)
        refused = db.transaction()
        with pytest.raises(shale.Unavailable, match="more than 2 open snapshots"):
            await asyncio.wait_for(refused.get(b"k"), HANG)
        refused.close()
        held.pop().close()
        assert await read_in_new_transaction(db) is None
        for tr in held:
            tr.close()

        # Database.run retries the refusal until a slot frees up.
        blocker = [db.transaction() for _ in range(2)]
        for tr in blocker:
            await asyncio.wait_for(tr.get(b"k"), HANG)
        asyncio.get_running_loop().call_later(0.2, blocker[0].close)

        async def body(tr: shale.Transaction) -> bytes | None:
            return await tr.get(b"k")

        assert await asyncio.wait_for(db.run(body), HANG) is None
        blocker[1].close()


async def test_a_raw_read_on_an_expired_snapshot_is_too_old() -> None:
    async with serving(Limits(), max_transaction_age=0.3) as (server, db):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            (version,) = await raw.call(MessageType.OPEN, 2, (1, None))
            await wait_until(lambda: snapshots_held(server) == 0)
            raw.send(MessageType.GET, 3, (1, b"k"))
            kind, request, (code, message) = await raw.recv()
            assert (kind, request, code) == (
                MessageType.ERROR,
                3,
                ErrorCode.TRANSACTION_TOO_OLD,
            )
            assert message.startswith("GET: snapshot 1 expired")
            # A commit naming it still runs, at the read version it carries.
            commit = (1, version, (0, b"raw", b"x"), (), (), (), (), False)
            raw.send(MessageType.COMMIT, 4, commit)
            kind, request, fields = await raw.recv()
            assert (kind, request) == (MessageType.COMMIT | 0x80, 4), fields
            assert await db.get(b"raw") == b"x"
            # The commit released the id: it is unknown now.
            raw.send(MessageType.GET, 5, (1, b"k"))
            kind, request, (code, _) = await raw.recv()
            assert (kind, request, code) == (MessageType.ERROR, 5, ErrorCode.UNKNOWN_SNAPSHOT)
        finally:
            raw.close()


async def test_a_raw_read_behind_a_refused_one_way_open_gets_the_refusal() -> None:
    async with serving(Limits(max_snapshots=1)) as (server, _):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            await raw.call(MessageType.OPEN, 2, (1, None))
            raw.send_bytes(
                frame(MessageType.OPEN, 0, (2, None)) + frame(MessageType.GET, 3, (2, b"k"))
            )
            await raw.refused(
                3, ErrorCode.TOO_MANY_REQUESTS, "GET: more than 1 open snapshots; release some"
            )
            # Releasing the refused id forgets it; the slot is still taken.
            raw.send(MessageType.RELEASE, 0, (2,))
            raw.send(MessageType.GET, 4, (2, b"k"))
            kind, request, (code, _) = await raw.recv()
            assert (kind, request, code) == (MessageType.ERROR, 4, ErrorCode.UNKNOWN_SNAPSHOT)
            await raw.pings()
        finally:
            raw.close()


# -- B: connections that have not authenticated ------------------------------------

ATTACKERS = 200
"""Idle sockets an attacker opens: more than ``max_connections`` in the tests
below, and far more than the default ``max_unauthenticated``."""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    """A server context and the CA file that verifies it."""
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    ca = tmp_path_factory.mktemp("tls") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(context)
    return context, str(ca)


async def idle_sockets(server: Server, count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections that never send a byte (not even a TLS hello)."""
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writers.append(writer)
    return writers


async def closed_by_the_server(writer: asyncio.StreamWriter) -> None:
    """Returns once the server has closed the connection (EOF or reset)."""
    reader: asyncio.StreamReader = writer._protocol._stream_reader  # type: ignore[attr-defined]
    with contextlib.suppress(ConnectionError):
        await reader.read()


async def commits(url: str, **options: object) -> None:
    """A legitimate client connects, commits and reads its commit back."""
    async with await asyncio.wait_for(shale.open(url, token=TOKEN, **options), HANG) as db:
        await asyncio.wait_for(db.set(b"legit", b"1"), HANG)
        assert await asyncio.wait_for(db.get(b"legit"), HANG) == b"1"


def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


async def test_idle_sockets_do_not_lock_out_clients() -> None:
    # Half of max_connections is more than an attacker without the token
    # may hold: the default max_unauthenticated is well below it. A long
    # handshake timeout: only that cap can leave room in time.
    limits = Limits(max_connections=ATTACKERS // 2, handshake_timeout=60.0)
    server = await serve("memory://", TOKEN, port=0, limits=limits)
    try:
        attackers = await idle_sockets(server, ATTACKERS)
        try:
            await commits(f"shale://127.0.0.1:{server.port}")
        finally:
            close_all(attackers)
    finally:
        await server.stop(drain=1.0)


async def test_sockets_before_the_tls_handshake_are_capped(
    tls: tuple[ssl.SSLContext, str],
) -> None:
    context, ca = tls
    # A long handshake timeout: only the cap can close these in time.
    limits = Limits(handshake_timeout=60.0)
    server = await serve("memory://", TOKEN, port=0, limits=limits, ssl_context=context)
    try:
        attackers = await idle_sockets(server, ATTACKERS)
        try:
            waits = [asyncio.ensure_future(closed_by_the_server(w)) for w in attackers]
            cap = server.limits.max_unauthenticated
            await wait_until(lambda: sum(w.done() for w in waits) >= ATTACKERS - cap)
            assert len(server.unauthenticated) == cap
            # The oldest went first.
            assert all(w.done() for w in waits[: ATTACKERS - cap])
            await commits(f"shale+tls://127.0.0.1:{server.port}", ca=ca)
            for wait in waits:
                wait.cancel()
        finally:
            close_all(attackers)
    finally:
        await server.stop(drain=1.0)


async def test_a_client_gets_in_past_a_full_unauthenticated_cap(
    tls: tuple[ssl.SSLContext, str],
) -> None:
    context, ca = tls
    limits = Limits(max_unauthenticated=4, handshake_timeout=60.0)
    for ssl_context, url, options in [
        (None, "shale://127.0.0.1:{}", {}),
        (context, "shale+tls://127.0.0.1:{}", {"ca": ca}),
    ]:
        server = await serve("memory://", TOKEN, port=0, limits=limits, ssl_context=ssl_context)
        try:
            attackers = await idle_sockets(server, 4)
            try:
                await wait_until(lambda: len(server.unauthenticated) == 4)  # noqa: B023
                # The cap is full of peers that will never authenticate: the
                # newcomer takes the oldest one's place, at once.
                await commits(url.format(server.port), **options)
                first: asyncio.StreamReader = attackers[0]._protocol._stream_reader  # type: ignore[attr-defined]
                if ssl_context is None:
                    refusal = frame(
                        MessageType.ERROR,
                        0,
                        (
                            int(ErrorCode.TOO_MANY_CONNECTIONS),
                            "too many connections awaiting authentication",
                        ),
                    )
                    assert await asyncio.wait_for(first.read(), HANG) == refusal
                else:
                    await asyncio.wait_for(closed_by_the_server(attackers[0]), HANG)
            finally:
                close_all(attackers)
        finally:
            await server.stop(drain=1.0)


async def test_refusals_are_logged_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shale.server")
    server = await serve("memory://", TOKEN, port=0, limits=Limits(max_connections=8))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        attackers = await idle_sockets(server, ATTACKERS)
        try:
            await wait_until(lambda: len(server.connections) == 8)
            await asyncio.sleep(0.1)  # the refusals are logged as they happen
            refusals = [r.getMessage() for r in caplog.records if " refused: " in r.getMessage()]
            assert 1 <= len(refusals) <= 1 + (loop.time() - started)
            # The next line, a second later, counts the ones left out.
            await asyncio.sleep(1.0)
            late = await idle_sockets(server, 1)
            await wait_until(lambda: any("not logged" in r.getMessage() for r in caplog.records))
            close_all(late)
        finally:
            close_all(attackers)
    finally:
        await server.stop(drain=1.0)


async def test_too_many_connections_is_retryable() -> None:
    server = await serve("memory://", TOKEN, port=0, limits=Limits(max_connections=1))
    try:
        holder = await Raw.connect(server)
        try:
            await holder.hello()
            url = f"shale://127.0.0.1:{server.port}"
            with pytest.raises(shale.Unavailable, match="too many connections"):
                await asyncio.wait_for(shale.open(url, token=TOKEN, connect_timeout=0.5), HANG)
            # A client that keeps trying gets in once the slot frees up.
            asyncio.get_running_loop().call_later(0.3, holder.close)
            await commits(url, connect_timeout=HANG)
        finally:
            holder.close()
    finally:
        await server.stop(drain=1.0)


# -- C: memory held for clients -----------------------------------------------------


def large_commit(request: int, tag: bytes, values: int, snapshot: int = 0) -> bytes:
    """A ``COMMIT`` frame of ``values`` values of 100,000 bytes."""
    mutations: tuple[object, ...] = ()
    for i in range(values):
        mutations += (0, tag + b"/%02d" % i, b"v" * 100_000)
    fields = (snapshot, -1, mutations, (), (), (), (), False)
    return frame(MessageType.COMMIT, request, fields)


async def test_a_large_frame_trickled_in_is_dropped_and_its_budget_freed() -> None:
    """A sender that keeps a large frame coming a byte at a time is never
    idle, but may not hold its share of ``max_buffered`` for ever."""
    limits = Limits(frame_timeout=0.5, idle_timeout=1.0)
    async with serving(limits) as (server, db):
        data = large_commit(10, b"trickle", 19)
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            raw.send_bytes(data[:1000])
            await wait_until(lambda: server.buffered == len(data))
            closed = asyncio.ensure_future(raw.recv())
            for i in range(1000, 1100):
                if closed.done():
                    break
                raw.send_bytes(data[i : i + 1])
                await asyncio.sleep(0.05)
            kind, _, (code, message) = await asyncio.wait_for(closed, HANG)
            assert (kind, code) == (MessageType.ERROR, ErrorCode.TIMEOUT)
            assert "large frame still incomplete" in message
            await wait_until(lambda: server.buffered == 0)
            await asyncio.wait_for(db.set(b"after", b"1"), HANG)
        finally:
            raw.close()


async def test_half_sent_large_frames_share_a_budget() -> None:
    limits = Limits(max_buffered=4 << 20)
    async with serving(limits) as (server, db):
        # Frames of about 1.9 MB: two fit in the budget, a third does not.
        frames = [large_commit(10 + n, b"slow%d" % n, 19) for n in range(8)]
        size = len(frames[0])
        assert 2 * size <= limits.max_buffered < 3 * size
        slow: list[Raw] = []
        try:
            for data in frames:
                raw = await Raw.connect(server)
                slow.append(raw)
                await raw.hello()
                # A quarter of the frame, then nothing: each would hold its
                # whole frame for as long as it took to send the rest.
                raw.send_bytes(data[: size // 4])
            answers = [asyncio.ensure_future(raw.recv()) for raw in slow]
            await wait_until(lambda: sum(a.done() for a in answers) == 6)
            assert server.buffered == 2 * size
            assert sum(c.reader.pending for c in server.connections) <= limits.max_buffered
            refused = [raw for raw, answer in zip(slow, answers, strict=True) if answer.done()]
            for answer in answers:
                if answer.done():
                    kind, _, (code, message) = answer.result()
                    assert (kind, code) == (MessageType.ERROR, ErrorCode.UNAVAILABLE)
                    assert "receive buffer budget" in message
            # Small frames are still served, to everyone...
            await asyncio.wait_for(db.set(b"small", b"1"), HANG)
            assert await read_in_new_transaction(db, b"small") == b"1"
            # ...and a large commit is refused, retryably, while the budget is held.
            with pytest.raises(shale.Unavailable, match="receive buffer budget"):
                async with db.transaction() as tr:
                    for i in range(30):
                        tr.set(b"large/%02d" % i, b"v" * 90_000)
            # The slow senders finish: the two held frames are committed, the
            # refused ones were skipped, and every connection goes on.
            for raw, data in zip(slow, frames, strict=True):
                raw.send_bytes(data[size // 4 :])
            for raw, answer in zip(slow, answers, strict=True):
                if raw not in refused:
                    kind, _, fields = await asyncio.wait_for(answer, HANG)
                    assert kind == MessageType.COMMIT | 0x80, fields
                await raw.pings()
        finally:
            for raw in slow:
                raw.close()
        await wait_until(lambda: server.buffered == 0)
        assert [await db.get(b"slow%d/00" % n) is not None for n in range(8)].count(True) == 2
        async with db.transaction() as tr:
            for i in range(30):
                tr.set(b"large/%02d" % i, b"v" * 90_000)
        assert len(await db.get(b"large/29") or b"") == 90_000


async def test_a_refused_frame_is_skipped_and_the_connection_goes_on() -> None:
    async with serving(Limits(max_buffered=1 << 20)) as (server, db):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            await raw.call(MessageType.OPEN, 2, (1, None))
            data = large_commit(7, b"big", 13, snapshot=1)
            assert len(data) > 1 << 20
            raw.send_bytes(data)
            await raw.refused(
                7,
                ErrorCode.UNAVAILABLE,
                f"COMMIT: a frame of {len(data) - 4} bytes does not fit in what is left "
                f"of the server's receive buffer budget ({1 << 20} bytes); retry",
            )
            await raw.pings()
            # Like any refused commit, it released the snapshot it named.
            assert snapshots_held(server) == 0
            assert server.buffered == 0
            assert await db.get(b"big/00") is None
        finally:
            raw.close()


async def test_feed_watches_on_unknown_names_leave_no_state() -> None:
    names = 100_000
    async with serving(Limits(max_watches=names)) as (server, db):
        raw = await Raw.connect(server)
        try:
            await raw.hello()
            raw.send_bytes(
                b"".join(
                    frame(MessageType.WATCH_FEED, 10 + n, (f"feed-{n}",)) for n in range(names)
                )
            )
            await raw.pings()
            assert len(next(c for c in authenticated(server) if c.watches).watches) == names
        finally:
            raw.close()
        await wait_until(lambda: len(authenticated(server)) == 1)
        assert server.db._next_change == {}
        assert server.feed_watches == {}
        # Watching still works for those who stay: a commit wakes them.
        async with db.transaction() as tr:
            fired = db.next_change("feed-0")
            tr.set(b"x", b"1")
        await asyncio.wait_for(fired, HANG)


async def test_a_key_watch_over_max_watches_fails_retryably() -> None:
    async with serving(Limits(max_watches=2)) as (_, db):
        async with db.transaction() as tr:
            watches = [tr.watch(b"w%d" % i) for i in range(3)]
        done, pending = await asyncio.wait(watches, timeout=HANG, return_when="FIRST_COMPLETED")
        # One is refused, once: not sent again and again while the others wait.
        assert len(done) == 1 and len(pending) == 2
        with pytest.raises(shale.Unavailable, match="more than 2 watches"):
            done.pop().result()
        async with db.transaction() as tr:
            for i in range(3):
                tr.set(b"w%d" % i, b"changed")
        await asyncio.wait_for(asyncio.gather(*pending), HANG)


@pytest.mark.parametrize(
    "name", ["max_unauthenticated", "max_buffered", "frame_timeout", "max_connections"]
)
@pytest.mark.parametrize("value", [0, -1, float("nan"), "64", True])
def test_limits_must_be_positive_numbers(name: str, value: object) -> None:
    with pytest.raises(shale.UsageError, match=f"Limits.{name} must be a positive number"):
        Limits(**{name: value})  # type: ignore[arg-type]
