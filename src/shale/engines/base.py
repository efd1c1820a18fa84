"""The engine contract: what a storage engine must do for the core.

An engine is an ordered map of ``bytes`` to ``bytes`` with versioned
snapshot reads and a conflict-checked atomic commit. Everything else —
read-your-writes, key selectors, limits, retries, watches — is done by the
core above it, so an engine stays small. The conformance suite in
``shale.testing`` is the contract's executable definition: an engine that
passes it is an engine.

Versions are integers that strictly increase with every committed batch and
never go back, also across close and reopen. A versionstamp is the commit
version (8 bytes, big-endian) followed by the order of the transaction
within its batch (2 bytes, big-endian).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from shale.engines.feedlog import FeedSpec

__all__ = [
    "Capabilities",
    "CommitRequest",
    "CommitResult",
    "Engine",
    "EngineSnapshot",
    "KeyRange",
    "Mutation",
    "MutationType",
]

KeyRange = tuple[bytes, bytes]
"""A half-open range ``[begin, end)`` of keys."""


class MutationType(enum.IntEnum):
    """What a mutation does. Atomic ops take the stored value at commit time."""

    SET = 0
    CLEAR = 1
    CLEAR_RANGE = 2
    ADD = 3
    BIT_AND = 4
    BIT_OR = 5
    BIT_XOR = 6
    APPEND_IF_FITS = 7
    MAX = 8
    MIN = 9
    BYTE_MAX = 10
    BYTE_MIN = 11
    COMPARE_AND_CLEAR = 12
    SET_VERSIONSTAMPED_KEY = 13
    SET_VERSIONSTAMPED_VALUE = 14


Mutation = tuple[MutationType, bytes, bytes]
"""``(type, key, param)``. For ``CLEAR`` the param is empty; for ``CLEAR_RANGE``
the key is the range's begin and the param its end."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine offers natively; conformance tests read these to decide
    what applies.

    ``durable``: a commit survives a crash of the process once it returns.
    ``persistent``: data survives close and reopen.
    ``multi_process``: several processes may open the same database at once.
    ``old_snapshots``: ``snapshot(version)`` serves any version still inside
    the MVCC window, not only ones another transaction holds open.
    ``unknown_results``: a commit can end in ``CommitUnknownResult`` (its
    reply can be lost, as over a network), so ``Database.run`` tags each
    commit with an idempotency id to retry it safely.
    """

    durable: bool = False
    persistent: bool = False
    multi_process: bool = False
    old_snapshots: bool = True
    unknown_results: bool = False


@dataclass(slots=True)
class CommitRequest:
    """One transaction's commit, as the core hands it to the engine.

    ``mutations`` are applied in order. The conflict sets are complete: the
    engine must not derive more from the mutations (versionstamped keys aside,
    which only the engine can know). ``read_keys``/``read_ranges`` are what
    the transaction read outside snapshot reads; the commit fails with
    ``ConflictError`` if any of them was written by a commit whose version is
    greater than ``read_version``.
    """

    read_version: int
    mutations: Sequence[Mutation]
    read_keys: AbstractSet[bytes] = field(default_factory=frozenset)
    read_ranges: Sequence[KeyRange] = ()
    write_keys: AbstractSet[bytes] = field(default_factory=frozenset)
    write_ranges: Sequence[KeyRange] = ()
    feeds: Sequence[FeedSpec] = ()
    """Declared change feeds: the engine appends, in this commit, a log
    entry of what the commit changed under each feed's prefix (see
    ``shale.engines.feedlog``)."""
    versionstamped: bool = False
    """Whether any mutation is a versionstamp operation, so engines need not
    scan every mutation to find out."""
    snapshot: EngineSnapshot | None = None
    """The snapshot the transaction read from, which it releases after the
    commit. An engine that holds snapshots elsewhere (the remote engine)
    may release it as part of the commit."""


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Where a commit landed: its version and its order within the batch."""

    version: int
    batch_order: int

    @property
    def versionstamp(self) -> bytes:
        """The 10-byte versionstamp of the commit."""
        return self.version.to_bytes(8, "big") + self.batch_order.to_bytes(2, "big")


@runtime_checkable
class EngineSnapshot(Protocol):
    """A consistent read view of the database at ``read_version``.

    Reads never see a commit with a version above ``read_version``. A
    snapshot is released by ``release()``; reading a released snapshot, or
    one older than the engine's MVCC window, raises ``TransactionTooOld``.
    """

    @property
    def read_version(self) -> int:
        """The version every read of this snapshot observes. An engine that
        fixes it lazily (the remote engine, with the first read) may raise
        ``UsageError`` until ``version()`` has returned."""
        ...

    async def version(self) -> int:
        """``read_version``, waiting for it to be fixed if need be."""
        ...

    async def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or ``None`` if absent.

        Raises:
            TransactionTooOld: the snapshot is no longer readable.
        """
        ...

    async def get_range(
        self, begin: bytes, end: bytes, limit: int, reverse: bool
    ) -> list[tuple[bytes, bytes]]:
        """Pairs with ``begin <= key < end`` in key order (descending if
        ``reverse``), at most ``limit`` of them (``0`` means no limit).

        Raises:
            TransactionTooOld: the snapshot is no longer readable.
        """
        ...

    def release(self) -> None:
        """Give the snapshot back; idempotent."""
        ...


@runtime_checkable
class Engine(Protocol):
    """A storage engine, opened from a URL by the registry.

    Guarantees an engine must give:

    - commits are atomic: all of a request's mutations or none;
    - ``commit`` returns only once the commit is durable if
      ``capabilities.durable``;
    - a commit whose reads overlap a write of a later commit fails with
      ``ConflictError`` and writes nothing (strict serializability);
    - versions strictly increase, across close and reopen if persistent;
    - no driver exception escapes: each engine maps its driver's errors to
      ``shale.errors`` in one place.
    """

    scheme: ClassVar[str]
    capabilities: Capabilities
    # An engine may also declare ``options: ClassVar[frozenset[str]]``, the
    # URL and keyword options it reads besides ``max_transaction_age``;
    # ``shale.open`` then refuses any other, so a misspelt option is an
    # error rather than silently ignored. It is not a member of the
    # protocol, so that engines written before it still conform.

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> Engine:
        """Open the database that ``url`` names.

        Raises:
            EngineError: the URL is malformed, the database is locked by
                another process, or its format is too new.
        """
        ...

    async def snapshot(self, version: int | None = None) -> EngineSnapshot:
        """A snapshot at ``version``, or at the latest committed version.

        Raises:
            TransactionTooOld: ``version`` is older than the engine can serve.
            ReadVersionError: ``version`` is in the future.
        """
        ...

    async def commit(self, request: CommitRequest) -> CommitResult:
        """Check ``request`` for conflicts and apply it atomically.

        Raises:
            ConflictError: a read of the request was overwritten later.
            TransactionTooOld: ``read_version`` is outside the MVCC window.
            CommitUnknownResult: the outcome cannot be known.
            ReadOnlyError: the database is read-only.
        """
        ...

    async def close(self) -> None:
        """Release every resource; idempotent. Pending commits finish first."""
        ...
