"""Idempotency ids: ``Database.run`` applies a body once however commits end.

``FlakyEngine`` is the memory engine with its commit replies made unreliable
on a schedule the test writes, the way a network loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shale
from shale import tuple as tuples
from shale.core.idempotency import (
    ID_SIZE,
    IDEMPOTENCY_PREFIX,
    IDEMPOTENCY_RETENTION,
    idempotency_key,
    new_id,
    sweep_idempotency_ids,
)
from shale.engines.base import Capabilities, CommitRequest, CommitResult, MutationType
from shale.engines.memory import MemoryEngine
from shale.engines.registry import ENTRY_POINT_GROUP, Registry
from shale.keys import strinc

COUNTER = b"counter"


class Fault(enum.Enum):
    LOST_REPLY = "applied, then the reply is lost"
    DROPPED = "never applied"
    LATE = "not applied now; lands just before the next commit"
    STRANDED = "not applied; the test lands it whenever it likes"
    FORGOTTEN = "applied, reply lost, and the id swept at once"


class FlakyEngine(MemoryEngine):
    """One fault per commit from ``schedule``; an empty schedule commits normally."""

    scheme: ClassVar[str] = "flaky"
    capabilities = Capabilities(unknown_results=True)

    def __init__(self, window: float) -> None:
        super().__init__(window)
        self.schedule: list[Fault | None] = []
        self.late: list[CommitRequest] = []
        self.stranded: list[CommitRequest] = []
        self.requests = 0

    @classmethod
    async def open(cls, url: str, options: Mapping[str, object]) -> FlakyEngine:
        return cls(5.0)

    async def commit(self, request: CommitRequest) -> CommitResult:
        self.requests += 1
        while self.late:
            with contextlib.suppress(shale.ConflictError):
                await super().commit(self.late.pop(0))
        fault = self.schedule.pop(0) if self.schedule else None
        if fault is None:
            return await super().commit(request)
        if fault in (Fault.LOST_REPLY, Fault.FORGOTTEN):
            await super().commit(request)
        if fault is Fault.FORGOTTEN:
            end = strinc(IDEMPOTENCY_PREFIX)
            await super().commit(
                CommitRequest(
                    read_version=-1,
                    mutations=[(MutationType.CLEAR_RANGE, IDEMPOTENCY_PREFIX, end)],
                    write_ranges=[(IDEMPOTENCY_PREFIX, end)],
                )
            )
        elif fault is Fault.LATE:
            self.late.append(request)
        elif fault is Fault.STRANDED:
            self.stranded.append(request)
        raise shale.CommitUnknownResult(fault.value)


def flaky_registry() -> Registry:
    point = EntryPoint(name="flaky", value=f"{__name__}:FlakyEngine", group=ENTRY_POINT_GROUP)
    return Registry(entries={"flaky": point}, extras={})


async def open_flaky() -> tuple[shale.Database, FlakyEngine]:
    db = await shale.open("flaky://", registry=flaky_registry())
    assert isinstance(db.engine, FlakyEngine)
    return db, db.engine


@pytest.fixture
async def flaky() -> tuple[shale.Database, FlakyEngine]:
    return await open_flaky()


class Body:
    """A transaction body that counts its runs and returns which run it was."""

    def __init__(self, blind: bool) -> None:
        self.blind = blind
        self.runs = 0

    async def __call__(self, tr: shale.Transaction) -> int:
        self.runs += 1
        if self.blind:
            tr.add(COUNTER, (1).to_bytes(8, "little"))
        else:
            tr.set(COUNTER, b"%d" % (int(await tr.get(COUNTER) or b"0") + 1))
        return self.runs


async def stored(db: shale.Database) -> int:
    value = await db.get(COUNTER) or b""
    return int.from_bytes(value, "little") if len(value) == 8 else int(value or b"0")


async def system_keys(db: shale.Database) -> list[tuple[bytes, bytes]]:
    tr = db.transaction()
    tr.access_system_keys = True
    try:
        return await tr.get_range(b"\xff", b"\xff\xff")
    finally:
        tr.close()


async def id_keys(db: shale.Database) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in await system_keys(db) if k.startswith(IDEMPOTENCY_PREFIX)]


def test_ids_sort_by_creation_time() -> None:
    assert b"\xff" + tuples.pack(("idempotency",)) == IDEMPOTENCY_PREFIX
    assert IDEMPOTENCY_RETENTION == 120.0
    older, newer = new_id(at=1_000.0), new_id(at=1_000.001)
    assert len(older) == len(newer) == ID_SIZE
    assert older[:8] == (1_000_000).to_bytes(8, "big") and older < newer
    assert new_id()[:8] != new_id(at=0)[:8]
    with pytest.raises(shale.UsageError, match="16 bytes"):
        idempotency_key(b"short")


# -- one fault, each kind, on a read-modify-write and on a blind-write body ------------

CASES = [
    # fault, runs of the body, run() returns (which run), commits sent
    pytest.param(Fault.LOST_REPLY, 1, 1, 1, id="reply-lost"),
    pytest.param(Fault.DROPPED, 2, 2, 2, id="dropped"),
    pytest.param(Fault.LATE, 2, 1, 2, id="late-landing"),
]


@pytest.mark.parametrize("blind", [False, True], ids=["read-write", "blind"])
@pytest.mark.parametrize(("fault", "runs", "returned", "commits"), CASES)
async def test_one_unknown_commit_applies_once(
    flaky: tuple[shale.Database, FlakyEngine],
    blind: bool,
    fault: Fault,
    runs: int,
    returned: int,
    commits: int,
) -> None:
    db, engine = flaky
    engine.schedule = [fault]
    body = Body(blind)
    assert await db.run(body, backoff=shale.NoBackoff()) == returned
    assert await stored(db) == 1
    assert body.runs == runs
    assert engine.requests == commits
    assert len(await id_keys(db)) == 1


async def test_several_unknown_in_a_row_return_the_latest(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    db, engine = flaky
    engine.schedule = [Fault.DROPPED, Fault.LOST_REPLY]
    body = Body(blind=False)
    assert await db.transact(body) == 2
    assert (body.runs, await stored(db)) == (2, 1)


@pytest.mark.parametrize("blind", [False, True], ids=["read-write", "blind"])
async def test_an_earlier_attempt_landing_after_the_retry_is_refused(
    flaky: tuple[shale.Database, FlakyEngine], blind: bool
) -> None:
    db, engine = flaky
    engine.schedule = [Fault.STRANDED]
    body = Body(blind)
    assert await db.run(body, backoff=shale.NoBackoff()) == 2
    # Even a body that read nothing read the id, so the stray commit conflicts.
    with pytest.raises(shale.ConflictError):
        await MemoryEngine.commit(engine, engine.stranded.pop())
    assert await stored(db) == 1


async def test_exhausted_retries_still_raise(flaky: tuple[shale.Database, FlakyEngine]) -> None:
    db, engine = flaky
    engine.schedule = [Fault.DROPPED] * 3
    body = Body(blind=False)
    with pytest.raises(shale.CommitUnknownResult) as info:
        await db.run(body, retries=2, backoff=shale.NoBackoff())
    assert "gave up after 3 attempts" in "".join(info.value.__notes__)
    assert (body.runs, await stored(db)) == (3, 0)
    assert await id_keys(db) == []


async def test_an_unknown_result_past_the_trusted_time_is_raised(
    flaky: tuple[shale.Database, FlakyEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past IDEMPOTENCY_TRUSTED the id may be swept before the retry reads it,
    # so run() reports the unknown result instead of guessing.
    monkeypatch.setattr("shale.core.database.IDEMPOTENCY_TRUSTED", 0.0)
    db, engine = flaky
    engine.schedule = [Fault.LOST_REPLY]
    body = Body(blind=False)
    with pytest.raises(shale.CommitUnknownResult) as info:
        await db.run(body, backoff=shale.NoBackoff())
    assert "too late to tell" in "".join(info.value.__notes__)
    assert (body.runs, await stored(db)) == (1, 1)


async def test_an_unknown_result_raised_by_the_body_is_not_retried(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    db, _ = flaky

    async def commits_elsewhere(tr: shale.Transaction) -> None:
        tr.set(b"k", b"v")
        raise shale.CommitUnknownResult("the body's own commit, not run()'s")

    with pytest.raises(shale.CommitUnknownResult, match="body's own"):
        await db.run(commits_elsewhere)


async def test_a_swept_id_is_no_longer_recognised(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    # What retention means: past it, a retry cannot tell that the commit applied.
    db, engine = flaky
    engine.schedule = [Fault.FORGOTTEN]
    body = Body(blind=False)
    assert await db.run(body, backoff=shale.NoBackoff()) == 2
    assert await stored(db) == 2


async def test_the_id_holds_the_commits_versionstamp(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    db, _ = flaky

    async def write(tr: shale.Transaction) -> asyncio.Future[bytes]:
        tr.set(b"k", b"v")
        return tr.get_versionstamp()

    stamp = await (await db.transact(write))
    [(key, value)] = await id_keys(db)
    assert len(key) == len(IDEMPOTENCY_PREFIX) + ID_SIZE
    assert value == stamp


async def test_a_transaction_that_writes_nothing_writes_no_id(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    db, engine = flaky

    async def read_only(tr: shale.Transaction) -> bytes | None:
        return await tr.get(COUNTER)

    assert await db.transact(read_only) is None
    assert engine.requests == 0
    assert await system_keys(db) == []


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_engines_without_unknown_results_write_no_id(url: str, tmp_path: Path) -> None:
    if url == "sqlite":
        url = f"sqlite:///{tmp_path / 'plain.db'}"
    async with await shale.open(url) as db:
        assert not db.engine.capabilities.unknown_results
        body = Body(blind=False)
        for _ in range(3):
            await db.transact(body)
        await db.run(body, idempotent=True)
        await db.set(b"k", b"v")
        assert await stored(db) == 4
        assert await system_keys(db) == []


async def test_sweep_removes_old_ids_and_keeps_new_ones(
    flaky: tuple[shale.Database, FlakyEngine],
) -> None:
    db, _ = flaky
    now = time.time()
    ages = {"ancient": 7200.0, "just-expired": 121.0, "recent": 60.0, "new": 0.0}
    ids = {name: new_id(at=now - age) for name, age in ages.items()}

    async def plant(tr: shale.Transaction) -> None:
        tr.access_system_keys = True
        for ident in ids.values():
            tr.set(idempotency_key(ident), b"")

    await db.transact(plant)
    cutoff = await sweep_idempotency_ids(db)
    assert abs(cutoff / 1000 - (time.time() - IDEMPOTENCY_RETENTION)) < 30
    left = {key for key, _ in await id_keys(db)}
    assert idempotency_key(ids["ancient"]) not in left
    assert idempotency_key(ids["just-expired"]) not in left
    assert {idempotency_key(ids["recent"]), idempotency_key(ids["new"])} <= left
    await sweep_idempotency_ids(db, older_than=10.0)
    assert idempotency_key(ids["recent"]) not in {key for key, _ in await id_keys(db)}
    with pytest.raises(shale.UsageError, match="older_than"):
        await sweep_idempotency_ids(db, older_than=-1.0)


async def test_a_sweep_with_nothing_to_clear_commits_nothing(tmp_path: Path) -> None:
    async with await shale.open(f"sqlite:///{tmp_path}/db.sqlite") as db:
        await db.set(b"k", b"v")
        async with db.transaction() as tr:
            before = await tr.get_read_version()
        await sweep_idempotency_ids(db)
        async with db.transaction() as tr:
            assert await tr.get_read_version() == before


@settings(max_examples=60, deadline=None)
@given(
    faults=st.lists(
        st.sampled_from([None, Fault.LOST_REPLY, Fault.DROPPED, Fault.LATE, Fault.STRANDED]),
        max_size=8,
    ),
    blind=st.booleans(),
    retries=st.integers(0, 6),
)
def test_any_schedule_applies_at_most_once(
    faults: list[Fault | None], blind: bool, retries: int
) -> None:
    async def play() -> None:
        db, engine = await open_flaky()
        engine.schedule = list(faults)
        body = Body(blind)
        try:
            result = await db.run(body, retries=retries, backoff=shale.NoBackoff())
        except shale.RetryableError:
            assert await stored(db) <= 1
        else:
            assert 1 <= result <= body.runs
            assert await stored(db) == 1
        for request in engine.stranded + engine.late:
            with contextlib.suppress(shale.ConflictError):
                await MemoryEngine.commit(engine, request)
        assert await stored(db) <= 1
        await db.close()

    asyncio.run(play())
