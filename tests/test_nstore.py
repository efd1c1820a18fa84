"""nstore: found's layout and tests (found-spec §3.1, tests 22-31) through
``shale.found.nstore`` and ``shale.layers.nstore``, found's bugs fixed,
versionstamps, the counts and the planner, format versions, bad input."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shale
import shale.found as found
from engine_urls import ENGINES, engine_url
from shale import tuple as tuples
from shale.found import nstore
from shale.layers.nstore import NStore, NStoreError, Variable, var
from shale.tuple import Versionstamp

PREFIX = (42,)
S, N, OBJ = var("s"), var("n"), var("o")


@pytest.fixture(params=ENGINES)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with engine_url(request.param, tmp_path, "nstore.db") as served:
        yield served


@pytest.fixture
async def db(url: str) -> AsyncIterator[shale.Database]:
    async with await shale.open(url) as database:
        yield database


@pytest.fixture
async def fdb(url: str) -> AsyncIterator[found.Database]:
    database = await found.open(url)
    yield database
    await found.close(database)


async def everything(db: shale.Database) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        return await tr.get_range(b"", b"\xff")


async def collect(rows: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row async for row in rows]


async def tx_all(
    fdb: found.Database, make_rows: Callable[[found.Transaction], AsyncIterator[Any]]
) -> list[Any]:
    async def run(tx: found.Transaction) -> list[Any]:
        return await found.all(make_rows(tx))

    return await found.transactional(fdb, run)


# -- the index set and the byte layout ---------------------------------------

FOUND_INDICES = {
    1: [(0,)],
    2: [(0, 1), (1, 0)],
    3: [(0, 1, 2), (1, 2, 0), (2, 0, 1)],
    4: [(0, 1, 2, 3), (2, 0, 3, 1), (3, 0, 1, 2), (1, 2, 3, 0), (1, 3, 0, 2), (2, 3, 1, 0)],
    5: [
        (0, 1, 2, 3, 4),
        (2, 0, 3, 4, 1),
        (3, 0, 1, 4, 2),
        (4, 0, 1, 2, 3),
        (1, 2, 3, 4, 0),
        (1, 3, 4, 0, 2),
        (1, 4, 2, 0, 3),
        (2, 3, 4, 1, 0),
        (2, 4, 0, 1, 3),
        (3, 4, 0, 2, 1),
    ],
}


@pytest.mark.parametrize("n", sorted(FOUND_INDICES))
def test_indices_are_founds(n: int) -> None:
    assert NStore(PREFIX, n).indices == FOUND_INDICES[n]
    assert nstore.make("x", [42], n).indices == FOUND_INDICES[n]


def test_six_columns_start_as_in_found() -> None:
    indices = NStore(PREFIX, 6).indices
    assert len(indices) == 20
    assert indices[:3] == [(0, 1, 2, 3, 4, 5), (3, 0, 1, 4, 5, 2), (4, 0, 1, 2, 5, 3)]


@pytest.mark.parametrize("n", range(1, 11))
def test_every_set_of_bound_positions_is_an_index_prefix(n: int) -> None:
    """The planner's claim: some index binds all bound positions as its prefix."""
    indices = NStore(PREFIX, n).indices
    for k in range(n + 1):
        for bound in itertools.combinations(range(n), k):
            assert any(set(p[:k]) == set(bound) for p in indices), bound


# found's choice for n=3 and n=4 (found-spec §3.1 step 2): bound positions -> index.
FOUND_CHOICE = {
    3: {(): 0, (0,): 0, (1,): 1, (2,): 2, (0, 1): 0, (1, 2): 1, (0, 2): 2, (0, 1, 2): 0},
    4: {
        (): 0,
        (0,): 0,
        (1,): 3,
        (2,): 1,
        (3,): 2,
        (0, 1): 0,
        (0, 2): 1,
        (0, 3): 2,
        (1, 2): 3,
        (1, 3): 4,
        (2, 3): 5,
        (0, 1, 2): 0,
        (0, 1, 3): 2,
        (0, 2, 3): 1,
        (1, 2, 3): 3,
        (0, 1, 2, 3): 0,
    },
}


@pytest.mark.parametrize("n", sorted(FOUND_CHOICE))
async def test_single_pattern_scans_founds_index(n: int) -> None:
    async with await shale.open("memory://") as db:
        store = NStore(PREFIX, n)
        async with db.transaction() as tr:
            for bound, index in FOUND_CHOICE[n].items():
                pattern = [i if i in bound else var(f"v{i}") for i in range(n)]
                assert (await store.plan(tr, pattern)) == [(tuple(pattern), index)]


async def test_byte_layout_is_founds(db: shale.Database) -> None:
    """found-spec §3.1's example, byte for byte; nothing else among the index keys."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, uuid.UUID(int=1), "title", "hyper.dev", value=b"v")
    uid = "30" + "00" * 15 + "01"
    title, host = "02" + b"title".hex() + "00", "02" + b"hyper.dev".hex() + "00"
    expected = [
        bytes.fromhex("152a14" + uid + title + host),
        bytes.fromhex("152a1501" + title + host + uid),
        bytes.fromhex("152a1502" + host + uid + title),
    ]
    rows = await everything(db)
    index_rows = [(k, v) for k, v in rows if type(tuples.unpack(k)[1]) is int]
    assert index_rows == [(k, b"v") for k in expected]
    # The layer's own keys sit under string markers, where found writes nothing.
    markers = {tuples.unpack(k)[1] for k, _ in rows if (k, _) not in index_rows}
    assert markers == {"counts"}


async def test_reads_a_store_found_wrote(db: shale.Database) -> None:
    """A store written with found's key formula (found's own add) reads back here."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        for s, perm in enumerate(FOUND_INDICES[3]):
            items = ("a", "b", "c")
            tr.set(tuples.pack((*PREFIX, s, *(items[i] for i in perm))), b"x")
    async with db.transaction() as tr:
        assert await store.get(tr, "a", "b", "c") == b"x"
        for pattern in [("a", var("p"), var("o")), (var("s"), "b", var("o")), ("a", "b", "c")]:
            assert len(await collect(store.select(tr, *pattern))) == 1
        assert await store.recount(tr) == 1
    async with db.transaction() as tr:
        assert await store.total(tr) == 1
        assert await store.count(tr, 2, "c") == 1


# -- found's tests 22-31, on shale.found --------------------------------------


class Blog:
    """The data of found's nstore tests."""

    def __init__(self) -> None:
        self.hyperdev = uuid.uuid4()
        self.copernic = uuid.uuid4()
        self.post1 = uuid.uuid4()
        self.post2 = uuid.uuid4()
        self.triples = [
            (self.hyperdev, "title", "hyper.dev"),
            (self.hyperdev, "keyword", "scheme"),
            (self.hyperdev, "keyword", "hacker"),
            (self.copernic, "title", "blog.copernic.com"),
            (self.copernic, "keyword", "corporate"),
            (self.post1, "blog", self.hyperdev),
            (self.post1, "title", "hoply is awesome"),
            (self.post2, "blog", self.hyperdev),
            (self.post2, "title", "hoply foundiple store"),
        ]


CHAIN = [
    [var("blog"), "title", "hyper.dev"],
    [var("post"), "blog", var("blog")],
    [var("post"), "title", var("title")],
]


@pytest.fixture
async def blog(fdb: found.Database) -> tuple[found.Database, Any, Blog]:
    data = Blog()
    store = nstore.make("test-name", [42], 3)

    async def fill(tx: found.Transaction) -> None:
        for triple in data.triples:
            await nstore.add(tx, store, *triple)

    await found.transactional(fdb, fill)
    return fdb, store, data


def test_found_nstore_empty() -> None:
    assert nstore.make("test-name", [42], 3)


async def test_found_simple_single_item_db_subject_lookup(fdb: found.Database) -> None:
    store = nstore.make("test-name", [42], 3)
    expected = uuid.uuid4()
    await found.transactional(fdb, nstore.add, store, expected, "title", "hyper.dev")
    out = await tx_all(
        fdb, lambda tx: nstore.select(tx, store, nstore.var("subject"), "title", "hyper.dev")
    )
    assert out == [{"subject": expected}]


async def test_found_ask_rm_and_ask(fdb: found.Database) -> None:
    store = nstore.make("test-name", [42], 3)
    expected = uuid.uuid4()
    assert await found.transactional(fdb, nstore.get, store, expected, "title", "x") is None
    await found.transactional(fdb, nstore.add, store, expected, "title", "x")
    assert await found.transactional(fdb, nstore.get, store, expected, "title", "x") == b""
    await found.transactional(fdb, nstore.remove, store, expected, "title", "x")
    assert await found.transactional(fdb, nstore.get, store, expected, "title", "x") is None


async def test_found_simple_multiple_items_db_subject_lookup(fdb: found.Database) -> None:
    store = nstore.make("test-name", [42], 3)
    expected = uuid.uuid4()

    async def fill(tx: found.Transaction) -> None:
        await nstore.add(tx, store, expected, "title", "hyper.dev")
        await nstore.add(tx, store, uuid.uuid4(), "title", "blog.copernic.com")

    await found.transactional(fdb, fill)
    out = await tx_all(
        fdb, lambda tx: nstore.select(tx, store, var("subject"), "title", "hyper.dev")
    )
    assert out == [{"subject": expected}]


async def test_found_complex(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, _ = blog

    def rows(tx: found.Transaction) -> AsyncIterator[dict[str, Any]]:
        seeds = nstore.select(tx, store, var("identifier"), "keyword", "hacker")
        return nstore.where(tx, store, seeds, var("identifier"), "title", var("blog"))

    assert [row["blog"] for row in await tx_all(fdb, rows)] == ["hyper.dev"]


async def test_found_seed_subject_variable(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, data = blog
    out = await tx_all(fdb, lambda tx: nstore.select(tx, store, var("s"), "keyword", "corporate"))
    assert out == [{"s": data.copernic}]


async def test_found_seed_subject_lookup(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, data = blog
    out = await tx_all(
        fdb, lambda tx: nstore.select(tx, store, data.copernic, var("key"), var("value"))
    )
    assert out == [
        {"key": "keyword", "value": "corporate"},
        {"key": "title", "value": "blog.copernic.com"},
    ]


async def test_found_seed_object_variable(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, data = blog
    out = await tx_all(fdb, lambda tx: nstore.select(tx, store, data.hyperdev, "title", var("t")))
    assert out == [{"t": "hyper.dev"}]


async def test_found_subject_variable(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, _ = blog

    def rows(tx: found.Transaction) -> AsyncIterator[dict[str, Any]]:
        out = nstore.select(tx, store, *CHAIN[0])
        out = nstore.where(tx, store, out, *CHAIN[1])
        return nstore.where(tx, store, out, *CHAIN[2])

    titles = sorted(row["title"] for row in await tx_all(fdb, rows))
    assert titles == ["hoply foundiple store", "hoply is awesome"]


async def test_found_query(blog: tuple[found.Database, Any, Blog]) -> None:
    fdb, store, data = blog
    out = await tx_all(fdb, lambda tx: nstore.query(tx, store, *CHAIN))
    assert sorted(row["title"] for row in out) == ["hoply foundiple store", "hoply is awesome"]
    # Left to right, as found: the rows come in the nested loops' order.
    assert [list(row) for row in out] == [["blog", "post", "title"]] * 2
    assert {row["blog"] for row in out} == {data.hyperdev}


# -- the same scenarios through shale.layers ----------------------------------


@pytest.fixture
async def layered(db: shale.Database) -> tuple[shale.Database, NStore, Blog]:
    data = Blog()
    store = await NStore.open(db, PREFIX, 3, name="test-name")
    async with db.transaction() as tr:
        for triple in data.triples:
            await store.add(tr, *triple)
    return db, store, data


async def test_layer_scenarios(layered: tuple[shale.Database, NStore, Blog]) -> None:
    db, store, data = layered
    async with db.transaction() as tr:
        assert await collect(store.select(tr, var("s"), "title", "hyper.dev")) == [
            {"s": data.hyperdev}
        ]
        assert await collect(store.select(tr, var("s"), "keyword", "corporate")) == [
            {"s": data.copernic}
        ]
        assert await collect(store.select(tr, data.copernic, var("key"), var("value"))) == [
            {"key": "keyword", "value": "corporate"},
            {"key": "title", "value": "blog.copernic.com"},
        ]
        assert await collect(store.select(tr, data.hyperdev, "title", var("t"))) == [
            {"t": "hyper.dev"}
        ]
        seeds = store.select(tr, var("identifier"), "keyword", "hacker")
        rows = await collect(store.where(tr, seeds, var("identifier"), "title", var("blog")))
        assert [row["blog"] for row in rows] == ["hyper.dev"]
        for planned in (True, False):
            rows = await collect(store.query(tr, *CHAIN, planned=planned))
            assert sorted(r["title"] for r in rows) == ["hoply foundiple store", "hoply is awesome"]


async def test_layer_ask_remove_and_ask(db: shale.Database) -> None:
    store = await NStore.open(db, PREFIX, 3)
    uid = uuid.uuid4()
    async with db.transaction() as tr:
        assert await store.get(tr, uid, "title", "x") is None
        await store.add(tr, uid, "title", "x")
        assert await store.get(tr, uid, "title", "x") == b""
        await store.add(tr, uid, "title", "x", value=b"new")
    async with db.transaction() as tr:
        assert await store.get(tr, uid, "title", "x") == b"new"
        await store.remove(tr, uid, "title", "x")
        assert await store.get(tr, uid, "title", "x") is None
    async with db.transaction() as tr:
        assert await store.get(tr, uid, "title", "x") is None
        assert await collect(store.select(tr, var("s"), var("p"), var("o"))) == []


async def test_seed_is_not_mutated_and_constrains(
    layered: tuple[shale.Database, NStore, Blog],
) -> None:
    db, store, data = layered
    seed = {"s": data.copernic, "extra": 1}
    async with db.transaction() as tr:
        rows = await collect(store.select(tr, var("s"), "title", var("t"), seed=seed))
    assert rows == [{"s": data.copernic, "extra": 1, "t": "blog.copernic.com"}]
    assert seed == {"s": data.copernic, "extra": 1}


async def test_repeated_variable_must_match_itself(db: shale.Database) -> None:
    """found let the last occurrence win: ``(?x, "knows", ?x)`` matched every
    "knows" triple, binding x to the object."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, "ann", "knows", "bob")
        await store.add(tr, "cat", "knows", "cat")
        await store.add(tr, 1, "knows", True)  # 1 == True in Python, not in the store
        assert await collect(store.select(tr, var("x"), "knows", var("x"))) == [{"x": "cat"}]


async def test_where_and_query_stream(layered: tuple[shale.Database, NStore, Blog]) -> None:
    """Rows come out before the input is exhausted: nothing is materialized."""
    db, store, data = layered
    pulled: list[int] = []

    async def seeds() -> AsyncIterator[dict[str, Any]]:
        for i, subject in enumerate([data.hyperdev, data.copernic, data.post1]):
            pulled.append(i)
            yield {"s": subject}

    async with db.transaction() as tr:
        rows = store.where(tr, seeds(), var("s"), "title", var("t"))
        assert await anext(rows) == {"s": data.hyperdev, "t": "hyper.dev"}
        assert pulled == [0]
        query = store.query(tr, (var("s"), "keyword", var("k")), (var("s"), "title", var("t")))
        assert "t" in await anext(query)


async def test_snapshot_reads_add_no_conflict(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, "a", "b", "c")
    reader = db.transaction()
    assert len(await collect(store.select(reader, var("s"), "b", var("o"), snapshot=True))) == 1
    async with db.transaction() as tr:
        await store.add(tr, "z", "b", "c")
    reader.set(b"unrelated", b"")
    await reader.commit()
    plain = db.transaction()
    await collect(store.select(plain, var("s"), "b", var("o")))
    async with db.transaction() as tr:
        await store.add(tr, "y", "b", "c")
    plain.set(b"unrelated", b"")
    with pytest.raises(shale.ConflictError):
        await plain.commit()


# -- found's bug: next_prefix ranges over packed tuples -----------------------


async def test_scan_does_not_match_nul_continuations(db: shale.Database) -> None:
    """found scanned ``[pack(t), next_prefix(pack(t)))``, which also holds
    ``"title\\x00x"`` for ``"title"`` and ``(1, None)`` for ``(1,)``: found
    returned both "x" and "y" below, and both nested subjects."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, "s", "title", "x")
        await store.add(tr, "s", "title\x00x", "y")
        await store.add(tr, (1,), "p", "a")
        await store.add(tr, (1, None), "p", "b")
        await store.add(tr, "s", b"k", "z")
        await store.add(tr, "s", b"k\x00", "w")
    async with db.transaction() as tr:
        assert await collect(store.select(tr, "s", "title", var("o"))) == [{"o": "x"}]
        assert await collect(store.select(tr, (1,), var("p"), var("o"))) == [{"p": "p", "o": "a"}]
        assert await collect(store.select(tr, var("s"), b"k", var("o"))) == [{"s": "s", "o": "z"}]
        # found's range really holds the impostor: the fix is what excludes it.
        begin = tuples.pack((*PREFIX, 0, "s", "title"))
        found_range = await tr.get_range(begin, found.next_prefix(begin))
        assert len(found_range) == 2
        # A fully bound pattern still finds its exact key.
        assert await collect(store.select(tr, "s", "title", "x")) == [{}]
        assert await collect(store.select(tr, "s", "title\x00x", "y")) == [{}]
        assert await collect(store.select(tr, "s", "title", "y")) == []
        assert await collect(store.select(tr, "s", "title", "x", seed={"k": 1})) == [{"k": 1}]


async def test_found_facade_has_the_fix(fdb: found.Database) -> None:
    """Same regression through ``shale.found.nstore`` (found returned 2 rows)."""
    store = nstore.make("test-name", [42], 3)

    async def fill(tx: found.Transaction) -> None:
        await nstore.add(tx, store, "s", "title", "x")
        await nstore.add(tx, store, "s", "title\x00x", "y")

    await found.transactional(fdb, fill)
    out = await tx_all(fdb, lambda tx: nstore.select(tx, store, "s", "title", var("o")))
    assert out == [{"o": "x"}]


# -- versionstamps ------------------------------------------------------------


async def test_incomplete_versionstamp_lands_in_every_index(db: shale.Database) -> None:
    """found packed with ``pack_with_versionstamp`` and then a plain ``set``:
    the placeholder and its 4-byte offset were stored literally."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        stamp = tr.get_versionstamp()
        await store.add(tr, Versionstamp.incomplete(7), "event", "boot", value=b"v")
        await store.add(tr, Versionstamp.incomplete(7), "event", "boot", value=b"w")
        await store.add(tr, Versionstamp.incomplete(7), "level", "info")
        await store.add(tr, (Versionstamp.incomplete(8), 1), "event", "nested")
        await store.add(tr, "plain", "event", "boot")
    done = Versionstamp(await stamp, 7)
    async with db.transaction() as tr:
        assert await store.get(tr, done, "event", "boot") == b"w"
        rows = await collect(store.select(tr, var("s"), "event", var("o")))
        assert {(r["s"], r["o"]) for r in rows} == {
            (done, "boot"),
            ("plain", "boot"),
            ((Versionstamp(await stamp, 8), 1), "nested"),
        }
        assert await collect(store.select(tr, done, var("p"), var("o"))) == [
            {"p": "event", "o": "boot"},
            {"p": "level", "o": "info"},
        ]
        keys = [k for k, _ in await everything(db) if tuples.unpack(k)[1] in (0, 1, 2)]
        assert sum(done.to_bytes() in k for k in keys) == 6  # 2 tuples x 3 indexes
        assert await store.total(tr) == 4
        assert await store.count(tr, 0, done) == 2
        assert await store.count(tr, 1, "event") == 3
        await store.remove(tr, done, "event", "boot")
    async with db.transaction() as tr:
        assert await store.count(tr, 0, done) == 1
        assert await store.total(tr) == 3


async def test_versionstamp_counts_survive_a_reset(db: shale.Database) -> None:
    """A reset transaction starts its stamped bookkeeping afresh: the tuple
    the first attempt added is gone, so the second attempt counts it."""
    store = NStore(PREFIX, 3)
    tr = db.transaction()
    await store.add(tr, Versionstamp.incomplete(), "a", "b")
    tr.reset()
    await store.add(tr, Versionstamp.incomplete(), "a", "b")
    await tr.commit()
    async with db.transaction() as tr:
        assert await store.total(tr) == 1
        rows = await collect(store.select(tr, var("s"), "a", "b"))
        assert await store.count(tr, 0, rows[0]["s"]) == 1


async def test_found_retry_with_versionstamps(fdb: found.Database) -> None:
    """found's retry loop resets the same transaction (``on_error``)."""
    store = nstore.make("test-name", [42], 3)
    attempts = 0

    async def body(tx: found.Transaction) -> None:
        nonlocal attempts
        attempts += 1
        await nstore.add(tx, store, Versionstamp.incomplete(), "a", "b")
        if attempts == 1:
            raise found.FoundException(1020)  # not_committed: retried

    await found.transactional(fdb, body)
    assert attempts == 2

    async def check(tx: found.Transaction) -> tuple[int, list[dict[str, Any]]]:
        return await store.total(tx.core), await found.all(nstore.select(tx, store, S, "a", "b"))

    total, rows = await found.transactional(fdb, check)
    assert total == 1
    assert rows[0]["s"].is_complete()


async def test_complete_versionstamp_is_an_ordinary_item(db: shale.Database) -> None:
    """found raised ValueError: pack_with_versionstamp wants an incomplete one."""
    store = NStore(PREFIX, 3)
    stamp = Versionstamp(b"\x01" * 10, 3)
    async with db.transaction() as tr:
        await store.add(tr, stamp, "a", "b")
    async with db.transaction() as tr:
        assert await collect(store.select(tr, var("s"), "a", "b")) == [{"s": stamp}]


@pytest.mark.parametrize("operation", ["remove", "get", "select"])
async def test_incomplete_versionstamp_where_a_key_must_be_known(
    db: shale.Database, operation: str
) -> None:
    store = NStore(PREFIX, 3)
    before = await everything(db)
    async with db.transaction() as tr:
        with pytest.raises(NStoreError, match="incomplete Versionstamp"):
            result = getattr(store, operation)(tr, Versionstamp.incomplete(), "a", "b")
            if operation != "select":
                await result
    assert await everything(db) == before


async def test_two_incomplete_versionstamps_are_refused(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    before = await everything(db)
    async with db.transaction() as tr:
        with pytest.raises(tuples.TupleError, match="exactly one incomplete"):
            await store.add(tr, Versionstamp.incomplete(1), Versionstamp.incomplete(2), "x")
    assert await everything(db) == before


# -- counts -------------------------------------------------------------------


async def test_counts_are_exact(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, "a", "type", "person")
        await store.add(tr, "a", "type", "person")  # already there
        await store.add(tr, "b", "type", "person")
        await store.remove(tr, "c", "type", "person")  # absent
        assert await store.total(tr) == 2
    async with db.transaction() as tr:
        await store.add(tr, "a", "type", "person", value=b"again")
        await store.remove(tr, "b", "type", "person")
        await store.remove(tr, "b", "type", "person")
    async with db.transaction() as tr:
        assert await store.total(tr) == 1
        assert await store.count(tr, 1, "type") == 1
        assert await store.count(tr, 2, "person") == 1
        assert await store.count(tr, 0, "b") == 0
        key = tuples.pack((*PREFIX, "counts", 1, "type"))
        assert await tr.get(key) == (1).to_bytes(8, "little")
        assert await tr.get(tuples.pack((*PREFIX, "counts", "total"))) == (1).to_bytes(8, "little")


async def test_concurrent_adds_of_one_tuple_count_once(db: shale.Database) -> None:
    """The read of index 0's key makes the second adder conflict and retry."""
    store = NStore(PREFIX, 3)
    first, second = db.transaction(), db.transaction()
    await store.add(first, "a", "b", "c")
    await store.add(second, "a", "b", "c")
    await first.commit()
    with pytest.raises(shale.ConflictError):
        await second.commit()
    await db.transact(store.add, "a", "b", "c")
    async with db.transaction() as tr:
        assert await store.total(tr) == 1


async def test_adds_of_different_tuples_do_not_conflict(db: shale.Database) -> None:
    """Counters change by atomic add: two adders sharing items both commit."""
    store = NStore(PREFIX, 3)
    first, second = db.transaction(), db.transaction()
    await store.add(first, "a", "type", "person")
    await store.add(second, "b", "type", "person")
    await first.commit()
    await second.commit()
    async with db.transaction() as tr:
        assert await store.count(tr, 1, "type") == 2


async def test_add_many_counts_like_add(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        await store.add(tr, "a", "type", "person")
        stamp = tr.get_versionstamp()
        rows = [
            ("a", "type", "person"),  # already there
            ("b", "type", "person"),
            ("b", "type", "person"),  # twice in the batch
            ["c", "type", "city"],
            (Versionstamp.incomplete(1), "type", "event"),
            (Versionstamp.incomplete(1), "type", "event"),
        ]
        assert await store.add_many(tr, rows, value=b"v") == 3
        assert await store.get(tr, "a", "type", "person") == b"v"
    async with db.transaction() as tr:
        assert await store.total(tr) == 4
        assert await store.count(tr, 1, "type") == 4
        assert await store.count(tr, 2, "person") == 2
        assert await store.count(tr, 0, Versionstamp(await stamp, 1)) == 1
        assert await store.get(tr, Versionstamp(await stamp, 1), "type", "event") == b"v"


@pytest.mark.parametrize(
    ("bad", "error"), [(("x", "y"), NStoreError), ((object(), 1, 2), ValueError)]
)
async def test_add_many_checks_every_row_first(
    db: shale.Database, bad: tuple[Any, ...], error: type
) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        with pytest.raises(error):
            await store.add_many(tr, [("a", "b", "c"), bad, ("d", "e", "f")])
        with pytest.raises(NStoreError, match="a value is bytes"):
            await store.add_many(tr, [("a", "b", "c")], value=None)  # type: ignore[arg-type]
    assert await everything(db) == []


async def test_recount_rebuilds(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        for i in range(5):
            await store.add(tr, i, "even" if i % 2 == 0 else "odd", "x")
        tr.set(tuples.pack((*PREFIX, "counts", 1, "even")), (99).to_bytes(8, "little"))
    async with db.transaction() as tr:
        assert await store.recount(tr) == 5
    async with db.transaction() as tr:
        assert await store.count(tr, 1, "even") == 3
        assert await store.count(tr, 1, "odd") == 2
        assert await store.count(tr, 2, "x") == 5


# -- the planner ----------------------------------------------------------------


async def people(db: shale.Database) -> NStore:
    """100 subjects with a name; 10 of them persons, 90 cities."""
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        for i in range(100):
            await store.add(tr, i, "type", "person" if i % 10 == 0 else "city")
            await store.add(tr, i, "name", f"name-{i}")
    return store


async def test_plan_puts_the_most_selective_first(db: shale.Database) -> None:
    store = await people(db)
    names, persons = (S, "name", N), (S, "type", "person")
    async with db.transaction() as tr:
        plan = await store.plan(tr, names, persons)
        # persons: count(2, "person") = 10 < count(1, "name") = 100.
        # (?s, type, person) binds positions 1 and 2: index 1 = (1, 2, 0).
        # Then (?s, name, ?n) has s bound: positions 0, 1 -> index 0.
        assert plan == [(persons, 1), (names, 0)]
        assert_binds_longest_prefix(store, plan)
        planned = await collect(store.query(tr, names, persons))
        unplanned = await collect(store.query(tr, names, persons, planned=False))
    assert len(planned) == 10
    assert sorted(map(sorted_items, planned)) == sorted(map(sorted_items, unplanned))


def sorted_items(row: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(row.items())


async def test_plan_avoids_cross_products(db: shale.Database) -> None:
    store = await people(db)
    cities = (var("c"), "type", "city")  # 90
    names = (S, "name", N)  # 100
    persons = (S, "type", "person")  # 10
    async with db.transaction() as tr:
        plan = await store.plan(tr, cities, names, persons)
    # After persons, names shares ?s; cities shares nothing and goes last
    # although it is more selective than names.
    assert [p for p, _ in plan] == [persons, names, cities]
    assert_binds_longest_prefix(store, plan)


def assert_binds_longest_prefix(store: NStore, plan: list[tuple[tuple[Any, ...], int]]) -> None:
    """Each scan's key prefix holds all its constants and joined variables."""
    known: set[str] = set()
    for pattern, index in plan:
        bound = {i for i, x in enumerate(pattern) if not isinstance(x, Variable) or x.name in known}
        assert set(store.indices[index][: len(bound)]) == bound
        known |= {x.name for x in pattern if isinstance(x, Variable)}


async def test_plan_prefers_fully_bound_patterns(db: shale.Database) -> None:
    store = await people(db)
    typed = (S, "type", OBJ)
    named = (S, "name", "name-10")
    person = (S, "type", "person")
    async with db.transaction() as tr:
        plan = await store.plan(tr, typed, person, named)
        assert [p for p, _ in plan] == [named, person, typed]
        # ?s is bound by then: (?s, type, person) is one lookup (index 0).
        assert plan[1] == (person, 0)
        rows = await collect(store.query(tr, typed, person, named))
    assert rows == [{"s": 10, "o": "person"}]


async def test_plan_on_an_empty_constant_stops_at_once(db: shale.Database) -> None:
    store = await people(db)
    async with db.transaction() as tr:
        plan = await store.plan(tr, (S, "name", N), (S, "type", "dragon"))
        assert plan[0][0] == (S, "type", "dragon")
        assert await collect(store.query(tr, (S, "name", N), (S, "type", "dragon"))) == []


async def test_plan_reads_counts_without_conflicts(db: shale.Database) -> None:
    store = await people(db)
    tr = db.transaction()
    await store.plan(tr, (S, "name", N), (S, "type", "person"))
    async with db.transaction() as other:
        await store.add(other, 1000, "type", "person")
    tr.set(b"unrelated", b"")
    await tr.commit()


# -- format versions ------------------------------------------------------------


async def test_open_records_format_and_columns(db: shale.Database) -> None:
    await NStore.open(db, PREFIX, 3)
    async with db.transaction() as tr:
        assert await tr.get(tuples.pack((*PREFIX, "meta"))) == tuples.pack(("nstore", 1, 0))
        assert await tr.get(tuples.pack((*PREFIX, "columns"))) == tuples.pack((3,))
        store = await NStore.open(tr, PREFIX, 3)
    assert store.writable
    before = await everything(db)
    with pytest.raises(NStoreError, match="holds 3-tuples; it was opened with n=4"):
        await NStore.open(db, PREFIX, 4)
    assert await everything(db) == before


async def test_newer_major_is_refused(db: shale.Database) -> None:
    await db.set(tuples.pack((*PREFIX, "meta")), tuples.pack(("nstore", 2, 0)))
    before = await everything(db)
    with pytest.raises(shale.FormatVersionError, match="newer"):
        await NStore.open(db, PREFIX, 3)
    await db.set(tuples.pack((*PREFIX, "meta")), tuples.pack(("eavstore", 1, 0)))
    with pytest.raises(shale.FormatVersionError, match="not nstore"):
        await NStore.open(db, PREFIX, 3)
    assert len(await everything(db)) == len(before)


async def test_newer_minor_is_read_only(db: shale.Database) -> None:
    writer = await NStore.open(db, PREFIX, 3)
    async with db.transaction() as tr:
        await writer.add(tr, "a", "b", "c")
    await db.set(tuples.pack((*PREFIX, "meta")), tuples.pack(("nstore", 1, 7)))
    before = await everything(db)
    store = await NStore.open(db, PREFIX, 3)
    assert not store.writable
    async with db.transaction() as tr:
        assert await store.get(tr, "a", "b", "c") == b""
        assert len(await collect(store.query(tr, (S, "b", OBJ), (S, var("p"), "c")))) == 1
        with pytest.raises(shale.ReadOnlyError):
            await store.add(tr, "x", "y", "z")
        with pytest.raises(shale.ReadOnlyError):
            await store.remove(tr, "a", "b", "c")
        with pytest.raises(shale.ReadOnlyError):
            await store.recount(tr)
    assert await everything(db) == before


# -- bad input ------------------------------------------------------------------


BAD_ITEMS = [
    (("a", "b"), NStoreError, "takes 3 items, got 2"),
    (("a", "b", "c", "d"), NStoreError, "takes 3 items, got 4"),
    ((var("x"), "b", "c"), NStoreError, "not the variable"),
    ((("nested", var("x")), "b", "c"), NStoreError, "not the variable"),
    ((object(), "b", "c"), tuples.TupleError, "cannot pack"),
]


@pytest.mark.parametrize(("items", "error", "message"), BAD_ITEMS)
@pytest.mark.parametrize("operation", ["add", "remove", "get"])
async def test_bad_items(
    db: shale.Database, operation: str, items: tuple[Any, ...], error: type, message: str
) -> None:
    store = NStore(PREFIX, 3)
    before = await everything(db)
    async with db.transaction() as tr:
        with pytest.raises(error, match=message):
            await getattr(store, operation)(tr, *items)
    assert await everything(db) == before


async def test_bad_value(db: shale.Database) -> None:
    store = NStore(PREFIX, 3)
    async with db.transaction() as tr:
        with pytest.raises(NStoreError, match="a value is bytes, not str"):
            await store.add(tr, "a", "b", "c", value="text")  # type: ignore[arg-type]
    assert await everything(db) == []


BAD_PATTERNS = [
    (("a", var("x")), "takes patterns of 3 items, got 2"),
    ((var("x"), ("a", var("y")), "c"), "variables stand for whole items"),
    ((Versionstamp.incomplete(), var("p"), var("o")), "incomplete Versionstamp"),
]


@pytest.mark.parametrize(("pattern", "message"), BAD_PATTERNS)
async def test_bad_patterns(db: shale.Database, pattern: tuple[Any, ...], message: str) -> None:
    store = NStore(PREFIX, 3)
    good = (var("s"), "p", var("o"))
    async with db.transaction() as tr:
        calls: list[Callable[[], Any]] = [
            lambda: store.select(tr, *pattern),
            lambda: store.where(tr, store.select(tr, *good), *pattern),
            lambda: store.query(tr, good, pattern),
            lambda: store.query(tr, pattern),
            lambda: store.plan(tr, good, pattern),
        ]
        for call in calls:
            with pytest.raises(NStoreError, match=message):
                result = call()
                if isinstance(result, Awaitable):
                    await result
        with pytest.raises(NStoreError, match="a pattern is a tuple"):
            store.query(tr, "abc")
    assert await everything(db) == []


@pytest.mark.parametrize(
    ("prefix", "n", "message"),
    [
        (PREFIX, 0, "n is the number of columns"),
        (PREFIX, 17, "n is the number of columns"),
        (PREFIX, "3", "n is the number of columns"),
        ("42", 3, "prefix is a tuple or Subspace"),
    ],
)
def test_bad_store(prefix: Any, n: Any, message: str) -> None:
    with pytest.raises(NStoreError, match=message):
        NStore(prefix, n)


def test_bad_variable_and_position() -> None:
    with pytest.raises(NStoreError, match="variable name is a str"):
        var(1)  # type: ignore[arg-type]
    assert var("x") == Variable("x")


async def test_subspace_prefix(db: shale.Database) -> None:
    store = await NStore.open(db, shale.Subspace(("app",))["triples"], 2)
    async with db.transaction() as tr:
        await store.add(tr, "k", "v")
        with pytest.raises(NStoreError, match="position is 0 to 1"):
            await store.count(tr, 2, "k")
    keys = [k for k, _ in await everything(db)]
    assert tuples.pack(("app", "triples", 0, "k", "v")) in keys
    assert tuples.pack(("app", "triples", 1, "v", "k")) in keys


# -- the found facade's errors --------------------------------------------------


async def test_found_errors(fdb: found.Database) -> None:
    store = nstore.make("test-name", [42], 3)
    assert issubclass(nstore.NStoreException, found.BaseFoundException)
    assert not issubclass(nstore.NStoreException, found.FoundException)
    with pytest.raises(nstore.NStoreException, match="takes 3 items, got 2") as info:
        await found.transactional(fdb, nstore.add, store, "a", "b")
    assert isinstance(info.value.__cause__, NStoreError)
    with pytest.raises(nstore.NStoreException, match="takes patterns of 3 items"):
        await tx_all(fdb, lambda tx: nstore.query(tx, store, [var("s"), "p", var("o")], [1]))
    with pytest.raises(nstore.NStoreException, match="n is the number of columns"):
        nstore.make("bad", [42], 0)
    with pytest.raises(found.FoundException) as code:
        await found.transactional(fdb, nstore.add, store, "k" * 10_000, "b", "c")
    assert code.value.code == 2102  # key_too_large
    async with found.transaction(fdb) as tx:
        assert await found.get_approximate_size(tx) == 0
        await nstore.add(tx, store, "a", "b", "c")
        assert await found.get_approximate_size(tx) > 0
    # The failed transactions wrote nothing.
    out = await tx_all(fdb, lambda tx: nstore.select(tx, store, var("s"), var("p"), var("o")))
    assert out == [{"s": "a", "p": "b", "o": "c"}]


async def test_found_snapshot_transaction(fdb: found.Database) -> None:
    store = nstore.make("test-name", [42], 3)
    await found.transactional(fdb, nstore.add, store, "a", "b", "c")

    async def read(tx: found.Transaction) -> Any:
        view = found.Transaction(tx.pointer, tx.db, True, tx.vars)
        return (
            await nstore.get(view, store, "a", "b", "c"),
            await found.all(nstore.select(view, store, var("s"), "b", "c")),
        )

    assert await found.transactional(fdb, read) == (b"", [{"s": "a"}])


# -- properties: the layer against a list of tuples -----------------------------

ITEMS = st.sampled_from(
    ["a", "a\x00", "a\x00b", "b", b"", b"\x00", None, 0, 1, True, (1,), (1, None)]
)
TRIPLES = st.tuples(ITEMS, ITEMS, ITEMS)
PATTERN_ITEMS = st.one_of(ITEMS, st.sampled_from([var("x"), var("y"), var("z")]))
PATTERNS = st.tuples(PATTERN_ITEMS, PATTERN_ITEMS, PATTERN_ITEMS)


def _key(value: Any) -> bytes:
    return tuples.pack((value,))


def oracle(
    triples: set[tuple[bytes, bytes, bytes]], patterns: list[tuple[Any, ...]]
) -> list[list[tuple[str, bytes]]]:
    """Every binding matching all patterns, by brute force over packed items."""
    rows: list[dict[str, bytes]] = [{}]
    for pattern in patterns:
        out = []
        for row in rows:
            for triple in triples:
                new = dict(row)
                for x, item in zip(pattern, triple, strict=True):
                    if isinstance(x, Variable):
                        if new.setdefault(x.name, item) != item:
                            break
                    elif _key(x) != item:
                        break
                else:
                    out.append(new)
        rows = out
    return sorted(sorted(r.items()) for r in rows)


def normal(rows: list[dict[str, Any]]) -> list[list[tuple[str, bytes]]]:
    return sorted(sorted((k, _key(v)) for k, v in r.items()) for r in rows)


@settings(max_examples=60, deadline=None)
@given(
    added=st.lists(TRIPLES, max_size=12),
    removed=st.lists(TRIPLES, max_size=4),
    patterns=st.lists(PATTERNS, min_size=1, max_size=3),
    many=st.booleans(),
)
def test_matches_brute_force(
    added: list[tuple[Any, ...]],
    removed: list[tuple[Any, ...]],
    patterns: list[tuple[Any, ...]],
    many: bool,
) -> None:
    async def main() -> None:
        async with await shale.open("memory://") as db:
            store = NStore(PREFIX, 3)
            async with db.transaction() as tr:
                if many:
                    await store.add_many(tr, added)
                for triple in added:
                    await store.add(tr, *triple)
            async with db.transaction() as tr:
                for triple in removed:
                    await store.remove(tr, *triple)
            stored = {tuple(map(_key, t)) for t in added} - {tuple(map(_key, t)) for t in removed}
            async with db.transaction() as tr:
                expected = oracle(stored, patterns)
                assert normal(await collect(store.query(tr, *patterns))) == expected
                unplanned = store.query(tr, *patterns, planned=False)
                assert normal(await collect(unplanned)) == expected
                assert await store.total(tr) == len(stored)
                for pos, item in {(p, t[p]) for t in stored for p in range(3)}:
                    want = sum(t[pos] == item for t in stored)
                    assert await store.count(tr, pos, tuples.unpack(item)[0]) == want

    asyncio.run(main())


def test_benchmark_checks_itself() -> None:
    """A small run of ``bench/bench_nstore.py``: its own checks pass."""
    from bench import bench_nstore

    rows = bench_nstore.run(subjects=200, batch=50)
    assert [row["engine"] for row in rows] == ["memory", "sqlite"]
    # Rates only: a timing ratio would make this test depend on machine load.
    rates = [v for row in rows for k, v in row.items() if k.endswith("/s)")]
    assert rates and all(isinstance(v, int) and v > 0 for v in rates)
    assert "| engine |" in bench_nstore.markdown(rows)


def test_public_names_are_pinned() -> None:
    from shale.layers import nstore as layer

    assert set(layer.__all__) == {"MAX_COLUMNS", "NStore", "NStoreError", "Variable", "var"}
    assert set(nstore.__all__) == {
        "NStore",
        "NStoreException",
        "Variable",
        "add",
        "get",
        "make",
        "query",
        "remove",
        "select",
        "var",
        "where",
    }
    for module in (layer, nstore):
        for name in module.__all__:
            assert hasattr(module, name), name
