"""``shale.found``: asyncio-foundationdb's API (``import found``) over Shale.

Code written for found runs after ``import found`` becomes
``import shale.found as found`` and ``found.open()`` gets a Shale URL
instead of a cluster file::

    import shale.found as found

    db = await found.open("sqlite:////var/lib/app/app.db")

    async def hello(tx):
        await found.set(tx, b"hello", b"world")
        return await found.get(tx, b"hello")

    assert await found.transactional(db, hello) == b"world"
    await found.close(db)

Differences from found (``docs/found.md`` has the full list): retries are
bounded (``DEFAULT_RETRY_LIMIT``), size and range errors raise at the
offending write rather than at commit, watches see changes committed
through the same database handle, and ``estimated_size_bytes`` scans.

found's modules are here at the same paths, so replacing ``found`` by
``shale.found`` in imports is the whole change to the code (the rule is in
``docs/found.md``): ``base``, ``tuple`` (both imported with the package, as
in found) and ``ext`` (``nstore``, ``eavstore``, ``bstore``, ``pstore``,
``vnstore``, ``pool``). The flat ``shale.found.nstore`` and the other
layers stay for code that imports them there.

Implementation: ``errors`` (exceptions, codes, the Shale-to-code seam),
``transaction`` (handles, options, retry loop), ``ops`` (operations on a
transaction), ``helpers`` (``co``, ``all``, ``limit``).
"""

from __future__ import annotations

from typing import Final

from shale.found.base import (
    CONFLICT_RANGE_TYPE_READ,
    CONFLICT_RANGE_TYPE_WRITE,
    ERROR_PREDICATE_MAYBE_COMMITTED,
    ERROR_PREDICATE_RETRYABLE,
    ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED,
    STREAMING_MODE_EXACT,
    STREAMING_MODE_ITERATOR,
    STREAMING_MODE_LARGE,
    STREAMING_MODE_MEDIUM,
    STREAMING_MODE_SERIAL,
    STREAMING_MODE_SMALL,
    STREAMING_MODE_WANT_ALL,
    BaseFoundException,
    Database,
    FoundException,
    Hooks,
    KeySelector,
    Transaction,
    TransactionStats,
    add,
    add_conflict_range,
    add_network_thread_completion_hook,
    append_if_fits,
    bit_and,
    bit_or,
    bit_xor,
    byte_max,
    byte_min,
    cancel,
    clear,
    close,
    commit,
    compare_and_clear,
    database_set_option,
    error_predicate,
    estimated_size_bytes,
    get,
    get_addresses_for_key,
    get_approximate_size,
    get_client_version,
    get_committed_version,
    get_key,
    get_range_split_points,
    get_versionstamp,
    gt,
    gte,
    lt,
    lte,
    make_hooks,
    make_transaction,
    max,
    min,
    network_set_option,
    next_prefix,
    on_error,
    open,
    query,
    read_version,
    reset,
    set,
    set_option,
    set_read_version,
    set_versionstamped_key,
    set_versionstamped_value,
    transaction,
    transactional,
    watch,
)
from shale.found.errors import Unsupported
from shale.found.helpers import all, co, limit
from shale.found.transaction import DEFAULT_RETRY_LIMIT
from shale.found.tuple import (
    Versionstamp,
    has_incomplete_versionstamp,
    pack,
    pack_with_versionstamp,
    unpack,
)

# found's informational limits; Shale enforces the same values.
MAX_SIZE_TRANSACTION: Final = 10**7
MAX_SIZE_KEY: Final = 10**4
MAX_SIZE_VALUE: Final = 10**5

# The FoundationDB API version found selects and found's own version: the
# API this facade follows. Informational, as in found.
HEADER_VERSION: Final = 730
VERSION: Final = HEADER_VERSION
__VERSION__: Final = (0, 13, 0)

__all__ = [
    "CONFLICT_RANGE_TYPE_READ",
    "CONFLICT_RANGE_TYPE_WRITE",
    "DEFAULT_RETRY_LIMIT",
    "ERROR_PREDICATE_MAYBE_COMMITTED",
    "ERROR_PREDICATE_RETRYABLE",
    "ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED",
    "HEADER_VERSION",
    "MAX_SIZE_KEY",
    "MAX_SIZE_TRANSACTION",
    "MAX_SIZE_VALUE",
    "STREAMING_MODE_EXACT",
    "STREAMING_MODE_ITERATOR",
    "STREAMING_MODE_LARGE",
    "STREAMING_MODE_MEDIUM",
    "STREAMING_MODE_SERIAL",
    "STREAMING_MODE_SMALL",
    "STREAMING_MODE_WANT_ALL",
    "VERSION",
    "__VERSION__",
    "BaseFoundException",
    "Database",
    "FoundException",
    "Hooks",
    "KeySelector",
    "Transaction",
    "TransactionStats",
    "Unsupported",
    "Versionstamp",
    "add",
    "add_conflict_range",
    "add_network_thread_completion_hook",
    "all",
    "append_if_fits",
    "bit_and",
    "bit_or",
    "bit_xor",
    "byte_max",
    "byte_min",
    "cancel",
    "clear",
    "close",
    "co",
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
    "has_incomplete_versionstamp",
    "limit",
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
    "pack",
    "pack_with_versionstamp",
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
    "unpack",
    "watch",
]
