"""found's database and transaction handles, its retry loop and options.

found models everything as named tuples passed to module functions; the
only mutable parts are ``tx.vars`` and the hook lists. Here a found
``Transaction`` wraps one ``shale.Transaction`` (through a
``TransactionHandle``, what found calls the ``pointer``) and the retry
state FoundationDB keeps inside its C transaction: retry count, backoff,
timeout and whether a commit started.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple, TypeVar

import shale
from shale.core.retry import FullJitterBackoff
from shale.errors import ShaleError
from shale.found.errors import (
    ERROR_PREDICATE_RETRYABLE,
    INVALID_OPTION,
    INVALID_OPTION_VALUE,
    TRANSACTION_TIMED_OUT,
    FoundException,
    Phase,
    error_predicate,
    translate,
)

__all__ = [
    "DEFAULT_RETRY_LIMIT",
    "Database",
    "Hooks",
    "Transaction",
    "TransactionHandle",
    "TransactionOptions",
    "TransactionStats",
    "cancel",
    "close",
    "commit",
    "database_set_option",
    "get_approximate_size",
    "get_committed_version",
    "make_hooks",
    "make_transaction",
    "on_error",
    "open",
    "reset",
    "seam",
    "set_option",
    "transaction",
    "transactional",
]

T = TypeVar("T")

DEFAULT_RETRY_LIMIT: Final = 100
"""Retries ``transactional`` and ``on_error`` allow before re-raising.

found and FoundationDB retry forever unless the ``retry_limit`` option is
set; an unbounded loop can spin on a hot key for as long as the process
lives, so the facade always has a bound. Change it per database or per
transaction with option 501 (``transaction_retry_limit`` / ``retry_limit``).
"""

_BACKOFF_START: Final = 0.01  # FoundationDB's DEFAULT_BACKOFF knob, seconds
_RNG: Final = random.Random()


@dataclass(slots=True)
class TransactionOptions:
    """The options found transactions inherit from their database (500-502)."""

    timeout: float = 0.0
    """Seconds from creation (or ``reset``) until every use raises
    ``transaction_timed_out``; 0 disables it."""
    retry_limit: int = DEFAULT_RETRY_LIMIT
    max_retry_delay: float = 1.0
    """Cap of the backoff between retries, in seconds."""


class TransactionStats(NamedTuple):
    """Passed to ``on_post_commit`` hooks."""

    retries: int
    elapsed: float
    commit_bytes: int


TransactionHook = Callable[["Transaction"], Awaitable[Any]]
PostCommitHook = Callable[["Transaction", TransactionStats], Awaitable[Any]]


class Hooks(NamedTuple):
    """Coroutines run by ``transactional`` and ``transaction``: ``on_begin``
    and ``on_commit`` take the transaction (``on_commit`` hooks are part of
    it and re-run on retry); ``on_post_commit`` also takes the stats and runs
    once, after the commit is durable."""

    on_begin: list[TransactionHook]
    on_commit: list[TransactionHook]
    on_post_commit: list[PostCommitHook]


def make_hooks() -> Hooks:
    return Hooks([], [], [])


class Database(NamedTuple):
    """found's database handle: the Shale database it opened, its hooks and
    the options its transactions start with."""

    pointer: shale.Database
    hooks: Hooks
    options: TransactionOptions


class TransactionHandle:
    """The state FoundationDB keeps in a C transaction: the Shale
    transaction itself plus what must survive ``on_error`` (options, retry
    count) and what the error mapping needs (``phase``)."""

    __slots__ = ("core", "options", "phase", "retries", "size", "started")

    def __init__(self, core: shale.Transaction, options: TransactionOptions) -> None:
        self.core = core
        self.options = options
        self.retries = 0
        self.phase = Phase.OPEN
        self.size = 0
        self.started = time.monotonic()

    def restarted(self) -> None:
        """Forget what one attempt did; options and retries stay, as
        FoundationDB keeps them across ``on_error``."""
        self.phase = Phase.OPEN
        self.size = 0
        # access_system_keys is not a persistent option in FoundationDB.
        self.core.access_system_keys = False

    def check_deadline(self) -> None:
        timeout = self.options.timeout
        if timeout and time.monotonic() - self.started > timeout:
            self.core.close()  # nothing of a timed-out transaction may commit
            exc = FoundException(TRANSACTION_TIMED_OUT)
            exc.add_note(f"the transaction's timeout is {timeout:g} s")
            raise exc


class Transaction(NamedTuple):
    """found's transaction. ``Transaction(tx.pointer, tx.db, True, tx.vars)``
    is a snapshot view of ``tx``, as in found."""

    pointer: TransactionHandle
    db: Database
    snapshot: bool
    vars: dict[Any, Any]  # found's name; shadows the builtin only as an attribute

    @property
    def core(self) -> shale.Transaction:
        """The underlying ``shale.Transaction``, to mix in the native API."""
        return self.pointer.core


@contextmanager
def seam(
    tx: Transaction, overrides: Mapping[type[ShaleError], int] | None = None
) -> Iterator[shale.Transaction]:
    """Give the Shale transaction to one found operation; what Shale raises
    comes out as a ``FoundException`` (``errors.code_for``)."""
    handle = tx.pointer
    handle.check_deadline()
    try:
        yield handle.core
    except ShaleError as exc:
        raise translate(exc, handle.phase, overrides) from exc


# -- database ----------------------------------------------------------------


async def open(url: str | bytes | None = None, **options: Any) -> Database:
    """Open the Shale database at ``url`` (found took a cluster file here).

    ``None`` means Shale's default: ``$SHALE_URL``, else ``sqlite:///shale.db``.
    Keyword options go to ``shale.open`` (e.g. ``max_transaction_age``).
    """
    if isinstance(url, bytes):
        url = url.decode()
    try:
        core = await shale.open(url, **options)
    except ShaleError as exc:
        raise translate(exc) from exc
    return Database(core, make_hooks(), TransactionOptions())


async def close(db: Database) -> None:
    """Close the database (found relied on garbage collection; Shale's
    engines hold files and locks, so close them)."""
    await db.pointer.close()


def _int_option(value: bytes | None) -> int:
    if value is None or len(value) != 8:
        raise FoundException(INVALID_OPTION_VALUE)
    return int.from_bytes(value, "little", signed=True)


def _set_shared_option(options: TransactionOptions, option: int, value: bytes | None) -> bool:
    """Apply one of the options databases and transactions share; False if
    ``option`` is not one of them."""
    if option not in (500, 501, 502):
        return False
    number = _int_option(value)
    if number < (-1 if option == 501 else 0):
        raise FoundException(INVALID_OPTION_VALUE)
    if option == 500:
        options.timeout = number / 1000
    elif option == 501:
        # FoundationDB's -1 is "unlimited"; the facade keeps a bound.
        options.retry_limit = DEFAULT_RETRY_LIMIT if number == -1 else number
    else:
        options.max_retry_delay = number / 1000
    return True


# Options with no observable effect on Shale: priorities, tags, tracing,
# lock awareness (Shale has no database locks) and causal_read_risky
# (Shale's reads are always causal, which that option only relaxes).
_DATABASE_HINTS: Final = frozenset({20, 504, 701, 702})
_TRANSACTION_HINTS: Final = frozenset(
    {20, 200, 201, 403, 404, 406, 509, 510, 511, 600, 700, 701, 702, 800, 801}
)


def database_set_option(db: Database, option: int, value: bytes | None = None) -> None:
    """Set a database option; integers are 8-byte little-endian, as in
    FoundationDB. Supported: 500 ``transaction_timeout`` (ms), 501
    ``transaction_retry_limit``, 502 ``transaction_max_retry_delay`` (ms);
    hints without effect are accepted; anything else raises
    ``invalid_option`` (2007)."""
    if _set_shared_option(db.options, option, value) or option in _DATABASE_HINTS:
        return
    raise FoundException(INVALID_OPTION)


def set_option(tx: Transaction, option: int, value: bytes | None = None) -> None:
    """Set a transaction option: 500 ``timeout``, 501 ``retry_limit``, 502
    ``max_retry_delay`` (kept across ``on_error``), 301 ``access_system_keys``
    and 302 ``read_system_keys`` (both grant Shale's read-write system
    access; reset by ``on_error``); hints are accepted; others raise 2007."""
    handle = tx.pointer
    if _set_shared_option(handle.options, option, value):
        return
    if option in (301, 302):
        handle.core.access_system_keys = True
    elif option not in _TRANSACTION_HINTS:
        raise FoundException(INVALID_OPTION)


# -- transaction lifecycle -----------------------------------------------------


def make_transaction(db: Database, snapshot: bool = False) -> Transaction:
    """A new transaction; with ``snapshot=True`` all its reads are snapshot
    reads (they add no read conflicts)."""
    assert isinstance(db, Database), "db must be a found.Database"
    try:
        core = db.pointer.transaction()
    except ShaleError as exc:
        raise translate(exc) from exc
    return Transaction(TransactionHandle(core, replace(db.options)), db, snapshot, {})


async def commit(tx: Transaction) -> None:
    """Commit; durable when it returns. Raises ``FoundException``."""
    assert isinstance(tx, Transaction), "tx must be a found.Transaction"
    handle = tx.pointer
    with seam(tx) as core:
        if handle.phase is Phase.OPEN:
            handle.phase = Phase.COMMIT_STARTED
        await core.commit()


async def on_error(tx: Transaction, code: int) -> None:
    """FoundationDB's ``on_error``: if ``code`` is retryable and the retry
    limit is not reached, back off and reset ``tx`` for another attempt;
    otherwise raise ``FoundException(code)``."""
    await _retry_or_raise(tx, FoundException(code))


async def _retry_or_raise(tx: Transaction, exc: FoundException) -> None:
    handle = tx.pointer
    if not error_predicate(ERROR_PREDICATE_RETRYABLE, exc.code):
        raise exc
    limit = handle.options.retry_limit
    if handle.retries >= limit:
        exc.add_note(f"found: gave up after {handle.retries} retries (retry limit {limit})")
        raise exc
    with seam(tx) as core:
        core.reset()
    handle.restarted()
    handle.retries += 1
    backoff = FullJitterBackoff(_BACKOFF_START, handle.options.max_retry_delay, rng=_RNG)
    await asyncio.sleep(backoff.delay(handle.retries))


def reset(tx: Transaction) -> None:
    """Start ``tx`` over: writes, reads, read version, retry count, options."""
    handle = tx.pointer
    try:
        handle.core.reset()
    except ShaleError as exc:
        raise translate(exc, handle.phase) from exc
    handle.restarted()
    handle.retries = 0
    handle.started = time.monotonic()
    handle.options = replace(tx.db.options)


def cancel(tx: Transaction) -> None:
    """Abandon ``tx``; later uses raise ``transaction_cancelled`` (1025)
    until ``reset``."""
    tx.pointer.phase = Phase.CANCELLED
    tx.pointer.core.close()


def get_committed_version(tx: Transaction) -> int:
    """The version ``tx`` committed at; -1 if it wrote nothing or has not
    committed."""
    version = tx.pointer.core.committed_version
    return -1 if version is None else version


async def get_approximate_size(tx: Transaction) -> int:
    """Bytes this transaction would send at commit so far: keys and values
    written, cleared range bounds, conflict ranges, as counted by found's
    functions (writes made on ``tx.core`` directly are not counted)."""
    tx.pointer.check_deadline()
    return tx.pointer.size


# -- retry loop and context manager ------------------------------------------------


async def _commit_with_hooks(tx: Transaction) -> int:
    hooks = tx.db.hooks
    for hook in hooks.on_commit:
        await hook(tx)
    commit_bytes = await get_approximate_size(tx) if hooks.on_post_commit else 0
    await commit(tx)
    return commit_bytes


async def transactional(
    db: Database,
    func: Callable[..., Awaitable[T]],
    *args: Any,
    snapshot: bool = False,
    **kwargs: Any,
) -> T:
    """Run ``await func(tx, *args, **kwargs)`` and commit, retrying on
    retryable ``FoundException`` codes as found does, but at most
    ``DEFAULT_RETRY_LIMIT`` times (see option 501). ``func`` may run
    several times; ``tx.vars`` is emptied before each retry. Any other
    exception propagates at once and nothing is committed."""
    tx = make_transaction(db, snapshot)
    start = time.monotonic()
    try:
        # on_begin runs outside the retried block, as in found: a failing
        # hook is not retried.
        for hook in db.hooks.on_begin:
            await hook(tx)
        while True:  # bounded: _retry_or_raise raises once the retry limit is reached
            try:
                out = await func(tx, *args, **kwargs)
                commit_bytes = await _commit_with_hooks(tx)
            except FoundException as exc:
                await _retry_or_raise(tx, exc)
                tx.vars.clear()
                for hook in db.hooks.on_begin:
                    await hook(tx)
            else:
                stats = TransactionStats(tx.pointer.retries, time.monotonic() - start, commit_bytes)
                for post in db.hooks.on_post_commit:
                    await post(tx, stats)
                return out
    finally:
        tx.pointer.core.close()  # releases the snapshot; a no-op once committed


@asynccontextmanager
async def transaction(db: Database, snapshot: bool = False) -> AsyncIterator[Transaction]:
    """``async with transaction(db) as tx:`` commits when the block ends
    cleanly (with hooks, as ``transactional``) and commits nothing if it
    raises. It does not retry: a ``FoundException`` from the commit
    propagates."""
    tx = make_transaction(db, snapshot)
    start = time.monotonic()
    try:
        for hook in db.hooks.on_begin:
            await hook(tx)
        yield tx
        commit_bytes = await _commit_with_hooks(tx)
        stats = TransactionStats(0, time.monotonic() - start, commit_bytes)
        for post in db.hooks.on_post_commit:
            await post(tx, stats)
    finally:
        tx.pointer.core.close()
