"""Shale's exceptions: one tree, one root, one retryable marker.

::

    ShaleError
    ├── RetryableError                 safe to retry the whole transaction
    │   ├── ConflictError              a read was overwritten by a later commit
    │   ├── TransactionTooOld          the read version fell out of the MVCC window
    │   ├── CommitUnknownResult        the commit may or may not have happened
    │   └── Unavailable                the engine cannot serve this right now (down, at a limit)
    ├── LimitError                     a documented limit was breached; nothing written
    │   ├── KeyTooLarge
    │   ├── ValueTooLarge
    │   └── TransactionTooLarge
    ├── UsageError                     the program is wrong; retrying will not help
    │   ├── KeyOutsideLegalRange       a user write to the 0xFF system keyspace
    │   ├── InvertedRange
    │   ├── TransactionStateError      used after commit, reset or close
    │   ├── ReadVersionError           read version set twice, or in the future
    │   ├── AccessedUnreadable         reading a key a versionstamp op will write
    │   └── DatabaseClosed             the database handle was closed
    └── EngineError                    the storage below failed or refused
        ├── HistoryLost                a feed cursor is older than the retained log
        ├── UnknownEngineError         no engine serves that URL scheme
        ├── DatabaseLockedError        another process holds the database
        ├── FormatVersionError         the file was written by a newer Shale
        ├── ForeignDatabaseError       the file is not a Shale database; left untouched
        ├── ReadOnlyError              the database was opened read-only
        ├── AuthenticationError        no token, a refused one, or a failed TLS check
        └── ProtocolError              the peer broke the wire protocol or a limit

``RetryableError`` is the only marker the retry loop looks at: anything else
propagates at once. ``CommitUnknownResult`` is retried by ``Database.run``
only where the engine tags commits with idempotency ids (the remote engine
does) or the body is declared idempotent (see ``Database.run``). The compatibility layer
``shale.found`` maps these classes to FoundationDB error codes in one place.
"""

from __future__ import annotations

__all__ = [
    "AccessedUnreadable",
    "AuthenticationError",
    "CommitUnknownResult",
    "ConflictError",
    "DatabaseClosed",
    "DatabaseLockedError",
    "EngineError",
    "ForeignDatabaseError",
    "FormatVersionError",
    "HistoryLost",
    "InvertedRange",
    "KeyOutsideLegalRange",
    "KeyTooLarge",
    "LimitError",
    "ProtocolError",
    "ReadOnlyError",
    "ReadVersionError",
    "RetryableError",
    "ShaleError",
    "TransactionStateError",
    "TransactionTooLarge",
    "TransactionTooOld",
    "Unavailable",
    "UnknownEngineError",
    "UsageError",
    "ValueTooLarge",
]


class ShaleError(Exception):
    """Root of every error Shale raises on purpose."""


class RetryableError(ShaleError):
    """The transaction did not commit (or may not have); running it again is safe."""


class ConflictError(RetryableError):
    """A key or range this transaction read was written by a later commit."""


class TransactionTooOld(RetryableError):
    """The transaction outlived the engine's version window (5 s by default)."""


class CommitUnknownResult(RetryableError):
    """The commit's outcome is unknown: it may have been applied."""


class Unavailable(RetryableError):
    """The engine cannot serve the request right now: a server is down,
    restarting, or at one of its limits (connections, open snapshots).

    Nothing was committed: a commit whose request may have reached the
    server raises ``CommitUnknownResult`` instead."""


class LimitError(ShaleError):
    """A size limit was breached; the transaction will not write anything."""


class KeyTooLarge(LimitError):
    """A key is longer than the 10,000-byte limit."""


class ValueTooLarge(LimitError):
    """A value is longer than the 100,000-byte limit."""


class TransactionTooLarge(LimitError):
    """The transaction's writes and conflict ranges exceed the 10 MB limit."""


class UsageError(ShaleError):
    """The API was called in a way that can never succeed."""


class KeyOutsideLegalRange(UsageError):
    """A key in the 0xFF system keyspace was used without system access."""


class InvertedRange(UsageError):
    """A range whose begin sorts after its end."""


class TransactionStateError(UsageError):
    """A transaction was used after it committed, failed, was reset or closed."""


class ReadVersionError(UsageError):
    """The read version was set twice, set after reads began, or is in the future."""


class AccessedUnreadable(UsageError):
    """A read touched a key or value that a versionstamp operation will write."""


class DatabaseClosed(UsageError):
    """The database was closed; open it again to go on."""


class EngineError(ShaleError):
    """The storage engine failed or refused the operation."""


class HistoryLost(EngineError):
    """A change feed was resumed before the oldest change it still retains.

    Never a silent skip: the consumer must rebuild its state (for example
    from a prefeed) and resubscribe, or accept the gap and resume from
    ``oldest``: a cursor from which ``subscribe`` delivers everything the
    feed still retains.
    """

    def __init__(self, oldest: bytes | None, reason: str = "") -> None:
        where = oldest.hex() if isinstance(oldest, bytes) else "none"
        super().__init__(
            f"the feed no longer holds the changes after this cursor ({reason}); "
            f"oldest available position: {where}"
        )
        self.oldest = oldest


class UnknownEngineError(EngineError, ValueError):
    """No installed engine serves the URL's scheme."""


class DatabaseLockedError(EngineError):
    """Another process holds the database open."""


class FormatVersionError(EngineError):
    """The stored format is newer than this version of Shale can read."""


class ForeignDatabaseError(EngineError):
    """The file exists and holds data, but not a Shale database. Shale
    refuses it without writing anything, so another program's file is
    never taken over."""


class ReadOnlyError(EngineError):
    """The database was opened read-only (for example a newer minor format)."""


class AuthenticationError(EngineError):
    """No token was given, the server refused it, or the server failed TLS
    verification. Not retried: retrying cannot fix it."""


class ProtocolError(EngineError):
    """A message broke the wire protocol or one of its limits; the
    connection it came on is closed."""
