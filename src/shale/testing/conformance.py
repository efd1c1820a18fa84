"""The conformance tests, as methods of ``ConformanceSuite`` (see the package)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import shale
from shale import tuple as tuples
from shale.core.database import Database
from shale.server import serve
from shale.testing.feeds import FeedSuite
from shale.testing.model import check_serializable, run_random_history

__all__ = ["ENGINE_URLS", "ConformanceSuite"]

ENGINE_URLS = {
    "memory": "memory://",
    "sqlite": "sqlite:////{tmp}/conformance.db",
}
"""Built-in engines' URLs; ``{tmp}`` is a fresh directory without its leading slash."""

SERVED = "shale"
"""The parameter under which the suite runs through ``shale serve``: a
server in the test's event loop, serving a SQLite file, reached over
loopback by the ``shale://`` engine."""

_TOKEN = "conformance-token"

Opener = Callable[..., Awaitable[Database]]


def _le(n: int, size: int = 8) -> bytes:
    return n.to_bytes(size, "little", signed=n < 0)


async def _fill(db: Database, n: int = 10, prefix: bytes = b"k") -> None:
    async with db.transaction() as tr:
        for i in range(n):
            tr.set(prefix + b"%02d" % i, b"v%d" % i)


async def _scan(
    db: Database, begin: bytes = b"", end: bytes = b"\xff"
) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        return await tr.get_range(begin, end)


class ConformanceSuite(FeedSuite):
    """Every test here must pass on every engine."""

    @pytest.fixture(params=sorted([*ENGINE_URLS, SERVED]))
    async def db_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
        if request.param != SERVED:
            yield ENGINE_URLS[request.param].format(tmp=str(tmp_path).lstrip("/"))
            return
        server = await serve(f"sqlite:///{tmp_path}/served.db", _TOKEN, port=0)
        try:
            yield f"shale://:{_TOKEN}@127.0.0.1:{server.port}"
        finally:
            await server.stop(drain=1.0)

    @pytest.fixture
    async def opener(self, db_url: str) -> AsyncIterator[Opener]:
        opened: list[Database] = []

        async def open_db(**options: Any) -> Database:
            db = await shale.open(db_url, **options)
            opened.append(db)
            return db

        yield open_db
        for db in opened:
            await db.close()

    @pytest.fixture
    async def db(self, opener: Opener) -> Database:
        return await opener()

    # -- basics ----------------------------------------------------------

    async def test_get_set_clear(self, db: Database) -> None:
        assert await db.get(b"a") is None
        await db.set(b"a", b"1")
        assert await db.get(b"a") == b"1"
        await db.set(b"a", b"")
        assert await db.get(b"a") == b""
        await db.clear(b"a")
        assert await db.get(b"a") is None

    async def test_binary_keys_sort_bytewise(self, db: Database) -> None:
        keys = [b"", b"\x00", b"\x00\x00", b"\x00\xff", b"\x01", b"a", b"a\x00", b"ab", b"\xfe\xff"]
        async with db.transaction() as tr:
            for key in reversed(keys):
                tr.set(key, key)
        assert [k for k, _ in await _scan(db)] == keys

    async def test_range_forward_reverse_limit(self, db: Database) -> None:
        await _fill(db)
        rows = await _scan(db, b"k02", b"k05")
        assert rows == [(b"k02", b"v2"), (b"k03", b"v3"), (b"k04", b"v4")]
        async with db.transaction() as tr:
            back = await tr.get_range(b"k02", b"k05", reverse=True)
            assert [k for k, _ in back] == [b"k04", b"k03", b"k02"]
            assert [k for k, _ in await tr.get_range(b"k", b"l", limit=2)] == [b"k00", b"k01"]
            tail = await tr.get_range(b"k", b"l", limit=2, reverse=True)
            assert [k for k, _ in tail] == [b"k09", b"k08"]
            assert await tr.get_range(b"k05", b"k02") == []
            assert len(await tr.get_range_startswith(b"k0")) == 10

    async def test_range_streams_in_batches(self, db: Database) -> None:
        async with db.transaction() as tr:
            for i in range(1000):
                tr.set(b"s%04d" % i, b"x")
        async with db.transaction() as tr:
            seen = [k async for k, _ in tr.get_range(b"s", b"t", batch_size=7)]
            assert seen == [b"s%04d" % i for i in range(1000)]
            back = [
                k async for k, _ in tr.get_range(b"s", b"t", reverse=True, limit=25, batch_size=4)
            ]
            assert back == [b"s%04d" % i for i in range(999, 974, -1)]

    async def test_key_selectors(self, db: Database) -> None:
        await _fill(db)
        sel = shale.KeySelector
        async with db.transaction() as tr:
            assert await tr.get_key(sel.first_greater_or_equal(b"k03")) == b"k03"
            assert await tr.get_key(sel.first_greater_than(b"k03")) == b"k04"
            assert await tr.get_key(sel.last_less_than(b"k03")) == b"k02"
            assert await tr.get_key(sel.last_less_or_equal(b"k03")) == b"k03"
            assert await tr.get_key(sel.first_greater_or_equal(b"k025")) == b"k03"
            assert await tr.get_key(sel.first_greater_than(b"k03") + 2) == b"k06"
            assert await tr.get_key(sel.last_less_than(b"k03") - 1) == b"k01"
            assert await tr.get_key(sel.last_less_than(b"k00")) == b""
            assert await tr.get_key(sel.first_greater_than(b"k09")) == b"\xff"
            rows = await tr.get_range(
                sel.first_greater_than(b"k01"), sel.first_greater_or_equal(b"k04")
            )
            assert [k for k, _ in rows] == [b"k02", b"k03"]

    async def test_tuple_keys_and_subspace(self, db: Database) -> None:
        space = shale.Subspace(("app", 1))
        async with db.transaction() as tr:
            for i in (3, -1, 10**20, 0):
                tr.set(space.pack(("n", i)), tuples.pack((i,)))
            tr.set(shale.Subspace(("app", 2)).pack(("n", 0)), b"other")
        async with db.transaction() as tr:
            begin, end = space.range(("n",))
            rows = await tr.get_range(begin, end)
        assert [space.unpack(k)[1] for k, _ in rows] == [-1, 0, 3, 10**20]

    # -- read-your-writes ------------------------------------------------

    async def test_read_your_writes(self, db: Database) -> None:
        await _fill(db)
        async with db.transaction() as tr:
            tr.set(b"k03", b"new")
            tr.set(b"k035", b"ins")
            tr.clear(b"k05")
            tr.clear_range(b"k07", b"k09")
            tr.set(b"k08", b"back")
            assert await tr.get(b"k03") == b"new"
            assert await tr.get(b"k05") is None
            assert await tr.get(b"k07") is None
            assert await tr.get(b"k08") == b"back"
            rows = await tr.get_range(b"k", b"l")
            assert [k for k, _ in rows] == [
                b"k00",
                b"k01",
                b"k02",
                b"k03",
                b"k035",
                b"k04",
                b"k06",
                b"k08",
                b"k09",
            ]
            back = await tr.get_range(b"k", b"l", reverse=True, limit=3)
            assert back == [(b"k09", b"v9"), (b"k08", b"back"), (b"k06", b"v6")]
            streamed = [kv async for kv in tr.get_range(b"k", b"l", batch_size=2)]
            assert streamed == rows
            assert await tr.get_key(shale.KeySelector.first_greater_than(b"k06")) == b"k08"
        assert [k for k, _ in await _scan(db, b"k", b"l")] == [k for k, _ in rows]

    async def test_atomic_ops_read_your_writes(self, db: Database) -> None:
        async with db.transaction() as tr:
            tr.add(b"n", _le(5))
            tr.add(b"n", _le(2))
            assert await tr.get(b"n") == _le(7)
            tr.set(b"m", _le(1))
            tr.add(b"m", _le(1))
            assert await tr.get(b"m") == _le(2)
            assert await tr.get_range(b"m", b"o") == [(b"m", _le(2)), (b"n", _le(7))]
        assert await db.get(b"n") == _le(7)

    # -- atomic operations -------------------------------------------------

    @pytest.mark.parametrize(
        ("op", "old", "param", "expected"),
        [
            ("add", None, _le(5), _le(5)),
            ("add", _le(-3), _le(5), _le(2)),
            ("add", b"\xff", b"\x01\x00", b"\x00\x01"),
            ("add", b"\x01\x02\x03", b"\x01", b"\x02"),
            ("add", b"\xff\xff", b"\x01\x00", b"\x00\x00"),
            ("bit_and", None, b"\x0f", b"\x0f"),
            ("bit_and", b"\x3c", b"\x0f", b"\x0c"),
            ("bit_or", None, b"\x0f", b"\x0f"),
            ("bit_or", b"\x30", b"\x0f", b"\x3f"),
            ("bit_xor", b"\xff", b"\x0f", b"\xf0"),
            ("max", None, b"\x05", b"\x05"),
            ("max", b"\x07", b"\x05", b"\x07"),
            ("max", b"\x00\x01", b"\xff\x00", b"\x00\x01"),
            ("min", None, b"\x05", b"\x05"),
            ("min", b"\x07", b"\x05", b"\x05"),
            ("byte_max", b"abc", b"abd", b"abd"),
            ("byte_max", None, b"x", b"x"),
            ("byte_min", b"abc", b"ab", b"ab"),
            ("byte_min", None, b"x", b"x"),
            ("append_if_fits", None, b"hello", b"hello"),
            ("append_if_fits", b"hello", b" world", b"hello world"),
            ("append_if_fits", b"x" * 99_999, b"yy", b"x" * 99_999),
            ("compare_and_clear", b"same", b"same", None),
            ("compare_and_clear", b"other", b"same", b"other"),
            ("compare_and_clear", None, b"same", None),
        ],
    )
    async def test_atomic_op(
        self, db: Database, op: str, old: bytes | None, param: bytes, expected: bytes | None
    ) -> None:
        if old is not None:
            await db.set(b"atom", old)
        async with db.transaction() as tr:
            getattr(tr, op)(b"atom", param)
        assert await db.get(b"atom") == expected

    async def test_atomic_ops_add_no_read_conflict(self, db: Database) -> None:
        first, second = db.transaction(), db.transaction()
        await first.get_read_version()
        await second.get_read_version()
        first.add(b"counter", _le(1))
        second.add(b"counter", _le(1))
        await first.commit()
        await second.commit()
        assert await db.get(b"counter") == _le(2)

    # -- isolation and conflicts ------------------------------------------

    async def test_snapshot_is_consistent(self, db: Database) -> None:
        await _fill(db, 3)
        reader = db.transaction()
        assert await reader.get(b"k00") == b"v0"
        async with db.transaction() as tr:
            tr.set(b"k01", b"changed")
            tr.clear(b"k02")
            tr.set(b"k99", b"new")
        assert await reader.get(b"k01") == b"v1"
        assert await reader.get_range(b"k", b"l") == [
            (b"k00", b"v0"),
            (b"k01", b"v1"),
            (b"k02", b"v2"),
        ]
        reader.close()

    async def test_lost_update_is_prevented(self, db: Database) -> None:
        await db.set(b"balance", b"100")
        first, second = db.transaction(), db.transaction()
        a = int(await first.get(b"balance") or b"0")
        b = int(await second.get(b"balance") or b"0")
        first.set(b"balance", b"%d" % (a + 10))
        second.set(b"balance", b"%d" % (b + 20))
        await first.commit()
        with pytest.raises(shale.ConflictError):
            await second.commit()
        assert await db.get(b"balance") == b"110"

    async def test_write_skew_is_prevented(self, db: Database) -> None:
        async with db.transaction() as tr:
            tr.set(b"oncall/alice", b"1")
            tr.set(b"oncall/bob", b"1")
        first, second = db.transaction(), db.transaction()
        assert len(await first.get_range_startswith(b"oncall/")) == 2
        assert len(await second.get_range_startswith(b"oncall/")) == 2
        first.clear(b"oncall/alice")
        second.clear(b"oncall/bob")
        await first.commit()
        with pytest.raises(shale.ConflictError):
            await second.commit()
        assert len(await _scan(db, b"oncall/", b"oncall0")) == 1

    async def test_phantom_is_prevented(self, db: Database) -> None:
        await _fill(db, 3)
        reader = db.transaction()
        assert len(await reader.get_range(b"k", b"l")) == 3
        reader.set(b"count", b"3")
        await db.set(b"k015", b"phantom")
        with pytest.raises(shale.ConflictError):
            await reader.commit()

    async def test_limited_range_conflicts_only_on_what_it_read(self, db: Database) -> None:
        await _fill(db)
        reader = db.transaction()
        assert len(await reader.get_range(b"k", b"l", limit=2)) == 2
        reader.set(b"out", b"x")
        await db.set(b"k07", b"beyond the limit")
        await reader.commit()

    @pytest.mark.parametrize("reverse", [False, True])
    async def test_streamed_range_stopped_early_conflicts_on_what_it_saw(
        self, db: Database, reverse: bool
    ) -> None:
        await _fill(db, 600)
        for keep_iterator in (False, True):
            reader = db.transaction()
            stream = reader.get_range(b"k", b"l", reverse=reverse, batch_size=4)
            iterator = aiter(stream)
            seen_key, _ = await anext(iterator)
            assert seen_key == (b"k99" if reverse else b"k00")
            if not keep_iterator:
                del iterator  # dropped, never resumed nor closed: the README's `break`
            reader.set(b"out", b"x")
            await db.set(seen_key, b"overwritten")
            with pytest.raises(shale.ConflictError):
                await reader.commit()

    async def test_streamed_range_stopped_early_ignores_what_it_never_fetched(
        self, db: Database
    ) -> None:
        await _fill(db, 100)
        reader = db.transaction()
        async for key, _ in reader.get_range(b"k", b"l", batch_size=4):
            assert key == b"k00"
            break
        reader.set(b"out", b"x")
        await db.set(b"k90", b"beyond what the stream fetched")
        await reader.commit()

    async def test_snapshot_reads_do_not_conflict(self, db: Database) -> None:
        await db.set(b"x", b"1")
        tr = db.transaction()
        assert await tr.snapshot.get(b"x") == b"1"
        assert await tr.snapshot.get_range(b"a", b"z") == [(b"x", b"1")]
        tr.set(b"y", b"2")
        await db.set(b"x", b"changed")
        await tr.commit()
        assert await db.get(b"y") == b"2"

    async def test_manual_conflict_ranges(self, db: Database) -> None:
        tr = db.transaction()
        await tr.get_read_version()
        tr.add_read_conflict_range(b"lock/", b"lock0")
        tr.set(b"unrelated", b"1")
        other = db.transaction()
        other.add_write_conflict_key(b"lock/a")
        other.set(b"something", b"1")
        await other.commit()
        with pytest.raises(shale.ConflictError):
            await tr.commit()
        unread = db.transaction()
        unread.add_read_conflict_key(b"lock/a")
        unread.set(b"after", b"1")
        await unread.commit()
        assert await db.get(b"after") == b"1"

    async def test_read_only_and_blind_writes_do_not_conflict(self, db: Database) -> None:
        reader = db.transaction()
        assert await reader.get(b"x") is None
        await db.set(b"x", b"1")
        await reader.commit()
        assert reader.committed_version == -1
        blind = db.transaction()
        blind.set(b"x", b"2")
        await db.set(b"x", b"3")
        await blind.commit()
        assert await db.get(b"x") == b"2"

    async def test_randomized_history_is_serializable(self, db: Database) -> None:
        records = await run_random_history(db, transactions=300, workers=8, seed=7)
        assert len(records) > 50, "too few commits to say anything"
        await check_serializable(db, records)

    # -- limits and the system keyspace ---------------------------------------

    async def test_limits_raise_and_write_nothing(self, db: Database) -> None:
        cases: list[tuple[type[Exception], Callable[[shale.Transaction], None]]] = [
            (shale.KeyTooLarge, lambda tr: tr.set(b"k" * 10_001, b"v")),
            (shale.ValueTooLarge, lambda tr: tr.set(b"k", b"v" * 100_001)),
            (shale.KeyOutsideLegalRange, lambda tr: tr.set(b"\xff/system", b"v")),
            (shale.KeyOutsideLegalRange, lambda tr: tr.clear_range(b"a", b"\xff\x01")),
            (shale.ValueTooLarge, lambda tr: tr.add(b"k", b"\x01" * 100_001)),
        ]
        for error, act in cases:
            tr = db.transaction()
            tr.set(b"before", b"1")
            with pytest.raises(error):
                act(tr)
            with pytest.raises(error):
                await tr.commit()
        tr = db.transaction()
        with pytest.raises(shale.TransactionTooLarge):
            for i in range(120):
                tr.set(b"big%03d" % i, b"x" * 90_000)
        with pytest.raises(shale.TransactionTooLarge):
            await tr.commit()
        assert await _scan(db) == []
        await self._conflict_ranges_count_toward_the_limit(db)
        assert len(b"k" * 10_000) == 10_000
        await db.set(b"k" * 10_000, b"v" * 100_000)
        assert await db.get(b"k" * 10_000) == b"v" * 100_000

    async def _conflict_ranges_count_toward_the_limit(self, db: Database) -> None:
        """As in FoundationDB: 30,000 conflict ranges are cheap to resolve,
        but 10 MB of them are refused before anything is sent."""
        for add in ("add_read_conflict_range", "add_write_conflict_range"):
            tr = db.transaction()
            tr.set(b"small", b"write")
            with pytest.raises(shale.TransactionTooLarge):
                for i in range(1_000):
                    getattr(tr, add)(b"%05d" % i + b"a" * 5_000, b"%05d" % i + b"b" * 5_000)
            with pytest.raises(shale.TransactionTooLarge):
                await tr.commit()
        tr = db.transaction()
        tr.set(b"small", b"write")
        for i in range(1_100):
            await tr.get(b"%05d" % i + b"r" * 9_990)
        with pytest.raises(shale.TransactionTooLarge):
            await tr.commit()
        assert await _scan(db) == []

    async def test_bad_arguments(self, db: Database) -> None:
        tr = db.transaction()
        with pytest.raises(TypeError):
            tr.set("text", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            tr.set(b"k", "text")  # type: ignore[arg-type]
        with pytest.raises(shale.InvertedRange):
            tr.clear_range(b"b", b"a")
        with pytest.raises(shale.KeyOutsideLegalRange):
            await tr.get(b"\xff")
        with pytest.raises(shale.KeyOutsideLegalRange):
            await tr.get_range(b"", b"\xff\xff")
        with pytest.raises(shale.UsageError):
            tr.set_versionstamped_key(b"short", b"v")
        with pytest.raises(shale.UsageError):
            tr.set_versionstamped_key(b"k" + struct.pack("<I", 0), b"v")
        await tr.commit()
        assert await _scan(db) == []

    async def test_transaction_too_old(self, opener: Opener) -> None:
        db = await opener(max_transaction_age=0.2)
        tr = db.transaction()
        await tr.get(b"x")
        tr.set(b"x", b"1")
        await asyncio.sleep(0.3)
        with pytest.raises(shale.TransactionTooOld):
            await tr.get(b"y")
        with pytest.raises(shale.TransactionTooOld):
            await tr.commit()
        assert await db.get(b"x") is None

    # -- versions and versionstamps -----------------------------------------

    async def test_versionstamps_increase_and_fill_keys(self, db: Database) -> None:
        stamps = []
        space = shale.Subspace(("log",))
        for i in range(5):
            tr = db.transaction()
            tr.set_versionstamped_key(
                space.pack_with_versionstamp((tuples.Versionstamp.incomplete(),)), b"%d" % i
            )
            tr.set_versionstamped_value(b"latest", b"v" + b"\x00" * 10 + struct.pack("<I", 1))
            future = tr.get_versionstamp()
            await tr.commit()
            stamps.append(await future)
        assert stamps == sorted(set(stamps)) and all(len(s) == 10 for s in stamps)
        rows = await _scan(db, *space.range())
        assert [space.unpack(k)[0].tr_version for k, _ in rows] == stamps
        assert await db.get(b"latest") == b"v" + stamps[-1]

    async def test_versionstamped_writes_are_unreadable_before_commit(self, db: Database) -> None:
        tr = db.transaction()
        tr.set_versionstamped_value(b"v", b"\x00" * 10 + struct.pack("<I", 0))
        with pytest.raises(shale.AccessedUnreadable):
            await tr.get(b"v")
        tr.set_versionstamped_key(b"p" + b"\x00" * 10 + struct.pack("<I", 1), b"x")
        with pytest.raises(shale.AccessedUnreadable):
            await tr.get_range(b"p", b"q")
        tr.close()

    async def test_read_versions(self, db: Database) -> None:
        first = db.transaction()
        version = await first.get_read_version()
        other = db.transaction()
        other.set_read_version(version)
        assert await other.get_read_version() == version
        with pytest.raises(shale.ReadVersionError):
            other.set_read_version(version)
        later = db.transaction()
        later.set_read_version(version + 1000)
        with pytest.raises(shale.ReadVersionError):
            await later.get(b"x")
        for tr in (first, other, later):
            tr.close()

    async def test_old_snapshot_served_within_window(self, db: Database) -> None:
        if not db.engine.capabilities.old_snapshots:
            pytest.skip("engine keeps only versions held open (capabilities.old_snapshots)")
        await db.set(b"x", b"old")
        async with db.transaction() as tr:
            version = await tr.get_read_version()
        await db.set(b"x", b"new")
        tr = db.transaction()
        tr.set_read_version(version)
        assert await tr.get(b"x") == b"old"
        tr.close()

    async def test_versionstamps_increase_across_reopen(self, db_url: str, opener: Opener) -> None:
        db = await opener()
        if not db.engine.capabilities.persistent:
            pytest.skip("engine does not persist (capabilities.persistent)")
        tr = db.transaction()
        tr.set(b"a", b"1")
        before = tr.get_versionstamp()
        await tr.commit()
        await db.close()
        db = await opener()
        assert await db.get(b"a") == b"1"
        tr = db.transaction()
        tr.set(b"b", b"1")
        after = tr.get_versionstamp()
        await tr.commit()
        assert await after > await before

    # -- lifecycle -------------------------------------------------------------

    async def test_use_after_commit_is_refused(self, db: Database) -> None:
        tr = db.transaction()
        tr.set(b"a", b"1")
        await tr.commit()
        with pytest.raises(shale.TransactionStateError, match="already committed"):
            tr.set(b"b", b"2")
        with pytest.raises(shale.TransactionStateError, match="already committed"):
            await tr.get(b"a")
        with pytest.raises(shale.TransactionStateError):
            await tr.commit()
        assert await db.get(b"b") is None

    async def test_exception_in_block_commits_nothing(self, db: Database) -> None:
        with pytest.raises(RuntimeError):
            async with db.transaction() as tr:
                tr.set(b"a", b"1")
                raise RuntimeError("boom")
        assert await db.get(b"a") is None

    async def test_transact_retries_conflicts(self, db: Database) -> None:
        await db.set(b"n", b"0")
        attempts = 0

        async def bump(tr: shale.Transaction) -> int:
            nonlocal attempts
            attempts += 1
            value = int(await tr.get(b"n") or b"0")
            if attempts == 1:
                await db.set(b"n", b"10")
            tr.set(b"n", b"%d" % (value + 1))
            return value + 1

        assert await db.transact(bump) == 11
        assert attempts == 2
        assert await db.get(b"n") == b"11"

    async def test_concurrent_increments_all_land(self, db: Database) -> None:
        @shale.transactional
        async def bump(tr: shale.Transaction) -> None:
            value = int(await tr.get(b"n") or b"0")
            tr.set(b"n", b"%d" % (value + 1))

        await asyncio.gather(*(bump(db) for _ in range(20)))
        assert await db.get(b"n") == b"20"

    async def test_watch_fires_on_change(self, db: Database) -> None:
        await db.set(b"w", b"1")
        async with db.transaction() as tr:
            fired = tr.watch(b"w")
        await asyncio.sleep(0.01)
        assert not fired.done()
        await db.set(b"w", b"1")
        await asyncio.sleep(0.01)
        assert not fired.done(), "a write of the same value is not a change"
        await db.set(b"w", b"2")
        await asyncio.wait_for(fired, 5)

    async def test_use_after_close_raises_promptly(self, opener: Opener) -> None:
        db = await opener()
        await db.set(b"a", b"1")
        reading = db.transaction()
        assert await reading.get(b"a") == b"1"
        reading.set(b"b", b"from a transaction open at close")
        fresh = db.transaction()
        fresh.set(b"c", b"from a transaction that never read")
        async with db.transaction() as tr:
            fired = tr.watch(b"a")
        await db.close()
        attempts: list[Callable[[], Awaitable[object]]] = [
            reading.commit,
            lambda: reading.get(b"a"),
            fresh.commit,
            lambda: db.get(b"a"),
            lambda: db.set(b"d", b"1"),
            lambda: db.transact(lambda tr: tr.get(b"a")),
        ]
        for attempt in attempts:
            with pytest.raises(shale.DatabaseClosed):
                await asyncio.wait_for(attempt(), 5)
        with pytest.raises(shale.DatabaseClosed):
            db.transaction()
        with pytest.raises(shale.DatabaseClosed):
            reading.reset()
        assert fired.cancelled(), fired
        if db.engine.capabilities.persistent:
            db = await opener()
            assert await _scan(db) == [(b"a", b"1")]

    async def test_durable_across_reopen(self, opener: Opener) -> None:
        db = await opener()
        if not db.engine.capabilities.persistent:
            pytest.skip("engine does not persist (capabilities.persistent)")
        await _fill(db, 100)
        await db.close()
        db = await opener()
        assert len(await _scan(db)) == 100
