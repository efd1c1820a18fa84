"""Shale: a layered, transactional, ordered key-value store.

::

    import shale

    db = await shale.open()                  # SHALE_URL, else ./shale.db
    async with db.transaction() as tr:
        tr.set(b"hello", b"world")
    assert await db.get(b"hello") == b"world"
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from shale.core.database import DEFAULT_URL, Database, open, transactional
from shale.core.retry import Backoff, ExponentialBackoff, FullJitterBackoff, NoBackoff
from shale.core.selectors import KeySelector
from shale.core.transaction import RangeResult, SnapshotReads, Transaction, strinc
from shale.errors import (
    AccessedUnreadable,
    AuthenticationError,
    CommitUnknownResult,
    ConflictError,
    DatabaseClosed,
    DatabaseLockedError,
    EngineError,
    ForeignDatabaseError,
    FormatVersionError,
    HistoryLost,
    InvertedRange,
    KeyOutsideLegalRange,
    KeyTooLarge,
    LimitError,
    ProtocolError,
    ReadOnlyError,
    ReadVersionError,
    RetryableError,
    ShaleError,
    TransactionStateError,
    TransactionTooLarge,
    TransactionTooOld,
    Unavailable,
    UnknownEngineError,
    UsageError,
    ValueTooLarge,
)
from shale.subspace import Subspace

try:
    __version__ = version("shaledb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT_URL",
    "AccessedUnreadable",
    "AuthenticationError",
    "Backoff",
    "CommitUnknownResult",
    "ConflictError",
    "Database",
    "DatabaseClosed",
    "DatabaseLockedError",
    "EngineError",
    "ExponentialBackoff",
    "ForeignDatabaseError",
    "FormatVersionError",
    "FullJitterBackoff",
    "HistoryLost",
    "InvertedRange",
    "KeyOutsideLegalRange",
    "KeySelector",
    "KeyTooLarge",
    "LimitError",
    "NoBackoff",
    "ProtocolError",
    "RangeResult",
    "ReadOnlyError",
    "ReadVersionError",
    "RetryableError",
    "ShaleError",
    "SnapshotReads",
    "Subspace",
    "Transaction",
    "TransactionStateError",
    "TransactionTooLarge",
    "TransactionTooOld",
    "Unavailable",
    "UnknownEngineError",
    "UsageError",
    "ValueTooLarge",
    "__version__",
    "open",
    "strinc",
    "transactional",
]
