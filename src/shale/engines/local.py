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
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from shale.engines.atomic import materialize
from shale.engines.base import CommitRequest, CommitResult, KeyRange, Mutation, MutationType
from shale.engines.conflicts import VersionMap, coalesce
from shale.engines.feedlog import FeedSpec
from shale.errors import (
    ConflictError,
    DatabaseClosed,
    EngineError,
    ShaleError,
    TransactionTooOld,
)

__all__ = ["BatchItem", "GroupCommitter", "Resolver", "failed_in_engine", "stamp_of"]

MAX_BATCH = 1024
"""Transactions per batch; bounded so one batch's fsync cannot grow without limit."""


TAIL = 32
"""Recent batches a check compares one by one. A transaction older than
that folds the batches beyond them into the ``VersionMap`` first, so its
check costs bisections however many commits it missed. Folding only on
demand means a workload of young transactions (and a bulk load) never
pays for indexing keys that simply expire."""
TAIL_KEYS = 1 << 18
"""Keys the unfolded batches may hold (about 25 MB) before the oldest are
folded anyway. It bounds their memory, and the pause of the check that
folds them on demand (about 3 µs a key: under a second at the bound)."""


Spans = tuple[list[bytes], list[bytes]]
"""Sorted, disjoint ranges as their begins and their ends."""


def _spans(keys: Iterable[bytes], ranges: Iterable[KeyRange]) -> Spans:
    merged = coalesce(itertools.chain(((k, k + b"\x00") for k in keys), ranges))
    return [b for b, _ in merged], [e for _, e in merged]


def _overlap(a: Spans, b: Spans) -> bool:
    """Whether two span lists share a key: each span of the shorter is
    bisected into the longer, so n reads against m writes cost
    ``min(n, m) log max(n, m)``, never ``n * m``."""
    if len(a[0]) > len(b[0]):
        a, b = b, a
    begins, ends = b
    for low, high in zip(*a, strict=True):
        i = bisect.bisect_right(begins, low) - 1
        if (i >= 0 and low < ends[i]) or bisect.bisect_left(begins, high) > i + 1:
            return True
    return False


@dataclass(slots=True)
class _Batch:
    """The writes of one recent commit batch: keys copied out of the
    transactions (so their values are not kept alive), ranges as given."""

    version: int
    keys: set[bytes]
    ranges: list[KeyRange]
    _spans: Spans | None = None

    def add(self, keys: AbstractSet[bytes], ranges: Sequence[KeyRange]) -> None:
        self.keys.update(keys)
        self.ranges.extend(ranges)
        self._spans = None

    def overlaps(self, reads: _Reads) -> bool:
        """Whether a read touches a write of this batch. Keys against keys
        is a set intersection; anything with a range compares spans, built
        once per batch and once per checked request."""
        read_keys = reads.keys
        if read_keys and not self.keys.isdisjoint(read_keys):
            return True
        if not self.ranges and not reads.ranged:
            return False
        if self._spans is None:
            self._spans = _spans(self.keys, self.ranges)
        return _overlap(self._spans, reads.spans())


class _Reads:
    """A request's reads as spans, built only if a batch needs them."""

    __slots__ = ("_request", "_spans", "keys", "ranged")

    def __init__(self, request: CommitRequest) -> None:
        self._request = request
        self._spans: Spans | None = None
        self.keys = request.read_keys
        self.ranged = bool(request.read_ranges)

    def spans(self) -> Spans:
        if self._spans is None:
            self._spans = _spans(self._request.read_keys, self._request.read_ranges)
        return self._spans


class Resolver:
    """Conflict detection over the writes of the last ``window`` seconds.

    ``floor`` is the newest version whose writes were forgotten: a
    transaction reading at or below it can no longer be checked, so it is
    too old. Recent batches are checked one by one, at most ``TAIL`` per
    check; older writes are folded into a ``VersionMap`` (when a check
    needs it, or when the batches hold ``TAIL_KEYS`` keys), where a check
    costs a bisection per read key or range however many commits happened
    since the read version. Only keys are kept, never values.
    """

    def __init__(self, window: float, version: int = 0) -> None:
        self.window = window
        self.floor = version
        self._tail: deque[_Batch] = deque()
        self._tail_keys = 0
        self._map = VersionMap()
        self._folded = version
        """The newest version folded into ``_map``."""
        self._versions: deque[tuple[float, int]] = deque()
        """``(time, version)`` of each recorded batch, oldest first: when
        each version leaves the window."""
        self._compacted = 0

    def check(self, request: CommitRequest) -> None:
        """Raise if ``request`` read anything written after its read version.

        A transaction that read nothing cannot conflict, however old.
        """
        read_keys, read_ranges = request.read_keys, request.read_ranges
        if not (read_keys or read_ranges):
            return
        read_version = request.read_version
        if read_version < self.floor:
            raise TransactionTooOld(
                f"read version {read_version} is older than the "
                f"{self.window:g} s window (oldest checkable: {self.floor})"
            )
        reads = _Reads(request)
        for checked, batch in enumerate(reversed(self._tail)):
            if batch.version <= read_version:
                return
            if checked == TAIL:
                self._fold_through(batch.version)
                break
            if batch.overlaps(reads):
                raise _conflict(batch.version)
        if self._folded > read_version:
            version_at, max_over = self._map.version_at, self._map.max_over
            for key in read_keys:
                if (newest := version_at(key)) > read_version:
                    raise _conflict(newest)
            for begin, end in read_ranges:
                if begin < end and (newest := max_over(begin, end)) > read_version:
                    raise _conflict(newest)

    def record(self, version: int, keys: AbstractSet[bytes], ranges: Sequence[KeyRange]) -> None:
        """Remember writes committed at ``version``, the newest so far."""
        if self._tail and self._tail[-1].version == version:
            batch = self._tail[-1]
            before = len(batch.keys)
            batch.add(keys, ranges)
            self._tail_keys += len(batch.keys) - before
            return
        self._versions.append((time.monotonic(), version))
        self._tail.append(_Batch(version, set(keys), list(ranges)))
        self._tail_keys += len(keys)
        if self._tail_keys > TAIL_KEYS:
            while self._tail_keys > TAIL_KEYS // 2 and len(self._tail) > 1:
                self._fold(self._tail.popleft())

    def _fold_through(self, version: int) -> None:
        """Fold every unfolded batch up to ``version`` into the map."""
        while self._tail and self._tail[0].version <= version:
            self._fold(self._tail.popleft())

    def _fold(self, batch: _Batch) -> None:
        self._tail_keys -= len(batch.keys)
        version = batch.version
        if batch.ranges or len(batch.keys) > 32:
            spans = ((key, key + b"\x00") for key in batch.keys)
            self._map.assign_all(coalesce(itertools.chain(spans, batch.ranges)), version)
        else:
            assign = self._map.assign
            for key in batch.keys:
                assign(key, key + b"\x00", version)
        self._folded = version

    def trim(self, committed: int) -> None:
        """Forget writes older than the window, raising ``floor`` — never
        above ``committed``, the newest committed version, which readers
        must always be able to read at (a batch recorded here may have
        failed as a whole). The map is compacted when it has doubled since
        it last was, so compaction costs a constant per write, amortized."""
        horizon = time.monotonic() - self.window
        while self._versions and self._versions[0][0] < horizon:
            version = self._versions.popleft()[1]
            self.floor = version if version < committed else committed
        while self._tail and self._tail[0].version <= self.floor:
            self._tail_keys -= len(self._tail.popleft().keys)
        if len(self._map) > 2 * self._compacted + 1024:
            self._map.compact(self.floor)
            self._compacted = len(self._map)


def _conflict(version: int) -> ConflictError:
    return ConflictError(
        "a key this transaction read was written by a transaction that committed "
        f"at version {version}"
    )


BatchItem = tuple[Sequence[Mutation], Sequence[FeedSpec]]
"""One transaction of a batch: its mutations, and the feeds it must log to."""

ApplyBatch = Callable[[int, list[BatchItem]], Awaitable[list[Exception | None]]]
"""Writes a batch (one item per transaction, in batch order) at a version,
and returns one outcome per transaction: ``None`` if it was written, or
why it failed, in which case none of its writes were kept (the others'
were). Transaction ``i`` of the batch has versionstamp ``(version, i)``.
Raising instead means nothing of the batch was written."""


def failed_in_engine(exc: Exception) -> Exception:
    """The error a transaction that failed while its batch was written gets:
    Shale's own errors as they are, anything else as an ``EngineError``
    naming what went wrong."""
    if isinstance(exc, ShaleError):
        return exc
    error = EngineError(f"the commit failed while it was written, and was undone: {exc!r}")
    error.__cause__ = exc
    return error


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
        self.resolver.trim(self.version)
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
            outcomes = await self._apply(version, writes)
        except BaseException as exc:
            for pending, _ in accepted:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        # The version is spent even if every transaction failed: engines
        # record it (SQLite's meta row), and a reader may already be at it.
        self.version = version
        self.batches += 1
        for (pending, order), outcome in zip(accepted, outcomes, strict=True):
            if pending.future.done():
                continue
            if outcome is None:
                self.commits += 1
                pending.future.set_result(CommitResult(version, order))
            else:
                pending.future.set_exception(outcome)

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
