"""found's ``found.base``: every name found defines there, so that
``from found.base import X`` ports as ``from shale.found.base import X``.

The objects are the ones ``shale.found`` exports (``shale.found.base.get is
shale.found.get``); they live in ``transaction`` (handles, options, retry
loop), ``ops`` (operations on a transaction) and ``errors``. Defined here
are only the two names about FoundationDB's network thread, which Shale
does not have: they raise ``Unsupported``. ``close`` is Shale's addition.

Not mirrored: the CFFI objects ``ffi`` and ``lib`` of ``found._fdb`` (there
is no ``libfdb_c`` to call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from shale.core.selectors import KeySelector
from shale.found.errors import (
    ERROR_PREDICATE_MAYBE_COMMITTED,
    ERROR_PREDICATE_RETRYABLE,
    ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED,
    BaseFoundException,
    FoundException,
    Unsupported,
    error_predicate,
)
from shale.found.ops import (
    CONFLICT_RANGE_TYPE_READ,
    CONFLICT_RANGE_TYPE_WRITE,
    MUTATION_ADD,
    MUTATION_APPEND_IF_FITS,
    MUTATION_BIT_AND,
    MUTATION_BIT_OR,
    MUTATION_BIT_XOR,
    MUTATION_BYTE_MAX,
    MUTATION_BYTE_MIN,
    MUTATION_COMPARE_AND_CLEAR,
    MUTATION_MAX,
    MUTATION_MIN,
    MUTATION_SET_VERSIONSTAMPED_KEY,
    MUTATION_SET_VERSIONSTAMPED_VALUE,
    STREAMING_MODE_EXACT,
    STREAMING_MODE_ITERATOR,
    STREAMING_MODE_LARGE,
    STREAMING_MODE_MEDIUM,
    STREAMING_MODE_SERIAL,
    STREAMING_MODE_SMALL,
    STREAMING_MODE_WANT_ALL,
    add,
    add_conflict_range,
    append_if_fits,
    bit_and,
    bit_or,
    bit_xor,
    byte_max,
    byte_min,
    clear,
    compare_and_clear,
    estimated_size_bytes,
    get,
    get_addresses_for_key,
    get_client_version,
    get_key,
    get_range_split_points,
    get_versionstamp,
    gt,
    gte,
    lt,
    lte,
    max,
    min,
    next_prefix,
    query,
    read_version,
    set,
    set_read_version,
    set_versionstamped_key,
    set_versionstamped_value,
    watch,
)
from shale.found.transaction import (
    Database,
    Hooks,
    Transaction,
    TransactionStats,
    cancel,
    close,
    commit,
    database_set_option,
    get_approximate_size,
    get_committed_version,
    make_hooks,
    make_transaction,
    on_error,
    open,
    reset,
    set_option,
    transaction,
    transactional,
)

__all__ = [
    "CONFLICT_RANGE_TYPE_READ",
    "CONFLICT_RANGE_TYPE_WRITE",
    "ERROR_PREDICATE_MAYBE_COMMITTED",
    "ERROR_PREDICATE_RETRYABLE",
    "ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED",
    "MUTATION_ADD",
    "MUTATION_APPEND_IF_FITS",
    "MUTATION_BIT_AND",
    "MUTATION_BIT_OR",
    "MUTATION_BIT_XOR",
    "MUTATION_BYTE_MAX",
    "MUTATION_BYTE_MIN",
    "MUTATION_COMPARE_AND_CLEAR",
    "MUTATION_MAX",
    "MUTATION_MIN",
    "MUTATION_SET_VERSIONSTAMPED_KEY",
    "MUTATION_SET_VERSIONSTAMPED_VALUE",
    "STREAMING_MODE_EXACT",
    "STREAMING_MODE_ITERATOR",
    "STREAMING_MODE_LARGE",
    "STREAMING_MODE_MEDIUM",
    "STREAMING_MODE_SERIAL",
    "STREAMING_MODE_SMALL",
    "STREAMING_MODE_WANT_ALL",
    "BaseFoundException",
    "Database",
    "FoundException",
    "Hooks",
    "KeySelector",
    "Transaction",
    "TransactionStats",
    "add",
    "add_conflict_range",
    "add_network_thread_completion_hook",
    "append_if_fits",
    "bit_and",
    "bit_or",
    "bit_xor",
    "byte_max",
    "byte_min",
    "cancel",
    "clear",
    "close",
    "commit",
    "compare_and_clear",
    "database_set_option",
    "error_predicate",
    "estimated_size_bytes",
    "get",
    "get_addresses_for_key",
    "get_approximate_size",
    "get_client_version",
    "get_committed_version",
    "get_key",
    "get_range_split_points",
    "get_versionstamp",
    "gt",
    "gte",
    "lt",
    "lte",
    "make_hooks",
    "make_transaction",
    "max",
    "min",
    "network_set_option",
    "next_prefix",
    "on_error",
    "open",
    "query",
    "read_version",
    "reset",
    "set",
    "set_option",
    "set_read_version",
    "set_versionstamped_key",
    "set_versionstamped_value",
    "transaction",
    "transactional",
    "watch",
]


def network_set_option(option: int, value: bytes | None = None) -> NoReturn:
    """found's ``fdb_network_set_option``.

    Raises:
        Unsupported: always. Shale has no FoundationDB network thread to
            configure; what network options set in FoundationDB (TLS,
            tracing, knobs) is given to ``open`` in Shale: the URL
            (``shale+tls://``) and its keyword options.
    """
    raise Unsupported(
        f"network_set_option({option}): Shale has no FoundationDB network thread; "
        "configure connections with found.open(url, **options) (e.g. a shale+tls:// URL "
        "with ca=, cert=, key=)"
    )


def add_network_thread_completion_hook(callback: Callable[[], Any]) -> NoReturn:
    """found's ``fdb_add_network_thread_completion_hook``.

    Raises:
        Unsupported: always. There is no network thread whose end could run
            ``callback``; run it after ``await found.close(db)`` instead.
    """
    raise Unsupported(
        "add_network_thread_completion_hook: Shale has no FoundationDB network thread; "
        "run the callback after `await found.close(db)`"
    )
