"""The in-process resolver and group committer of single-process engines.

This is FoundationDB's resolver, shrunk to one process: remember the keys
and ranges written by recent commits with their versions, and fail a commit
whose reads overlap a write made after its read version. Because every
commit passes through here one batch at a time, concurrent commits can share
one engine write and one fsync (group commit) at no cost to isolation: the
transactions of a batch are resolved in order against each other too.

It lives beside the engines rather than in ``shale.core`` because only the
engines that own their storage in-process use it; engines with native
conflict detection (PostgreSQL, etcd, FoundationDB) and the remote engine
(whose server runs this one) do not.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from shale.engines.atomic import materialize
from shale.engines.base import CommitRequest, CommitResult, KeyRange, Mutation, MutationType
from shale.engines.feedlog import FeedSpec
from shale.errors import ConflictError, DatabaseClosed, TransactionTooOld

__all__ = ["BatchItem", "GroupCommitter", "Resolver", "stamp_of"]

MAX_BATCH = 1024
"""Transactions per batch; bounded so one batch's fsync cannot grow without limit."""


@dataclass(slots=True)
class _Writes:
    """The writes of one commit batch. Key sets are kept as the committed
    transactions handed them over, not merged, so recording costs nothing
    per key; a finished transaction never changes them again."""

    version: int
    at: float
    key_sets: list[AbstractSet[bytes]] = field(default_factory=list)
    ranges: list[KeyRange] = field(default_factory=list)
    _sorted: list[bytes] | None = None

    def sorted_keys(self) -> list[bytes]:
        if self._sorted is None:
            self._sorted = sorted(set().union(*self.key_sets))
        return self._sorted

    def overlaps(self, request: CommitRequest) -> bool:
        reads = request.read_keys
        if reads and any(not keys.isdisjoint(reads) for keys in self.key_sets):
            return True
        for begin, end in self.ranges:
            if any(begin <= key < end for key in request.read_keys):
                return True
            if any(b < end and begin < e for b, e in request.read_ranges):
                return True
        if request.read_ranges and self.key_sets:
            keys = self.sorted_keys()
            for begin, end in request.read_ranges:
                i = bisect.bisect_left(keys, begin)
                if i < len(keys) and keys[i] < end:
                    return True
        return False


class Resolver:
    """Conflict detection over the writes of the last ``window`` seconds.

    ``floor`` is the newest version whose writes were forgotten: a
    transaction reading at or below it can no longer be checked, so it is
    too old.
    """

    def __init__(self, window: float, version: int = 0) -> None:
        self.window = window
        self.floor = version
        self._history: deque[_Writes] = deque()

    def check(self, request: CommitRequest) -> None:
        """Raise if ``request`` read anything written after its read version.

        A transaction that read nothing cannot conflict, however old.
        """
        if not (request.read_keys or request.read_ranges):
            return
        if request.read_version < self.floor:
            raise TransactionTooOld(
                f"read version {request.read_version} is older than the "
                f"{self.window:g} s window (oldest checkable: {self.floor})"
            )
        for writes in reversed(self._history):
            if writes.version <= request.read_version:
                break
            if writes.overlaps(request):
                raise ConflictError(
                    "a key this transaction read was written by a transaction "
                    f"that committed at version {writes.version}"
                )

    def record(self, version: int, keys: AbstractSet[bytes], ranges: Sequence[KeyRange]) -> None:
        """Remember writes committed at ``version`` (added to its batch)."""
        if self._history and self._history[-1].version == version:
            writes = self._history[-1]
        else:
            writes = _Writes(version, time.monotonic())
            self._history.append(writes)
        if keys:
            writes.key_sets.append(keys)
            writes._sorted = None
        writes.ranges.extend(ranges)

    def trim(self) -> None:
        """Forget writes older than the window, raising ``floor``."""
        horizon = time.monotonic() - self.window
        while self._history and self._history[0].at < horizon:
            self.floor = self._history.popleft().version


BatchItem = tuple[Sequence[Mutation], Sequence[FeedSpec]]
"""One transaction of a batch: its mutations, and the feeds it must log to."""

ApplyBatch = Callable[[int, list[BatchItem]], Awaitable[None]]
"""Writes a batch (one item per transaction, in batch order) at a version.
Transaction ``i`` of the batch has versionstamp ``(version, i)``."""


def stamp_of(version: int, order: int) -> bytes:
    """The versionstamp of transaction ``order`` of the batch at ``version``."""
    return CommitResult(version, order).versionstamp


@dataclass(slots=True)
class _Pending:
    request: CommitRequest
    future: asyncio.Future[CommitResult]


class GroupCommitter:
    """Serializes commits through a ``Resolver`` in batches.

    ``apply`` is called once per batch with the batch's version; it must
    write all of it atomically (one engine transaction, one fsync). While it
    runs, new commits queue up and form the next batch.
    """

    def __init__(self, resolver: Resolver, apply: ApplyBatch, version: int) -> None:
        self.resolver = resolver
        self.version = version
        self._apply = apply
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        """Engine writes so far; with ``commits``, shows how well commits group."""
        self.commits = 0

    async def commit(self, request: CommitRequest) -> CommitResult:
        if self._closed:
            raise DatabaseClosed("the database is closed; commit refused")
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def drain(self) -> None:
        """Wait until every queued commit is finished."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def close(self) -> None:
        """Refuse new commits with ``DatabaseClosed``, then let the queued
        ones finish: a commit that was accepted is never dropped."""
        self._closed = True
        await self.drain()

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit_batch(batch)
        finally:
            self._flusher = None

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        version = self.version + 1
        self.resolver.trim()
        accepted: list[tuple[_Pending, int]] = []
        writes: list[BatchItem] = []
        for pending in batch:
            try:
                self.resolver.check(pending.request)
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            order = len(accepted)
            mutations = self._resolve_stamps(pending.request, version, order)
            accepted.append((pending, order))
            writes.append((mutations, pending.request.feeds))
        if not accepted:
            return
        try:
            await self._apply(version, writes)
        except BaseException as exc:
            for pending, _ in accepted:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.version = version
        self.batches += 1
        self.commits += len(accepted)
        for pending, order in accepted:
            if not pending.future.done():
                pending.future.set_result(CommitResult(version, order))

    def _resolve_stamps(
        self, request: CommitRequest, version: int, order: int
    ) -> Sequence[Mutation]:
        """Fill in versionstamps and record the transaction's write set."""
        mutations = request.mutations
        keys = request.write_keys
        if request.versionstamped:
            stamp = CommitResult(version, order).versionstamp
            mutations = [materialize(m, stamp) for m in mutations]
            keys = {key for op, key, _ in mutations if op is MutationType.SET} | keys
        self.resolver.record(version, keys, request.write_ranges)
        return mutations
