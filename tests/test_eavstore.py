"""The EAV store: found's tests 35-36 through ``shale.found.eavstore``, the
byte layout, found's bugs as regressions, the format version, bad input,
and the Shale API (patch, query_many, snapshots) against a dict model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shale
import shale.found as found
from engine_urls import ENGINES, engine_url
from shale import tuple as tuples
from shale.found import eavstore as found_eav
from shale.found.transaction import TransactionOptions
from shale.layers.eavstore import (
    EAVStore,
    EAVStoreError,
    EntityExistsError,
    NotAMappingError,
    UnpackableError,
)

PREFIX = (42,)
META_KEY = tuples.pack(((*PREFIX, b"\x00"),))


@pytest.fixture(params=ENGINES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[shale.Database]:
    async with engine_url(request.param, tmp_path, "eav.db") as url:
        database = await shale.open(url)
        yield database
        await database.close()


@pytest.fixture
async def store(db: shale.Database) -> EAVStore:
    return await EAVStore.open(db, PREFIX)


async def dump(db: shale.Database) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        return await tr.get_range(b"", b"\xff")


async def uids(db: shale.Database, store: EAVStore, attr: Any, value: Any) -> list[Any]:
    async with db.transaction() as tr:
        return [uid async for uid in store.query(tr, attr, value)]


async def entity(db: shale.Database, store: EAVStore, uid: Any) -> dict[Any, Any]:
    return await db.transact(store.get, uid)


# -- found's tests 35-36, through shale.found -------------------------------------


@pytest.fixture
async def fdb(db: shale.Database) -> found.Database:
    return found.Database(db, found.make_hooks(), TransactionOptions())


async def test_35_eavstore_crud(fdb: found.Database) -> None:
    store = found_eav.make("test-eavstore", [42])
    expected = {"hello": "world"}

    async def crud(tx: found.Transaction) -> None:
        uid = await found_eav.create(tx, store, expected)
        assert await found_eav.get(tx, store, uid) == expected
        updated = {"hello": "world", "who": "me"}
        await found_eav.update(tx, store, uid, updated)
        assert await found_eav.get(tx, store, uid) == updated
        await found_eav.remove(tx, store, uid)
        assert await found_eav.get(tx, store, uid) == {}

    await found.transactional(fdb, crud)


async def test_36_eavstore_crud_2(fdb: found.Database) -> None:
    store = found_eav.make("test-eavstore", [42])

    async def fill(tx: found.Transaction) -> set[Any]:
        wanted = set()
        for _ in range(10):
            wanted.add(await found_eav.create(tx, store, {"key": 42}))
        for i in range(83):
            await found_eav.create(tx, store, {"key": i + 43, "other": 42})
        return wanted

    wanted = await found.transactional(fdb, fill)

    async def ask(tx: found.Transaction) -> list[Any]:
        return await found.all(found_eav.query(tx, store, "key", 42))

    assert set(await found.transactional(fdb, ask)) == wanted
    assert len(await found.transactional(fdb, ask)) == 10


async def test_found_facade_create_with_uid_merges_and_keeps_the_index(
    fdb: found.Database,
) -> None:
    """found's create with an existing uid adds attributes (old ones stay);
    a replaced value must leave the index too."""
    store = found_eav.make("merge", (7,))
    uid = uuid.UUID(int=5)

    async def body(tx: found.Transaction) -> tuple[dict[Any, Any], list[Any], list[Any]]:
        await found_eav.create(tx, store, {"a": 1, "b": 2}, uid=uid)
        assert await found_eav.create(tx, store, {"b": 3}, uid=uid) == uid
        return (
            await found_eav.get(tx, store, uid),
            await found.all(found_eav.query(tx, store, "b", 2)),
            await found.all(found_eav.query(tx, store, "b", 3)),
        )

    assert await found.transactional(fdb, body) == ({"a": 1, "b": 3}, [], [uid])


async def test_found_facade_snapshot_reads_and_size(fdb: found.Database) -> None:
    store = found_eav.make("snap", [1])

    async def write(tx: found.Transaction) -> Any:
        uid = await found_eav.create(tx, store, {"x": "y"})
        assert await found.get_approximate_size(tx) > 0
        return uid

    uid = await found.transactional(fdb, write)

    async def read(tx: found.Transaction) -> tuple[dict[Any, Any], list[Any]]:
        assert tx.snapshot
        return (
            await found_eav.get(tx, store, uid),
            await found.all(found_eav.query(tx, store, "x", "y")),
        )

    assert await found.transactional(fdb, read, snapshot=True) == ({"x": "y"}, [uid])


def test_found_make_handle() -> None:
    store = found_eav.make("name", [42])
    assert store.name == "name"
    assert store.prefix_data == (42, b"\x01")
    assert store.prefix_index == (42, b"\x02")


# -- layout: found's keys, byte for byte --------------------------------------------


async def test_layout_is_founds(db: shale.Database, store: EAVStore) -> None:
    """The keys of found-spec §3.2's example, written by the Shale API."""
    uid = uuid.UUID(int=1)
    async with db.transaction() as tr:
        await store.create(tr, {"hello": "world"}, uid=uid)
    nested = bytes.fromhex("05 15 2a 01 01 00 00")
    index = bytes.fromhex("05 15 2a 01 02 00 00")
    assert await dump(db) == sorted(
        [
            (bytes.fromhex("05 15 2a 01 00 ff 00 00"), tuples.pack(("eavstore", 1, 0))),
            (nested + b"\x30" + uid.bytes + b"\x02hello\x00", b"\x02world\x00"),
            (index + b"\x02hello\x00\x02world\x00\x30" + uid.bytes, b""),
        ]
    )


async def test_reads_a_store_that_found_wrote(db: shale.Database) -> None:
    """Keys set by hand as found writes them are read, updated and removed."""
    uid = uuid.UUID(int=9)
    async with db.transaction() as tr:
        for attr, value in {"a": 1, "b": "two"}.items():
            tr.set(tuples.pack(((*PREFIX, b"\x01"), uid, attr)), tuples.pack((value,)))
            tr.set(tuples.pack(((*PREFIX, b"\x02"), attr, value, uid)), b"")
    store = EAVStore(PREFIX)
    assert await entity(db, store, uid) == {"a": 1, "b": "two"}
    assert await uids(db, store, "b", "two") == [uid]
    async with db.transaction() as tr:
        assert await store.remove(tr, uid)
    assert await dump(db) == []


async def test_subspace_nests_the_whole_store(db: shale.Database) -> None:
    sub = shale.Subspace(("app", "users"))
    store = await EAVStore.open(db, subspace=sub)
    async with db.transaction() as tr:
        uid = await store.create(tr, {"name": "ada"})
    assert all(sub.contains(key) for key, _ in await dump(db))
    assert await uids(db, store, "name", "ada") == [uid]
    assert await entity(db, EAVStore(), uid) == {}


# -- found's bugs, fixed -------------------------------------------------------------


async def test_remove_clears_the_index(db: shale.Database, store: EAVStore) -> None:
    """found's remove cleared pack((prefix_index, attr)), a key that never
    exists, so query kept yielding the removed uid."""
    async with db.transaction() as tr:
        uid = await store.create(tr, {"color": "red", "size": 3})
    async with db.transaction() as tr:
        assert await store.remove(tr, uid) is True
        assert await store.remove(tr, uid) is False
    assert await uids(db, store, "color", "red") == []
    assert await uids(db, store, "size", 3) == []
    assert await dump(db) == [(META_KEY, tuples.pack(("eavstore", 1, 0)))]


async def test_update_moves_the_index(db: shale.Database, store: EAVStore) -> None:
    """found's update (remove + create) left the old value's index entry,
    so query(attr, old value) still yielded the uid."""
    async with db.transaction() as tr:
        uid = await store.create(tr, {"color": "red", "gone": 1, "same": "s"})
    async with db.transaction() as tr:
        await store.update(tr, uid, {"color": "blue", "same": "s"})
    assert await uids(db, store, "color", "red") == []
    assert await uids(db, store, "gone", 1) == []
    assert await uids(db, store, "color", "blue") == [uid]
    assert await uids(db, store, "same", "s") == [uid]
    assert await entity(db, store, uid) == {"color": "blue", "same": "s"}


async def test_found_facade_remove_and_update_leave_no_stale_ids(fdb: found.Database) -> None:
    """The same bug through found's own API: found returned the stale uids."""
    store = found_eav.make("stale", [3])

    async def body(tx: found.Transaction) -> tuple[list[Any], list[Any]]:
        a = await found_eav.create(tx, store, {"k": "v"})
        b = await found_eav.create(tx, store, {"k": "v"})
        await found_eav.remove(tx, store, a)
        await found_eav.update(tx, store, b, {"k": "w"})
        return (
            await found.all(found_eav.query(tx, store, "k", "v")),
            await found.all(found_eav.query(tx, store, "k", "w")),
        )

    assert await found.transactional(fdb, body) == ([], [await _only_uid(fdb, store)])


async def _only_uid(fdb: found.Database, store: found_eav.EAVStore) -> Any:
    async def scan(tx: found.Transaction) -> list[Any]:
        return await found.all(found_eav.query(tx, store, "k", "w"))

    (uid,) = await found.transactional(fdb, scan)
    return uid


async def test_get_does_not_see_a_uid_that_continues_with_nul(
    db: shale.Database, store: EAVStore
) -> None:
    """found scanned [pack(uid), next_prefix(pack(uid))): pack(("a\\x00b",))
    lies inside it, so get("a") merged in the attributes of "a\\x00b"."""
    async with db.transaction() as tr:
        await store.create(tr, {"x": 1}, uid="a")
        await store.create(tr, {"y": 2}, uid="a\x00b")
        await store.create(tr, {"z": 3}, uid=(1,))
        await store.create(tr, {"w": 4}, uid=(1, None))
    assert await entity(db, store, "a") == {"x": 1}
    assert await entity(db, store, "a\x00b") == {"y": 2}
    assert await entity(db, store, (1,)) == {"z": 3}
    async with db.transaction() as tr:
        await store.remove(tr, "a")
        await store.remove(tr, (1,))
    assert await entity(db, store, "a\x00b") == {"y": 2}
    assert await entity(db, store, (1, None)) == {"w": 4}


async def test_query_does_not_see_a_value_that_continues_with_nul(
    db: shale.Database, store: EAVStore
) -> None:
    """found's query("k", "a") also yielded entities whose value is
    "a\\x00b" (same next_prefix scan); likewise attribute "k" vs "k\\x00x"."""
    async with db.transaction() as tr:
        plain = await store.create(tr, {"k": "a"})
        longer = await store.create(tr, {"k": "a\x00b"})
        other_attr = await store.create(tr, {"k\x00x": "a"})
        nested = await store.create(tr, {"k": (1, None)})
        short = await store.create(tr, {"k": (1,)})
    assert await uids(db, store, "k", "a") == [plain]
    assert await uids(db, store, "k", "a\x00b") == [longer]
    assert await uids(db, store, "k\x00x", "a") == [other_attr]
    assert await uids(db, store, "k", (1,)) == [short]
    assert await uids(db, store, "k", (1, None)) == [nested]


# -- format version --------------------------------------------------------------------


async def test_open_records_the_format_once(db: shale.Database) -> None:
    await EAVStore.open(db, PREFIX)
    await EAVStore.open(db, PREFIX)
    assert await dump(db) == [(META_KEY, tuples.pack(("eavstore", 1, 0)))]


@pytest.mark.parametrize(
    ("stored", "message"),
    [(("eavstore", 2, 0), "newer than this Shale"), (("bstore", 1, 0), "holds a bstore")],
)
async def test_open_refuses_newer_major_and_other_layers(
    db: shale.Database, stored: tuple[Any, ...], message: str
) -> None:
    await db.set(META_KEY, tuples.pack(stored))
    before = await dump(db)
    with pytest.raises(shale.FormatVersionError, match=message):
        await EAVStore.open(db, PREFIX)
    assert await dump(db) == before


async def test_newer_minor_opens_read_only(db: shale.Database) -> None:
    uid = uuid.UUID(int=3)
    async with db.transaction() as tr:
        await EAVStore(PREFIX).create(tr, {"k": "v"}, uid=uid)
    await db.set(META_KEY, tuples.pack(("eavstore", 1, 7)))
    before = await dump(db)
    store = await EAVStore.open(db, PREFIX)
    assert not store.writable
    assert await entity(db, store, uid) == {"k": "v"}
    assert await uids(db, store, "k", "v") == [uid]
    writes: list[Callable[[shale.Transaction], Any]] = [
        lambda tr: store.create(tr, {"a": 1}),
        lambda tr: store.update(tr, uid, {"a": 1}),
        lambda tr: store.patch(tr, uid, {"a": 1}),
        lambda tr: store.remove(tr, uid),
    ]
    for write in writes:
        with pytest.raises(shale.ReadOnlyError, match="read-only"):
            await db.transact(write)
    assert await dump(db) == before


# -- bad input: precise errors, nothing written ------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s, tr: s.create(tr, [("k", "v")]), NotAMappingError, "not list"),
        (lambda s, tr: s.create(tr, {"ok": 1, "bad": Opaque()}), UnpackableError, "'bad'"),
        (lambda s, tr: s.create(tr, {Opaque(): 1}), UnpackableError, "attribute"),
        (lambda s, tr: s.create(tr, {"k": 1}, uid=Opaque()), UnpackableError, "uid"),
        (lambda s, tr: s.create(tr, {"k": "x" * 100_000}), shale.ValueTooLarge, "'k'"),
        (lambda s, tr: s.create(tr, {"k": "x" * 9_990}), shale.KeyTooLarge, "index key"),
        (lambda s, tr: s.create(tr, {"x" * 10_000: 1}), shale.KeyTooLarge, "10000-byte"),
        (lambda s, tr: s.create(tr, {"k": 1}, uid="old"), EntityExistsError, "'old'"),
        (lambda s, tr: s.update(tr, "old", {"k": Opaque()}), UnpackableError, "'k'"),
        (lambda s, tr: s.update(tr, "old", "k=1"), NotAMappingError, "not str"),
        (lambda s, tr: s.patch(tr, "old", {"k": 1}, drop=["k"]), EAVStoreError, "both"),
        (lambda s, tr: s.patch(tr, "old", {}, drop="keep"), EAVStoreError, "sequence"),
        (lambda s, tr: s.patch(tr, "old", {}, drop=[Opaque()]), UnpackableError, "attribute"),
    ],
)
async def test_bad_input_raises_precisely_and_writes_nothing(
    db: shale.Database,
    store: EAVStore,
    call: Callable[[EAVStore, shale.Transaction], Any],
    error: type[Exception],
    message: str,
) -> None:
    async with db.transaction() as tr:
        await store.create(tr, {"keep": "me"}, uid="old")
    before = await dump(db)
    async with db.transaction() as tr:
        with pytest.raises(error, match=message):
            await call(store, tr)
        # The transaction is still usable and commits nothing of the failed call.
    assert await dump(db) == before
    assert await entity(db, store, "old") == {"keep": "me"}


async def test_error_classes() -> None:
    assert issubclass(NotAMappingError, TypeError)
    assert issubclass(UnpackableError, ValueError)
    assert issubclass(EAVStoreError, shale.UsageError)
    with pytest.raises(UnpackableError, match="prefix") as info:
        EAVStore((Opaque(),))
    assert info.value.attribute is None


async def test_query_of_unpackable_and_query_many_misuse(
    db: shale.Database, store: EAVStore
) -> None:
    async with db.transaction() as tr:
        with pytest.raises(UnpackableError, match="value"):
            await anext(aiter(store.query(tr, "k", Opaque())))
        with pytest.raises(EAVStoreError, match="at least one"):
            await anext(aiter(store.query_many(tr, {})))
        with pytest.raises(NotAMappingError):
            await anext(aiter(store.query_many(tr, [("k", 1)])))  # type: ignore[arg-type]


# -- the Shale API --------------------------------------------------------------------------


async def test_values_round_trip_and_compare_as_packed(db: shale.Database, store: EAVStore) -> None:
    """1, True and 1.0 are equal in Python but different values here: an
    update from 1 to True must move the index entry."""
    values = {
        "none": None,
        "bytes": b"\x00\xff",
        "int": -(2**70),
        "float": 2.5,
        "bool": True,
        "uuid": uuid.UUID(int=7),
        "nested": (1, ("a", None)),
        "list": [1, 2],
    }
    async with db.transaction() as tr:
        uid = await store.create(tr, values)
        one = await store.create(tr, {"n": 1})
    assert await entity(db, store, uid) == {**values, "list": (1, 2)}
    async with db.transaction() as tr:
        await store.update(tr, one, {"n": True})
    assert await uids(db, store, "n", 1) == []
    assert await uids(db, store, "n", True) == [one]


async def test_patch_sets_and_drops(db: shale.Database, store: EAVStore) -> None:
    async with db.transaction() as tr:
        uid = await store.create(tr, {"a": 1, "b": 2, "c": 3})
        await store.patch(tr, uid, {"b": 20, "d": 4}, drop=["c", "missing"])
        await store.patch(tr, "fresh", {"x": 1})
    assert await entity(db, store, uid) == {"a": 1, "b": 20, "d": 4}
    assert await entity(db, store, "fresh") == {"x": 1}
    assert await uids(db, store, "b", 2) == []
    assert await uids(db, store, "b", 20) == [uid]
    assert await uids(db, store, "c", 3) == []


async def test_query_order_limit_and_query_many(db: shale.Database, store: EAVStore) -> None:
    async with db.transaction() as tr:
        for i in range(30):
            await store.create(tr, {"even": i % 2 == 0, "third": i % 3 == 0, "i": i}, uid=i)
    async with db.transaction() as tr:
        evens = [uid async for uid in store.query(tr, "even", True)]
        assert evens == list(range(0, 30, 2))
        assert [uid async for uid in store.query(tr, "even", True, limit=3)] == [0, 2, 4]
        both = [uid async for uid in store.query_many(tr, {"even": True, "third": True})]
        assert both == list(range(0, 30, 6))
        assert [uid async for uid in store.query_many(tr, {"even": True, "i": 7})] == []
        assert [uid async for uid in store.query_many(tr, {"i": 7})] == [7]
        assert [uid async for uid in store.query_many(tr, {"even": True, "nope": 1})] == []
        seen = []
        async for uid in store.query_many(tr, {"even": False, "third": True}):
            seen.append(uid)
            break  # closing early must release the range reads cleanly
        assert seen == [3]


async def test_snapshot_reads_add_no_conflict(db: shale.Database, store: EAVStore) -> None:
    async with db.transaction() as tr:
        uid = await store.create(tr, {"k": "v"})
    reader = db.transaction()
    assert await store.get(reader.snapshot, uid) == {"k": "v"}
    assert [u async for u in store.query(reader.snapshot, "k", "v")] == [uid]
    async with db.transaction() as tr:
        await store.update(tr, uid, {"k": "w"})
    reader.set(b"unrelated", b"")
    await reader.commit()  # snapshot reads: no conflict with the update


async def test_create_with_taken_uid_conflicts_then_fails(db: shale.Database) -> None:
    """Two creators of the same explicit uid on overlapping transactions: the
    second to commit conflicts, and its retry raises EntityExistsError."""
    store = await EAVStore.open(db, PREFIX)
    tr1, tr2 = db.transaction(), db.transaction()
    await store.create(tr1, {"v": 1}, uid="same")
    await store.create(tr2, {"v": 2}, uid="same")
    await tr1.commit()
    with pytest.raises(shale.ConflictError):
        await tr2.commit()
    with pytest.raises(EntityExistsError, match="'same' already exists"):
        await db.transact(lambda tr: store.create(tr, {"v": 2}, uid="same"))
    assert await entity(db, store, "same") == {"v": 1}
    assert await uids(db, store, "v", 2) == []


ATTRS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(st.integers(0, 3), st.sampled_from(["x", "x\x00", None, True]))
ENTITY = st.dictionaries(ATTRS, VALUES, max_size=3)
OPS = st.lists(
    st.tuples(st.sampled_from(["create", "update", "patch", "remove"]), st.integers(0, 4), ENTITY),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_matches_a_dict_model(ops: list[tuple[str, int, dict[str, Any]]]) -> None:
    """Random writes; every get and every query agree with a plain dict."""

    async def run() -> None:
        db = await shale.open("memory://")
        store = await EAVStore.open(db, ("model",))
        model: dict[int, dict[str, Any]] = {}
        for op, uid, mapping in ops:
            async with db.transaction() as tr:
                if op == "create" and uid not in model:
                    await store.create(tr, mapping, uid=uid)
                    model[uid] = dict(mapping)
                elif op == "update":
                    await store.update(tr, uid, mapping)
                    model[uid] = dict(mapping)
                elif op == "patch":
                    await store.patch(tr, uid, mapping)
                    model[uid] = {**model.get(uid, {}), **mapping}
                elif op == "remove":
                    await store.remove(tr, uid)
                    model.pop(uid, None)
        async with db.transaction() as tr:
            for uid in range(5):
                assert await store.get(tr, uid) == model.get(uid, {})
            for attr in ("a", "b", "c"):
                for value in (0, 1, 2, 3, "x", "x\x00", None, True):
                    got = [u async for u in store.query(tr, attr, value)]
                    want = [
                        u
                        for u in sorted(model)
                        if attr in model[u]
                        and tuples.pack((model[u][attr],)) == tuples.pack((value,))
                    ]
                    assert got == want, (attr, value)
        await db.close()

    asyncio.run(run())
