"""Entity/attribute/value store: dicts kept as one key per attribute, with
an index from ``(attribute, value)`` to the entities that have it.

The layout is found's (``found.ext.eavstore``) byte for byte, so a store
written by either is read by the other. For a prefix tuple ``P``::

    pack(((*P, b"\\x00"),))                 -> pack(("eavstore", major, minor))
    pack(((*P, b"\\x01"), uid, attr))        -> pack((value,))
    pack(((*P, b"\\x02"), attr, value, uid)) -> b""

The first key is Shale's format record; found never writes under the
``b"\\x00"`` marker. The data keys of one entity are contiguous, so
``get`` is one range read; the index keys of one ``(attr, value)`` are
contiguous and sorted by uid, so ``query`` is one range read.

Fixed relative to found: ``remove`` and ``update`` delete the entity's
index keys (found cleared a key that never exists, so ``query`` went on
returning removed entities), and every scan covers exactly one tuple
(``Subspace.range``), so ``get("a")`` does not see entity ``"a\\x00b"``
and ``query("k", "v")`` does not see the value ``"v\\x00w"``.

Errors::

    UsageError (shale.errors)
     └── EAVStoreError              misuse of an EAV store
          ├── NotAMappingError      create/update/patch got something that is not a Mapping
          │                         (also a TypeError)
          ├── UnpackableError       an attribute, value, uid or prefix the tuple encoding
          │                         cannot pack (also a ValueError)
          └── EntityExistsError     create with an explicit uid that is already in use

A key or value beyond the core's limits raises ``KeyTooLarge`` /
``ValueTooLarge`` naming the attribute; like every error here it is raised
before anything is written.
"""

from __future__ import annotations

import asyncio
import bisect
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, TypeAlias

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import SnapshotReads, Transaction
from shale.errors import KeyTooLarge, UsageError, ValueTooLarge
from shale.layers.format import FormattedLayer, LayerFormat
from shale.subspace import Subspace

__all__ = [
    "FORMAT",
    "EAVStore",
    "EAVStoreError",
    "EntityExistsError",
    "NotAMappingError",
    "Reader",
    "UnpackableError",
]

FORMAT: Final = LayerFormat("eavstore", 1, 0)

META: Final = b"\x00"
DATA: Final = b"\x01"
INDEX: Final = b"\x02"

# The core's documented limits. Checked here too so that a too-large
# attribute is reported by name and before the first write, instead of by
# the core in the middle of an entity (which would poison the transaction).
MAX_KEY_SIZE: Final = 10_000
MAX_VALUE_SIZE: Final = 100_000

Reader: TypeAlias = Transaction | SnapshotReads
"""What the read methods accept: a transaction, or ``tr.snapshot`` to read
without adding read conflicts."""


class EAVStoreError(UsageError):
    """An EAV store was used in a way that can never succeed."""


class NotAMappingError(EAVStoreError, TypeError):
    """An entity must be a ``Mapping`` of attribute to value."""


class UnpackableError(EAVStoreError, ValueError):
    """The tuple encoding cannot pack an attribute, value, uid or prefix.

    ``attribute`` names the attribute concerned (``None`` for a uid or prefix).
    """

    def __init__(self, message: str, attribute: Any = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class EntityExistsError(EAVStoreError):
    """``create`` was given a uid that already has attributes."""


def _pack_one(item: Any, what: str, attribute: Any = None) -> bytes:
    try:
        return tuples.pack((item,))
    except tuples.TupleError as exc:
        raise UnpackableError(f"{what} cannot be packed: {exc}", attribute) from exc


class _Row:
    """One attribute of one entity, packed once into the pieces of both keys."""

    __slots__ = ("attr", "data_key", "index_key", "value")

    def __init__(self, data_key: bytes, value: bytes, index_key: bytes, attr: bytes) -> None:
        self.data_key = data_key
        self.value = value
        self.index_key = index_key
        self.attr = attr


class EAVStore(FormattedLayer):
    """Dicts stored under the prefix tuple ``prefix`` (inside ``subspace``,
    the empty one by default, which gives found's exact keys).

    ``EAVStore(prefix)`` makes a handle without touching the database;
    ``await EAVStore.open(db, prefix)`` also checks (or records) the format
    version, and returns a read-only handle for a newer minor version.

    Attribute names, values and uids are anything the tuple encoding packs.
    Values come back as ``unpack`` gives them: a list comes back as a tuple.
    An entity with no attributes is not stored: ``get`` returns ``{}``.
    """

    __slots__ = ("_data", "_index", "prefix", "subspace")
    FORMAT = FORMAT

    def __init__(self, prefix: Sequence[Any] = (), *, subspace: Subspace | None = None) -> None:
        self.prefix = tuple(prefix)
        self.subspace = subspace if subspace is not None else Subspace()
        try:
            self._meta_key = self.subspace.pack(((*self.prefix, META),))
            self._data = self.subspace.subspace(((*self.prefix, DATA),))
            self._index = self.subspace.subspace(((*self.prefix, INDEX),))
        except tuples.TupleError as exc:
            raise UnpackableError(f"the prefix {self.prefix!r} cannot be packed: {exc}") from exc

    def __repr__(self) -> str:
        mode = "" if self.writable else ", read-only"
        return f"EAVStore({self.prefix!r}, subspace={self.subspace!r}{mode})"

    @classmethod
    async def open(
        cls,
        db_or_tr: Database | Transaction,
        prefix: Sequence[Any] = (),
        *,
        subspace: Subspace | None = None,
    ) -> EAVStore:
        """A handle whose format version was checked (recorded on first use).

        Raises:
            FormatVersionError: the prefix holds a newer major version of
                this layer, another layer, or unreadable metadata.
        """
        store = cls(prefix, subspace=subspace)
        await store._check_format(db_or_tr)
        return store

    # -- encoding ------------------------------------------------------------

    def _rows(self, uid: Any, mapping: object) -> list[_Row]:
        """Every key of ``mapping`` as entity ``uid``, checked before any write."""
        if not isinstance(mapping, Mapping):
            raise NotAMappingError(
                f"an entity is a Mapping of attribute to value, not {type(mapping).__name__}"
            )
        packed_uid = _pack_one(uid, f"the uid {uid!r}")
        data_base = self._data.key() + packed_uid
        index_base = self._index.key()
        rows = []
        for attr, value in mapping.items():
            packed_attr = _pack_one(attr, f"the attribute {attr!r}", attr)
            packed_value = _pack_one(value, f"the value of attribute {attr!r}", attr)
            row = _Row(
                data_base + packed_attr,
                packed_value,
                index_base + packed_attr + packed_value + packed_uid,
                packed_attr,
            )
            _check_sizes(attr, row)
            rows.append(row)
        return rows

    def _index_key(self, packed_attr: bytes, packed_value: bytes, packed_uid: bytes) -> bytes:
        return self._index.key() + packed_attr + packed_value + packed_uid

    async def _stored(self, tr: Transaction, packed_uid: bytes) -> dict[bytes, bytes]:
        """The entity's packed attributes and packed values, as stored."""
        base = self._data.key() + packed_uid
        begin, end = base + b"\x00", base + b"\xff"
        return {key[len(base) :]: value async for key, value in tr.get_range(begin, end)}

    # -- writes ----------------------------------------------------------------

    async def create(self, tr: Transaction, mapping: Mapping[Any, Any], uid: Any = None) -> Any:
        """Store ``mapping`` as a new entity and return its uid (a fresh
        ``uuid4`` unless ``uid`` is given).

        Raises:
            EntityExistsError: ``uid`` was given and already has attributes.
            NotAMappingError, UnpackableError, KeyTooLarge, ValueTooLarge:
                bad input; nothing is written.
            ReadOnlyError: the store was opened read-only.
        """
        self._require_writable()
        fresh = uid is None
        if fresh:
            uid = uuid.uuid4()
        rows = self._rows(uid, mapping)
        if not fresh:
            base = self._data.pack((uid,))
            if await tr.get_range(base + b"\x00", base + b"\xff", limit=1):
                raise EntityExistsError(f"entity {uid!r} already exists; use update or patch")
        for row in rows:
            tr.set(row.data_key, row.value)
            tr.set(row.index_key, b"")
        return uid

    async def remove(self, tr: Transaction, uid: Any) -> bool:
        """Delete entity ``uid`` with its index entries; whether it existed."""
        self._require_writable()
        packed_uid = _pack_one(uid, f"the uid {uid!r}")
        stored = await self._stored(tr, packed_uid)
        for attr, value in stored.items():
            tr.clear(self._index_key(attr, value, packed_uid))
        base = self._data.key() + packed_uid
        tr.clear_range(base + b"\x00", base + b"\xff")
        return bool(stored)

    async def update(self, tr: Transaction, uid: Any, mapping: Mapping[Any, Any]) -> None:
        """Replace entity ``uid`` by ``mapping`` (creating it if absent).

        Only the attributes that change are written: an attribute whose
        packed value is the same keeps its keys.

        Raises:
            NotAMappingError, UnpackableError, KeyTooLarge, ValueTooLarge:
                bad input; nothing is written.
            ReadOnlyError: the store was opened read-only.
        """
        await self._write(tr, uid, mapping, replace=True)

    async def patch(
        self,
        tr: Transaction,
        uid: Any,
        changes: Mapping[Any, Any],
        *,
        drop: Sequence[Any] = (),
    ) -> None:
        """Set the attributes in ``changes`` and delete those in ``drop``,
        leaving the others of entity ``uid`` as they are.

        Raises: as ``update``.
        """
        await self._write(tr, uid, changes, replace=False, drop=drop)

    async def _write(
        self,
        tr: Transaction,
        uid: Any,
        mapping: Mapping[Any, Any],
        *,
        replace: bool,
        drop: Sequence[Any] = (),
    ) -> None:
        self._require_writable()
        rows = self._rows(uid, mapping)
        packed_uid = _pack_one(uid, f"the uid {uid!r}")
        if isinstance(drop, (str, bytes)):
            raise EAVStoreError(f"drop is a sequence of attributes, not the {drop!r} itself")
        dropped = [_pack_one(attr, f"the attribute {attr!r}", attr) for attr in drop]
        setting = {row.attr for row in rows}
        both = [attr for attr, packed in zip(drop, dropped, strict=True) if packed in setting]
        if both:
            raise EAVStoreError(f"attributes both set and dropped: {both!r}")
        if replace:
            stored = await self._stored(tr, packed_uid)
        else:
            stored = await self._some(tr, packed_uid, [row.attr for row in rows] + dropped)
        for attr, value in stored.items():
            if attr not in setting:
                tr.clear(self._data.key() + packed_uid + attr)
                tr.clear(self._index_key(attr, value, packed_uid))
        for row in rows:
            old = stored.get(row.attr)
            if old == row.value:
                continue
            if old is not None:
                tr.clear(self._index_key(row.attr, old, packed_uid))
            tr.set(row.data_key, row.value)
            tr.set(row.index_key, b"")

    async def _some(
        self, tr: Transaction, packed_uid: bytes, attrs: list[bytes]
    ) -> dict[bytes, bytes]:
        base = self._data.key() + packed_uid
        values = await asyncio.gather(*(tr.get(base + attr) for attr in attrs))
        return {attr: value for attr, value in zip(attrs, values, strict=True) if value is not None}

    # -- reads -------------------------------------------------------------------

    async def get(self, tr: Reader, uid: Any) -> dict[Any, Any]:
        """Entity ``uid`` as a dict; ``{}`` if it has no attributes."""
        base = self._data.key() + _pack_one(uid, f"the uid {uid!r}")
        out = {}
        async for key, value in tr.get_range(base + b"\x00", base + b"\xff"):
            (attr,) = tuples.unpack(key, prefix_len=len(base))
            (out[attr],) = tuples.unpack(value)
        return out

    async def query(
        self, tr: Reader, attr: Any, value: Any, *, limit: int = 0
    ) -> AsyncIterator[Any]:
        """The uids of the entities whose ``attr`` is ``value``, in uid
        order (packed order: UUIDs sort as ``uuid.UUID`` does), at most
        ``limit`` (0: all). An async generator; it streams.

        Raises:
            UnpackableError: ``attr`` or ``value`` cannot be packed.
        """
        base = self._query_base(attr, value)
        async for key, _ in tr.get_range(base + b"\x00", base + b"\xff", limit=limit):
            yield tuples.unpack(key, prefix_len=len(base))[0]

    async def query_many(self, tr: Reader, criteria: Mapping[Any, Any]) -> AsyncIterator[Any]:
        """The uids of the entities that match every ``attr: value`` of
        ``criteria``, in uid order: a leapfrog join of the index ranges, so
        it reads no entity, streams, and costs about what the smallest
        range costs.

        Raises:
            EAVStoreError: ``criteria`` is empty.
            NotAMappingError, UnpackableError: bad criteria.
        """
        if not isinstance(criteria, Mapping):
            raise NotAMappingError(f"criteria are a Mapping, not {type(criteria).__name__}")
        if not criteria:
            raise EAVStoreError("query_many needs at least one attribute to match")
        bases = [self._query_base(attr, value) for attr, value in criteria.items()]
        async for packed_uid in _intersect([_Cursor(tr, base) for base in bases]):
            yield tuples.unpack(packed_uid)[0]

    def _query_base(self, attr: Any, value: Any) -> bytes:
        packed_attr = _pack_one(attr, f"the attribute {attr!r}", attr)
        packed_value = _pack_one(value, f"the value {value!r}", attr)
        return self._index.key() + packed_attr + packed_value


def _check_sizes(attr: Any, row: _Row) -> None:
    if len(row.value) > MAX_VALUE_SIZE:
        raise ValueTooLarge(
            f"the value of attribute {attr!r} packs to {len(row.value)} bytes, over the "
            f"{MAX_VALUE_SIZE}-byte limit; keep large values in a bstore"
        )
    for key in (row.data_key, row.index_key):
        if len(key) > MAX_KEY_SIZE:
            # The index key holds the value, so in practice this limit
            # (not the value limit) bounds a value to about 10 kB.
            raise KeyTooLarge(
                f"attribute {attr!r} makes a key of {len(key)} bytes, over the "
                f"{MAX_KEY_SIZE}-byte limit (the index key holds the value too); "
                "keep large values in a bstore"
            )


class _Cursor:
    """The packed uids of one index range, read a page at a time, with
    ``seek``: a cursor far behind the others jumps instead of scanning, so
    intersecting a small set with a large one costs about the small one.

    Pages start small after a jump (the next jump is likely to land past
    them) and double while the cursor is read in sequence.
    """

    __slots__ = ("_base", "_end", "_last_page", "_page", "_pos", "_size", "_tr")

    SEEK_PAGE: Final = 8
    MAX_PAGE: Final = 1024

    def __init__(self, tr: Reader, base: bytes) -> None:
        self._tr = tr
        self._base = base
        self._end = base + b"\xff"
        self._page: list[bytes] = []
        self._pos = 0
        self._size = self.SEEK_PAGE
        self._last_page = False

    async def _fetch(self, begin: bytes, size: int) -> bytes | None:
        rows = await self._tr.get_range(begin, self._end, limit=size)
        cut = len(self._base)
        self._page = [key[cut:] for key, _ in rows]
        self._pos = 0
        self._size = size
        self._last_page = len(rows) < size
        return self._page[0] if self._page else None

    async def first(self) -> bytes | None:
        return await self._fetch(self._base + b"\x00", self.SEEK_PAGE)

    async def next(self) -> bytes | None:
        self._pos += 1
        if self._pos < len(self._page):
            return self._page[self._pos]
        if self._last_page:
            return None
        after = self._base + self._page[-1] + b"\x00"
        return await self._fetch(after, min(2 * self._size, self.MAX_PAGE))

    async def seek(self, target: bytes) -> bytes | None:
        """The first uid at or after ``target``."""
        if self._page and target <= self._page[-1]:
            self._pos = bisect.bisect_left(self._page, target, self._pos)
            return self._page[self._pos]
        if self._last_page:
            return None
        return await self._fetch(self._base + target, self.SEEK_PAGE)


async def _intersect(cursors: list[_Cursor]) -> AsyncIterator[bytes]:
    """The uids present in every cursor (a leapfrog join)."""
    heads: list[bytes] = []
    for cursor in cursors:
        first = await cursor.first()
        if first is None:
            return
        heads.append(first)
    while True:
        high = max(heads)
        matched = True
        for i, cursor in enumerate(cursors):
            if heads[i] < high:
                head = await cursor.seek(high)
                if head is None:
                    return
                heads[i] = head
            matched = matched and heads[i] == high
        if matched:
            yield high
            following = await cursors[0].next()
            if following is None:
                return
            heads[0] = following
