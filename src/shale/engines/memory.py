"""``memory://`` — the reference engine and test oracle.

Small and obviously correct before fast: the keys in order (``SortedKeys``,
short sorted lists so inserts stay cheap as the store grows) and, per key,
its versions as a list of ``(version, value-or-None)``. Nothing is
persisted. Conflicts are checked by the shared in-process resolver, so this
engine behaves, commit for commit, like the SQLite engine does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import ClassVar

from shale.engines.atomic import apply_atomic
from shale.engines.base import (
    Capabilities,
    CommitRequest,
    CommitResult,
    MutationType,
)
from shale.engines.feedlog import FeedCapture
from shale.engines.local import BatchItem, GroupCommitter, Resolver, failed_in_engine, stamp_of
from shale.engines.options import window_option
from shale.errors import DatabaseClosed, ReadVersionError, TransactionTooOld

__all__ = ["MemoryEngine"]


class SortedKeys:
    """Keys in order, as a list of short sorted lists.

    One flat sorted list costs a memmove of the whole list per insert, which
    grows with the store; short lists keep inserts cheap at any size while
    staying a few lines of ``bisect``.
    """

    LOAD = 1000

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        ordered = list(keys)
        self._lists = [ordered[i : i + self.LOAD] for i in range(0, len(ordered), self.LOAD)]
        self._maxes = [chunk[-1] for chunk in self._lists]
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._lists:
            yield from chunk

    def add(self, key: bytes) -> None:
        """Insert ``key``, which must not be present."""
        self._len += 1
        if not self._maxes:
            self._lists.append([key])
            self._maxes.append(key)
            return
        i = bisect.bisect_left(self._maxes, key)
        if i == len(self._maxes):
            i -= 1
            self._lists[i].append(key)
            self._maxes[i] = key
        else:
            bisect.insort(self._lists[i], key)
        chunk = self._lists[i]
        if len(chunk) > 2 * self.LOAD:
            self._lists.insert(i + 1, chunk[self.LOAD :])
            del chunk[self.LOAD :]
            self._maxes.insert(i, chunk[-1])

    def irange(self, begin: bytes, end: bytes, reverse: bool = False) -> Iterator[bytes]:
        """The keys in ``[begin, end)``, ascending or descending."""
        if reverse:
            j = min(bisect.bisect_left(self._maxes, end), len(self._lists) - 1)
            for chunk in self._lists[j::-1]:
                for key in reversed(chunk[: bisect.bisect_left(chunk, end)]):
                    if key < begin:
                        return
                    yield key
            return
        i = bisect.bisect_left(self._maxes, begin)
        for chunk in self._lists[i:]:
            for key in chunk[bisect.bisect_left(chunk, begin) :]:
                if key >= end:
                    return
                yield key


class _Current:
    """The engine's state as a batch at ``version`` is being applied."""

    __slots__ = ("_engine", "_version")

    def __init__(self, engine: MemoryEngine, version: int) -> None:
        self._engine = engine
        self._version = version

    def get(self, key: bytes) -> bytes | None:
        return self._engine.value_at(key, self._version)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self._engine.value_at(key, self._version) for key in keys]

    def scan(self, begin: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        return self._engine.range_at(begin, end, limit, False, self._version)


class MemorySnapshot:
    """A read view of a ``MemoryEngine`` at one version."""

    __slots__ = ("_engine", "_released", "read_version")

    def __init__(self, engine: MemoryEngine, version: int) -> None:
        self._engine = engine
        self.read_version = version
        self._released = False

    def _check(self) -> None:
        if self._engine.closed:
            raise DatabaseClosed("the memory engine was closed")
        if self._released or self.read_version < self._engine.floor:
            raise TransactionTooOld(
                f"snapshot at version {self.read_version} is no longer readable"
            )

    async def version(self) -> int:
        return self.read_version

    async def get(self, key: bytes) -> bytes | None:
        self._check()
        return self._engine.value_at(key, self.read_version)

    async def get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool
    ) -> list[tuple[bytes, bytes]]:
        self._check()
        return self._engine.range_at(begin, end, limit, reverse, self.read_version)

    def release(self) -> None:
        self._released = True


class MemoryEngine:
    """An in-process, multi-version ordered map. See the module docstring."""

    scheme: ClassVar[str] = "memory"
    options: ClassVar[frozenset[str]] = frozenset()
    capabilities = Capabilities(durable=False, persistent=False, multi_process=False)

    def __init__(self, window: float) -> None:
        self._keys = SortedKeys()
        self._versions: dict[bytes, list[tuple[int, bytes | None]]] = {}
        self._tombstones = 0
        self.closed = False
        self._undo: dict[bytes, list[tuple[int, bytes | None]] | None] | None = None
        """While a transaction is applied: each key's history before it wrote
        the key (``None``: the key was new)."""
        self._committer = GroupCommitter(Resolver(window), self._apply, version=0)

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> MemoryEngine:
        return cls(window_option(options))

    @property
    def floor(self) -> int:
        return self._committer.resolver.floor

    async def snapshot(self, version: int | None = None) -> MemorySnapshot:
        if self.closed:
            raise DatabaseClosed("the memory engine was closed")
        latest = self._committer.version
        if version is None:
            return MemorySnapshot(self, latest)
        if version > latest:
            raise ReadVersionError(f"version {version} is in the future (latest: {latest})")
        if version < self.floor:
            raise TransactionTooOld(f"version {version} is older than the MVCC window")
        return MemorySnapshot(self, version)

    async def commit(self, request: CommitRequest) -> CommitResult:
        return await self._committer.commit(request)

    async def close(self) -> None:
        self.closed = True
        await self._committer.close()

    def value_at(self, key: bytes, version: int) -> bytes | None:
        history = self._versions.get(key)
        if history is None:
            return None
        for at, value in reversed(history):
            if at <= version:
                return value
        return None

    def range_at(
        self, begin: bytes, end: bytes, limit: int, reverse: bool, version: int
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        for key in self._keys.irange(begin, end, reverse):
            value = self.value_at(key, version)
            if value is not None:
                out.append((key, value))
                if len(out) == limit:
                    break
        return out

    async def _apply(self, version: int, batch: list[BatchItem]) -> list[Exception | None]:
        state = _Current(self, version)
        outcomes: list[Exception | None] = []
        for order, (mutations, feeds) in enumerate(batch):
            # Each transaction keeps an undo log, so one that fails half-way
            # (a corrupt feed state, say) takes back its own writes and
            # nobody else's: a commit reported failed is never applied.
            self._undo = {}
            tombstones = self._tombstones
            try:
                capture = FeedCapture(feeds, mutations, state) if feeds else None
                for op, key, param in mutations:
                    self._apply_one(version, op, key, param)
                if capture is not None:
                    for op, key, param in capture.finish(state, stamp_of(version, order)):
                        self._apply_one(version, op, key, param)
            except Exception as exc:
                self._roll_back(tombstones)
                outcomes.append(failed_in_engine(exc))
            else:
                outcomes.append(None)
        self._undo = None
        if self._tombstones > 1024 and self._tombstones * 2 > len(self._keys):
            self._sweep()
        return outcomes

    def _roll_back(self, tombstones: int) -> None:
        assert self._undo is not None
        for key, history in self._undo.items():
            if history is None:
                # Keys are never removed from ``_keys`` but by a sweep, so a
                # key this transaction created stays as an old tombstone.
                self._versions[key] = [(0, None)]
                tombstones += 1
            else:
                self._versions[key] = history
        self._tombstones = tombstones

    def _apply_one(self, version: int, op: MutationType, key: bytes, param: bytes) -> None:
        if op is MutationType.SET:
            self._write(version, key, param)
        elif op is MutationType.CLEAR:
            self._write(version, key, None)
        elif op is MutationType.CLEAR_RANGE:
            for victim in list(self._keys.irange(key, param)):
                self._write(version, victim, None)
        else:
            self._write(version, key, apply_atomic(op, self.value_at(key, version), param))

    def _write(self, version: int, key: bytes, value: bytes | None) -> None:
        history = self._versions.get(key)
        undo = self._undo
        if undo is not None and key not in undo and (history is not None or value is not None):
            undo[key] = None if history is None else history.copy()
        if history is None:
            if value is None:
                return
            self._keys.add(key)
            self._versions[key] = [(version, value)]
            return
        if history[-1][1] is None and value is not None:
            self._tombstones -= 1
        elif history[-1][1] is not None and value is None:
            self._tombstones += 1
        if history[-1][0] == version:
            history[-1] = (version, value)
        else:
            history.append((version, value))
        self._prune(history)

    def _prune(self, history: list[tuple[int, bytes | None]]) -> None:
        """Drop versions no snapshot can read any more: all but the newest at
        or below the floor. Versions are sorted, so a bisection finds the cut
        and a key written by every commit stays cheap to write."""
        keep = bisect.bisect_right(history, self.floor, key=itemgetter(0)) - 1
        if keep > 0:
            del history[:keep]

    def _sweep(self) -> None:
        """Forget keys whose only readable state is "absent"."""
        floor = self.floor
        live: list[bytes] = []
        for key in self._keys:
            history = self._versions[key]
            self._prune(history)
            if len(history) == 1 and history[0][1] is None and history[0][0] <= floor:
                del self._versions[key]
            else:
                live.append(key)
        self._keys = SortedKeys(live)
        self._tombstones = sum(1 for k in live if self._versions[k][-1][1] is None)
