"""The blob store: found's tests 32-34 through ``shale.found.bstore``, the
byte layout, found's empty-blob bug, blobs larger than a transaction,
streaming reads, reference counting under concurrency, garbage collection
of abandoned uploads, the format version and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import shale
import shale.found as found
from engine_urls import ENGINES, engine_url
from shale import tuple as tuples
from shale.found import bstore as found_bstore
from shale.found.transaction import TransactionOptions
from shale.layers.bstore import (
    CHUNK_SIZE,
    MAX_SINGLE_TRANSACTION_BLOB,
    BlobInputError,
    BlobNotFound,
    BStore,
    UncountedBlobError,
    UploadAbandoned,
)

PREFIX = (42,)
MARKERS = {b"\x00": "meta", b"\x01": "hash", b"\x02": "chunk", b"\x03": "record"}
MARKERS |= {b"\x04": "refs", b"\x05": "pending"}
META_KEY = tuples.pack(((*PREFIX, b"\x00"),))


@pytest.fixture(params=ENGINES)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[shale.Database]:
    async with engine_url(request.param, tmp_path, "blobs.db") as url:
        database = await shale.open(url)
        yield database
        await database.close()


@pytest.fixture
async def store(db: shale.Database) -> BStore:
    return await BStore.open(db, PREFIX)


async def dump(db: shale.Database) -> list[tuple[bytes, bytes]]:
    async with db.transaction() as tr:
        return await tr.get_range(b"", b"\xff")


async def keys_by_kind(db: shale.Database) -> dict[str, list[tuple[tuple[Any, ...], bytes]]]:
    """The store's keys under PREFIX, grouped by marker, unpacked."""
    out: dict[str, list[tuple[tuple[Any, ...], bytes]]] = {kind: [] for kind in MARKERS.values()}
    for key, value in await dump(db):
        (head, *rest) = tuples.unpack(key)
        assert head[:-1] == PREFIX, key
        out[MARKERS[head[-1]]].append((tuple(rest), value))
    return out


async def check_consistent(db: shale.Database) -> dict[uuid.UUID, int]:
    """Every invariant of the layout; returns each visible blob's count."""
    kinds = await keys_by_kind(db)
    records = {uid: tuples.unpack(value) for (uid,), value in kinds["record"]}
    refs = {uid: int.from_bytes(v, "little", signed=True) for (uid,), v in kinds["refs"]}
    hashes = {digest: uuid.UUID(bytes=value) for (digest,), value in kinds["hash"]}
    pending = {uid for (uid,), _ in kinds["pending"]}
    chunks: dict[uuid.UUID, list[bytes]] = {}
    for (uid, index), value in kinds["chunk"]:
        assert index == len(chunks.setdefault(uid, [])), "chunks are contiguous from 0"
        chunks[uid].append(value)
    assert set(refs) == set(records), "a count exists exactly for each record"
    assert all(count >= 1 for count in refs.values())
    assert sorted(hashes.values()) == sorted(records), "one hash entry per record"
    assert not pending & set(records)
    assert set(chunks) <= set(records) | pending, "no orphan chunks"
    for uid, (length, digest) in records.items():
        data = b"".join(chunks.get(uid, []))
        assert len(data) == length and hashes[digest] == uid
        assert hashlib.blake2b(data).digest() == digest
        assert len(chunks.get(uid, [])) == math.ceil(length / CHUNK_SIZE)
    return refs


async def read_all(
    source: shale.Database | shale.Transaction, store: BStore, uid: uuid.UUID
) -> bytes:
    return b"".join([piece async for piece in store.read(source, uid)])


# -- found's tests 32-34, through shale.found -----------------------------------------


@pytest.fixture
async def fdb(db: shale.Database) -> found.Database:
    return found.Database(db, found.make_hooks(), TransactionOptions())


async def _found_roundtrip(fdb: found.Database, blob: bytes) -> tuple[uuid.UUID, bytes]:
    store = found_bstore.make("test-bstore", [42])

    async def body(tx: found.Transaction) -> tuple[uuid.UUID, bytes]:
        uid = await found_bstore.get_or_create(tx, store, blob)
        return uid, await found_bstore.get(tx, store, uid)

    return await found.transactional(fdb, body)


async def test_32_bstore_small(fdb: found.Database) -> None:
    _, out = await _found_roundtrip(fdb, b"\xbe\xef")
    assert out == b"\xbe\xef"


async def test_33_bstore_large(fdb: found.Database, db: shale.Database) -> None:
    blob = b"\xbe\xef" * 100_000
    _, out = await _found_roundtrip(fdb, blob)
    assert out == blob
    assert len((await keys_by_kind(db))["chunk"]) == 2


async def test_34_bstore_idempotent(fdb: found.Database) -> None:
    first, _ = await _found_roundtrip(fdb, b"\xbe\xef")
    second, _ = await _found_roundtrip(fdb, b"\xbe\xef")
    assert first == second


async def test_found_get_of_a_missing_uid_raises_bstore_exception(fdb: found.Database) -> None:
    store = found_bstore.make("missing", [42])

    async def body(tx: found.Transaction) -> bytes:
        return await found_bstore.get(tx, store, uuid.UUID(int=1))

    with pytest.raises(found_bstore.BStoreException, match="BLOB should be in database"):
        await found.transactional(fdb, body)
    assert issubclass(found_bstore.BStoreException, found.BaseFoundException)
    assert not issubclass(found_bstore.BStoreException, found.FoundException)


async def test_found_snapshot_get(fdb: found.Database) -> None:
    uid, _ = await _found_roundtrip(fdb, b"snap")
    store = found_bstore.make("test-bstore", (42,))

    async def body(tx: found.Transaction) -> bytes:
        return await found_bstore.get(tx, store, uid)

    assert await found.transactional(fdb, body, snapshot=True) == b"snap"


def test_found_make_handle() -> None:
    store = found_bstore.make("name", [42])
    assert (store.name, store.prefix_hash, store.prefix_blob) == (
        "name",
        (42, b"\x01"),
        (42, b"\x02"),
    )


# -- layout and found's data ------------------------------------------------------------


async def test_layout_is_founds_plus_marked_extras(db: shale.Database, store: BStore) -> None:
    blob = bytes(range(256)) * 1000  # 256,000 bytes: three chunks
    uid = await db.transact(store.get_or_create, blob)
    digest = hashlib.blake2b(blob).digest()
    nested = bytes.fromhex("05 15 2a 01")  # (42, b"\x0N") opens with these bytes
    expected = [
        (nested + b"\x00\xff\x00\x00", tuples.pack(("bstore", 1, 0))),
        (nested + b"\x01\x00\x00\x01" + digest.replace(b"\x00", b"\x00\xff") + b"\x00", uid.bytes),
        *[
            (
                nested + b"\x02\x00\x00\x30" + uid.bytes + tuples.pack((i,)),
                blob[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE],
            )
            for i in range(3)
        ],
        (nested + b"\x03\x00\x00\x30" + uid.bytes, tuples.pack((len(blob), digest))),
        (nested + b"\x04\x00\x00\x30" + uid.bytes, (1).to_bytes(8, "little")),
    ]
    assert await dump(db) == sorted(expected)


async def test_reads_a_blob_that_found_wrote(db: shale.Database, store: BStore) -> None:
    """found wrote only hash entry and chunks: Shale reads, stats and
    dedups onto it, but will not delete what found never counted."""
    blob = os.urandom(150_000)
    uid = uuid.UUID(int=77)
    async with db.transaction() as tr:
        tr.set(tuples.pack(((*PREFIX, b"\x01"), hashlib.blake2b(blob).digest())), uid.bytes)
        for i in range(2):
            chunk = blob[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
            tr.set(tuples.pack(((*PREFIX, b"\x02"), uid, i)), chunk)
    assert await db.transact(store.get, uid) == blob
    assert await read_all(db, store, uid) == blob
    info = await db.transact(store.stat, uid)
    assert (info.length, info.references) == (150_000, 0)
    assert await db.transact(store.get_or_create, blob) == uid
    with pytest.raises(UncountedBlobError, match="written by found"):
        await db.transact(store.delete, uid)
    assert await db.transact(store.get, uid) == blob


async def test_subspace_nests_the_whole_store(db: shale.Database) -> None:
    sub = shale.Subspace(("app", "blobs"))
    store = await BStore.open(db, subspace=sub)
    uid = await store.put(db, b"x" * 250_000, batch_bytes=100_000)
    assert all(sub.contains(key) for key, _ in await dump(db))
    assert await read_all(db, store, uid) == b"x" * 250_000


# -- found's bug: the empty blob -----------------------------------------------------------


async def test_empty_blob_round_trips(
    db: shale.Database, store: BStore, fdb: found.Database
) -> None:
    """found stored no key at all for b"", and its get raised
    BStoreException("BLOB should be in database") for the uid it returned."""
    uid, out = await _found_roundtrip(fdb, b"")
    assert out == b""
    assert await db.transact(store.get, uid) == b""
    assert await store.put(db, b"") == uid
    assert await store.put(db, iter([b"", b""])) == uid
    assert await read_all(db, store, uid) == b""
    assert (await db.transact(store.stat, uid)).references == 3
    assert await check_consistent(db) == {uid: 3}


# -- blobs larger than a transaction ------------------------------------------------------


async def test_a_blob_larger_than_a_transaction(db: shale.Database, store: BStore) -> None:
    blob = os.urandom(12_000_000)  # over the 10 MB transaction limit
    uid = await store.put(db, blob)
    assert await read_all(db, store, uid) == blob
    pieces = [len(piece) async for piece in store.read(db, uid)]
    assert max(pieces) == CHUNK_SIZE and sum(pieces) == len(blob)
    assert await check_consistent(db) == {uid: 1}
    assert await store.put(db, blob) == uid
    assert await db.transact(store.delete, uid) == 1
    assert await db.transact(store.delete, uid) == 0
    assert await dump(db) == [(META_KEY, tuples.pack(("bstore", 1, 0)))]


async def test_get_or_create_refuses_what_one_transaction_cannot_hold(
    db: shale.Database, store: BStore
) -> None:
    before = await dump(db)
    async with db.transaction() as tr:
        with pytest.raises(shale.TransactionTooLarge, match=r"use BStore\.put"):
            await store.get_or_create(tr, bytes(MAX_SINGLE_TRANSACTION_BLOB + 1))
    assert await dump(db) == before


async def test_upload_is_invisible_until_complete(db: shale.Database, store: BStore) -> None:
    """Mid-upload, the chunks sit under a pending uid with no hash entry or
    record; reading that uid fails."""
    seen: list[dict[str, Any]] = []

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(9):
            if i == 6:  # two batches of 2 x 100 kB are in
                kinds = await keys_by_kind(db)
                ((upload,), _) = kinds["pending"][0]
                with pytest.raises(BlobNotFound, match="in progress"):
                    await db.transact(store.get, upload)
                seen.append(kinds)
            yield bytes([i]) * 70_000  # pieces that straddle chunk boundaries

    uid = await store.put(db, pieces(), batch_bytes=200_000)
    (kinds,) = seen
    assert len(kinds["chunk"]) == 4 and not kinds["hash"] and not kinds["record"]
    expected = b"".join(bytes([i]) * 70_000 for i in range(9))
    assert await db.transact(store.get, uid) == expected
    assert await check_consistent(db) == {uid: 1}


@pytest.mark.parametrize(
    ("start", "stop"),
    [(0, None), (1, 99_999), (99_999, 100_001), (100_000, 200_000), (250_000, 10**9), (5, 5)],
)
async def test_read_ranges(db: shale.Database, store: BStore, start: int, stop: int | None) -> None:
    blob = os.urandom(260_000)
    uid = await store.put(db, blob)
    want = blob[start:stop]
    got = b"".join([p async for p in store.read(db, uid, start, stop, batch_bytes=100_000)])
    assert got == want
    async with db.transaction() as tr:
        assert b"".join([p async for p in store.read(tr.snapshot, uid, start, stop)]) == want


async def test_read_across_transactions_notices_a_delete(db: shale.Database, store: BStore) -> None:
    uid = await store.put(db, os.urandom(500_000))
    reader = store.read(db, uid, batch_bytes=200_000)
    assert len(await anext(reader)) == CHUNK_SIZE
    await db.transact(store.delete, uid)
    with pytest.raises(BlobNotFound, match="deleted while being read"):
        async for _ in reader:
            pass


# -- failed and abandoned uploads ----------------------------------------------------------


class Boom(Exception):
    pass


async def test_a_failed_put_leaves_nothing(db: shale.Database, store: BStore) -> None:
    before = await dump(db)

    async def failing() -> AsyncIterator[bytes]:
        yield b"a" * 450_000
        raise Boom

    async def wrong_piece() -> AsyncIterator[Any]:
        yield b"a" * 450_000
        yield "not bytes"

    with pytest.raises(Boom):
        await store.put(db, failing(), batch_bytes=200_000)
    with pytest.raises(BlobInputError, match="not str"):
        await store.put(db, wrong_piece(), batch_bytes=200_000)
    assert await dump(db) == before


async def test_abandoned_upload_is_collected(db: shale.Database, store: BStore) -> None:
    """A put that stops (its process died: here a task that never resumes)
    leaves a pending upload; collect_garbage removes it, and should the put
    resume after all, it fails with UploadAbandoned and leaves nothing."""
    resume = asyncio.Event()
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"s" * 500_000
        stalled.set()
        await resume.wait()
        yield b"t" * 100_000

    task = asyncio.create_task(store.put(db, stalling(), batch_bytes=200_000))
    await stalled.wait()
    kinds = await keys_by_kind(db)
    assert len(kinds["pending"]) == 1 and len(kinds["chunk"]) == 4
    assert await store.collect_garbage(db, older_than=3600) == 0
    await asyncio.sleep(0.01)
    assert await store.collect_garbage(db, older_than=0) == 1
    assert await dump(db) == [(META_KEY, tuples.pack(("bstore", 1, 0)))]
    resume.set()
    with pytest.raises(UploadAbandoned, match="garbage-collected"):
        await task
    assert await dump(db) == [(META_KEY, tuples.pack(("bstore", 1, 0)))]


async def test_collect_garbage_pages_through_many_uploads(
    db: shale.Database, store: BStore
) -> None:
    async with db.transaction() as tr:
        for i in range(230):
            upload = uuid.UUID(int=i + 1)
            tr.set(tuples.pack(((*PREFIX, b"\x05"), upload)), tuples.pack((0.0,)))
            tr.set(tuples.pack(((*PREFIX, b"\x02"), upload, 0)), b"x")
    assert await store.collect_garbage(db) == 230
    assert await dump(db) == [(META_KEY, tuples.pack(("bstore", 1, 0)))]


# -- references and concurrency -------------------------------------------------------------


async def test_references_are_counted(db: shale.Database, store: BStore) -> None:
    a = await db.transact(store.get_or_create, b"a")
    assert await store.put(db, [b"a"]) == a
    assert await db.transact(store.get_or_create, bytearray(b"a")) == a
    b = await db.transact(store.get_or_create, b"b")
    assert await check_consistent(db) == {a: 3, b: 1}
    assert [await db.transact(store.delete, a) for _ in range(3)] == [2, 1, 0]
    assert await check_consistent(db) == {b: 1}
    with pytest.raises(BlobNotFound, match="no blob"):
        await db.transact(store.delete, a)
    with pytest.raises(BlobNotFound):
        await db.transact(store.get, a)
    again = await db.transact(store.get_or_create, b"a")
    assert again != a and await db.transact(store.get, again) == b"a"


async def test_concurrent_creators_of_the_same_blob(db: shale.Database, store: BStore) -> None:
    blob = os.urandom(250_000)
    uids = await asyncio.gather(*(db.transact(store.get_or_create, blob) for _ in range(5)))
    assert len(set(uids)) == 1
    assert await check_consistent(db) == {uids[0]: 5}


async def test_concurrent_large_puts_of_the_same_content(db: shale.Database, store: BStore) -> None:
    blob = os.urandom(700_000)
    uids = await asyncio.gather(*(store.put(db, blob, batch_bytes=200_000) for _ in range(3)))
    assert len(set(uids)) == 1
    assert await check_consistent(db) == {uids[0]: 3}


async def _race(
    db: shale.Database,
    first: Callable[[shale.Transaction], Awaitable[Any]],
    second: Callable[[shale.Transaction], Awaitable[Any]],
) -> Any:
    """Run both bodies on overlapping transactions, commit ``first``, and
    show that ``second`` conflicts; then retry ``second`` and return its result."""
    tr1, tr2 = db.transaction(), db.transaction()
    await first(tr1)
    await second(tr2)
    await tr1.commit()
    with pytest.raises(shale.ConflictError):
        await tr2.commit()
    return await db.transact(second)


async def test_delete_racing_a_put_delete_wins(db: shale.Database, store: BStore) -> None:
    old = await db.transact(store.get_or_create, b"blob")
    new = await _race(
        db, lambda tr: store.delete(tr, old), lambda tr: store.get_or_create(tr, b"blob")
    )
    assert new != old
    assert await check_consistent(db) == {new: 1}
    assert await db.transact(store.get, new) == b"blob"


async def test_delete_racing_a_put_put_wins(db: shale.Database, store: BStore) -> None:
    uid = await db.transact(store.get_or_create, b"blob")
    left = await _race(
        db, lambda tr: store.get_or_create(tr, b"blob"), lambda tr: store.delete(tr, uid)
    )
    assert left == 1
    assert await check_consistent(db) == {uid: 1}


async def test_two_deletes_of_the_last_two_references(db: shale.Database, store: BStore) -> None:
    uid = await store.put(db, b"blob")
    await store.put(db, b"blob")
    left = await _race(db, lambda tr: store.delete(tr, uid), lambda tr: store.delete(tr, uid))
    assert left == 0
    assert await check_consistent(db) == {}


async def test_finish_racing_a_delete(db: shale.Database, store: BStore) -> None:
    """A large put finishing while the only copy of its content is deleted:
    whichever commits first, the end state is one blob with one reference."""
    blob = os.urandom(450_000)
    for _ in range(2):
        first = await store.put(db, blob)
        results = await asyncio.gather(
            store.put(db, blob, batch_bytes=200_000), db.transact(store.delete, first)
        )
        refs = await check_consistent(db)
        assert refs == {results[0]: 1}
        await db.transact(store.delete, results[0])


# -- format version --------------------------------------------------------------------------


async def test_open_records_the_format_once(db: shale.Database) -> None:
    await BStore.open(db, PREFIX)
    await BStore.open(db, PREFIX)
    assert await dump(db) == [(META_KEY, tuples.pack(("bstore", 1, 0)))]


@pytest.mark.parametrize(
    ("stored", "message"),
    [(("bstore", 2, 0), "newer than this Shale"), (("eavstore", 1, 0), "holds a eavstore")],
)
async def test_open_refuses_newer_major_and_other_layers(
    db: shale.Database, stored: tuple[Any, ...], message: str
) -> None:
    await db.set(META_KEY, tuples.pack(stored))
    before = await dump(db)
    with pytest.raises(shale.FormatVersionError, match=message):
        await BStore.open(db, PREFIX)
    assert await dump(db) == before


async def test_newer_minor_opens_read_only(db: shale.Database) -> None:
    uid = await BStore(PREFIX).put(db, b"kept")
    await db.set(META_KEY, tuples.pack(("bstore", 1, 9)))
    before = await dump(db)
    store = await BStore.open(db, PREFIX)
    assert not store.writable
    assert await db.transact(store.get, uid) == b"kept"
    assert await read_all(db, store, uid) == b"kept"
    writes: list[Callable[[], Awaitable[Any]]] = [
        lambda: db.transact(store.get_or_create, b"new"),
        lambda: store.put(db, b"new"),
        lambda: db.transact(store.delete, uid),
        lambda: store.collect_garbage(db),
    ]
    for write in writes:
        with pytest.raises(shale.ReadOnlyError, match="read-only"):
            await write()
    assert await dump(db) == before


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s, db: db.transact(s.get_or_create, "text"), BlobInputError, "not str"),
        (lambda s, db: s.put(db, 42), BlobInputError, "not int"),
        (lambda s, db: s.put(db, "text"), BlobInputError, "not str"),
        (lambda s, db: s.put(db, [b"ok", 7]), BlobInputError, "not int"),
        (lambda s, db: s.put(db, b"x", batch_bytes=0), shale.UsageError, "batch_bytes"),
        (lambda s, db: db.transact(s.get, "not-a-uuid"), BlobInputError, "uuid.UUID"),
        (lambda s, db: db.transact(s.delete, 5), BlobInputError, "not int"),
        (lambda s, db: db.transact(s.stat, uuid.UUID(int=1)), BlobNotFound, "no blob"),
        (lambda s, db: anext(s.read(db, uuid.UUID(int=1))), BlobNotFound, "no blob"),
        (lambda s, db: anext(s.read(db, uuid.UUID(int=1), -1)), shale.UsageError, "non-negative"),
    ],
)
async def test_bad_input_raises_precisely_and_writes_nothing(
    db: shale.Database,
    store: BStore,
    call: Callable[[BStore, shale.Database], Awaitable[Any]],
    error: type[Exception],
    message: str,
) -> None:
    await store.put(db, b"existing")
    before = await dump(db)
    with pytest.raises(error, match=message):
        await call(store, db)
    assert await dump(db) == before


def test_error_classes() -> None:
    assert issubclass(BlobNotFound, KeyError) and issubclass(BlobNotFound, shale.ShaleError)
    assert issubclass(BlobInputError, TypeError) and issubclass(BlobInputError, shale.UsageError)
    assert issubclass(UncountedBlobError, shale.UsageError)
    assert str(BlobNotFound("no blob x")) == "no blob x"
    with pytest.raises(shale.UsageError, match="prefix"):
        BStore((object(),))
