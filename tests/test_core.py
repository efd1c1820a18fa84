"""The core's own pieces: the retry runner, backoff, subspaces, selectors."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

import shale
from shale import tuple as tuples


@pytest.fixture
async def db() -> shale.Database:
    return await shale.open("memory://")


async def test_retries_are_bounded(db: shale.Database) -> None:
    attempts = 0

    async def always_conflicts(tr: shale.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        await tr.get(b"k")
        tr.set(b"k", b"%d" % attempts)
        await db.set(b"k", b"interference")

    with pytest.raises(shale.ConflictError) as info:
        await db.run(always_conflicts, retries=3, backoff=shale.NoBackoff())
    assert attempts == 4
    assert "gave up after 4 attempts" in "".join(info.value.__notes__)
    assert await db.get(b"k") == b"interference"


async def test_non_retryable_errors_propagate_at_once(db: shale.Database) -> None:
    attempts = 0

    async def broken(tr: shale.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        tr.set(b"k", b"v")
        raise KeyError("a bug in the body")

    with pytest.raises(KeyError):
        await db.transact(broken)
    assert attempts == 1
    assert await db.get(b"k") is None


async def test_unknown_result_is_retried_only_when_idempotent(db: shale.Database) -> None:
    attempts = 0

    async def flaky(tr: shale.Transaction) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise shale.CommitUnknownResult("connection lost during commit")
        tr.set(b"k", b"v")
        return attempts

    with pytest.raises(shale.CommitUnknownResult):
        await db.transact(flaky)
    attempts = 0
    assert await db.run(flaky, idempotent=True, backoff=shale.NoBackoff()) == 2
    with pytest.raises(shale.UsageError, match="retries must be >= 0"):
        await db.run(flaky, retries=-1)


async def test_transactional_joins_an_outer_transaction(db: shale.Database) -> None:
    @shale.transactional
    async def put(tr: shale.Transaction, key: bytes) -> None:
        tr.set(key, b"1")

    @shale.transactional
    async def put_two(tr: shale.Transaction) -> None:
        await put(tr, b"a")
        await put(tr, b"b")
        assert await tr.get(b"a") == b"1"

    tr = db.transaction()
    await put_two(tr)
    assert await db.get(b"a") is None, "a joined transaction must not commit on its own"
    await tr.commit()
    assert await db.get(b"b") == b"1"


def test_backoff_strategies() -> None:
    exp = shale.ExponentialBackoff(base=0.01, cap=1.0)
    assert [exp.delay(n) for n in (1, 2, 3)] == [0.01, 0.02, 0.04]
    assert exp.delay(30) == 1.0
    jitter = shale.FullJitterBackoff(rng=random.Random(1))
    delays = [jitter.delay(n) for n in range(1, 40)]
    assert all(0 <= d <= min(1.0, 0.01 * 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    assert len(set(delays)) > 30
    assert shale.NoBackoff().delay(5) == 0.0


def test_subspace() -> None:
    app = shale.Subspace(("app", 1))
    users = app["users"]
    assert users == app.subspace(("users",))
    assert users.key() == tuples.pack(("app", 1, "users"))
    key = users.pack((42, "x"))
    assert users.contains(key) and app.contains(key)
    assert not app["groups"].contains(key)
    assert users.unpack(key) == (42, "x")
    begin, end = users.range((42,))
    assert begin < key < end
    assert not begin <= users.pack((42,)) < end, "range(t) excludes the key of t itself"
    with pytest.raises(ValueError, match="is not in"):
        app["groups"].unpack(key)
    with pytest.raises(TypeError, match="a subspace prefix is a tuple"):
        shale.Subspace("app")  # type: ignore[arg-type]
    raw = shale.Subspace(raw_prefix=b"\x02raw")
    assert raw.pack((1,)) == b"\x02raw" + tuples.pack((1,))


def test_key_selector_arithmetic_and_validation() -> None:
    sel = shale.KeySelector.first_greater_than(b"k")
    assert (sel + 2) == shale.KeySelector(b"k", True, 3)
    assert (sel - 1).offset == 0
    with pytest.raises(TypeError, match="must be bytes"):
        shale.KeySelector("k", False, 1)  # type: ignore[arg-type]


def test_strinc() -> None:
    assert shale.strinc(b"a") == b"b"
    assert shale.strinc(b"a\xff\xff") == b"b"
    with pytest.raises(shale.UsageError, match="only of 0xFF"):
        shale.strinc(b"\xff\xff")
    with pytest.raises(shale.UsageError):
        shale.strinc(b"")


async def test_closed_database_refuses_new_transactions(db: shale.Database) -> None:
    await db.close()
    await db.close()
    with pytest.raises(shale.UsageError, match="closed"):
        db.transaction()


async def test_range_arguments_are_checked(db: shale.Database) -> None:
    tr = db.transaction()
    with pytest.raises(shale.UsageError, match="limit must be"):
        tr.get_range(b"a", b"b", limit=-1)
    with pytest.raises(shale.UsageError, match="batch_size must be"):
        tr.get_range(b"a", b"b", batch_size=0)
    with pytest.raises(TypeError, match="range bounds"):
        await tr.get_range("a", b"b")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="get_key takes a KeySelector"):
        await tr.get_key(b"a")  # type: ignore[arg-type]
    with pytest.raises(shale.ReadVersionError, match="non-negative"):
        tr.set_read_version(-5)
    tr.close()
    with pytest.raises(shale.TransactionStateError, match="closed"):
        await tr.get(b"a")


async def test_reset_starts_over(db: shale.Database) -> None:
    tr = db.transaction()
    tr.set(b"a", b"1")
    stamp = tr.get_versionstamp()
    tr.reset()
    with pytest.raises(shale.TransactionStateError, match="reset"):
        await stamp
    tr.set(b"b", b"2")
    await tr.commit()
    assert (await db.get(b"a"), await db.get(b"b")) == (None, b"2")


async def test_failed_commit_is_final_until_reset(db: shale.Database) -> None:
    await db.set(b"k", b"0")
    tr = db.transaction()
    await tr.get(b"k")
    tr.set(b"k", b"mine")
    await db.set(b"k", b"theirs")
    with pytest.raises(shale.ConflictError):
        await tr.commit()
    with pytest.raises(shale.TransactionStateError, match="failed \\(ConflictError\\)"):
        tr.set(b"x", b"1")
    tr.reset()
    tr.set(b"k", b"retried")
    await tr.commit()
    assert await db.get(b"k") == b"retried"


async def test_watch_fails_when_commit_fails(db: shale.Database) -> None:
    await db.set(b"k", b"0")
    tr = db.transaction()
    await tr.get(b"k")
    tr.set(b"k", b"1")
    watch = tr.watch(b"w")
    await db.set(b"k", b"2")
    with pytest.raises(shale.ConflictError):
        await tr.commit()
    with pytest.raises(shale.ConflictError):
        await watch


async def test_read_only_commit_has_no_versionstamp(db: shale.Database) -> None:
    tr = db.transaction()
    await tr.get(b"k")
    stamp = tr.get_versionstamp()
    await tr.commit()
    with pytest.raises(shale.UsageError, match="wrote nothing"):
        await stamp


async def test_a_stream_older_than_the_age_limit_fails() -> None:
    import asyncio

    async with await shale.open("memory://", max_transaction_age=0.2) as db:
        async with db.transaction() as tr:
            for i in range(20):
                tr.set(b"s%02d" % i, b"x")
        tr = db.transaction()
        stream = tr.get_range(b"s", b"t", batch_size=2).__aiter__()
        await anext(stream)
        await asyncio.sleep(0.3)
        with pytest.raises(shale.TransactionTooOld):
            async for _ in stream:
                pass
        tr.close()


async def test_cleared_ranges_fire_exactly_the_watches_inside_them(db: shale.Database) -> None:
    keys = [b"w%04d" % i for i in range(1_000)]
    async with db.transaction() as tr:
        for key in keys:
            tr.set(key, b"1")
    async with db.transaction() as tr:
        watches = {key: tr.watch(key) for key in keys}
    async with db.transaction() as tr:
        for i in range(0, 1_000, 10):  # clears w0000-w0004, w0010-w0014, ...
            tr.clear_range(b"w%04d" % i, b"w%04d" % (i + 5))
    await asyncio.wait_for(asyncio.gather(*(w for k, w in watches.items() if k[-1] < ord("5"))), 5)
    await asyncio.sleep(0.01)
    assert not any(w.done() for k, w in watches.items() if k[-1] >= ord("5"))
    await db.close()
    assert all(w.cancelled() for k, w in watches.items() if k[-1] >= ord("5"))


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/closing.db"])
async def test_a_watch_committing_while_the_database_closes_is_cancelled(
    url: str, tmp_path: Path
) -> None:
    db = await shale.open(url.format(tmp=tmp_path))
    tr = db.transaction()
    await tr.get(b"k")
    watch = tr.watch(b"k")
    tr.set(b"other", b"1")
    commit = asyncio.ensure_future(tr.commit())
    await asyncio.sleep(0)  # the commit is queued in the engine
    await db.close()
    await commit  # accepted before the close, so it finishes
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(watch, 2)


async def test_watches_fire_once_an_engine_at_its_reader_limit_has_room(tmp_path: Path) -> None:
    async with await shale.open(f"sqlite:///{tmp_path}/cap.db?max_readers=1") as db:
        await db.set(b"w", b"1")
        async with db.transaction() as tr:
            fired = tr.watch(b"w")
        holder = db.transaction()
        await holder.get(b"unrelated")  # the one reader, at this version
        await db.set(b"w", b"2")  # checking the watch needs a newer reader
        await asyncio.sleep(0.1)
        assert not fired.done()
        holder.close()
        await asyncio.wait_for(fired, 5)


async def test_a_stream_over_a_reset_transaction_stops(db: shale.Database) -> None:
    async with db.transaction() as tr:
        for i in range(20):
            tr.set(b"s%02d" % i, b"v")
    tr = db.transaction()
    stream = aiter(tr.get_range(b"s", b"t", batch_size=2))
    await anext(stream)
    tr.reset()
    with pytest.raises(shale.TransactionStateError, match="reset during this range read"):
        while True:
            await anext(stream)
