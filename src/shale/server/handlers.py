"""The server's requests, one function each: check the fields at once,
then do the work (``Connection.spawn``), so that a bad field is refused
before anything runs. ``docs/protocol.md`` describes each message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shale import errors
from shale.engines.base import EngineSnapshot
from shale.server import eager
from shale.server.protocol import (
    REPLY,
    ErrorCode,
    FrameError,
    MessageType,
    check_fields,
    decode_commit,
    error_of,
)

if TYPE_CHECKING:
    from shale.server.connection import Connection

__all__ = ["HANDLERS", "RANGE_ROWS", "release_snapshot"]


def release_snapshot(task: asyncio.Future[EngineSnapshot]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().release()


# -- handlers: check the fields now, then do the work (a task only if it waits) --


def _ping(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields)
    if request:
        conn.send(MessageType.PING | REPLY, request, ())


def _open(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, int, (int, type(None)))
    sid, version = fields
    if sid <= 0 or sid in conn.snapshots:
        raise errors.ProtocolError(f"snapshot id {sid} is not positive or already open")
    if len(conn.snapshots) >= conn.limits.max_snapshots:
        conn.refuse_open(sid)
        raise FrameError(
            ErrorCode.TOO_MANY_REQUESTS,
            f"more than {conn.limits.max_snapshots} open snapshots; release some",
        )
    # Not a counted request: ``max_snapshots`` bounds these, and a read
    # sent right behind the open waits on it.
    opening = eager.start(conn.server.db.engine.snapshot(version))
    conn.hold(sid, opening)

    # A failed open stays under its id until released, so that the reads
    # sent behind it get its error rather than UNKNOWN_SNAPSHOT.
    def opened(future: asyncio.Future[EngineSnapshot]) -> None:
        if future.cancelled():
            return
        failure = future.exception()  # retrieved even when nobody is told
        if not request:
            return
        if failure is None:
            version = future.result().read_version
            conn.send(MessageType.OPEN | REPLY, request, (version,), hold=True)
        else:
            conn.error(request, error_of(failure), str(failure))

    if opening.done():
        opened(opening)
    else:
        opening.add_done_callback(opened)


def _get(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, int, bytes)
    opening = conn.snapshot(fields[0])
    key = fields[1]

    async def get() -> tuple[Any, ...]:
        snapshot = await opening
        return (await snapshot.get(key), snapshot.read_version)

    conn.spawn(MessageType.GET, request, get())


def _get_range(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, int, bytes, bytes, int, bool)
    sid, begin, end, limit, reverse = fields
    if limit < 0:
        raise errors.ProtocolError(f"limit must be >= 0, not {limit}")
    opening = conn.snapshot(sid)
    budget = conn.limits.range_bytes

    async def get_range() -> tuple[Any, ...]:
        snapshot = await opening
        want = min(limit, RANGE_ROWS) if limit else RANGE_ROWS
        rows = await snapshot.get_range(begin, end, want, reverse)
        out: list[bytes] = []
        size = 0
        for key, value in rows:
            out += (key, value)
            size += len(key) + len(value)
            if size >= budget:
                break
        more = len(out) < 2 * len(rows) or (len(rows) == want and want != limit)
        return (more, snapshot.read_version, *out)

    conn.spawn(MessageType.GET_RANGE, request, get_range())


RANGE_ROWS = 4096
"""Rows one ``GET_RANGE`` reply reads at most; the client asks again for more."""


def _version(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, int)
    opening = conn.snapshot(fields[0])

    async def version() -> tuple[Any, ...]:
        return ((await opening).read_version,)

    conn.spawn(MessageType.VERSION, request, version())


def _release_handler(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, int)
    conn.release(fields[0])
    if request:
        conn.send(MessageType.RELEASE | REPLY, request, ())


def _commit(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    try:
        sid, commit_request = decode_commit(fields)
    except errors.ShaleError:
        # A refused commit still ends its transaction: release what it names.
        if fields and type(fields[0]) is int and fields[0] > 0:
            conn.release(fields[0])
        raise
    # The commit carries its read version: the snapshot's work is done, and
    # one that expired does not stop the commit (the resolver judges its age).
    if sid and not conn.release(sid):
        raise FrameError(
            ErrorCode.UNKNOWN_SNAPSHOT,
            f"no open snapshot {sid} (never opened, released, or over max_snapshots)",
        )
    # Shielded from the connection's end: the engine applies a commit it has
    # queued whoever waits for it, and the feed declarations it carries and
    # the wake-ups it owes subscribers must follow what the engine did, not
    # whether its client stayed.
    conn.spawn(MessageType.COMMIT, request, conn.server.commit(commit_request), shielded=True)


def _watch_feed(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, str)
    (name,) = fields
    _check_watch(conn, request)
    server = conn.server
    future = server.watch_feed(name)
    _watch(conn, MessageType.WATCH_FEED, request, future, lambda: server.unwatch_feed(name, future))


def _watch_key(conn: Connection, request: int, fields: tuple[Any, ...]) -> None:
    check_fields(fields, bytes, (bytes, type(None)))
    key, seen = fields
    _check_watch(conn, request)
    db = conn.server.db
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _watch(conn, MessageType.WATCH_KEY, request, future, future.cancel)
    future.add_done_callback(lambda _: db._prune_watches(key))
    db._add_watch(key, seen, future)


def _check_watch(conn: Connection, request: int) -> None:
    if request == 0 or request in conn.watches:
        raise errors.ProtocolError("a watch needs a request id of its own")
    if len(conn.watches) >= conn.limits.max_watches:
        raise FrameError(
            ErrorCode.TOO_MANY_REQUESTS, f"more than {conn.limits.max_watches} watches"
        )


def _watch(
    conn: Connection,
    kind: int,
    request: int,
    future: asyncio.Future[None],
    drop: Callable[[], object],
) -> None:
    """Answer ``request`` when ``future`` resolves; ``drop`` it if the
    connection ends first. A feed's future is shared with the feed's other
    watchers, so dropping gives up this connection's share; a key watch's
    future is the connection's own, and dropping cancels it."""

    def fired(_: asyncio.Future[None]) -> None:
        if conn.watches.pop(request, None) is not None:
            conn.send(kind | REPLY, request, ())

    conn.watches[request] = (future, fired, drop)
    future.add_done_callback(fired)


HANDLERS: dict[int, Callable[[Connection, int, tuple[Any, ...]], None]] = {
    MessageType.PING: _ping,
    MessageType.OPEN: _open,
    MessageType.GET: _get,
    MessageType.GET_RANGE: _get_range,
    MessageType.VERSION: _version,
    MessageType.RELEASE: _release_handler,
    MessageType.COMMIT: _commit,
    MessageType.WATCH_FEED: _watch_feed,
    MessageType.WATCH_KEY: _watch_key,
}
