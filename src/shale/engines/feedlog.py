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
    \\xff + pack(("feed", name, "state")) -> u64 LE entries + horizon

One committed transaction makes one entry per feed it touched, split into
parts below the value limit; ``horizon`` is the log key of the newest part
retention deleted (``b""`` if none), so a reader can tell a gap from an
empty stretch.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shale import tuple as tuples
from shale.engines.atomic import apply_atomic
from shale.engines.base import Mutation, MutationType
from shale.errors import FormatVersionError, TransactionTooLarge
from shale.keys import strinc

__all__ = [
    "CAPTURE_LIMIT",
    "DECLARATIONS",
    "DELETE",
    "FORMAT",
    "INSERT",
    "UPDATE",
    "CurrentState",
    "FeedCapture",
    "FeedSpec",
    "check_system_write",
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
CAPTURE_LIMIT = 10_000_000
"""Bytes of keys and old values one transaction may log to its feeds, the
same as a transaction's own size limit: without it, clearing a large range
under a feed would write (and hold in memory) an entry as large as the
range."""
_SCAN_BATCH = 1000
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
        ValueError: not a declaration.
    """
    fields = tuples.unpack(value)
    if (
        len(fields) != 7
        or not all(type(v) is int for v in fields[:2])
        or type(fields[2]) is not str
        or type(fields[3]) is not bytes
        or type(fields[4]) is not bool
        or not (fields[5] is None or type(fields[5]) in (int, float))
        or not (fields[6] is None or type(fields[6]) is int)
    ):
        # Declarations can come from clients of a server: a bad one must be
        # refused here, not fail a whole batch inside the engine.
        raise ValueError(f"a feed declaration has the wrong fields: {fields!r:.200}")
    major, _minor, name, prefix, old_values, max_age, max_entries = fields
    if not name or not prefix or prefix.startswith(SYSTEM):
        raise ValueError(
            "a feed declaration needs a name and a prefix outside the system keyspace: "
            f"{fields!r:.200}"
        )
    if major > FORMAT[0]:
        raise FormatVersionError(
            f"feed {name!r} has format {major}.{_minor}, newer than this Shale reads; "
            "upgrade shaledb"
        )
    return FeedSpec(name, prefix, old_values, max_age, max_entries)


def feed_state_key(name: str) -> bytes:
    return SYSTEM + tuples.pack(("feed", name, "state"))


DECLARATIONS = SYSTEM + tuples.pack(("feeds",))
"""Where feed declarations live: ``DECLARATIONS + pack((name,))``."""
_FEED_KEYS = SYSTEM + tuples.pack(("feed",))


def check_system_write(op: MutationType, key: bytes, param: bytes) -> str | None:
    """Why a write to the system keyspace would corrupt a feed, or ``None``.

    Engines trust what they find under a feed's declaration, state and log
    keys while they commit; a malformed one would fail every later commit
    under the feed inside the engine, or make retention clear the wrong
    keys. So those writes are checked when they are made: declarations and
    states must decode, a state is versionstamped only as a declaration
    writes it, log entries are written by engines alone, and none of them
    takes atomic operations or versionstamped keys.
    """
    if key.startswith(DECLARATIONS):
        return _check_declaration(op, key, param)
    if not key.startswith(_FEED_KEYS):
        return None
    if op is MutationType.SET_VERSIONSTAMPED_KEY:
        return "versionstamped keys cannot be written among a feed's keys"
    try:
        parts = tuples.unpack(key, 1)
    except ValueError:
        return None
    if len(parts) < 3 or not isinstance(parts[1], str) or op is MutationType.CLEAR:
        return None
    name, kind = parts[1], parts[2]
    if kind == "log":
        return "a feed's log is written by the engine alone; clear it, never write it"
    if kind != "state" or len(parts) != 3:
        return None
    if op is MutationType.SET_VERSIONSTAMPED_VALUE:
        if param != declaration_state(name):
            return f"a state of feed {name!r} is versionstamped only as its declaration writes it"
        return None
    if op is not MutationType.SET:
        return "a feed's state is written with set and clear only"
    horizon = param[_COUNT.size :]
    if len(param) < _COUNT.size or (horizon and not horizon.startswith(feed_log(name))):
        return f"not a state of feed {name!r}: {param[:40]!r}"
    return None


def _check_declaration(op: MutationType, key: bytes, param: bytes) -> str | None:
    if op is MutationType.CLEAR:
        return None
    if op is not MutationType.SET:
        return "feed declarations are written with set and clear only"
    try:
        (name,) = tuples.unpack(key, len(DECLARATIONS))
        spec = decode_declaration(param)
    except ValueError as exc:
        return f"not a feed declaration: {exc}"
    if spec.name != name:
        return f"the declaration of feed {name!r} names {spec.name!r}"
    return None


class CurrentState(Protocol):
    """An engine's view of its state in the middle of applying a batch."""

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def scan(self, begin: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]: ...


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
        budget = CAPTURE_LIMIT
        for feed in feeds:
            end = strinc(feed.prefix)  # feed prefixes never start with 0xFF
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
            budget -= sum(len(k) + len(v or b"") for k, v in before.items())
            for low, high in ranges:
                budget = _scan_into(before, state, low, high, budget, feed.name)
            if budget < 0:
                raise _too_large(feed.name)
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
                    out.append((MutationType.SET, part_key(log, stamp, part), value))
                if feed.max_age is not None or feed.max_entries is not None:
                    out.extend(_retain(feed, state, now))
        return out


def _scan_into(
    before: dict[bytes, bytes | None],
    state: CurrentState,
    low: bytes,
    high: bytes,
    budget: int,
    feed: str,
) -> int:
    """Add the pairs of ``[low, high)`` to ``before`` a bounded batch at a
    time, and return what is left of ``budget``: a range clear over a huge
    prefix fails once past the limit, before it has read the prefix."""
    while True:
        rows = state.scan(low, high, _SCAN_BATCH)
        for key, value in rows:
            before[key] = value
            budget -= len(key) + len(value)
        if budget < 0:
            raise _too_large(feed)
        if len(rows) < _SCAN_BATCH:
            return budget
        low = rows[-1][0] + b"\x00"


def _too_large(feed: str) -> TransactionTooLarge:
    return TransactionTooLarge(
        f"the changes this transaction makes under feed {feed!r} would log more than "
        f"{CAPTURE_LIMIT} bytes; clear large ranges under a feed in several transactions"
    )


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
    """The transaction's entry, cut into parts below the value limit. Parts
    are byte slices of one encoded entry, so even a single change larger
    than a part (a 10 kB key with 100 kB new and old values) fits."""
    entry = tuples.pack((now, tuple(changes)))
    return [entry[i : i + PART_BYTES] for i in range(0, len(entry), PART_BYTES)]


_VERSIONSTAMP_CODE = b"\x33"


def part_key(log: bytes, stamp: bytes, part: int) -> bytes:
    """``log + pack((Versionstamp(stamp, part),))``, spelled out: a complete
    versionstamp packs as its type code, 10 bytes and a 2-byte part, and
    this runs on every logged commit."""
    return log + _VERSIONSTAMP_CODE + stamp + part.to_bytes(2, "big")


def stamp_of(log: bytes, key: bytes) -> tuple[bytes, int]:
    """``(stamp, part)`` of a log key."""
    start = len(log) + 1
    return key[start : start + 10], int.from_bytes(key[start + 10 : start + 12], "big")


_COUNT = struct.Struct("<Q")


def encode_state(entries: int, horizon: bytes) -> bytes:
    """A feed's state: transactions retained, then the log key of the newest
    trimmed part (empty if none)."""
    return _COUNT.pack(entries) + horizon


def decode_state(raw: bytes | None) -> tuple[int, bytes]:
    if not raw:
        return 0, b""
    return _COUNT.unpack_from(raw)[0], raw[_COUNT.size :]


def declaration_state(name: str) -> bytes:
    """The state a declaration writes with ``set_versionstamped_value``: its
    horizon is the declaring commit's own position, so a cursor from before
    it (say from a dropped feed of the same name) is ``HistoryLost``, never
    a silent skip of what went unlogged."""
    return tuples.pack_with_versionstamp(
        (tuples.Versionstamp.incomplete(0),), prefix=_COUNT.pack(0) + feed_log(name)
    )


def _retain(feed: FeedSpec, state: CurrentState, now: float) -> list[Mutation]:
    """Count the new entry and trim whole transactions beyond the limits,
    oldest first, at most ``TRIM_SLACK + 1`` per commit."""
    state_key = feed_state_key(feed.name)
    entries, horizon = decode_state(state.get(state_key))
    entries += 1
    log = feed_log(feed.name)
    start = horizon + b"\x00" if horizon else log  # trimmed keys may linger as tombstones
    out: list[Mutation] = []
    for _ in range(TRIM_SLACK + 1):
        too_many = feed.max_entries is not None and entries > feed.max_entries
        if not too_many and feed.max_age is None:
            break
        first = state.scan(start, log + b"\xff", 1)
        if not first:
            break
        key, value = first[0]
        if not too_many and not (feed.max_age and _written_at(value) < now - feed.max_age):
            break
        stamp, _ = stamp_of(log, key)
        for part, _ in state.scan(key, part_key(log, stamp, 0xFFFF), 0):
            out.append((MutationType.CLEAR, part, b""))
            horizon = part
        start = horizon + b"\x00"
        entries -= 1
    out.append((MutationType.SET, state_key, encode_state(entries, horizon)))
    return out


def _written_at(value: bytes) -> float:
    """The time of an entry from its first part, decoding only the leading
    double (9 bytes) rather than the whole entry."""
    (when,) = tuples.unpack(value[:9])
    return float(when)


def decode_entry(data: bytes) -> tuple[float, list[tuple[int, bytes, bytes | None, bytes | None]]]:
    """``(unix_time, [(op, key, new, old), ...])`` of a whole entry (its
    parts joined)."""
    when, changes = tuples.unpack(data)
    return when, [tuple(change) for change in changes]
