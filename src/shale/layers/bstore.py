"""Content-addressed blob store: blobs of any size, deduplicated by their
BLAKE2b digest, reference-counted, streamed in chunks.

found's keys (``found.ext.bstore``) are kept byte for byte, and Shale adds
its own under markers found never uses. For a prefix tuple ``P``::

    pack(((*P, b"\\x00"),))              -> pack(("bstore", major, minor))   format
    pack(((*P, b"\\x01"), digest))       -> uid.bytes                        found: hash index
    pack(((*P, b"\\x02"), uid, i))       -> bytes [i*100000, (i+1)*100000)   found: chunks
    pack(((*P, b"\\x03"), uid))          -> pack((length, digest))           blob record
    pack(((*P, b"\\x04"), uid))          -> int64 little-endian              reference count
    pack(((*P, b"\\x05"), uid))          -> pack((unix_time,))               pending upload

``digest`` is ``hashlib.blake2b(blob).digest()`` (64 bytes), ``uid`` a
``uuid4``. A blob is visible once its hash entry and record exist; both are
written by one transaction, so a reader sees a blob whole or not at all.

* **Empty blobs** round-trip: the record says the length is 0 (found wrote
  no key at all for ``b""``, and its ``get`` raised).
* **Large blobs** (``put``): chunks go in over several transactions under
  a fresh uid marked pending, then one transaction writes the hash entry,
  record and count, or, if the same content appeared meanwhile, drops the
  upload and counts one more reference to the existing blob. An upload
  that is abandoned stays pending and invisible; ``collect_garbage``
  removes it.
* **References**: every ``get_or_create``/``put`` counts one reference
  (an atomic add when the blob exists, so concurrent writers of the same
  content do not conflict on the count); ``delete`` takes one away and
  removes the blob with the last. A delete and a put of the same content
  conflict on the hash entry, so one of them retries and sees the other.
* **Reads** stream chunk by chunk (``read``); given a database instead of a
  transaction they span as many transactions as the size needs. Blobs are
  immutable and uids never reused, so chunks read in different
  transactions belong to the same blob; a blob deleted during such a read
  raises ``BlobNotFound``.
* Blobs written by found itself have chunks and a hash entry but no
  record: they read as usual; they have no count, so they cannot be
  deleted (``UncountedBlobError``).

Errors::

    ShaleError
     ├── BlobNotFound (also KeyError)     no blob with that uid (or it was deleted during a read)
     ├── UploadAbandoned                  a pending upload was garbage-collected before it completed
     └── UsageError
          ├── BlobInputError (TypeError)  a blob that is not bytes, an iterable of non-bytes,
          │                               a uid that is not a UUID
          └── UncountedBlobError          delete of a blob found wrote, which has no count
    TransactionTooLarge (LimitError)      get_or_create of a blob too large for one transaction

Everything is checked before the first write.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import SnapshotReads, Transaction
from shale.errors import ShaleError, TransactionTooLarge, UsageError
from shale.layers.format import FormattedLayer, LayerFormat
from shale.subspace import Subspace

__all__ = [
    "CHUNK_SIZE",
    "FORMAT",
    "MAX_SINGLE_TRANSACTION_BLOB",
    "BStore",
    "BlobData",
    "BlobInfo",
    "BlobInputError",
    "BlobNotFound",
    "Reader",
    "UncountedBlobError",
    "UploadAbandoned",
]

FORMAT: Final = LayerFormat("bstore", 1, 0)

META: Final = b"\x00"
HASH: Final = b"\x01"
CHUNK: Final = b"\x02"
RECORD: Final = b"\x03"
REFS: Final = b"\x04"
PENDING: Final = b"\x05"

CHUNK_SIZE: Final = 100_000
"""found's chunk size, the core's value limit."""
MAX_SINGLE_TRANSACTION_BLOB: Final = 9_000_000
"""The largest blob ``get_or_create`` writes in one transaction: the 10 MB
transaction limit less room for keys and whatever else the transaction
writes. Larger blobs go through ``put``."""
DEFAULT_BATCH_BYTES: Final = 4_000_000
"""Chunk bytes per transaction in ``put`` and ``read``: far from the 10 MB
limit and quick enough to stay far from the 5 s one."""

_ONE: Final = (1).to_bytes(8, "little", signed=True)
_MINUS_ONE: Final = (-1).to_bytes(8, "little", signed=True)

Reader: TypeAlias = Transaction | SnapshotReads
"""A transaction, or ``tr.snapshot`` to read without read conflicts."""
BlobData: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes] | Iterable[bytes]
"""What ``put`` stores: bytes, or an (async) iterable of byte pieces of any sizes."""


class BlobNotFound(ShaleError, KeyError):
    """No blob has this uid (never stored, deleted, or deleted while being read)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UploadAbandoned(ShaleError):
    """A pending upload was removed by ``collect_garbage`` before it completed;
    nothing of it remains. Run the ``put`` again."""


class BlobInputError(UsageError, TypeError):
    """A blob that is not bytes-like, an iterable yielding something else,
    or a uid that is not a ``uuid.UUID``."""


class UncountedBlobError(UsageError):
    """The blob was written by found, which kept no reference count, so
    deleting it could break whoever still holds its uid."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What ``stat`` knows of a blob without reading it."""

    uid: uuid.UUID
    length: int
    digest: bytes
    references: int
    """References counted by Shale; 0 for a blob written by found."""


def _check_uid(uid: object) -> uuid.UUID:
    if not isinstance(uid, uuid.UUID):
        raise BlobInputError(f"a blob uid is a uuid.UUID, not {type(uid).__name__}")
    return uid


def _check_bytes(blob: object) -> bytes:
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    raise BlobInputError(f"a blob is bytes-like, not {type(blob).__name__}")


class BStore(FormattedLayer):
    """Blobs under the prefix tuple ``prefix`` (inside ``subspace``, the
    empty one by default, which gives found's exact keys).

    ``BStore(prefix)`` makes a handle without touching the database;
    ``await BStore.open(db, prefix)`` also checks (or records) the format
    version, and returns a read-only handle for a newer minor version.
    """

    __slots__ = (
        "_chunks",
        "_hash",
        "_pending",
        "_record",
        "_refs",
        "prefix",
        "subspace",
    )
    FORMAT = FORMAT

    def __init__(self, prefix: Sequence[Any] = (), *, subspace: Subspace | None = None) -> None:
        self.prefix = tuple(prefix)
        self.subspace = subspace if subspace is not None else Subspace()
        try:
            self._meta_key = self.subspace.pack(((*self.prefix, META),))
            sub = self.subspace.subspace
            self._hash = sub(((*self.prefix, HASH),))
            self._chunks = sub(((*self.prefix, CHUNK),))
            self._record = sub(((*self.prefix, RECORD),))
            self._refs = sub(((*self.prefix, REFS),))
            self._pending = sub(((*self.prefix, PENDING),))
        except tuples.TupleError as exc:
            raise UsageError(f"the prefix {self.prefix!r} cannot be packed: {exc}") from exc

    def __repr__(self) -> str:
        mode = "" if self.writable else ", read-only"
        return f"BStore({self.prefix!r}, subspace={self.subspace!r}{mode})"

    @classmethod
    async def open(
        cls,
        db_or_tr: Database | Transaction,
        prefix: Sequence[Any] = (),
        *,
        subspace: Subspace | None = None,
    ) -> BStore:
        """A handle whose format version was checked (recorded on first use).

        Raises:
            FormatVersionError: the prefix holds a newer major version of
                this layer, another layer, or unreadable metadata.
        """
        store = cls(prefix, subspace=subspace)
        await store._check_format(db_or_tr)
        return store

    def _chunk_range(self, uid: uuid.UUID) -> tuple[bytes, bytes]:
        return self._chunks.range((uid,))

    # -- writing in one transaction ---------------------------------------------

    async def get_or_create(
        self, tr: Transaction, blob: bytes | bytearray | memoryview
    ) -> uuid.UUID:
        """The uid of ``blob``, storing it unless the same bytes are stored
        already; either way one more reference is counted.

        Raises:
            BlobInputError: ``blob`` is not bytes-like; nothing is written.
            TransactionTooLarge: ``blob`` is over ``MAX_SINGLE_TRANSACTION_BLOB``
                bytes; use ``put``. Nothing is written.
            ReadOnlyError: the store was opened read-only.
        """
        self._require_writable()
        data = _check_bytes(blob)
        if len(data) > MAX_SINGLE_TRANSACTION_BLOB:
            raise TransactionTooLarge(
                f"a blob of {len(data)} bytes does not fit in one transaction "
                f"(at most {MAX_SINGLE_TRANSACTION_BLOB}); use BStore.put(db, ...)"
            )
        digest = hashlib.blake2b(data).digest()
        hash_key = self._hash.pack((digest,))
        # A real read: two creators of the same bytes conflict here, and the
        # retry finds the other's blob. A delete of it conflicts here too.
        existing = await tr.get(hash_key)
        if existing is not None:
            uid = uuid.UUID(bytes=existing)
            tr.add(self._refs.pack((uid,)), _ONE)
            return uid
        uid = uuid.uuid4()
        view = memoryview(data)
        for i in range(0, len(data), CHUNK_SIZE):
            tr.set(self._chunks.pack((uid, i // CHUNK_SIZE)), bytes(view[i : i + CHUNK_SIZE]))
        self._publish(tr, uid, len(data), digest)
        return uid

    def _publish(self, tr: Transaction, uid: uuid.UUID, length: int, digest: bytes) -> None:
        tr.set(self._hash.pack((digest,)), uid.bytes)
        tr.set(self._record.pack((uid,)), tuples.pack((length, digest)))
        tr.set(self._refs.pack((uid,)), _ONE)

    async def delete(self, tr: Transaction, uid: uuid.UUID) -> int:
        """Take one reference away; with the last, remove the blob (chunks,
        record, count and hash entry). Returns the references left.

        Raises:
            BlobNotFound: no such blob.
            UncountedBlobError: the blob was written by found (no count).
            BlobInputError: ``uid`` is not a UUID.
            ReadOnlyError: the store was opened read-only.
        """
        self._require_writable()
        _check_uid(uid)
        record = await tr.get(self._record.pack((uid,)))
        if record is None:
            if await self._legacy(tr, uid):
                raise UncountedBlobError(
                    f"blob {uid} was written by found and has no reference count"
                )
            raise BlobNotFound(f"no blob {uid}")
        refs_key = self._refs.pack((uid,))
        # A real read, so that two deletes (or a delete and an increment)
        # of the same blob serialize: whoever takes the count to 0 knows it.
        raw = await tr.get(refs_key)
        count = 1 if raw is None else int.from_bytes(raw, "little", signed=True)
        if count > 1:
            tr.add(refs_key, _MINUS_ONE)
            return count - 1
        _, digest = tuples.unpack(record)
        hash_key = self._hash.pack((digest,))
        if await tr.get(hash_key) == uid.bytes:
            tr.clear(hash_key)
        tr.clear(self._record.pack((uid,)))
        tr.clear(refs_key)
        tr.clear_range(*self._chunk_range(uid))
        return 0

    async def _legacy(self, tr: Reader, uid: uuid.UUID) -> bool:
        """Whether ``uid`` has chunks without a record and is not an
        upload in progress: a blob written by found."""
        if await tr.get(self._pending.pack((uid,))) is not None:
            return False
        return bool(await tr.get_range(*self._chunk_range(uid), limit=1))

    # -- reading -------------------------------------------------------------------

    async def stat(self, tr: Reader, uid: uuid.UUID) -> BlobInfo:
        """Length, digest and reference count of blob ``uid``.

        Raises:
            BlobNotFound: no such blob.
        """
        _check_uid(uid)
        record = await tr.get(self._record.pack((uid,)))
        raw = await tr.get(self._refs.pack((uid,)))
        refs = 0 if raw is None else int.from_bytes(raw, "little", signed=True)
        if record is not None:
            length, digest = tuples.unpack(record)
            return BlobInfo(uid, length, digest, refs)
        data = await self.get(tr, uid)  # found wrote it: only the bytes tell
        return BlobInfo(uid, len(data), hashlib.blake2b(data).digest(), refs)

    async def get(self, tr: Reader, uid: uuid.UUID) -> bytes:
        """The whole blob, read in this transaction (so at most what one
        transaction can read in 5 s; use ``read`` for large blobs).

        Raises:
            BlobNotFound: no such blob.
        """
        _check_uid(uid)
        record = await tr.get(self._record.pack((uid,)))
        if record is None and await tr.get(self._pending.pack((uid,))) is not None:
            raise BlobNotFound(f"no blob {uid} (an upload under that uid is in progress)")
        data = b"".join([value async for _, value in tr.get_range(*self._chunk_range(uid))])
        if record is None and not data:
            raise BlobNotFound(f"no blob {uid}")
        return data

    async def read(
        self,
        db_or_tr: Database | Reader,
        uid: uuid.UUID,
        start: int = 0,
        stop: int | None = None,
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, stop)`` of the blob (all by default), as pieces of
        at most ``CHUNK_SIZE`` bytes: an async generator.

        Given a transaction (or ``tr.snapshot``) it reads in that one;
        given a database it reads about ``batch_bytes`` per transaction, so
        any size can be read.

        Raises:
            BlobNotFound: no such blob, or it was deleted during the read.
            UsageError: a negative ``start`` or ``stop``.
        """
        _check_uid(uid)
        if start < 0 or (stop is not None and stop < 0):
            raise UsageError(f"read offsets are non-negative, not start={start}, stop={stop}")
        if isinstance(db_or_tr, Database):
            info = await db_or_tr.transact(self.stat, uid)
        else:
            info = await self.stat(db_or_tr, uid)
        stop = info.length if stop is None else min(stop, info.length)
        if start >= stop:
            return
        first, last = start // CHUNK_SIZE, (stop - 1) // CHUNK_SIZE
        per_batch = max(1, batch_bytes // CHUNK_SIZE)
        for low in range(first, last + 1, per_batch):
            high = min(low + per_batch, last + 1)
            if isinstance(db_or_tr, Database):
                values = await db_or_tr.transact(self._read_chunks, uid, low, high)
            else:
                values = await self._read_chunks(db_or_tr, uid, low, high)
            for index, value in enumerate(values, start=low):
                begin = start - index * CHUNK_SIZE if index == first else 0
                end = stop - index * CHUNK_SIZE if index == last else len(value)
                yield value[begin:end] if begin or end < len(value) else value

    async def _read_chunks(self, tr: Reader, uid: uuid.UUID, low: int, high: int) -> list[bytes]:
        begin, end = self._chunks.pack((uid, low)), self._chunks.pack((uid, high))
        values = [value for _, value in await tr.get_range(begin, end)]
        if len(values) != high - low:
            raise BlobNotFound(f"blob {uid} was deleted while being read")
        return values

    # -- writing over several transactions --------------------------------------

    async def put(
        self, db: Database, data: BlobData, *, batch_bytes: int = DEFAULT_BATCH_BYTES
    ) -> uuid.UUID:
        """Store ``data`` of any size and return its uid (an existing one if
        the same bytes are stored); counts one reference.

        A blob shorter than ``batch_bytes`` goes in one transaction. A larger
        one is uploaded in transactions of about ``batch_bytes`` each and
        becomes visible at once when complete; if this call fails, its
        upload is removed, and if the process dies, ``collect_garbage``
        removes it.

        Raises:
            BlobInputError: ``data`` is not bytes-like or an iterable of
                bytes-like pieces; nothing is left written.
            UploadAbandoned: ``collect_garbage`` removed the upload first.
            UsageError: ``batch_bytes`` is not in 1..9,000,000.
            ReadOnlyError: the store was opened read-only.
        """
        self._require_writable()
        if not 0 < batch_bytes <= MAX_SINGLE_TRANSACTION_BLOB:
            raise UsageError(f"batch_bytes must be in 1..{MAX_SINGLE_TRANSACTION_BLOB}")
        per_batch = max(1, batch_bytes // CHUNK_SIZE)
        chunks = aiter(_chunked(data))
        batch = await _take(chunks, per_batch)
        if len(batch) < per_batch:
            return await db.transact(self.get_or_create, b"".join(batch))
        upload = uuid.uuid4()
        hasher, length, index = hashlib.blake2b(), 0, 0
        try:
            while batch:
                for chunk in batch:
                    hasher.update(chunk)
                    length += len(chunk)
                # Each batch only sets keys, so running it twice is harmless.
                await db.run(self._upload, upload, index, batch, idempotent=True)
                index += len(batch)
                batch = await _take(chunks, per_batch)
            return await db.transact(self._finish, upload, length, hasher.digest())
        except BaseException:
            # Safe even if _finish committed despite the error: it removed
            # the pending mark, and _abort only acts while the mark exists.
            # Best effort: what it cannot remove, collect_garbage will.
            with contextlib.suppress(ShaleError):
                await db.transact(self._abort, upload)
            raise

    async def _upload(
        self, tr: Transaction, upload: uuid.UUID, index: int, batch: list[bytes]
    ) -> None:
        mark = self._pending.pack((upload,))
        if index and await tr.get(mark) is None:
            raise UploadAbandoned(f"upload {upload} was garbage-collected before it completed")
        # Refreshing the time keeps collect_garbage away while we progress;
        # it also makes a collector that read the old time conflict.
        tr.set(mark, tuples.pack((time.time(),)))
        for offset, chunk in enumerate(batch):
            tr.set(self._chunks.pack((upload, index + offset)), chunk)

    async def _finish(
        self, tr: Transaction, upload: uuid.UUID, length: int, digest: bytes
    ) -> uuid.UUID:
        mark = self._pending.pack((upload,))
        if await tr.get(mark) is None:
            raise UploadAbandoned(f"upload {upload} was garbage-collected before it completed")
        tr.clear(mark)
        existing = await tr.get(self._hash.pack((digest,)))
        if existing is not None:
            uid = uuid.UUID(bytes=existing)
            tr.add(self._refs.pack((uid,)), _ONE)
            tr.clear_range(*self._chunk_range(upload))
            return uid
        self._publish(tr, upload, length, digest)
        return upload

    async def _abort(self, tr: Transaction, upload: uuid.UUID) -> None:
        mark = self._pending.pack((upload,))
        if await tr.get(mark) is not None:
            tr.clear(mark)
            tr.clear_range(*self._chunk_range(upload))

    async def collect_garbage(self, db: Database, older_than: float = 3600.0) -> int:
        """Remove the uploads pending for more than ``older_than`` seconds
        (since their last progress) and return how many.

        An upload that resumes after being collected fails with
        ``UploadAbandoned``, so ``older_than`` must exceed the longest pause
        a live ``put`` may take between two batches (clocks of the writing
        machines included).
        """
        self._require_writable()
        cutoff = time.time() - older_than
        removed = 0
        first, end = self._pending.range()
        begin: bytes | None = first
        while begin is not None:
            count, last = await db.transact(self._collect_page, begin, end, cutoff)
            removed += count
            begin = None if last is None else last + b"\x00"
        return removed

    async def _collect_page(
        self, tr: Transaction, begin: bytes, end: bytes, cutoff: float
    ) -> tuple[int, bytes | None]:
        page = await tr.get_range(begin, end, limit=100)
        count = 0
        for key, value in page:
            (started,) = tuples.unpack(value)
            if started < cutoff:
                (upload,) = self._pending.unpack(key)
                tr.clear(key)
                tr.clear_range(*self._chunk_range(upload))
                count += 1
        return count, (page[-1][0] if len(page) == 100 else None)


async def _take(chunks: AsyncIterator[bytes], n: int) -> list[bytes]:
    out: list[bytes] = []
    async for chunk in chunks:
        out.append(chunk)
        if len(out) == n:
            break
    return out


async def _pieces(data: object) -> AsyncIterator[Any]:
    if isinstance(data, AsyncIterable):
        async for piece in data:
            yield piece
    elif isinstance(data, Iterable) and not isinstance(data, str):
        for piece in data:
            yield piece
    else:
        raise BlobInputError(
            f"a blob is bytes-like or an (async) iterable of bytes, not {type(data).__name__}"
        )


async def _chunked(data: BlobData) -> AsyncIterator[bytes]:
    """``data`` cut into ``CHUNK_SIZE`` pieces, the last one shorter."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        for i in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[i : i + CHUNK_SIZE])
        return
    buffer = bytearray()
    async for piece in _pieces(data):
        if not isinstance(piece, (bytes, bytearray, memoryview)):
            raise BlobInputError(f"a blob's pieces are bytes-like, not {type(piece).__name__}")
        view = memoryview(piece).cast("B")
        if buffer:
            take = CHUNK_SIZE - len(buffer)
            buffer += view[:take]
            view = view[take:]
            if len(buffer) < CHUNK_SIZE:
                continue
            yield bytes(buffer)
            buffer.clear()
        while len(view) >= CHUNK_SIZE:
            yield bytes(view[:CHUNK_SIZE])
            view = view[CHUNK_SIZE:]
        buffer += view
    if buffer:
        yield bytes(buffer)
