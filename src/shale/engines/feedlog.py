"""The change-feed log, written by engines inside the commit it describes.

Whether a write is an insert or an update, and what the old value was, is
only known at commit time, against the state the commit applies to. An
engine that serializes its commits (every engine using ``GroupCommitter``)
knows that state while it applies a transaction, so it captures the keys a
feed covers before and after, and appends the difference to the feed's log
in the same engine transaction. Readers never add a read conflict for it,
so a feed costs writers no conflicts.

Layout, under the system keyspace (``shale.feeds`` reads it)::

    \\xff + pack(("feed", name, "log", Versionstamp(stamp, part)))
        -> pack((unix_time, ((op, key, new, old), ...)))
    \\xff + pack(("feed", name, "state")) -> pack((entries, horizon))

One committed transaction makes one entry per feed it touched, split into
parts below the value limit; ``horizon`` is the log key of the newest part
retention deleted (``b""`` if none), so a reader can tell a gap from an
empty stretch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shale import tuple as tuples
from shale.engines.atomic import apply_atomic
from shale.engines.base import Mutation, MutationType
from shale.errors import FormatVersionError

__all__ = [
    "DELETE",
    "FORMAT",
    "INSERT",
    "UPDATE",
    "CurrentState",
    "FeedCapture",
    "FeedSpec",
    "decode_declaration",
    "decode_entry",
    "encode_declaration",
    "feed_log",
    "feed_state_key",
]

INSERT = 1
DELETE = 2
UPDATE = 4
"""Operation codes, as BigchainDB's ``ChangeFeed`` numbers them (a bitmask)."""

SYSTEM = b"\xff"
PART_BYTES = 90_000
"""Entries are split into parts of about this size, so parts stay below the
100,000-byte value limit; one change larger than that gets a part of its own."""
TRIM_SLACK = 16
"""Extra old parts one commit may trim beyond what it appended, so trimming
catches up after a quiet spell without making any commit slow."""


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """A declared feed, as commits carry it to the engine."""

    name: str
    prefix: bytes
    old_values: bool = False
    max_age: float | None = None
    max_entries: int | None = None

    def covers(self, key: bytes) -> bool:
        return key.startswith(self.prefix)


@functools.lru_cache(maxsize=1024)
def feed_log(name: str) -> bytes:
    """The raw prefix of a feed's log entries."""
    return SYSTEM + tuples.pack(("feed", name, "log"))


FORMAT = (1, 0)
"""(major, minor) of the feed declaration and log layout; a declaration of
a newer major is refused when the database opens."""


def encode_declaration(spec: FeedSpec) -> bytes:
    return tuples.pack(
        (*FORMAT, spec.name, spec.prefix, spec.old_values, spec.max_age, spec.max_entries)
    )


def decode_declaration(value: bytes) -> FeedSpec:
    """The feed a stored declaration describes.

    Raises:
        FormatVersionError: written by a newer major version of Shale.
    """
    major, _minor, name, prefix, old_values, max_age, max_entries = tuples.unpack(value)
    if major > FORMAT[0]:
        raise FormatVersionError(
            f"feed {name!r} has format {major}.{_minor}, newer than this Shale reads; "
            "upgrade shaledb"
        )
    return FeedSpec(name, prefix, old_values, max_age, max_entries)


def feed_state_key(name: str) -> bytes:
    return SYSTEM + tuples.pack(("feed", name, "state"))


class CurrentState(Protocol):
    """An engine's view of its state in the middle of applying a batch."""

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def scan(self, begin: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]: ...


def _prefix_end(prefix: bytes) -> bytes:
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes((stripped[-1] + 1,)) if stripped else SYSTEM


class FeedCapture:
    """What a transaction changes under each feed, worked out around its
    application: the covered keys' values are read once, before; the values
    after follow from replaying the mutations on them (the same semantics
    the engine applies), so nothing is read twice."""

    def __init__(
        self, feeds: Sequence[FeedSpec], mutations: Sequence[Mutation], state: CurrentState
    ) -> None:
        self._changed: list[tuple[FeedSpec, dict[bytes, bytes | None], dict[bytes, bytes | None]]]
        self._changed = []
        for feed in feeds:
            end = _prefix_end(feed.prefix)
            covered: list[Mutation] = []
            points: list[bytes] = []
            ranges: list[tuple[bytes, bytes]] = []
            for mutation in mutations:
                op, key, param = mutation
                if op is MutationType.CLEAR_RANGE:
                    low, high = max(key, feed.prefix), min(param, end)
                    if low < high:
                        covered.append((op, low, high))
                        ranges.append((low, high))
                elif key.startswith(feed.prefix):
                    covered.append(mutation)
                    points.append(key)
            if not covered:
                continue
            unique = list(dict.fromkeys(points))
            before = dict(zip(unique, state.get_many(unique), strict=True))
            for low, high in ranges:
                before.update(state.scan(low, high, 0))
            self._changed.append((feed, before, _replay(before, covered)))

    def finish(self, state: CurrentState, stamp: bytes) -> list[Mutation]:
        """The log (and retention) writes for the transaction at ``stamp``."""
        out: list[Mutation] = []
        now = time.time()
        for feed, before, after in self._changed:
            changes = []
            for key in sorted(before.keys() | after.keys()):
                old, new = before.get(key), after.get(key)
                if old == new:
                    continue
                op = INSERT if old is None else DELETE if new is None else UPDATE
                changes.append((op, key, new, old if feed.old_values else None))
            if changes:
                parts = _split(now, changes)
                log = feed_log(feed.name)
                for part, value in enumerate(parts):
                    key = log + tuples.pack((tuples.Versionstamp(stamp, part),))
                    out.append((MutationType.SET, key, value))
                if feed.max_age is not None or feed.max_entries is not None:
                    out.extend(_retain(feed, state, len(parts), now))
        return out


def _replay(
    before: dict[bytes, bytes | None], mutations: list[Mutation]
) -> dict[bytes, bytes | None]:
    after = dict(before)
    for op, key, param in mutations:
        if op is MutationType.SET:
            after[key] = param
        elif op is MutationType.CLEAR:
            after[key] = None
        elif op is MutationType.CLEAR_RANGE:
            for k in after:
                if key <= k < param:
                    after[k] = None
        else:
            after[key] = apply_atomic(op, after.get(key), param)
    return after


def _split(now: float, changes: list[tuple[int, bytes, bytes | None, bytes | None]]) -> list[bytes]:
    parts: list[bytes] = []
    current: list[tuple[int, bytes, bytes | None, bytes | None]] = []
    size = 0
    for change in changes:
        _, key, new, old = change
        weight = 16 + len(key) + (len(new) if new else 0) + (len(old) if old else 0)
        if current and size + weight > PART_BYTES:
            parts.append(tuples.pack((now, tuple(current))))
            current, size = [], 0
        current.append(change)
        size += weight
    parts.append(tuples.pack((now, tuple(current))))
    return parts


def _retain(feed: FeedSpec, state: CurrentState, appended: int, now: float) -> list[Mutation]:
    """Count the new parts and trim the oldest beyond the feed's limits."""
    state_key = feed_state_key(feed.name)
    raw = state.get(state_key)
    entries, horizon = tuples.unpack(raw) if raw else (0, b"")
    entries += appended
    out: list[Mutation] = []
    if feed.max_entries is not None or feed.max_age is not None:
        log = feed_log(feed.name)
        budget = appended + TRIM_SLACK
        start = horizon + b"\x00" if horizon else log  # trimmed keys may linger as tombstones
        for key, value in state.scan(start, log + b"\xff", budget):
            too_many = feed.max_entries is not None and entries > feed.max_entries
            too_old = feed.max_age is not None and _written_at(value) < now - feed.max_age
            if not (too_many or too_old):
                break
            out.append((MutationType.CLEAR, key, b""))
            entries -= 1
            horizon = key
    out.append((MutationType.SET, state_key, tuples.pack((entries, horizon))))
    return out


def _written_at(value: bytes) -> float:
    """The time of a log part, decoding only its first element (a double,
    9 bytes) rather than the whole part."""
    (when,) = tuples.unpack(value[:9])
    return float(when)


def decode_entry(value: bytes) -> tuple[float, list[tuple[int, bytes, bytes | None, bytes | None]]]:
    """``(unix_time, [(op, key, new, old), ...])`` of one log part."""
    when, changes = tuples.unpack(value)
    return when, [tuple(change) for change in changes]
