"""found's exceptions, FoundationDB's error codes, and the one place Shale's
errors become codes.

::

    BaseFoundException                 root of every found exception
    ├── FoundException(code)           a FoundationDB error code, ``.code``
    └── Unsupported                    a found name with no Shale counterpart
                                       (also a ``NotImplementedError``)

Shale's own tree (``shale.errors``) stays separate: a ``FoundException`` is
never a ``ShaleError``, so code written for found keeps catching exactly
what it caught before, and the facade's translation cannot catch its own
output. ``code_for`` is the seam; every found function that calls the core
routes Shale errors through it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from shale.errors import (
    AccessedUnreadable,
    CommitUnknownResult,
    ConflictError,
    InvertedRange,
    KeyOutsideLegalRange,
    KeyTooLarge,
    LimitError,
    ReadOnlyError,
    ReadVersionError,
    RetryableError,
    ShaleError,
    TransactionStateError,
    TransactionTooLarge,
    TransactionTooOld,
    UnknownEngineError,
    UsageError,
    ValueTooLarge,
)

__all__ = [
    "ERROR_PREDICATE_MAYBE_COMMITTED",
    "ERROR_PREDICATE_RETRYABLE",
    "ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED",
    "BaseFoundException",
    "FoundException",
    "Phase",
    "Unsupported",
    "code_for",
    "error_name",
    "error_predicate",
]

# FoundationDB's numeric codes (flow/error_definitions.h). Only the ones the
# facade raises or classifies are named; any other int is still accepted.
TRANSACTION_TOO_OLD: Final = 1007
FUTURE_VERSION: Final = 1009
NOT_COMMITTED: Final = 1020
COMMIT_UNKNOWN_RESULT: Final = 1021
TRANSACTION_CANCELLED: Final = 1025
TRANSACTION_TIMED_OUT: Final = 1031
ACCESSED_UNREADABLE: Final = 1036
CLIENT_INVALID_OPERATION: Final = 2000
KEY_OUTSIDE_LEGAL_RANGE: Final = 2004
INVERTED_RANGE: Final = 2005
INVALID_OPTION_VALUE: Final = 2006
INVALID_OPTION: Final = 2007
READ_VERSION_ALREADY_SET: Final = 2010
VERSION_INVALID: Final = 2011
USED_DURING_COMMIT: Final = 2017
NO_COMMIT_VERSION: Final = 2021
TRANSACTION_READ_ONLY: Final = 2023
TRANSACTION_TOO_LARGE: Final = 2101
KEY_TOO_LARGE: Final = 2102
VALUE_TOO_LARGE: Final = 2103
CONNECTION_STRING_INVALID: Final = 2104
EXACT_MODE_WITHOUT_LIMITS: Final = 2210
INTERNAL_ERROR: Final = 4100

# (name, description); descriptions are ours, names are FoundationDB's.
_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    TRANSACTION_TOO_OLD: ("transaction_too_old", "transaction is too old to read or commit"),
    FUTURE_VERSION: ("future_version", "read version is newer than the database"),
    NOT_COMMITTED: ("not_committed", "transaction conflicted with another and did not commit"),
    COMMIT_UNKNOWN_RESULT: ("commit_unknown_result", "transaction may or may not have committed"),
    1022: ("commit_unknown_result_fatal", "commit outcome can no longer be determined"),
    TRANSACTION_CANCELLED: ("transaction_cancelled", "transaction was cancelled"),
    TRANSACTION_TIMED_OUT: ("transaction_timed_out", "transaction exceeded its timeout"),
    1032: ("too_many_watches", "too many watches are outstanding"),
    1034: ("watches_disabled", "watches need read-your-writes"),
    ACCESSED_UNREADABLE: ("accessed_unreadable", "read a key a versionstamp operation writes"),
    1037: ("process_behind", "storage is behind the requested version"),
    1038: ("database_locked", "database is locked"),
    1039: ("cluster_version_changed", "cluster protocol version changed"),
    1042: ("commit_proxy_memory_limit_exceeded", "commit proxy memory limit exceeded"),
    1051: ("batch_transaction_throttled", "batch priority transactions are throttled"),
    1078: ("grv_proxy_memory_limit_exceeded", "read version proxy memory limit exceeded"),
    1101: ("operation_cancelled", "asynchronous operation was cancelled"),
    1213: ("tag_throttled", "transaction tag is throttled"),
    1235: ("transaction_throttled_hot_shard", "transaction throttled by a hot shard"),
    1242: ("transaction_rejected_range_locked", "transaction touched a locked range"),
    CLIENT_INVALID_OPERATION: ("client_invalid_operation", "invalid API call"),
    KEY_OUTSIDE_LEGAL_RANGE: ("key_outside_legal_range", "key is outside the legal range"),
    INVERTED_RANGE: ("inverted_range", "range begin sorts after its end"),
    INVALID_OPTION_VALUE: ("invalid_option_value", "option set with an invalid value"),
    INVALID_OPTION: ("invalid_option", "option is not supported here"),
    READ_VERSION_ALREADY_SET: ("read_version_already_set", "read version is already set"),
    VERSION_INVALID: ("version_invalid", "version is not valid"),
    USED_DURING_COMMIT: ("used_during_commit", "transaction used after its commit started"),
    NO_COMMIT_VERSION: ("no_commit_version", "read-only transaction has no commit version"),
    TRANSACTION_READ_ONLY: ("transaction_read_only", "database or transaction is read-only"),
    TRANSACTION_TOO_LARGE: ("transaction_too_large", "transaction exceeds the byte limit"),
    KEY_TOO_LARGE: ("key_too_large", "key exceeds the length limit"),
    VALUE_TOO_LARGE: ("value_too_large", "value exceeds the length limit"),
    CONNECTION_STRING_INVALID: ("connection_string_invalid", "database URL is not valid"),
    EXACT_MODE_WITHOUT_LIMITS: ("exact_mode_without_limits", "EXACT streaming mode needs a limit"),
    4000: ("unknown_error", "an unknown error occurred"),
    INTERNAL_ERROR: ("internal_error", "an internal error occurred"),
}


class BaseFoundException(Exception):
    """Root of every exception found raises on purpose."""


class FoundException(BaseFoundException):
    """A FoundationDB error, identified by its numeric ``code``.

    As in found, ``str(exc)`` is the code alone and ``repr`` adds the
    description; when Shale raised the underlying error, it is
    ``__cause__`` and carries the detailed message.
    """

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    @property
    def name(self) -> str:
        """FoundationDB's name for the code, e.g. ``"not_committed"``."""
        return error_name(self.code)

    @property
    def description(self) -> str:
        return _ERRORS.get(self.code, ("", "unknown error code"))[1]

    def __repr__(self) -> str:
        return f"<FoundException {self.name}: {self.description} ({self.code})>"


class Unsupported(BaseFoundException, NotImplementedError):
    """A found name that exists so code imports, but that Shale cannot
    honour: FoundationDB's network thread, or found's web UI. The message
    says what to use instead. Never retried: it is not a
    ``FoundException`` and carries no code."""


def error_name(code: int) -> str:
    """FoundationDB's name for ``code``, ``"unknown_error"`` if unlisted."""
    return _ERRORS.get(code, ("unknown_error", ""))[0]


# -- retry classification (fdb_error_predicate) ----------------------------

ERROR_PREDICATE_RETRYABLE: Final = 50000
ERROR_PREDICATE_MAYBE_COMMITTED: Final = 50001
ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED: Final = 50002

_MAYBE_COMMITTED: Final = frozenset({COMMIT_UNKNOWN_RESULT, 1039})
_RETRYABLE_NOT_COMMITTED: Final = frozenset(
    {NOT_COMMITTED, TRANSACTION_TOO_OLD, FUTURE_VERSION, 1038, 1078, 1042, 1235, 1051, 1037}
    | {1213, 1242}
)
_PREDICATES: Final[Mapping[int, frozenset[int]]] = {
    ERROR_PREDICATE_RETRYABLE: _MAYBE_COMMITTED | _RETRYABLE_NOT_COMMITTED,
    ERROR_PREDICATE_MAYBE_COMMITTED: _MAYBE_COMMITTED,
    ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED: _RETRYABLE_NOT_COMMITTED,
}


def error_predicate(predicate: int, code: int) -> bool:
    """Whether ``code`` belongs to ``predicate``'s set, as FoundationDB's C
    client answers; an unknown predicate matches nothing."""
    return code in _PREDICATES.get(predicate, frozenset())


# -- the seam: Shale errors to codes ---------------------------------------


class Phase(enum.Enum):
    """Where a found transaction stands; ``TransactionStateError`` means a
    different FoundationDB error in each."""

    OPEN = "open"
    COMMIT_STARTED = "commit started"
    CANCELLED = "cancelled"


_CODES: Final[Mapping[type[ShaleError], int]] = {
    ConflictError: NOT_COMMITTED,
    TransactionTooOld: TRANSACTION_TOO_OLD,
    CommitUnknownResult: COMMIT_UNKNOWN_RESULT,
    KeyTooLarge: KEY_TOO_LARGE,
    ValueTooLarge: VALUE_TOO_LARGE,
    TransactionTooLarge: TRANSACTION_TOO_LARGE,
    KeyOutsideLegalRange: KEY_OUTSIDE_LEGAL_RANGE,
    InvertedRange: INVERTED_RANGE,
    AccessedUnreadable: ACCESSED_UNREADABLE,
    # The engine raises it for a version newer than the database; set_read_version
    # passes an override because there it means "already set".
    ReadVersionError: FUTURE_VERSION,
    UnknownEngineError: CONNECTION_STRING_INVALID,
    # The bare markers, should an engine raise one: keep their meaning
    # (retry / nothing written) with the nearest FoundationDB code.
    RetryableError: NOT_COMMITTED,
    LimitError: TRANSACTION_TOO_LARGE,
    ReadOnlyError: TRANSACTION_READ_ONLY,
    UsageError: CLIENT_INVALID_OPERATION,
}

_STATE_CODES: Final[Mapping[Phase, int]] = {
    Phase.OPEN: CLIENT_INVALID_OPERATION,
    # FoundationDB answers any use after commit() with used_during_commit
    # until the transaction is reset, not only while the commit is in flight.
    Phase.COMMIT_STARTED: USED_DURING_COMMIT,
    Phase.CANCELLED: TRANSACTION_CANCELLED,
}


def code_for(
    exc: ShaleError,
    phase: Phase = Phase.OPEN,
    overrides: Mapping[type[ShaleError], int] | None = None,
) -> int:
    """The FoundationDB code for a Shale error.

    The most specific class wins, looking first in ``overrides`` (for
    operations where a class means something narrower), then in the
    fixed table; anything unlisted is ``internal_error`` (4100).
    """
    for cls in type(exc).__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        if cls is TransactionStateError:
            return _STATE_CODES[phase]
        if cls in _CODES:
            return _CODES[cls]
    return INTERNAL_ERROR


def translate(
    exc: ShaleError,
    phase: Phase = Phase.OPEN,
    overrides: Mapping[type[ShaleError], int] | None = None,
) -> FoundException:
    """A ``FoundException`` for ``exc``, with Shale's message kept as a note
    so a traceback says what went wrong, not only the code."""
    found = FoundException(code_for(exc, phase, overrides))
    found.add_note(f"shale: {type(exc).__name__}: {exc}")
    return found
