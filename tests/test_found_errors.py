"""``shale.found``'s error codes: every one provoked through the found API,
on every built-in engine and through a server."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import pytest

import shale.found as found
from found_support import Opener, db, dump, le, opener, raises, url
from shale.errors import (
    CommitUnknownResult,
    ConflictError,
    EngineError,
    ReadOnlyError,
    ShaleError,
)
from shale.found import errors as found_errors

__all__ = ["db", "opener", "url"]  # fixtures, imported for pytest to find


# -- every error code, provoked through the found API ---------------------------------


async def test_code_1020_not_committed(db: found.Database) -> None:
    tx = found.make_transaction(db)
    assert await found.get(tx, b"read") is None
    await found.transactional(db, found.set, b"read", b"by another")
    await found.set(tx, b"mine", b"1")
    exc = await raises(1020, found.commit(tx))
    assert isinstance(exc.__cause__, ConflictError)
    assert await dump(db) == [(b"read", b"by another")]


async def test_code_1007_transaction_too_old(opener: Opener) -> None:
    db = await opener(max_transaction_age=0.05)
    tx = found.make_transaction(db)
    await found.get(tx, b"a")
    await found.set(tx, b"mine", b"1")
    await asyncio.sleep(0.1)
    await raises(1007, found.get(tx, b"b"))
    await raises(1007, found.commit(tx))
    assert await dump(db) == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CommitUnknownResult("reply lost"), 1021),
        (ReadOnlyError("read-only file"), 2023),
        (EngineError("disk on fire"), 4100),
    ],
)
async def test_codes_of_engine_failures(
    db: found.Database, monkeypatch: pytest.MonkeyPatch, error: ShaleError, code: int
) -> None:
    async def failing(request: Any) -> Any:
        raise error

    monkeypatch.setattr(db.pointer.engine, "commit", failing)
    tx = found.make_transaction(db)
    await found.set(tx, b"mine", b"1")
    exc = await raises(code, found.commit(tx))
    assert exc.__cause__ is error
    monkeypatch.undo()
    assert await dump(db) == []


async def test_code_2102_key_too_large(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"before", b"1")
    await raises(2102, found.set(tx, b"k" * 10_001, b""))
    await raises(2102, found.commit(tx))  # the whole transaction is failed
    assert await dump(db) == []


async def test_code_2103_value_too_large(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"before", b"1")
    await raises(2103, found.set(tx, b"k", b"v" * 100_001))
    await raises(2103, found.commit(tx))
    assert await dump(db) == []


async def test_code_2101_transaction_too_large(db: found.Database) -> None:
    tx = found.make_transaction(db)
    with pytest.raises(found.FoundException) as info:
        for i in range(101):
            await found.set(tx, b"%03d" % i, b"v" * 100_000)
    assert info.value.code == 2101
    await raises(2101, found.commit(tx))
    assert await dump(db) == []


async def test_code_2004_key_outside_legal_range(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"before", b"1")
    await raises(2004, found.set(tx, b"\xff\x01", b"v"))
    await raises(2004, found.get(tx, b"\xff\x01"))
    await raises(2004, found.clear(tx, b"", b"\xff\x01"))
    await raises(2004, found.commit(tx))
    assert await dump(db) == []


async def test_system_keys_option_allows_reads(db: found.Database) -> None:
    tx = found.make_transaction(db)
    found.set_option(tx, 302)
    assert await found.get(tx, b"\xff\x01") is None
    await found.on_error(tx, 1020)  # not a persistent option
    await raises(2004, found.get(tx, b"\xff\x01"))


async def test_code_2005_inverted_range(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        await found.set(tx, b"before", b"1")
        await found.clear(tx, b"b", b"a")

    await raises(2005, found.transactional(db, body))
    tx = found.make_transaction(db)
    with pytest.raises(found.FoundException) as info:
        found.add_conflict_range(tx, b"b", b"a", found.CONFLICT_RANGE_TYPE_READ)
    assert info.value.code == 2005
    assert await dump(db) == []


async def test_code_1036_accessed_unreadable(db: found.Database) -> None:
    tx = found.make_transaction(db)
    value = b"stamp:" + b"\x00" * 10 + struct.pack("<I", 6)
    await found.set_versionstamped_value(tx, b"k", value)
    await raises(1036, found.get(tx, b"k"))
    found.cancel(tx)
    assert await dump(db) == []


async def test_code_1009_future_version(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set_read_version(tx, 10**12)
    await raises(1009, found.get(tx, b"k"))
    found.cancel(tx)


async def test_code_2010_read_version_already_set(db: found.Database) -> None:
    tx = found.make_transaction(db)
    version = await found.read_version(tx)
    await raises(2010, found.set_read_version(tx, version))
    await raises(2011, found.set_read_version(tx, -1))
    found.cancel(tx)


async def test_code_2017_used_during_commit(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"k", b"v")
    await found.commit(tx)
    await raises(2017, found.set(tx, b"late", b"v"))
    await raises(2017, found.get(tx, b"k"))
    await raises(2017, found.commit(tx))
    assert await dump(db) == [(b"k", b"v")]
    found.reset(tx)  # reusable after a reset, as in FoundationDB
    assert await found.get(tx, b"k") == b"v"


async def test_code_1025_transaction_cancelled(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"k", b"v")
    found.cancel(tx)
    await raises(1025, found.get(tx, b"k"))
    await raises(1025, found.commit(tx))
    assert await dump(db) == []
    found.reset(tx)
    await found.set(tx, b"k", b"again")
    await found.commit(tx)
    assert await dump(db) == [(b"k", b"again")]


async def test_code_2000_client_invalid_operation(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"before", b"1")
    bad_offset = b"key" + struct.pack("<I", 200)
    await raises(2000, found.set_versionstamped_key(tx, bad_offset, b"v"))
    with pytest.raises(found.FoundException) as info:
        found.add_conflict_range(tx, b"a", b"b", 7)
    assert info.value.code == 2000
    with pytest.raises(found.FoundException) as info:
        await found.all(found.query(tx, b"a", b"b", mode=99))
    assert info.value.code == 2000
    found.cancel(tx)
    assert await dump(db) == []


async def test_code_2210_exact_mode_without_limits(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await raises(2210, found.all(found.query(tx, b"", b"\xff", mode=found.STREAMING_MODE_EXACT)))
    found.cancel(tx)


async def test_code_1031_transaction_timed_out(db: found.Database) -> None:
    tx = found.make_transaction(db)
    found.set_option(tx, 500, le(10))
    await found.set(tx, b"k", b"v")
    await asyncio.sleep(0.05)
    await raises(1031, found.get(tx, b"k"))
    await raises(1031, found.commit(tx))
    assert await dump(db) == []


async def test_database_timeout_is_not_retried(db: found.Database) -> None:
    found.database_set_option(db, 500, le(10))

    async def slow(tx: found.Transaction) -> None:
        await asyncio.sleep(0.05)
        await found.set(tx, b"k", b"v")

    await raises(1031, found.transactional(db, slow))
    assert db.options.timeout == 0.01


async def test_codes_2006_2007_options(db: found.Database) -> None:
    tx = found.make_transaction(db)
    invalid_option: list[Callable[[], None]] = [
        lambda: found.set_option(tx, 12345),
        lambda: found.database_set_option(db, 12345),
        lambda: found.set_option(tx, 503, le(100)),  # size_limit: not supported
    ]
    invalid_value: list[Callable[[], None]] = [
        lambda: found.set_option(tx, 500, b"\x01"),
        lambda: found.set_option(tx, 500, None),
        lambda: found.database_set_option(db, 501, le(-2)),
    ]
    for calls, code in ((invalid_option, 2007), (invalid_value, 2006)):
        for call in calls:
            with pytest.raises(found.FoundException) as info:
                call()
            assert info.value.code == code
    found.set_option(tx, 800, b"tag")  # a hint: accepted, no effect
    found.cancel(tx)


async def test_code_2021_no_commit_version(db: found.Database) -> None:
    tx = found.make_transaction(db)
    stamp = asyncio.ensure_future(found.get_versionstamp(tx))
    await asyncio.sleep(0)
    await found.get(tx, b"k")
    await found.commit(tx)
    await raises(2021, stamp)


async def test_code_2104_connection_string_invalid() -> None:
    await raises(2104, found.open("nosuchengine://x"))


def test_found_exception_str_and_repr() -> None:
    exc = found.FoundException(1020)
    assert exc.code == 1020
    assert str(exc) == "1020"
    assert repr(exc) == (
        "<FoundException not_committed: "
        "transaction conflicted with another and did not commit (1020)>"
    )
    assert isinstance(exc, found.BaseFoundException)
    assert not isinstance(exc, ShaleError)
    assert found_errors.error_name(999_999) == "unknown_error"


def test_every_shale_error_has_a_code() -> None:
    """The seam maps the core's whole tree; only engine failures are internal.

    Layer errors (defined in their layer modules) are translated by each
    found layer facade into found's own layer exceptions, so they are not
    held to FoundationDB codes here.
    """
    for cls in _subclasses(ShaleError):
        if cls.__module__ != "shale.errors":
            continue
        code = found_errors.code_for(cls("x"))
        assert code != 4100 or issubclass(cls, EngineError) or cls is ShaleError, cls
        assert found_errors.error_name(code) != "unknown_error"


def _subclasses(cls: type[ShaleError]) -> list[type[ShaleError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out
