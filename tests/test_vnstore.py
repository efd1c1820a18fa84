"""``shale.layers.vnstore`` and ``shale.found.vnstore`` on every engine:
found's tests 53-63, the fixed bugs, commit-order significance and
serializability, time travel, format versions and bad inputs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shale
import shale.found as found
from engine_urls import ENGINES, engine_url
from shale import tuple as tuples
from shale.errors import ConflictError, FormatVersionError, ReadOnlyError, UsageError
from shale.found import vnstore as fvn
from shale.layers.vnstore import (
    FORMAT,
    Change,
    ChangeApplied,
    ChangeNotApplied,
    ChangeNotFound,
    Event,
    NoActiveChange,
    VNStore,
    VNStoreError,
    var,
)
from shale.tuple import Versionstamp

COLUMNS = ("uid", "key", "value")
PREFIX = ("vn",)


@pytest.fixture(params=ENGINES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with engine_url(request.param, tmp_path, "vnstore.db") as served:
        yield served


@pytest.fixture
async def db(url: str) -> AsyncIterator[shale.Database]:
    database = await shale.open(url)
    yield database
    await database.close()


@pytest.fixture
async def fdb(url: str) -> AsyncIterator[found.Database]:
    database = await found.open(url)
    yield database
    await found.close(database)


@pytest.fixture
async def store(db: shale.Database) -> VNStore:
    return await VNStore.open(db, PREFIX, COLUMNS)


async def dump(db: shale.Database) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        return await tr.get_range(b"", b"\xff")


async def collect(aiter: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in aiter]


async def commit_change(
    store: VNStore, db: shale.Database, *ops: tuple[str, tuple[Any, ...]]
) -> uuid.UUID:
    """Create a change doing ``ops`` (("add"|"remove", items)) and apply it, in one transaction."""

    async def body(tr: shale.Transaction) -> uuid.UUID:
        cid = await store.change_create(tr)
        for op, items in ops:
            await getattr(store, op)(tr, *items)
        await store.change_apply(tr, cid)
        return cid

    return await db.transact(body)


async def build_change(
    store: VNStore, db: shale.Database, *ops: tuple[str, tuple[Any, ...]]
) -> uuid.UUID:
    """Create a change doing ``ops`` without applying it."""

    async def body(tr: shale.Transaction) -> uuid.UUID:
        cid = await store.change_create(tr)
        for op, items in ops:
            await getattr(store, op)(tr, *items)
        return cid

    return await db.transact(body)


async def ask(
    store: VNStore, db: shale.Database, *items: Any, as_of: uuid.UUID | None = None
) -> bool:
    async with db.transaction() as tr:
        return await store.ask(tr, *items, as_of=as_of)


async def rows(
    store: VNStore, db: shale.Database, *pattern: Any, as_of: uuid.UUID | None = None
) -> list[dict[str, Any]]:
    async with db.transaction() as tr:
        return await collect(store.select(tr, *pattern, as_of=as_of))


# -- found's tests 53-63 (found-spec §3.5), against shale.found ---------------------


def fmake() -> fvn.VNStore:
    return fvn.make("test-name", [42], ["uid", "key", "value"])


async def test_53_vnstore_empty() -> None:
    assert fmake()


async def test_54_vnstore_query_zero(fdb: found.Database) -> None:
    vn = fmake()
    uid = uuid.uuid4()

    async def query(tx: found.Transaction) -> list[dict[str, Any]]:
        out = await fvn.query(tx, vn, [var("uid"), "title", "hypermove"])
        return await found.all(out)

    for _ in range(10):
        assert await found.transactional(fdb, query) == []

        async def add(tx: found.Transaction) -> None:
            changeid = await fvn.change_create(tx, vn)
            fvn.change_continue(tx, vn, changeid)
            await fvn.add(tx, vn, uid, "title", "hypermove")
            await fvn.change_apply(tx, vn, changeid)

        await found.transactional(fdb, add)
        assert await found.transactional(fdb, query) == [{"uid": uid}]

        async def remove(tx: found.Transaction) -> None:
            changeid = await fvn.change_create(tx, vn)
            fvn.change_continue(tx, vn, changeid)
            assert await fvn.remove(tx, vn, uid, "title", "hypermove") is True
            await fvn.change_apply(tx, vn, changeid)

        await found.transactional(fdb, remove)
        assert await found.transactional(fdb, query) == []


async def test_55_vnstore_query(fdb: found.Database) -> None:
    vn = fmake()
    uid = uuid.uuid4()
    items = [
        ("title", "hyper.dev"),
        ("description", "forward and beyond"),
        ("keyword", "hyper"),
        ("keyword", "future"),
        ("keyword", "copernic"),
        ("keyword", "hypermove"),
    ]
    patterns = ([var("uid"), "title", var("title")], [var("uid"), "keyword", "hyper"])

    async def query(tx: found.Transaction) -> list[dict[str, Any]]:
        return await found.all(await fvn.query(tx, vn, *patterns))

    for _ in range(10):

        async def add(tx: found.Transaction) -> None:
            changeid = await fvn.change_create(tx, vn)
            fvn.change_continue(tx, vn, changeid)
            for key, value in items:
                await fvn.add(tx, vn, uid, key, value)
            await fvn.change_apply(tx, vn, changeid)

        await found.transactional(fdb, add)
        assert await found.transactional(fdb, query) == [{"uid": uid, "title": "hyper.dev"}]

        async def remove(tx: found.Transaction) -> None:
            changeid = await fvn.change_create(tx, vn)
            fvn.change_continue(tx, vn, changeid)
            await fvn.remove(tx, vn, uid, "title", "hyper.dev")
            await fvn.change_apply(tx, vn, changeid)

        await found.transactional(fdb, remove)
        assert await found.transactional(fdb, query) == []


async def test_56_vnstore_change_list(fdb: found.Database) -> None:
    vn = fmake()
    first = await found.transactional(fdb, fvn.change_create, vn)
    second = await found.transactional(fdb, fvn.change_create, vn)
    changes = await found.transactional(fdb, fvn.change_list, vn)
    assert sorted(c["uid"] for c in changes) == sorted([first, second])
    assert all(c["type"] == "change" and c["significance"] is None for c in changes)


async def test_57_vnstore_change_message(fdb: found.Database) -> None:
    vn = fmake()
    changeid = await found.transactional(fdb, fvn.change_create, vn)
    await found.transactional(fdb, fvn.change_message, vn, changeid, "hello world")
    change = await found.transactional(fdb, fvn.change_get, vn, changeid)
    assert change is not None
    assert change["message"] == "hello world"
    assert change["uid"] == changeid


async def test_58_vnstore_change_changes(fdb: found.Database) -> None:
    vn = fmake()
    uid = uuid.uuid4()

    async def body(tx: found.Transaction) -> uuid.UUID:
        changeid = await fvn.change_create(tx, vn)
        fvn.change_continue(tx, vn, changeid)
        await fvn.add(tx, vn, uid, "title", "hello")
        await fvn.add(tx, vn, uid, "tag", "world")
        return changeid

    changeid = await found.transactional(fdb, body)
    changes = await found.transactional(fdb, fvn.change_changes, vn, changeid)
    assert len(changes) == 2
    assert {(c["key"], c["value"], c["alive?"]) for c in changes} == {
        ("title", "hello", True),
        ("tag", "world", True),
    }


async def test_59_vnstore_where(fdb: found.Database) -> None:
    vn = fmake()
    uid = uuid.uuid4()

    async def body(tx: found.Transaction) -> None:
        changeid = await fvn.change_create(tx, vn)
        fvn.change_continue(tx, vn, changeid)
        await fvn.add(tx, vn, uid, "title", "hello")
        await fvn.add(tx, vn, uid, "tag", "world")
        await fvn.change_apply(tx, vn, changeid)

    await found.transactional(fdb, body)

    async def where(tx: found.Transaction) -> list[dict[str, Any]]:
        out = fvn.select(tx, vn, var("uid"), "title", "hello")
        return await found.all(fvn.where(tx, vn, out, var("uid"), "tag", var("tag")))

    out = await found.transactional(fdb, where)
    assert out == [{"uid": uid, "tag": "world"}]


async def test_60_vnstore_change_apply_twice(fdb: found.Database) -> None:
    vn = fmake()
    changeid = await found.transactional(fdb, fvn.change_create, vn)
    await found.transactional(fdb, fvn.change_apply, vn, changeid)
    first = await found.transactional(fdb, fvn.change_get, vn, changeid)
    await found.transactional(fdb, fvn.change_apply, vn, changeid)
    second = await found.transactional(fdb, fvn.change_get, vn, changeid)
    assert first is not None and second is not None
    assert isinstance(first["significance"], Versionstamp)
    assert first["significance"] == second["significance"]


async def test_61_vnstore_change_get_nonexistent(fdb: found.Database) -> None:
    vn = fmake()
    assert await found.transactional(fdb, fvn.change_get, vn, uuid.uuid4()) is None


async def test_62_vnstore_get_not_implemented(fdb: found.Database) -> None:
    vn = fmake()

    async def body(tx: found.Transaction) -> None:
        await fvn.get(tx, vn, uuid.uuid4(), "title", "hello")

    with pytest.raises(NotImplementedError):
        await found.transactional(fdb, body)


async def test_63_vnstore_remove_nonexistent(fdb: found.Database) -> None:
    vn = fmake()

    async def body(tx: found.Transaction) -> bool:
        changeid = await fvn.change_create(tx, vn)
        fvn.change_continue(tx, vn, changeid)
        return await fvn.remove(tx, vn, uuid.uuid4(), "title", "hello")

    assert await found.transactional(fdb, body) is False


# -- found's bugs, fixed ------------------------------------------------------------


async def test_change_create_leaves_the_change_active(fdb: found.Database) -> None:
    """found's change_create set tx.vars["vnstore_changeid"] but add read
    "_vnstore_changeid": add right after change_create raised KeyError."""
    vn = fmake()

    async def body(tx: found.Transaction) -> uuid.UUID:
        changeid = await fvn.change_create(tx, vn)
        assert tx.vars["_vnstore_changeid"] == changeid
        assert await fvn.add(tx, vn, "u", "title", "hello") is True
        await fvn.change_apply(tx, vn, changeid)
        return changeid

    changeid = await found.transactional(fdb, body)
    changes = await found.transactional(fdb, fvn.change_changes, vn, changeid)
    assert changes == [{"uid": "u", "key": "title", "value": "hello", "alive?": True}]
    assert await found.transactional(fdb, fvn.ask, vn, "u", "title", "hello") is True


async def test_the_later_commit_wins_not_the_earlier_apply_call(
    db: shale.Database, store: VNStore
) -> None:
    """found gave each applied change a client uuid7 taken when change_apply
    ran: T1 applying c1 before T2 applies c2, T2 committing first, gave c2
    the greater significance although c1 committed last, so X stayed alive.
    The commit versionstamp makes c1, the later commit, the newer change."""
    c0 = await commit_change(store, db, ("add", ("X", "is", "here")))
    c1 = await build_change(store, db, ("remove", ("X", "is", "here")))
    c2 = await build_change(store, db, ("add", ("X", "is", "here")))
    t1 = db.transaction()
    await store.change_apply(t1, c1)  # c1's apply runs first ...
    async with db.transaction() as t2:
        await store.change_apply(t2, c2)
    await t1.commit()  # ... but commits last
    assert await ask(store, db, "X", "is", "here") is False
    async with db.transaction() as tr:
        history = [change.uid async for change in store.history(tr)]
        significances = [(await store.change_get(tr, c)) for c in (c2, c1)]
    assert history == [c0, c2, c1]
    assert significances[0] is not None and significances[1] is not None
    assert significances[0].significance < significances[1].significance  # type: ignore[operator]


async def test_select_yields_a_live_tuple_once(db: shale.Database, store: VNStore) -> None:
    """found's select yielded a tuple once per applied change that added it."""
    await commit_change(store, db, ("add", ("X", "is", "here")))
    await commit_change(store, db, ("add", ("X", "is", "here")))
    assert await rows(store, db, var("s"), "is", var("o")) == [{"s": "X", "o": "here"}]


# -- the applying transaction, versionstamps --------------------------------------------


async def test_significance_is_the_commit_versionstamp(db: shale.Database, store: VNStore) -> None:
    tr = db.transaction()
    first = await store.change_create(tr, "first")
    await store.add(tr, "X", "is", "here")
    await store.change_apply(tr, first)
    # Inside the applying transaction the change is the newest: an
    # incomplete stamp sorts after every complete one.
    change = await store.change_get(tr, first)
    assert change == Change(first, "first", Versionstamp.incomplete(0))
    assert await store.ask(tr, "X", "is", "here") is True
    second = await store.change_create(tr, "second")
    assert await store.remove(tr, "X", "is", "here") is True
    await store.change_apply(tr, second)
    assert await store.ask(tr, "X", "is", "here") is False
    assert await store.ask(tr, "X", "is", "here", as_of=first) is True
    with pytest.raises(VNStoreError, match="applied changes"):
        [c async for c in store.history(tr)]
    stamp = tr.get_versionstamp()
    await tr.commit()
    stamp_bytes = await stamp
    async with db.transaction() as tr:
        assert [c async for c in store.history(tr)] == [
            Change(first, "first", Versionstamp(stamp_bytes, 0)),
            Change(second, "second", Versionstamp(stamp_bytes, 1)),
        ]
        assert await store.ask(tr, "X", "is", "here") is False
        assert await store.ask(tr, "X", "is", "here", as_of=first) is True


async def test_reset_forgets_the_applies_of_the_failed_attempt(
    db: shale.Database, store: VNStore
) -> None:
    cid = await build_change(store, db, ("add", ("X", "is", "here")))
    tr = db.transaction()
    await store.change_apply(tr, cid)
    assert await store.ask(tr, "X", "is", "here") is True
    tr.reset()
    assert await store.ask(tr, "X", "is", "here") is False
    assert (await store.change_get(tr, cid)) == Change(cid, None, None)
    with pytest.raises(NoActiveChange):
        await store.add(tr, "Y", "is", "here")
    tr.close()


# -- serializability ----------------------------------------------------------------------


async def test_a_read_of_a_concurrently_applied_change_conflicts(
    db: shale.Database, store: VNStore
) -> None:
    """T1 decides on ask(Y) while T2 applies the change that adds Y: T1
    must not commit its decision made on the old state."""
    adds_y = await build_change(store, db, ("add", ("Y", "is", "here")))
    t1 = db.transaction()
    assert await store.ask(t1, "Y", "is", "here") is False
    await store.change_create(t1)
    await store.add(t1, "Z", "because", "no Y")
    async with db.transaction() as t2:
        await store.change_apply(t2, adds_y)
    with pytest.raises(ConflictError):
        await t1.commit()
    assert await ask(store, db, "Z", "because", "no Y") is False


async def test_concurrent_read_modify_write_never_loses_an_update(
    db: shale.Database, store: VNStore
) -> None:
    """Two increments of a counter tuple, interleaved: the second commit
    conflicts (and its retry sees the first), never a lost update."""
    await commit_change(store, db, ("add", ("counter", "is", 0)))

    async def increment(tr: shale.Transaction) -> None:
        [row] = await collect(store.select(tr, "counter", "is", var("n")))
        cid = await store.change_create(tr)
        assert await store.remove(tr, "counter", "is", row["n"]) is True
        await store.add(tr, "counter", "is", row["n"] + 1)
        await store.change_apply(tr, cid)

    t1, t2 = db.transaction(), db.transaction()
    await increment(t1)
    await increment(t2)
    await t1.commit()
    with pytest.raises(ConflictError):
        await t2.commit()
    await db.transact(increment)
    assert await rows(store, db, "counter", "is", var("n")) == [{"n": 2}]


async def test_concurrent_applies_of_one_change_apply_it_once(
    db: shale.Database, store: VNStore
) -> None:
    cid = await build_change(store, db, ("add", ("X", "is", "here")))
    t1, t2 = db.transaction(), db.transaction()
    await store.change_apply(t1, cid)
    await store.change_apply(t2, cid)
    await t1.commit()
    with pytest.raises(ConflictError):
        await t2.commit()
    await db.transact(store.change_apply, cid)
    async with db.transaction() as tr:
        assert [c.uid async for c in store.history(tr)] == [cid]


async def test_editing_a_change_while_another_transaction_applies_it_conflicts(
    db: shale.Database, store: VNStore
) -> None:
    cid = await build_change(store, db)
    t1 = db.transaction()
    await store.add(t1, "X", "is", "here", change=cid)
    await db.transact(store.change_apply, cid)
    with pytest.raises(ConflictError):
        await t1.commit()
    async with db.transaction() as tr:
        assert await store.change_changes(tr, cid) == []


# -- time travel --------------------------------------------------------------------------


async def test_time_travel_through_a_history(db: shale.Database, store: VNStore) -> None:
    c1 = await commit_change(store, db, ("add", ("a", "is", 1)), ("add", ("b", "is", 1)))
    c2 = await commit_change(store, db, ("remove", ("a", "is", 1)), ("add", ("a", "is", 2)))
    c3 = await commit_change(store, db, ("remove", ("b", "is", 1)))
    c4 = await commit_change(store, db, ("add", ("a", "is", 1)))
    pending = await build_change(store, db, ("add", ("c", "is", 1)))
    expected = {
        c1: [("a", 1), ("b", 1)],
        c2: [("a", 2), ("b", 1)],
        c3: [("a", 2)],
        c4: [("a", 1), ("a", 2)],
        None: [("a", 1), ("a", 2)],
    }
    for as_of, want in expected.items():
        got = await rows(store, db, var("s"), "is", var("n"), as_of=as_of)
        assert sorted((r["s"], r["n"]) for r in got) == want, as_of
    assert await ask(store, db, "a", "is", 1, as_of=c2) is False
    assert await ask(store, db, "a", "is", 1, as_of=c4) is True
    async with db.transaction() as tr:
        assert [c.uid async for c in store.history(tr)] == [c1, c2, c3, c4]
        assert [c.uid async for c in store.history(tr, reverse=True)] == [c4, c3, c2, c1]
        joined = store.query(tr, [var("s"), "is", 1], [var("s"), "is", var("n")], as_of=c1)
        assert sorted([(r["s"], r["n"]) async for r in joined]) == [("a", 1), ("b", 1)]
        with pytest.raises(ChangeNotApplied):
            await store.ask(tr, "a", "is", 1, as_of=pending)
        with pytest.raises(ChangeNotFound):
            await collect(store.select(tr, var("s"), "is", 1, as_of=uuid.uuid4()))


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 3)), min_size=1, max_size=4
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(OPS, min_size=1, max_size=5), order=st.randoms(use_true_random=False))
async def test_history_matches_a_model_replayed_in_commit_order(
    changes: list[list[tuple[str, int]]], order: Any
) -> None:
    """Changes built in any order and applied in a random order: the store,
    now and as of each change, equals replaying the changes' effects in
    apply-commit order."""
    async with await shale.open("memory://") as db:
        store = await VNStore.open(db, PREFIX, COLUMNS)
        built = [await build_change(store, db) for _ in changes]
        # Each change's effects are decided against the model as of its
        # apply, so build and apply them one by one in the random order.
        indices = list(range(len(changes)))
        order.shuffle(indices)
        model: set[int] = set()
        snapshots = {}
        for index in indices:
            cid = built[index]

            async def fill(tr: shale.Transaction, cid: uuid.UUID = cid, index: int = index) -> None:
                for op, n in changes[index]:
                    await getattr(store, op)(tr, n, "is", "x", change=cid)
                await store.change_apply(tr, cid)

            await db.transact(fill)
            for op, n in changes[index]:
                (model.add if op == "add" else model.discard)(n)
            snapshots[cid] = set(model)
        for cid, want in [*snapshots.items(), (None, model)]:
            got = await rows(store, db, var("n"), "is", "x", as_of=cid)
            assert {r["n"] for r in got} == want
            for n in range(4):
                assert await ask(store, db, n, "is", "x", as_of=cid) is (n in want)


# -- change-level semantics ------------------------------------------------------------


async def test_a_change_holds_one_event_per_tuple(db: shale.Database, store: VNStore) -> None:
    await commit_change(store, db, ("add", ("X", "is", "here")))
    async with db.transaction() as tr:
        cid = await store.change_create(tr)
        assert await store.remove(tr, "X", "is", "here") is True
        await store.add(tr, "X", "is", "here")  # replaces the removal
        await store.add(tr, "Y", "is", "new")
        assert await store.remove(tr, "Y", "is", "new") is True  # undoes the add
        assert await store.remove(tr, "Z", "is", "absent") is False
        assert await store.change_changes(tr, cid) == [Event(("X", "is", "here"), True)]


async def test_repeated_variable_must_match(db: shale.Database, store: VNStore) -> None:
    await commit_change(store, db, ("add", ("a", "knows", "a")), ("add", ("a", "knows", "b")))
    assert await rows(store, db, var("x"), "knows", var("x")) == [{"x": "a"}]


async def test_change_list_get_and_message(db: shale.Database, store: VNStore) -> None:
    async with db.transaction() as tr:
        cid = await store.change_create(tr, "draft")
        await store.change_message(tr, cid, "final")
        assert await store.change_list(tr) == [Change(cid, "final", None)]
        assert (await store.change_get(tr, cid)).applied is False  # type: ignore[union-attr]


# -- format version ----------------------------------------------------------------------


async def test_open_records_the_format_and_columns(db: shale.Database) -> None:
    await VNStore.open(db, PREFIX, COLUMNS)
    assert await db.get(tuples.pack((*PREFIX, "meta"))) == tuples.pack(("vnstore", 1, 0))
    assert await db.get(tuples.pack((*PREFIX, "columns"))) == tuples.pack(COLUMNS)
    await VNStore.open(db, PREFIX, ("s", "p", "o"))  # names are labels; the count is checked
    with pytest.raises(VNStoreError, match="holds 3 columns"):
        await VNStore.open(db, PREFIX, ("s", "p"))


async def test_newer_major_format_is_refused(db: shale.Database) -> None:
    await db.set(tuples.pack((*PREFIX, "meta")), tuples.pack(("vnstore", FORMAT.major + 1, 0)))
    before = await dump(db)
    with pytest.raises(FormatVersionError, match="newer"):
        await VNStore.open(db, PREFIX, COLUMNS)
    assert await dump(db) == before


async def test_newer_minor_format_opens_read_only(db: shale.Database) -> None:
    writer = await VNStore.open(db, PREFIX, COLUMNS)
    await commit_change(writer, db, ("add", ("X", "is", "here")))
    await db.set(
        tuples.pack((*PREFIX, "meta")), tuples.pack(("vnstore", FORMAT.major, FORMAT.minor + 1))
    )
    reader = await VNStore.open(db, PREFIX, COLUMNS)
    assert reader.writable is False
    assert await ask(reader, db, "X", "is", "here") is True
    before = await dump(db)
    [change] = [c async for c in _history(reader, db)]
    async with db.transaction() as tr:
        with pytest.raises(ReadOnlyError):
            await reader.change_create(tr)
        with pytest.raises(ReadOnlyError):
            await reader.add(tr, "Y", "is", "here", change=change.uid)
        with pytest.raises(ReadOnlyError):
            await reader.remove(tr, "X", "is", "here", change=change.uid)
        with pytest.raises(ReadOnlyError):
            await reader.change_apply(tr, change.uid)
        with pytest.raises(ReadOnlyError):
            await reader.change_message(tr, change.uid, "no")
    assert await dump(db) == before


async def _history(store: VNStore, db: shale.Database) -> AsyncIterator[Change]:
    async with db.transaction() as tr:
        async for change in store.history(tr):
            yield change


# -- bad inputs, each writing nothing ------------------------------------------------------


BadCall = Callable[[shale.Transaction, VNStore, uuid.UUID, uuid.UUID], Awaitable[Any]]

BAD_CALLS: list[tuple[str, BadCall, type[Exception], str]] = [
    (
        "add without change",
        lambda tr, s, a, o: s.add(tr, "X", "is", "here"),
        NoActiveChange,
        "no active change",
    ),
    (
        "remove without change",
        lambda tr, s, a, o: s.remove(tr, "X", "is", "here"),
        NoActiveChange,
        "no active change",
    ),
    (
        "add to unknown change",
        lambda tr, s, a, o: s.add(tr, "X", "is", "here", change=uuid.uuid4()),
        ChangeNotFound,
        "no change",
    ),
    (
        "continue unknown change",
        lambda tr, s, a, o: s.change_continue(tr, uuid.uuid4()),
        ChangeNotFound,
        "no change",
    ),
    (
        "apply unknown change",
        lambda tr, s, a, o: s.change_apply(tr, uuid.uuid4()),
        ChangeNotFound,
        "no change",
    ),
    (
        "message unknown change",
        lambda tr, s, a, o: s.change_message(tr, uuid.uuid4(), "m"),
        ChangeNotFound,
        "no change",
    ),
    (
        "changes of unknown change",
        lambda tr, s, a, o: s.change_changes(tr, uuid.uuid4()),
        ChangeNotFound,
        "no change",
    ),
    (
        "add to applied change",
        lambda tr, s, a, o: s.add(tr, "Y", "is", "here", change=a),
        ChangeApplied,
        "is applied",
    ),
    (
        "remove in applied change",
        lambda tr, s, a, o: s.remove(tr, "X", "is", "here", change=a),
        ChangeApplied,
        "is applied",
    ),
    (
        "continue applied change",
        lambda tr, s, a, o: s.change_continue(tr, a),
        ChangeApplied,
        "is applied",
    ),
    (
        "add of 2 items",
        lambda tr, s, a, o: s.add(tr, "X", "is", change=o),
        VNStoreError,
        "has 3 items",
    ),
    (
        "remove of 4 items",
        lambda tr, s, a, o: s.remove(tr, "X", "is", "here", 1, change=o),
        VNStoreError,
        "has 3 items",
    ),
    ("ask of 2 items", lambda tr, s, a, o: s.ask(tr, "X", "is"), VNStoreError, "has 3 items"),
    (
        "select of 4 items",
        lambda tr, s, a, o: collect(s.select(tr, var("a"), 1, 2, 3)),
        VNStoreError,
        "has 3 items",
    ),
    (
        "message of a wrong type",
        lambda tr, s, a, o: s.change_message(tr, o, 42),
        VNStoreError,
        "is a str",
    ),
    (
        "as_of unapplied change",
        lambda tr, s, a, o: s.ask(tr, "X", "is", "here", as_of=o),
        ChangeNotApplied,
        "not applied",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [p[1:] for p in BAD_CALLS], ids=[p[0] for p in BAD_CALLS]
)
async def test_bad_input_raises_and_writes_nothing(
    db: shale.Database, store: VNStore, call: BadCall, error: type[Exception], match: str
) -> None:
    applied = await commit_change(store, db, ("add", ("X", "is", "here")))
    open_change = await build_change(store, db)
    before = await dump(db)
    async with db.transaction() as tr:
        with pytest.raises(error, match=match) as info:
            await call(tr, store, applied, open_change)
    assert isinstance(info.value, VNStoreError)
    assert await dump(db) == before


async def test_errors_are_in_the_tree() -> None:
    assert issubclass(VNStoreError, UsageError)
    assert not issubclass(VNStoreError, shale.RetryableError)
    assert issubclass(ChangeNotFound, KeyError)
    assert issubclass(ChangeApplied, shale.ShaleError)


async def test_applying_twice_writes_nothing_and_keeps_the_significance(
    db: shale.Database, store: VNStore
) -> None:
    cid = await commit_change(store, db, ("add", ("X", "is", "here")))
    before = await dump(db)
    async with db.transaction() as tr:
        significance = (await store.change_get(tr, cid)).significance  # type: ignore[union-attr]
        await store.change_apply(tr, cid)
        assert (await store.change_get(tr, cid)).significance == significance  # type: ignore[union-attr]
    assert await dump(db) == before


@pytest.mark.parametrize("columns", [(), ("a", "a"), ("a", 1), "abc"])
def test_bad_columns(columns: Any) -> None:
    with pytest.raises(VNStoreError):
        VNStore(PREFIX, columns)


async def test_found_facade_errors(fdb: found.Database) -> None:
    vn = fmake()
    before = await found.transactional(fdb, _everything)

    async def add_without_change(tx: found.Transaction) -> None:
        await fvn.add(tx, vn, "X", "is", "here")

    async def apply_unknown(tx: found.Transaction) -> None:
        await fvn.change_apply(tx, vn, uuid.uuid4())

    async def wrong_arity(tx: found.Transaction) -> None:
        await fvn.ask(tx, vn, "X", "is")

    for body, cause in [
        (add_without_change, NoActiveChange),
        (apply_unknown, ChangeNotFound),
        (wrong_arity, VNStoreError),
    ]:
        with pytest.raises(fvn.VNStoreException) as info:
            await found.transactional(fdb, body)
        assert isinstance(info.value.__cause__, cause)
        assert isinstance(info.value, found.BaseFoundException)
        assert not isinstance(info.value, found.FoundException)
    with pytest.raises(fvn.VNStoreException):
        fvn.make("bad", [1], [])
    assert await found.transactional(fdb, _everything) == before


async def _everything(tx: found.Transaction) -> list[tuple[bytes, bytes]]:
    return await found.all(found.query(tx, b"", b"\xff"))
