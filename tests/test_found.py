"""``shale.found``: found's own tests (numbered as in found-spec §4) on every
built-in engine and through a server, then the facade's retry loop and edge
cases. Its error codes are in ``test_found_errors.py``."""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import shale
import shale.found as found
from found_support import db, dump, le, opener, raises, url
from shale.errors import CommitUnknownResult

__all__ = ["db", "opener", "url"]  # fixtures, imported for pytest to find


# -- found's tests 1-3, 7-11: the tuple layer -----------------------------------


def test_pack_unpack() -> None:
    value = (
        (None, False, True, b"x42", 1, -1, 3.1415, -3.1415, ("abc",)),
        ("d", "e", "f"),
        2.718281828459045,
    )
    assert found.unpack(found.pack(value)) == value


def test_versionstamp_pack_roundtrip() -> None:
    stamp = found.Versionstamp(b"\x01" * 10, 7)
    out = found.unpack(found.pack((stamp, b"after")))
    assert out == (stamp, b"after")
    assert out[0].is_complete()


def test_pack_with_versionstamp() -> None:
    key = found.pack_with_versionstamp((b"prefix", found.Versionstamp.incomplete(3), b"suffix"))
    (offset,) = struct.unpack("<I", key[-4:])
    assert key[offset - 1] == 0x33
    assert key[offset : offset + 10] == b"\xff" * 10
    assert found.has_incomplete_versionstamp((found.Versionstamp.incomplete(3),))


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, 0x00),
        (b"x", 0x01),
        ("x", 0x02),
        (False, 0x26),
        (True, 0x27),
        (0, 0x14),
        (1.0, 0x21),
        (uuid.UUID(int=1), 0x30),
        (found.Versionstamp(b"\x00" * 10, 0), 0x33),
        ((), 0x05),
    ],
)
def test_type_codes(value: object, code: int) -> None:
    assert found.pack((value,))[0] == code


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (1, 2),
        (255, 2),
        (256, 3),
        (65535, 3),
        (65536, 4),
        (2**32, 6),
        (2**63 - 1, 9),
        (-1, 2),
        (-255, 2),
        (-256, 3),
        (-65536, 4),
    ],
)
def test_integer_encoding_size(value: int, size: int) -> None:
    assert len(found.pack((value,))) == size


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "14"),
        (1, "15 01"),
        (255, "15 ff"),
        (256, "16 01 00"),
        (-1, "13 fe"),
        (-255, "13 00"),
        (-256, "12 fe ff"),
    ],
)
def test_integer_encoding_bytes(value: int, encoded: str) -> None:
    assert found.pack((value,)) == bytes.fromhex(encoded)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (2**64 - 1, "1d 08" + " ff" * 8),
        (-(2**64 - 1), "0b f7" + " 00" * 8),
        (2**64, "1d 09 01" + " 00" * 8),
        (-(2**64), "0b f6 fe" + " ff" * 8),
    ],
)
def test_large_integer_encoding(value: int, encoded: str) -> None:
    # found compared with fdb.tuple here; these are fdb.tuple's bytes (spec §5.9).
    assert found.pack((value,)) == bytes.fromhex(encoded)
    assert found.unpack(found.pack((value,))) == (value,)


@pytest.mark.parametrize(
    "ordered",
    [
        [-256, -255, -1, 0, 1, 255, 256, 2**16, 2**32, 2**63],
        ["", "a", "aa", "b", "z"],
        [b"", b"\x00", b"\x00\xff", b"\x01", b"\xff"],
        [None, b"", "", 0],
    ],
)
def test_pack_lexicographic_order(ordered: list[object]) -> None:
    packed = [found.pack((v,)) for v in ordered]
    assert packed == sorted(packed)


# -- found's tests 12-19: transactions, reads, queries ---------------------------


async def test_transaction_context_manager_commit(db: found.Database) -> None:
    async with found.transaction(db) as tx:
        await found.set(tx, b"k", b"v")
    assert await dump(db) == [(b"k", b"v")]


async def test_transaction_context_manager_no_commit_on_exception(db: found.Database) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with found.transaction(db) as tx:
            await found.set(tx, b"k", b"v")
            raise RuntimeError("boom")
    assert await dump(db) == []


async def test_noop(db: found.Database) -> None:
    async def noop(tx: found.Transaction) -> str:
        return "ok"

    assert await found.transactional(db, noop) == "ok"


async def test_get(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        assert await found.get(tx, b"key") is None
        await found.set(tx, b"key", b"value")
        assert await found.get(tx, b"key") == b"value"

    await found.transactional(db, body)


async def _fill(db: found.Database, count: int) -> None:
    async def body(tx: found.Transaction) -> None:
        for i in range(count):
            await found.set(tx, found.pack((i,)), found.pack((str(i),)))

    await found.transactional(db, body)


async def _query(db: found.Database, key: Any, other: Any, **kwargs: Any) -> list[Any]:
    async def body(tx: found.Transaction) -> list[Any]:
        return await found.all(found.query(tx, key, other, **kwargs))

    return await found.transactional(db, body)


async def test_query(db: found.Database) -> None:
    await _fill(db, 10)
    out = await _query(db, found.pack((1,)), found.pack((8,)))
    assert out == [(found.pack((i,)), found.pack((str(i),))) for i in range(1, 8)]


async def test_query_reverse(db: found.Database) -> None:
    await _fill(db, 11)
    out = await _query(db, found.pack((8,)), found.pack((4,)))
    assert [found.unpack(k)[0] for k, _ in out] == [8, 7, 6, 5, 4]


async def test_next_prefix(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        for key in (b"\x00a", b"\x00b", b"\x00\xff", b"\x01a"):
            await found.set(tx, key, b"")

    await found.transactional(db, body)
    prefix = b"\x00"
    assert len(await _query(db, prefix, found.next_prefix(prefix))) == 3
    assert len(await _query(db, b"", b"\xff")) == 4


async def test_read_version(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> int:
        return await found.read_version(tx)

    assert await found.transactional(db, body)


# -- found's tests 20, 21, 37-52 -----------------------------------------------------


async def test_get_range_split_points(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        for i in range(20):
            await found.set(tx, bytes((1, i)), b"v" * 100)

    await found.transactional(db, body)

    async def split(tx: found.Transaction) -> list[bytes]:
        return await found.get_range_split_points(tx, b"\x01", b"\x02", 500)

    points = await found.transactional(db, split)
    assert all(isinstance(k, bytes) and b"\x01" <= k <= b"\x02" for k in points)
    assert points[0] == b"\x01" and points[-1] == b"\x02"
    assert len(points) == 2 + 3  # 20 pairs of 102 bytes, a split every 5


async def test_estimated_size_bytes(db: found.Database) -> None:
    async def size(tx: found.Transaction) -> int:
        return await found.estimated_size_bytes(tx, b"", b"\xff")

    assert await found.transactional(db, size) == 0
    for batch in range(2):

        async def body(tx: found.Transaction, batch: int = batch) -> None:
            for i in range(10):
                await found.set(tx, bytes((batch, i)), b"\xff" * 100_000)

        await found.transactional(db, body)
    assert abs(await found.transactional(db, size) - 2_000_000) < 100_000


async def test_co_decorator() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    assert await found.co(add)(1, 2) == 3


async def _numbers(count: int) -> AsyncIterator[int]:
    for i in range(count):
        yield i


async def test_all() -> None:
    assert await found.all(_numbers(5)) == [0, 1, 2, 3, 4]


async def test_limit() -> None:
    assert await found.all(found.limit(_numbers(10), 3)) == [0, 1, 2]
    assert await found.all(found.limit(_numbers(10), 0)) == []


async def test_query_with_limit(db: found.Database) -> None:
    await _fill(db, 10)
    out = await _query(db, found.pack((0,)), found.pack((9,)), limit=3)
    assert [found.unpack(k)[0] for k, _ in out] == [0, 1, 2]


async def test_set_read_version(db: found.Database) -> None:
    async def version(tx: found.Transaction) -> int:
        return await found.read_version(tx)

    read_version = await found.transactional(db, version)

    async def body(tx: found.Transaction) -> bytes | None:
        await found.set_read_version(tx, read_version)
        return await found.get(tx, b"missing")

    assert await found.transactional(db, body) is None


async def test_watch(db: found.Database) -> None:
    tx = found.make_transaction(db)
    changed = await found.watch(tx, b"watched")
    await found.commit(tx)

    async def later() -> None:
        await asyncio.sleep(0.05)
        await found.transactional(db, found.set, b"watched", b"new")

    task = asyncio.ensure_future(later())
    await asyncio.wait_for(changed, 5.0)
    assert changed.result() is None
    await task


async def test_clear_single_key(db: found.Database) -> None:
    await found.transactional(db, found.set, b"k", b"v")
    assert await found.transactional(db, found.get, b"k") == b"v"
    await found.transactional(db, found.clear, b"k")
    assert await found.transactional(db, found.get, b"k") is None


async def test_atomic_add(db: found.Database) -> None:
    await found.transactional(db, found.set, b"n", le(0))
    await found.transactional(db, found.add, b"n", le(5))
    assert await found.transactional(db, found.get, b"n") == le(5)


def test_next_prefix_all_ff() -> None:
    for key in (b"\xff", b"\xff\xff\xff"):
        with pytest.raises(ValueError, match="0xFF"):
            found.next_prefix(key)
    assert found.next_prefix(b"a\xff\xff") == b"b"


async def test_get_client_version() -> None:
    assert isinstance(found.get_client_version(), str)
    assert found.get_client_version() == shale.__version__


async def test_append_if_fits(db: found.Database) -> None:
    await found.transactional(db, found.set, b"k", b"hello")
    await found.transactional(db, found.append_if_fits, b"k", b" world")
    assert await found.transactional(db, found.get, b"k") == b"hello world"


async def test_compare_and_clear(db: found.Database) -> None:
    await found.transactional(db, found.set, b"a", b"x")
    await found.transactional(db, found.set, b"b", b"x")
    await found.transactional(db, found.compare_and_clear, b"a", b"x")
    await found.transactional(db, found.compare_and_clear, b"b", b"other")
    assert await dump(db) == [(b"b", b"x")]


async def test_get_addresses_for_key(db: found.Database, url: str) -> None:
    """found's test 50 (a list of str), made exact: no address without a
    server, the server's ``host:port`` through ``shale://``."""
    await found.transactional(db, found.set, b"addr_test", b"value")
    out = await found.transactional(db, found.get_addresses_for_key, b"addr_test")
    parts = urlsplit(url)
    assert out == ([f"{parts.hostname}:{parts.port}"] if parts.scheme == "shale" else [])
    assert all(isinstance(address, str) for address in out)


async def test_database_set_option(db: found.Database) -> None:
    found.database_set_option(db, 500, le(5000))
    assert db.options.timeout == 5.0


def test_error_predicate() -> None:
    assert found.error_predicate(found.ERROR_PREDICATE_RETRYABLE, 1020)
    assert found.error_predicate(found.ERROR_PREDICATE_RETRYABLE, 1021)
    assert found.error_predicate(found.ERROR_PREDICATE_MAYBE_COMMITTED, 1021)
    assert not found.error_predicate(found.ERROR_PREDICATE_RETRYABLE, 2000)
    assert found.error_predicate(found.ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED, 1007)
    assert not found.error_predicate(found.ERROR_PREDICATE_RETRYABLE_NOT_COMMITTED, 1021)
    assert not found.error_predicate(12345, 1020)


# -- found's tests 64-65: hooks ------------------------------------------------------


def _recording_hooks(db: found.Database, log: list[str], stats: list[Any]) -> None:
    async def begin(tx: found.Transaction) -> None:
        log.append("begin")

    async def on_commit(tx: found.Transaction) -> None:
        log.append("commit")

    async def post(tx: found.Transaction, s: found.TransactionStats) -> None:
        log.append("post_commit")
        stats.append(s)

    db.hooks.on_begin.append(begin)
    db.hooks.on_commit.append(on_commit)
    db.hooks.on_post_commit.append(post)


async def test_hooks_fire_in_order(db: found.Database) -> None:
    log: list[str] = []
    stats: list[found.TransactionStats] = []
    _recording_hooks(db, log, stats)

    async def work(tx: found.Transaction) -> None:
        log.append("work")
        await found.set(tx, b"k", b"v")

    await found.transactional(db, work)
    assert log == ["begin", "work", "commit", "post_commit"]
    (s,) = stats
    assert s.retries == 0 and s.elapsed >= 0 and s.commit_bytes == 2


async def test_hooks_retry_semantics(db: found.Database) -> None:
    log: list[str] = []
    stats: list[found.TransactionStats] = []
    _recording_hooks(db, log, stats)
    attempts = 0

    async def work(tx: found.Transaction) -> None:
        nonlocal attempts
        log.append("work")
        attempts += 1
        if attempts == 1:
            raise found.FoundException(1007)

    await found.transactional(db, work)
    assert log == ["begin", "work", "begin", "work", "commit", "post_commit"]
    assert stats[0].retries == 1


async def test_hooks_with_the_context_manager(db: found.Database) -> None:
    log: list[str] = []
    stats: list[found.TransactionStats] = []
    _recording_hooks(db, log, stats)
    async with found.transaction(db) as tx:
        log.append("work")
        await found.set(tx, b"k", b"v")
    assert log == ["begin", "work", "commit", "post_commit"]
    assert stats[0].retries == 0


async def test_on_commit_hooks_rerun_on_conflict(db: found.Database) -> None:
    log: list[str] = []
    _recording_hooks(db, log, [])
    attempts = 0

    async def work(tx: found.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        log.append("work")
        await found.get(tx, b"k")
        if attempts == 1:  # a conflicting write, without hooks
            other = found.make_transaction(db)
            await found.set(other, b"k", b"other")
            await found.commit(other)
        await found.set(tx, b"mine", b"1")

    await found.transactional(db, work)
    assert log == ["begin", "work", "commit", "begin", "work", "commit", "post_commit"]


# -- the retry loop ------------------------------------------------------------------


async def test_transactional_clears_vars_per_retry(db: found.Database) -> None:
    seen: list[dict[Any, Any]] = []

    async def work(tx: found.Transaction) -> None:
        seen.append(dict(tx.vars))
        tx.vars["attempt"] = len(seen)
        if len(seen) < 3:
            raise found.FoundException(1020)

    await found.transactional(db, work)
    assert seen == [{}, {}, {}]


async def test_retry_limit_reached(db: found.Database) -> None:
    found.database_set_option(db, 501, le(3))
    found.database_set_option(db, 502, le(0))
    calls = 0

    async def always_conflicts(tx: found.Transaction) -> None:
        nonlocal calls
        calls += 1
        await found.set(tx, b"k", b"v")
        raise found.FoundException(1020)

    with pytest.raises(found.FoundException) as info:
        await found.transactional(db, always_conflicts)
    assert info.value.code == 1020
    assert calls == 4  # the first attempt and 3 retries
    assert any("retry limit 3" in note for note in info.value.__notes__)
    assert await dump(db) == []


async def test_default_retry_limit_is_bounded(db: found.Database) -> None:
    assert found.DEFAULT_RETRY_LIMIT == 100
    assert db.options.retry_limit == found.DEFAULT_RETRY_LIMIT


async def test_retry_limit_minus_one_keeps_the_default(db: found.Database) -> None:
    found.database_set_option(db, 501, le(-1))
    assert db.options.retry_limit == found.DEFAULT_RETRY_LIMIT


async def test_transaction_retry_limit_option(db: found.Database) -> None:
    found.database_set_option(db, 502, le(0))
    calls = 0

    async def body(tx: found.Transaction) -> None:
        nonlocal calls
        calls += 1
        found.set_option(tx, 501, le(1))
        raise found.FoundException(1007)

    with pytest.raises(found.FoundException) as info:
        await found.transactional(db, body)
    assert info.value.code == 1007
    assert calls == 2


async def test_real_conflicts_are_retried(db: found.Database) -> None:
    await found.transactional(db, found.set, b"n", le(0))
    attempts = 0

    async def increment(tx: found.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        (n,) = struct.unpack("<q", await found.get(tx, b"n") or le(0))
        if attempts == 1:
            await found.transactional(db, found.set, b"n", le(10))
        await found.set(tx, b"n", le(n + 1))

    await found.transactional(db, increment)
    assert attempts == 2
    assert await found.transactional(db, found.get, b"n") == le(11)


async def test_non_found_exceptions_propagate_without_retry(db: found.Database) -> None:
    calls = 0

    async def body(tx: found.Transaction) -> None:
        nonlocal calls
        calls += 1
        await found.set(tx, b"k", b"v")
        raise KeyError("user error")

    with pytest.raises(KeyError):
        await found.transactional(db, body)
    assert calls == 1
    assert await dump(db) == []


async def test_non_retryable_codes_propagate(db: found.Database) -> None:
    calls = 0

    async def body(tx: found.Transaction) -> None:
        nonlocal calls
        calls += 1
        await found.set(tx, b"k" * 10_001, b"")

    with pytest.raises(found.FoundException) as info:
        await found.transactional(db, body)
    assert info.value.code == 2102
    assert calls == 1


async def test_on_error_resets_for_a_manual_retry_loop(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"lost", b"1")
    await found.on_error(tx, 1020)
    await found.set(tx, b"kept", b"1")
    await found.commit(tx)
    assert await dump(db) == [(b"kept", b"1")]
    with pytest.raises(found.FoundException) as info:
        await found.on_error(tx, 2000)
    assert info.value.code == 2000


async def test_commit_unknown_result_is_retried(
    db: found.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = db.pointer.engine
    real_commit = engine.commit
    failures = [CommitUnknownResult("lost the reply")]

    async def flaky(request: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real_commit(request)

    monkeypatch.setattr(engine, "commit", flaky)
    stats: list[found.TransactionStats] = []
    _recording_hooks(db, [], stats)
    await found.transactional(db, found.set, b"k", b"v")
    assert stats[0].retries == 1
    assert await dump(db) == [(b"k", b"v")]


# -- queries: direction, selectors, modes ---------------------------------------------


async def test_query_reverse_rule(db: found.Database) -> None:
    await _fill(db, 11)

    def keys(pairs: list[Any]) -> list[int]:
        return [found.unpack(k)[0] for k, _ in pairs]

    p = found.pack
    assert keys(await _query(db, p((3,)), p((3,)))) == [3]  # [k, k] is closed
    assert keys(await _query(db, p((8,)), p((4,)), limit=2)) == [8, 7]
    # explicit reverse passes the bounds through: FoundationDB's [key, other)
    assert keys(await _query(db, p((4,)), p((8,)), reverse=True)) == [7, 6, 5, 4]
    assert keys(await _query(db, p((4,)), p((8,)), reverse=False)) == [4, 5, 6, 7]
    assert keys(await _query(db, p((8,)), p((4,)), reverse=True)) == []
    # the implicit reverse keeps selectors' offsets but replaces or_equal
    # (other's by False, key's by True), as found does
    assert keys(await _query(db, found.gt(p((8,))), p((4,)))) == [8, 7, 6, 5, 4]
    assert keys(await _query(db, found.gt(p((8,)), 2), p((4,)))) == [9, 8, 7, 6, 5, 4]
    assert keys(await _query(db, p((8,)), found.gt(p((4,))))) == [8, 7, 6, 5, 4]
    assert keys(await _query(db, p((8,)), found.gte(p((4,)), 2))) == [8, 7, 6, 5]


async def test_key_selector_offsets(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        for key in (b"a", b"b", b"c", b"d"):
            await found.set(tx, key, b"")

    await found.transactional(db, body)
    assert found.gt(b"b") == found.KeySelector(b"b", True, 1)
    assert found.gte(b"b") == found.KeySelector(b"b", False, 1)
    assert found.lt(b"b") == found.KeySelector(b"b", False, 0)
    assert found.lte(b"b") == found.KeySelector(b"b", True, 0)
    cases = [
        (found.gt(b"b"), b"c"),
        (found.gt(b"b", 2), b"d"),
        (found.gte(b"b"), b"b"),
        (found.gte(b"b", 2), b"c"),
        (found.lt(b"c"), b"b"),
        (found.lt(b"c", -1), b"a"),
        (found.lte(b"c"), b"c"),
        (found.lte(b"c", -1), b"b"),
        (found.lt(b"a"), b""),
        (found.gt(b"d"), b"\xff"),
    ]

    async def resolve(tx: found.Transaction) -> list[bytes]:
        return [await found.get_key(tx, selector) for selector, _ in cases]

    assert await found.transactional(db, resolve) == [want for _, want in cases]
    with pytest.raises(AssertionError):
        found.gt("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "mode",
    [
        found.STREAMING_MODE_WANT_ALL,
        found.STREAMING_MODE_ITERATOR,
        found.STREAMING_MODE_SMALL,
        found.STREAMING_MODE_MEDIUM,
        found.STREAMING_MODE_LARGE,
        found.STREAMING_MODE_SERIAL,
    ],
)
async def test_streaming_modes_only_tune_batches(db: found.Database, mode: int) -> None:
    await _fill(db, 100)
    everything = await _query(db, b"", b"\xff", mode=mode)
    assert [found.unpack(k)[0] for k, _ in everything] == list(range(100))
    limited = await _query(db, b"", b"\xff", mode=found.STREAMING_MODE_EXACT, limit=7)
    assert len(limited) == 7


async def test_query_sees_own_writes_and_stops_early(db: found.Database) -> None:
    await _fill(db, 50)

    async def body(tx: found.Transaction) -> list[Any]:
        await found.set(tx, found.pack((0.5,)), b"mine")
        return await found.all(found.limit(found.query(tx, b"", b"\xff"), 3))

    out = await found.transactional(db, body)
    assert [found.unpack(k)[0] for k, _ in out] == [0, 1, 2]


# -- snapshot transactions ------------------------------------------------------------


async def test_snapshot_transaction_refuses_set(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> None:
        await found.set(tx, b"k", b"v")

    with pytest.raises(AssertionError):
        await found.transactional(db, body, snapshot=True)
    assert await dump(db) == []


async def test_snapshot_reads_add_no_conflicts(db: found.Database) -> None:
    tx = found.make_transaction(db)
    view = found.Transaction(tx.pointer, tx.db, True, tx.vars)
    assert await found.get(view, b"k") is None
    await found.transactional(db, found.set, b"k", b"other")
    await found.set(tx, b"mine", b"1")
    await found.commit(tx)
    assert await dump(db) == [(b"k", b"other"), (b"mine", b"1")]


async def test_add_conflict_range(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.read_version(tx)  # conflicts count from the read version, as in FoundationDB
    found.add_conflict_range(tx, b"a", b"c", found.CONFLICT_RANGE_TYPE_READ)
    await found.transactional(db, found.set, b"b", b"other")
    await found.set(tx, b"mine", b"1")
    assert await found.get_approximate_size(tx) == 2 + len(b"mine") + 1
    await raises(1020, found.commit(tx))


async def test_read_conflict_range_without_reads_commits(db: found.Database) -> None:
    tx = found.make_transaction(db)
    found.add_conflict_range(tx, b"a", b"c", found.CONFLICT_RANGE_TYPE_READ)
    found.add_conflict_range(tx, b"x", b"y", found.CONFLICT_RANGE_TYPE_WRITE)
    await found.set(tx, b"mine", b"1")
    await found.commit(tx)
    assert await dump(db) == [(b"mine", b"1")]


# -- versionstamps, watches, versions ---------------------------------------------------


async def test_get_versionstamp(db: found.Database) -> None:
    tx = found.make_transaction(db)
    stamp = asyncio.ensure_future(found.get_versionstamp(tx))
    await asyncio.sleep(0)
    key = found.pack_with_versionstamp((b"log", found.Versionstamp.incomplete(1)))
    await found.set_versionstamped_key(tx, key, b"entry")
    await found.commit(tx)
    versionstamp = await stamp
    assert len(versionstamp) == 10
    version = found.get_committed_version(tx)
    assert versionstamp[:8] == version.to_bytes(8, "big")
    ((stored, value),) = await dump(db)
    assert value == b"entry"
    assert found.unpack(stored) == (b"log", found.Versionstamp(versionstamp, 1))


async def test_get_versionstamp_after_commit_started(db: found.Database) -> None:
    tx = found.make_transaction(db)
    await found.set(tx, b"k", b"v")
    await found.commit(tx)
    await raises(2017, found.get_versionstamp(tx))


async def test_versionstamp_of_a_conflicting_commit(db: found.Database) -> None:
    tx = found.make_transaction(db)
    stamp = asyncio.ensure_future(found.get_versionstamp(tx))
    await asyncio.sleep(0)
    await found.get(tx, b"k")
    await found.transactional(db, found.set, b"k", b"other")
    await found.set(tx, b"k", b"mine")
    await raises(1020, found.commit(tx))
    await raises(1020, stamp)


async def test_watch_fails_when_the_transaction_is_reset(db: found.Database) -> None:
    tx = found.make_transaction(db)
    changed = await found.watch(tx, b"k")
    found.reset(tx)
    await raises(1025, changed)


async def test_cancelled_watch_stops_watching(db: found.Database) -> None:
    tx = found.make_transaction(db)
    changed = await found.watch(tx, b"k")
    await found.commit(tx)
    changed.cancel()
    await found.transactional(db, found.set, b"k", b"v")
    await asyncio.sleep(0.01)
    assert changed.cancelled()


async def test_watch_from_transactional(db: found.Database) -> None:
    async def body(tx: found.Transaction) -> asyncio.Future[None]:
        return await found.watch(tx, b"k")

    changed = await found.transactional(db, body)
    assert not changed.done()
    await found.transactional(db, found.set, b"k", b"v")
    await asyncio.wait_for(changed, 5.0)


async def test_committed_version(db: found.Database) -> None:
    tx = found.make_transaction(db)
    assert found.get_committed_version(tx) == -1
    await found.set(tx, b"k", b"v")
    await found.commit(tx)
    assert found.get_committed_version(tx) > 0
    reader = found.make_transaction(db)
    await found.get(reader, b"k")
    await found.commit(reader)
    assert found.get_committed_version(reader) == -1


# -- atomic operations ---------------------------------------------------------------


async def test_atomic_operations(db: found.Database) -> None:
    ops = [
        (found.bit_and, b"\x0f", b"\x3c", b"\x0c"),
        (found.bit_or, b"\x0f", b"\x30", b"\x3f"),
        (found.bit_xor, b"\x0f", b"\xff", b"\xf0"),
        (found.max, b"\x05", b"\x07", b"\x07"),
        (found.min, b"\x05", b"\x07", b"\x05"),
        (found.byte_max, b"abc", b"abd", b"abd"),
        (found.byte_min, b"abc", b"abd", b"abc"),
    ]
    for i, (op, start, param, want) in enumerate(ops):
        key = b"op%d" % i
        await found.transactional(db, found.set, key, start)
        await found.transactional(db, op, key, param)
        assert await found.transactional(db, found.get, key) == want, op.__name__
