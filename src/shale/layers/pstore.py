"""pstore: an inverted index with AND keyword search, ranked by BM25 or raw counts.

A document is an identifier (anything the tuple layer packs) and a counter,
a mapping from token to how often it occurs. ``search`` returns the
documents that contain *every* keyword, best first, with ties broken by
the packed identifier, so the same data always gives the same answer.

Layout, for a prefix tuple ``P`` (``docs/pstore.md`` has the bytes)::

    pack((*P, b"\\x01", 0, token, uid))        -> b""     token -> uid  (found's nstore n=2)
    pack((*P, b"\\x01", 1, uid, token))        -> b""     uid -> token
    pack(((*P, b"\\x02"), uid, docuid))        -> pack((count, doc_length))   posting
    pack(((*P, b"\\x03"), docuid))             -> pack(((uid, count), ...))    the document
    pack(((*P, b"\\x03"), docuid, i))          -> continuation i >= 1 of a document over 100 kB
    pack(((*P, b"\\x04"), "documents"))        -> int64 LE   how many documents
    pack(((*P, b"\\x04"), "length"))           -> int64 LE   sum of document lengths
    pack(((*P, b"\\x04"), "df", uid))          -> int64 LE   documents holding the token
    pack(((*P, b"\\x00"),))                    -> format metadata

The markers ``b"\\x01"``-``b"\\x03"`` are found's (asyncio-foundationdb);
``b"\\x00"`` and ``b"\\x04"`` are never written by found. A token's uid is a
hash of the token (``token_uid``), so indexing never has to read the
dictionary, and statistics change by atomic adds, so concurrent indexers
of different documents never conflict.

Errors::

    UsageError (shale.errors)
     └── PStoreInputError (also ValueError)   bad input; nothing was written
          ├── InvalidDocument                  docuid, counter or text
          └── InvalidQuery                     keywords, limit, ranking parameters
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import math
import random
import re
import unicodedata
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import FormatVersionError, UsageError
from shale.layers.format import LayerFormat, check_format, refuse_if_read_only
from shale.subspace import Subspace

__all__ = [
    "FORMAT",
    "K1",
    "B",
    "Hit",
    "InvalidDocument",
    "InvalidQuery",
    "PStore",
    "PStoreInputError",
    "PStoreStats",
    "Ranking",
    "token_uid",
    "tokenize",
]

FORMAT: Final = LayerFormat("pstore", 1, 0)
K1: Final = 1.2
"""BM25 term-frequency saturation: Lucene's, Elasticsearch's and FTS5's default."""
B: Final = 0.75
"""BM25 length normalisation: 0 ignores document length, 1 normalises fully."""

Ranking = Literal["bm25", "count"]

# The core's documented limits; checked here so bad input fails before any write.
_MAX_KEY: Final = 10_000
_MAX_VALUE: Final = 100_000
# Room kept for a continuation chunk's index after the docuid (int up to 2**64).
_CHUNK_INDEX_ROOM: Final = 10
_STREAM_RATIO: Final = 8
"""A posting read in a page costs about a tenth of a point read (measured on
SQLite), so a term's postings are paged through when it has at most eight
per remaining candidate, and probed one candidate at a time otherwise."""
_PAGE: Final = 4096
_WORD: Final = re.compile(r"\w+")


class PStoreInputError(UsageError, ValueError):
    """A bad argument to a pstore operation; the transaction is untouched."""


class InvalidDocument(PStoreInputError):
    """A docuid the tuple layer cannot pack, or a counter that is not a
    mapping of ``str`` tokens to positive ``int`` counts, or text that is
    not a ``str``."""


class InvalidQuery(PStoreInputError):
    """Keywords that are not a non-empty list of ``str``, a limit below 1,
    or ranking parameters out of range."""


class Hit(NamedTuple):
    """One search result. A plain ``(docuid, score)`` tuple, as found's."""

    docuid: Any
    score: float


@dataclass(frozen=True, slots=True)
class PStoreStats:
    """The collection statistics BM25 uses."""

    documents: int
    total_length: int

    @property
    def average_length(self) -> float:
        """Mean document length in tokens (0.0 for an empty index)."""
        return self.total_length / self.documents if self.documents else 0.0


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``: NFKC-normalised, case-folded runs of word characters.

    ``"Straße"`` and ``"STRASSE"`` both give ``["strasse"]``; ``"ﬁle"`` (a
    ligature) gives ``["file"]``. Word characters are Python's ``\\w``:
    letters, digits and ``_`` of every script; everything else separates.
    """
    if not isinstance(text, str):
        raise InvalidDocument(f"text must be a str, not {type(text).__name__}")
    # Case folding can undo NFKC (it may produce decomposed sequences), so
    # normalise again after it, as Unicode's NFKC_Casefold does.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _WORD.findall(folded)


@functools.lru_cache(maxsize=1 << 16)
def token_uid(token: str) -> uuid.UUID:
    """The uid of ``token``: 16 bytes of BLAKE2b of its UTF-8, person
    ``b"shale.pstore"``, stamped as an RFC 9562 version-8 UUID.

    found draws a random uuid4 per token and must read the dictionary to
    find it; a derived uid lets indexing write without reading.
    """
    digest = bytearray(
        hashlib.blake2b(token.encode("utf-8"), digest_size=16, person=b"shale.pstore").digest()
    )
    digest[6] = (digest[6] & 0x0F) | 0x80
    digest[8] = (digest[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(digest))


def _le(value: int) -> bytes:
    return value.to_bytes(8, "little", signed=True)


def _from_le(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "little", signed=True)


@functools.lru_cache(maxsize=1 << 16)
def _uid_pair(token: str) -> tuple[uuid.UUID, bytes]:
    """``token_uid(token)`` and its packing, the piece every key of a token holds."""
    uid = token_uid(token)
    return uid, tuples.pack((uid,))


class _Term(NamedTuple):
    token: str
    tf: int
    uid: uuid.UUID


@dataclass(slots=True)
class _Document:
    """A validated document; ``terms`` is keyed by packed token uid."""

    docuid: Any
    packed: bytes
    terms: dict[bytes, _Term]
    length: int


@dataclass(slots=True)
class _Batch:
    """Statistic deltas and new dictionary entries, written once per call."""

    documents: int = 0
    length: int = 0
    df: dict[bytes, int] = field(default_factory=dict)
    tokens: dict[bytes, _Term] = field(default_factory=dict)


class _Query(NamedTuple):
    uids: list[uuid.UUID]
    frequencies: list[int]


class PStore:
    """An inverted index under a prefix tuple (or a ``Subspace``).

    ``PStore(prefix)`` makes a handle without touching the database;
    ``await PStore.open(db_or_tr, prefix)`` also checks the format. Every
    operation checks it again inside its own transaction (one read of a
    key no one writes twice), so a handle never writes into a newer or
    foreign layout.
    """

    __slots__ = ("_accepted", "_counters", "_meta", "_postings", "_stats", "_tokens", "prefix")

    def __init__(self, prefix: tuple[Any, ...] | Subspace = ()) -> None:
        if isinstance(prefix, Subspace):
            raw, items = prefix.raw_prefix, ()
        elif isinstance(prefix, tuple):
            raw, items = b"", prefix
        else:
            raise TypeError(f"prefix is a tuple or a Subspace, not {type(prefix).__name__}")
        self.prefix = prefix
        try:
            self._tokens = Subspace((*items, b"\x01"), raw)
        except ValueError as exc:
            raise TypeError(f"prefix {prefix!r} cannot be packed: {exc}") from None
        # found nests the marker with the prefix as the first element.
        self._postings = Subspace(((*items, b"\x02"),), raw)
        self._counters = Subspace(((*items, b"\x03"),), raw)
        self._stats = Subspace(((*items, b"\x04"),), raw)
        self._meta = Subspace(((*items, b"\x00"),), raw).key()
        # Metadata bytes check_format found writable: later checks compare
        # bytes instead of parsing them again.
        self._accepted: bytes | None = None

    def __repr__(self) -> str:
        return f"PStore({self.prefix!r})"

    @classmethod
    async def open(
        cls, db_or_tr: Database | Transaction, prefix: tuple[Any, ...] | Subspace = ()
    ) -> PStore:
        """A handle after checking (or, on first use, writing) the format.

        Raises:
            FormatVersionError: a newer major format, another layer, or
                pstore data without metadata (found writes none).
        """
        store = cls(prefix)
        if isinstance(db_or_tr, Transaction):
            await store._check(db_or_tr, write=True, snapshot=False)
        else:
            await db_or_tr.transact(store._check, write=True, snapshot=False)
        return store

    # -- format ------------------------------------------------------------

    async def _check(self, tr: Transaction, *, write: bool, snapshot: bool) -> bool:
        """Whether this transaction may write; writes the metadata on first write."""
        raw = await tr.get(self._meta, snapshot=snapshot)
        if raw is not None and raw == self._accepted:
            return True
        if raw is None:
            begin, end = self._counters.range()
            if await tr.get_range(begin, end, limit=1, snapshot=snapshot):
                raise FormatVersionError(
                    f"{self!r} holds documents but no format metadata: it was written by "
                    "found, whose zstd-compressed counters and missing statistics Shale "
                    "cannot read; re-index the documents into a new prefix"
                )
            if not write:
                return True
        writable = await check_format(tr, self._meta, FORMAT)
        if writable and raw is not None:
            self._accepted = raw
        return writable

    async def _writable(self, tr: Transaction) -> None:
        refuse_if_read_only(await self._check(tr, write=True, snapshot=False), FORMAT)

    # -- documents -----------------------------------------------------------

    def _prepare(self, docuid: Any, counter: object) -> _Document:
        try:
            packed = tuples.pack((docuid,))
        except (TypeError, ValueError) as exc:
            raise InvalidDocument(f"docuid {docuid!r} cannot be packed: {exc}") from None
        widest = max(len(self._postings.key()) + 17, len(self._counters.key()))
        if widest + len(packed) + _CHUNK_INDEX_ROOM > _MAX_KEY:
            raise InvalidDocument(
                f"docuid packs to {len(packed)} bytes; its keys would exceed {_MAX_KEY} bytes"
            )
        if not isinstance(counter, Mapping):
            raise InvalidDocument(
                f"counter must be a mapping of str to int, not {type(counter).__name__}"
            )
        terms: dict[bytes, _Term] = {}
        length = 0
        short = (_MAX_KEY - len(self._tokens.key()) - 20) // 4
        for token, count in counter.items():
            # The common case in one test; _check_term explains a failure.
            if type(token) is not str or type(count) is not int or count <= 0 or len(token) > short:
                self._check_term(token, count)
            try:
                uid, packed_uid = _uid_pair(token)
            except UnicodeEncodeError:
                self._check_term(token, count)
                raise
            terms[packed_uid] = _Term(token, count, uid)
            length += count
        return _Document(docuid, packed, terms, length)

    def _check_term(self, token: object, count: object) -> None:
        if not isinstance(token, str):
            raise InvalidDocument(f"token {token!r} is a {type(token).__name__}, not a str")
        if type(count) is not int:  # bool is an int subclass and never a count
            raise InvalidDocument(
                f"count of {token!r} is a {type(count).__name__}, not an int: {count!r}"
            )
        if count <= 0:
            raise InvalidDocument(f"count of {token!r} must be positive, not {count}")
        try:
            token_uid(token)
        except UnicodeEncodeError as exc:
            raise InvalidDocument(f"token {token[:40]!r} cannot be stored: {exc}") from None
        # A str packs to at most 2 + 4 bytes a character: pack only the long ones.
        if len(self._tokens.key()) + 20 + 4 * len(token) > _MAX_KEY:
            size = len(self._tokens.pack((0, token, token_uid(token))))
            if size > _MAX_KEY:
                raise InvalidDocument(
                    f"token {token[:40]!r}... is {len(token)} characters; its key of {size} "
                    f"bytes would exceed {_MAX_KEY} bytes"
                )

    async def _read_document(self, tr: Transaction, packed: bytes) -> dict[bytes, int] | None:
        """The stored ``{packed uid: count}`` of a document, or ``None``."""
        base = self._counters.key() + packed
        blob = await tr.get(base)
        if blob is None:
            return None
        if len(blob) >= _MAX_VALUE:
            # [base, base + ff) holds the base key and its continuations, and
            # no other docuid: a longer docuid continues with an escape
            # (00 ff), a continuation index with a type code below ff.
            blob = b"".join(value for _, value in await tr.get_range(base, base + b"\xff"))
        if blob and not blob.startswith(b"\x05"):
            raise FormatVersionError(f"document {packed!r} of {self!r} is not a packed counter")
        return {tuples.pack((uid,)): count for uid, count in tuples.unpack(blob)}

    def _write_document(self, tr: Transaction, doc: _Document) -> None:
        blob = tuples.pack(tuple((term.uid, term.tf) for term in doc.terms.values()))
        base = self._counters.key() + doc.packed
        tr.set(base, blob[:_MAX_VALUE])
        for index, start in enumerate(range(_MAX_VALUE, len(blob), _MAX_VALUE), start=1):
            tr.set(base + tuples.pack((index,)), blob[start : start + _MAX_VALUE])

    def _replace(
        self,
        tr: Transaction,
        doc: _Document,
        old: dict[bytes, int] | None,
        batch: _Batch,
        *,
        keep: bool = True,
    ) -> None:
        """Swap ``old`` postings for ``doc``'s (none if not ``keep``)."""
        before = old or {}
        after = doc.terms if keep else {}
        postings = self._postings.key()
        for uid in before:
            if uid not in after:
                tr.clear(postings + uid + doc.packed)
                batch.df[uid] = batch.df.get(uid, 0) - 1
        for uid, term in after.items():
            # Every posting carries the document's length: BM25 then needs
            # no read beyond the postings themselves.
            tr.set(postings + uid + doc.packed, tuples.pack((term.tf, doc.length)))
            if uid not in before:
                batch.df[uid] = batch.df.get(uid, 0) + 1
                batch.tokens[uid] = term
        if old is None:
            batch.documents += 1
        if not keep:
            batch.documents -= 1
        batch.length += (doc.length if keep else 0) - sum(before.values())
        base = self._counters.key() + doc.packed
        if old is not None:
            tr.clear_range(base, base + b"\xff")
        if keep:
            self._write_document(tr, doc)

    async def _flush(self, tr: Transaction, batch: _Batch) -> None:
        df = self._stats.pack(("df",))
        for uid, delta in batch.df.items():
            if delta:
                tr.add(df + uid, _le(delta))
        for term in batch.tokens.values():
            # Entries never change (the uid derives from the token) and are
            # never removed, so a snapshot read is enough: a concurrent
            # writer of the same entry writes the same bytes, no conflict.
            forward = self._tokens.pack((0, term.token, term.uid))
            if await tr.get(forward, snapshot=True) is None:
                tr.set(forward, b"")
                tr.set(self._tokens.pack((1, term.uid, term.token)), b"")
        if batch.documents:
            tr.add(self._stats.pack(("documents",)), _le(batch.documents))
        if batch.length:
            tr.add(self._stats.pack(("length",)), _le(batch.length))

    async def index(self, tr: Transaction, docuid: Any, counter: Mapping[str, int]) -> None:
        """Index ``docuid`` with ``counter`` (token -> count > 0), replacing
        whatever was indexed under ``docuid`` before.

        Raises:
            InvalidDocument: see the class; nothing is written.
            ReadOnlyError: the index has a newer minor format.
        """
        await self.index_many(tr, [(docuid, counter)])

    async def index_many(
        self, tr: Transaction, documents: Iterable[tuple[Any, Mapping[str, int]]]
    ) -> None:
        """``index`` each ``(docuid, counter)`` in order; statistics and new
        dictionary entries are written once for the batch. Every document
        is validated before anything is written."""
        prepared = [self._prepare(docuid, counter) for docuid, counter in documents]
        await self._writable(tr)
        # Every read before the first write: a range read after writes makes
        # the transaction sort its write buffer, once per document.
        olds: list[dict[bytes, int] | None] = []
        latest: dict[bytes, dict[bytes, int]] = {}
        for doc in prepared:
            if doc.packed in latest:
                olds.append(latest[doc.packed])
            else:
                olds.append(await self._read_document(tr, doc.packed))
            latest[doc.packed] = {uid: term.tf for uid, term in doc.terms.items()}
        batch = _Batch()
        for doc, old in zip(prepared, olds, strict=True):
            self._replace(tr, doc, old, batch)
        await self._flush(tr, batch)

    async def index_text(self, tr: Transaction, docuid: Any, text: str) -> None:
        """``index`` the token counts of ``tokenize(text)``."""
        counter: dict[str, int] = {}
        for token in tokenize(text):
            counter[token] = counter.get(token, 0) + 1
        await self.index(tr, docuid, counter)

    async def remove(self, tr: Transaction, docuid: Any) -> bool:
        """Remove ``docuid`` from the index; whether it was there."""
        doc = self._prepare(docuid, {})
        await self._writable(tr)
        old = await self._read_document(tr, doc.packed)
        if old is None:
            return False
        batch = _Batch()
        self._replace(tr, doc, old, batch, keep=False)
        await self._flush(tr, batch)
        return True

    async def terms(self, tr: Transaction, docuid: Any) -> dict[str, int] | None:
        """The counter indexed under ``docuid``, or ``None``."""
        doc = self._prepare(docuid, {})
        await self._check(tr, write=False, snapshot=False)
        stored = await self._read_document(tr, doc.packed)
        if stored is None:
            return None
        out: dict[str, int] = {}
        for uid, count in stored.items():
            reverse = self._tokens.pack((1,)) + uid
            rows = await tr.get_range(reverse + b"\x00", reverse + b"\xff", limit=1)
            if not rows:
                raise FormatVersionError(
                    f"token uid {tuples.unpack(uid)[0]} of {docuid!r} is not in {self!r}'s "
                    "dictionary"
                )
            out[self._tokens.unpack(rows[0][0])[-1]] = count
        return out

    async def stats(self, tr: Transaction, *, snapshot: bool = False) -> PStoreStats:
        """How many documents, and their total length."""
        await self._check(tr, write=False, snapshot=snapshot)
        return PStoreStats(*await self._totals(tr, snapshot))

    async def frequency(self, tr: Transaction, token: str, *, snapshot: bool = False) -> int:
        """How many documents contain ``token``."""
        if not isinstance(token, str):
            raise InvalidQuery(f"token must be a str, not {type(token).__name__}")
        await self._check(tr, write=False, snapshot=snapshot)
        uid = token_uid(_keywords([token])[0])
        return _from_le(await tr.get(self._stats.pack(("df", uid)), snapshot=snapshot))

    async def _totals(self, tr: Transaction, snapshot: bool) -> tuple[int, int]:
        documents = await tr.get(self._stats.pack(("documents",)), snapshot=snapshot)
        length = await tr.get(self._stats.pack(("length",)), snapshot=snapshot)
        return _from_le(documents), _from_le(length)

    # -- search --------------------------------------------------------------

    async def search(
        self,
        tr: Transaction,
        keywords: Sequence[str],
        *,
        limit: int = 10,
        ranking: Ranking = "bm25",
        k1: float = K1,
        b: float = B,
        sample: int | None = None,
        rng: random.Random | None = None,
        snapshot: bool = False,
    ) -> list[Hit]:
        """The best ``limit`` documents containing every keyword, best first.

        ``ranking="bm25"`` scores by Okapi BM25 (``docs/pstore.md`` has the
        formula); ``"count"`` by the sum of the keywords' counts, as found.
        Equal scores are ordered by packed docuid. Keywords are tokens as
        indexed (``search_text`` tokenizes a query first); a repeated
        keyword counts once. ``sample=n`` scores only ``n`` candidates
        drawn with ``rng`` (found's approximation, off by default).

        Raises:
            InvalidQuery: see the class.
        """
        terms = _keywords(keywords)
        _check_options(limit, ranking, k1, b, sample)
        await self._check(tr, write=False, snapshot=snapshot)
        query = await self._frequencies(tr, terms, snapshot)
        if query is None:
            return []
        weights: list[float] | None = None
        average = 0.0
        if ranking == "bm25":
            documents, total = await self._totals(tr, snapshot)
            # Consistent by construction; max() keeps the IDF defined even
            # if the statistics were edited by hand.
            documents = max(documents, *query.frequencies)
            average = total / documents if documents and total > 0 else 1.0
            weights = [_idf(documents, df) * (k1 + 1) for df in query.frequencies]
        scorer = _Scorer(limit, weights, k1, b, average)
        await self._score(tr, query, scorer, sample, rng, snapshot)
        return scorer.hits()

    async def search_text(self, tr: Transaction, text: str, **options: Any) -> list[Hit]:
        """``search`` for the tokens of ``tokenize(text)``."""
        try:
            tokens = tokenize(text)
        except InvalidDocument as exc:
            raise InvalidQuery(str(exc)) from None
        return await self.search(tr, tokens, **options)

    async def _frequencies(
        self, tr: Transaction, terms: list[str], snapshot: bool
    ) -> _Query | None:
        uids = [token_uid(term) for term in terms]
        frequencies = []
        for uid in uids:
            df = _from_le(await tr.get(self._stats.pack(("df", uid)), snapshot=snapshot))
            if df <= 0:
                return None
            frequencies.append(df)
        return _Query(uids, frequencies)

    async def _score(
        self,
        tr: Transaction,
        query: _Query,
        scorer: _Scorer,
        sample: int | None,
        rng: random.Random | None,
        snapshot: bool,
    ) -> None:
        # Candidates come from the rarest term's postings, in docuid order
        # (the order _Scorer's tie-break relies on); the other terms then
        # filter them, rarest first, so the candidate set shrinks fastest.
        order = sorted(range(len(query.uids)), key=query.frequencies.__getitem__)
        seed = order[0]
        begin, end = self._postings.range((query.uids[seed],))
        cut = len(begin) - 1
        pages = _pages(tr, begin, end, snapshot)
        if sample is not None and query.frequencies[seed] > sample:
            pages = _replay(await _reservoir(pages, sample, rng or random.Random()))
        if len(order) == 1:
            async for page in pages:
                for key, value in page:
                    tf, length = tuples.unpack(value)
                    scorer.add(key[cut:], (tf,), length)
            return
        candidates: dict[bytes, tuple[int, list[int]]] = {}
        async for page in pages:
            for key, value in page:
                tf, length = tuples.unpack(value)
                counts = [0] * len(order)
                counts[seed] = tf
                candidates[key[cut:]] = (length, counts)
        for i in order[1:]:
            if not candidates:
                return
            prefix = self._postings.pack((query.uids[i],))
            if query.frequencies[i] <= _STREAM_RATIO * len(candidates):
                await _merge(tr, prefix, i, candidates, snapshot)
            else:
                await _probe(tr, prefix, i, candidates, snapshot)
            candidates = {d: entry for d, entry in candidates.items() if entry[1][i]}
        for packed, (length, counts) in candidates.items():
            scorer.add(packed, counts, length)


async def _merge(
    tr: Transaction,
    prefix: bytes,
    term: int,
    candidates: dict[bytes, tuple[int, list[int]]],
    snapshot: bool,
) -> None:
    """Record ``term``'s counts by streaming its postings between the first
    and the last candidate (dicts keep the seed's docuid order)."""
    first, last = next(iter(candidates)), next(reversed(candidates))
    cut = len(prefix)
    async for page in _pages(tr, prefix + first, prefix + last + b"\x00", snapshot):
        for key, value in page:
            entry = candidates.get(key[cut:])
            if entry is not None:
                entry[1][term] = tuples.unpack(value)[0]


async def _probe(
    tr: Transaction,
    prefix: bytes,
    term: int,
    candidates: dict[bytes, tuple[int, list[int]]],
    snapshot: bool,
) -> None:
    """Record ``term``'s counts with one point read per candidate."""
    for packed, (_, counts) in candidates.items():
        value = await tr.get(prefix + packed, snapshot=snapshot)
        if value is not None:
            counts[term] = tuples.unpack(value)[0]


async def _pages(
    tr: Transaction, begin: bytes, end: bytes, snapshot: bool
) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """A range in pages of ``_PAGE`` rows: memory stays bounded, and a loop
    over a list costs less per row than an async iterator."""
    while True:
        page = await tr.get_range(begin, end, limit=_PAGE, snapshot=snapshot)
        if page:
            yield page
        if len(page) < _PAGE:
            return
        begin = page[-1][0] + b"\x00"


async def _reservoir(
    pages: AsyncIterable[list[tuple[bytes, bytes]]], size: int, rng: random.Random
) -> list[tuple[bytes, bytes]]:
    """``size`` rows drawn uniformly from a stream (Algorithm R), in key order."""
    kept: list[tuple[bytes, bytes]] = []
    seen = 0
    async for page in pages:
        for row in page:
            seen += 1
            if len(kept) < size:
                kept.append(row)
            else:
                slot = rng.randrange(seen)
                if slot < size:
                    kept[slot] = row
    kept.sort()
    return kept


async def _replay(rows: list[tuple[bytes, bytes]]) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    yield rows


class _Scorer:
    """Scores candidates and keeps the best ``limit`` in a min-heap.

    Candidates must arrive in docuid order: an equal score then ranks the
    earlier (smaller) docuid first, which the heap encodes with a falling
    sequence number, so it never compares docuids.
    """

    __slots__ = ("_heap", "_limit", "_norm_base", "_norm_length", "_sequence", "_weights")

    def __init__(
        self, limit: int, weights: list[float] | None, k1: float, b: float, average: float
    ) -> None:
        self._limit = limit
        self._weights = weights
        self._norm_base = k1 * (1 - b)
        self._norm_length = k1 * b / average if average else 0.0
        self._heap: list[tuple[float, int, bytes]] = []
        self._sequence = 0

    def add(self, packed: bytes, counts: Sequence[int], length: int) -> None:
        if self._weights is None:
            score: float = sum(counts)
        else:
            norm = self._norm_base + self._norm_length * length
            # Summed in query order, so the float is the same whichever term
            # seeded the candidates.
            score = 0.0
            for weight, tf in zip(self._weights, counts, strict=True):
                score += weight * tf / (tf + norm)
        self._sequence -= 1
        heap = self._heap
        if len(heap) < self._limit:
            heapq.heappush(heap, (score, self._sequence, packed))
        elif score > heap[0][0]:  # an equal score loses: this docuid is larger
            heapq.heapreplace(heap, (score, self._sequence, packed))

    def hits(self) -> list[Hit]:
        best = sorted(self._heap, key=lambda item: (-item[0], -item[1]))
        return [Hit(tuples.unpack(packed)[0], score) for score, _, packed in best]


def _idf(documents: int, df: int) -> float:
    """Lucene's BM25 IDF, never negative: ``ln(1 + (N - df + 0.5) / (df + 0.5))``."""
    return math.log(1 + (documents - df + 0.5) / (df + 0.5))


def _keywords(keywords: object) -> list[str]:
    if isinstance(keywords, str | bytes) or not isinstance(keywords, Sequence):
        raise InvalidQuery(
            f"keywords must be a list of str tokens, not {type(keywords).__name__}"
            + (
                " (tokenize a string first, or use search_text)"
                if isinstance(keywords, str)
                else ""
            )
        )
    if not keywords:
        raise InvalidQuery("keywords must not be empty")
    for keyword in keywords:
        if not isinstance(keyword, str):
            raise InvalidQuery(f"keyword {keyword!r} is a {type(keyword).__name__}, not a str")
        try:
            keyword.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidQuery(f"keyword {keyword[:40]!r} is not valid Unicode: {exc}") from None
    return list(dict.fromkeys(keywords))


def _check_options(limit: object, ranking: object, k1: object, b: object, sample: object) -> None:
    if type(limit) is not int or limit < 1:
        raise InvalidQuery(f"limit must be an int >= 1, not {limit!r}")
    if ranking not in ("bm25", "count"):
        raise InvalidQuery(f"ranking must be 'bm25' or 'count', not {ranking!r}")
    if not isinstance(k1, int | float) or isinstance(k1, bool) or not 0 <= k1 < math.inf:
        raise InvalidQuery(f"k1 must be a finite number >= 0, not {k1!r}")
    if not isinstance(b, int | float) or isinstance(b, bool) or not 0 <= b <= 1:
        raise InvalidQuery(f"b must be a number in [0, 1], not {b!r}")
    if sample is not None and (type(sample) is not int or sample < 1):
        raise InvalidQuery(f"sample must be None or an int >= 1, not {sample!r}")
