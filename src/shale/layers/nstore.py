"""nstore: a store of n-tuples with pattern queries and a query planner.

Every tuple is written once per index, each index holding the items in
another order, so that any combination of bound positions is a key prefix
of some index and a pattern is answered by one range scan. The indexes are
found's: C(n, n//2) permutations from a symmetric chain decomposition of
the positions (``_compute_indices``), in found's order, so a store written
here is byte-for-byte the store found writes, and found reads it back.

Key layout under the store's subspace ``S`` (``S.pack(t) == pack((*prefix, *t))``)::

    S.pack((s, *(items[i] for i in indices[s])))  -> value    one per index s
    S.pack(("meta",))                              -> pack(("nstore", major, minor))
    S.pack(("columns",))                           -> pack((n,))
    S.pack(("counts", "total"))                    -> int64 LE: number of tuples
    S.pack(("counts", pos, item))                  -> int64 LE: tuples with item at pos

found only writes the index keys (an integer right after the prefix); the
other keys start with a string there, so found never touches them. The
counts feed the query planner: they change by atomic ``add`` (no read
conflict), and stay exact because ``add``/``remove`` read index 0's key to
learn whether the tuple exists, which adds a read conflict on that one key.

Patterns are tuples of n items where ``var(name)`` marks an unknown; every
match binds the variables in a new dict. ``select`` scans one index,
``where`` joins a stream of bindings with a pattern (nested loops),
``query`` plans a conjunction of patterns and streams its results.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, ClassVar, Final, NamedTuple

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import AccessedUnreadable, FormatVersionError, UsageError
from shale.layers.format import LayerFormat, check_format, refuse_if_read_only
from shale.subspace import Subspace

__all__ = ["MAX_COLUMNS", "NStore", "NStoreError", "Variable", "var"]

MAX_COLUMNS: Final = 16
"""The widest tuple: 16 columns already mean 12,870 keys per tuple."""

_META: Final = "meta"
_COLUMNS: Final = "columns"
_COUNTS: Final = "counts"
_TOTAL: Final = "total"
_ONE: Final = (1).to_bytes(8, "little", signed=True)
_MINUS_ONE: Final = (-1).to_bytes(8, "little", signed=True)

Binding = dict[str, Any]
Plan = list[tuple[tuple[Any, ...], int]]


class Variable(NamedTuple):
    """An unknown in a pattern; each match binds ``name`` to an item."""

    name: str


def var(name: str) -> Variable:
    """The variable called ``name``."""
    if not isinstance(name, str):
        raise NStoreError(f"a variable name is a str, not {type(name).__name__}")
    return Variable(name)


class NStoreError(UsageError):
    """An nstore was called with arguments that can never work: a tuple or
    pattern of the wrong length, a variable where items must be known, an
    incomplete versionstamp where the key must be known, a bad ``n``."""


# -- indexes -----------------------------------------------------------------


@cache
def _compute_indices(n: int) -> tuple[tuple[int, ...], ...]:
    """found's index permutations for ``n`` columns, in found's order.

    For each choice ``c`` of n//2 positions, pair off adjacent (outside c,
    inside c) positions left to right until none is left; the permutation
    is the inside halves, the unpaired positions, then the outside halves.
    This is a symmetric chain decomposition of the subsets of positions, so
    every subset is the set of the first k positions of some permutation.
    """
    out = []
    for combination in itertools.combinations(range(n), n // 2):
        chosen = frozenset(combination)
        rest = [(i, i in chosen) for i in range(n)]
        inside: list[int] = []
        outside: list[int] = []
        paired = True
        while paired:
            paired = False
            for j in range(len(rest) - 1):
                if not rest[j][1] and rest[j + 1][1]:
                    outside.append(rest[j][0])
                    inside.append(rest[j + 1][0])
                    del rest[j : j + 2]
                    paired = True
                    break
        out.append((*inside, *(i for i, _ in rest), *outside))
    return tuple(out)


@lru_cache(maxsize=4096)
def _choose(n: int, bound: frozenset[int]) -> int:
    """The first index whose leading positions are exactly ``bound``: it
    binds every bound position in its key prefix, and, being the first, is
    the index found picks, so results come in found's order."""
    k = len(bound)
    for s, perm in enumerate(_compute_indices(n)):
        if frozenset(perm[:k]) == bound:
            return s
    # The chain decomposition covers every subset; reaching here is a bug.
    raise AssertionError(f"no index of {n} columns starts with positions {sorted(bound)}")


# -- patterns ----------------------------------------------------------------


def _has_variable(item: Any) -> bool:
    if isinstance(item, Variable):
        return True
    return isinstance(item, (tuple, list)) and any(_has_variable(x) for x in item)


def _names(pattern: tuple[Any, ...]) -> set[str]:
    return {x.name for x in pattern if isinstance(x, Variable)}


def _substitute(pattern: tuple[Any, ...], bindings: Mapping[str, Any]) -> tuple[Any, ...]:
    if not bindings:
        return pattern
    return tuple(
        bindings[x.name] if isinstance(x, Variable) and x.name in bindings else x for x in pattern
    )


def _same(a: Any, b: Any) -> bool:
    """Equality as the store sees it: ``1``, ``1.0`` and ``True`` differ."""
    return tuples.pack((a,)) == tuples.pack((b,))


def _int64(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "little", signed=True)


def _order(
    patterns: Sequence[tuple[Any, ...]], counts: Sequence[int | None], total: int
) -> list[int]:
    """The order to join ``patterns`` in, given each one's count (``None``
    for a pattern of variables only, which can match all ``total`` tuples).

    Greedy: first the pattern with the fewest matches; then, among the
    patterns that share a variable with those already joined (a pattern
    that does not is a cross product, left for last), the cheapest — a
    pattern whose positions are then all bound costs at most one lookup
    per row, the others their count. Ties keep the given order.
    """
    remaining = list(range(len(patterns)))
    known: set[str] = set()
    order: list[int] = []

    def cost(i: int) -> tuple[bool, int, int]:
        pattern = patterns[i]
        free = _names(pattern) - known
        count = counts[i]
        estimate = total if count is None else count
        if not free:
            estimate = min(estimate, 1)
        detached = bool(known) and bool(free) and not (_names(pattern) & known)
        return detached, estimate, i

    while remaining:
        best = min(remaining, key=cost)
        remaining.remove(best)
        order.append(best)
        known |= _names(patterns[best])
    return order


# -- versionstamps -----------------------------------------------------------


@dataclass
class _Stamped:
    """What one transaction attempt added with incomplete versionstamps to
    one store: its keys cannot be read back before commit, so duplicates
    and counts are tracked here instead."""

    tuples: set[bytes] = field(default_factory=set)
    counts: dict[bytes, int] = field(default_factory=dict)


# Keyed by the transaction's versionstamp future: the core creates one per
# attempt and drops it on reset, so an entry lives exactly as long as the
# writes it describes (a found transaction is reset, not replaced, on retry).
_STAMPED: Final[weakref.WeakKeyDictionary[asyncio.Future[bytes], dict[bytes, _Stamped]]] = (
    weakref.WeakKeyDictionary()
)


def _stamped(tr: Transaction, store: bytes) -> _Stamped:
    return _STAMPED.setdefault(tr.get_versionstamp(), {}).setdefault(store, _Stamped())


# -- the store ---------------------------------------------------------------


class _StampedKeys(NamedTuple):
    """The keys of a tuple holding an incomplete versionstamp, packed for
    ``set_versionstamped_key``; each counter marked if it is stamped too."""

    keys: list[bytes]
    counters: list[tuple[bytes, bool]]


class _Scan(NamedTuple):
    """One pattern made concrete: the key prefix to scan and, for each
    variable, its place among the key's unbound items."""

    head: bytes
    slots: list[tuple[int, str]]


class NStore:
    """Tuples of ``n`` items under ``prefix`` (a tuple, as found's prefix,
    or a ``Subspace``), each with a ``bytes`` value.

    The constructor checks nothing in the database (found's ``make``);
    ``await NStore.open(db, prefix, n)`` also checks the format version and
    the number of columns stored there.
    """

    FORMAT: ClassVar[LayerFormat] = LayerFormat("nstore", 1, 0)

    def __init__(
        self, prefix: tuple[Any, ...] | list[Any] | Subspace, n: int, *, name: str = "nstore"
    ) -> None:
        if isinstance(prefix, Subspace):
            self.prefix: tuple[Any, ...] | None = None
            self.subspace = prefix
        elif isinstance(prefix, (tuple, list)):
            self.prefix = tuple(prefix)
            self.subspace = Subspace(self.prefix)
        else:
            raise NStoreError(f"an nstore prefix is a tuple or Subspace, not {prefix!r}")
        if type(n) is not int or not 1 <= n <= MAX_COLUMNS:
            raise NStoreError(f"n is the number of columns, 1 to {MAX_COLUMNS}, not {n!r}")
        self.name = name
        self.n = n
        self.indices: list[tuple[int, ...]] = list(_compute_indices(n))
        self.writable = True
        raw = self.subspace.raw_prefix
        # Tuple encoding is concatenative: a key is its index's head followed
        # by each item packed alone, so items are packed once per tuple.
        self._heads = [raw + tuples.pack((s,)) for s in range(len(self.indices))]
        self._counts = self.subspace[_COUNTS]
        self._count_heads = [self._counts.pack((pos,)) for pos in range(n)]
        self._total_key = self._counts.pack((_TOTAL,))

    def __repr__(self) -> str:
        return f"NStore({self.name!r}, {self.subspace!r}, n={self.n})"

    @classmethod
    async def open(
        cls,
        db_or_tr: Database | Transaction,
        prefix: tuple[Any, ...] | list[Any] | Subspace,
        n: int,
        *,
        name: str = "nstore",
    ) -> NStore:
        """A handle on the store at ``prefix``, recording its format and
        ``n`` on first use. A newer minor format opens read-only.

        Raises:
            FormatVersionError: a newer major format, or another layer there.
            NStoreError: the store there has another number of columns.
        """
        store = cls(prefix, n, name=name)
        if isinstance(db_or_tr, Transaction):
            await store._open(db_or_tr)
        else:
            await db_or_tr.transact(store._open)
        return store

    async def _open(self, tr: Transaction) -> None:
        self.writable = await check_format(tr, self.subspace.pack((_META,)), self.FORMAT)
        key = self.subspace.pack((_COLUMNS,))
        raw = await tr.get(key)
        if raw is None:
            if self.writable:
                tr.set(key, tuples.pack((self.n,)))
            return
        try:
            (stored,) = tuples.unpack(raw)
        except ValueError:
            raise FormatVersionError(f"unreadable column count at {key!r}") from None
        if stored != self.n:
            raise NStoreError(f"{self.name} holds {stored}-tuples; it was opened with n={self.n}")

    # -- validation ----------------------------------------------------------

    def _items(self, items: tuple[Any, ...], operation: str) -> None:
        if len(items) != self.n:
            raise NStoreError(
                f"{self.name}.{operation}() takes {self.n} items, got {len(items)}: {items!r}"
            )
        for item in items:
            if _has_variable(item):
                raise NStoreError(
                    f"{self.name}.{operation}() takes known items, not the variable in {item!r}; "
                    "variables belong in select/where/query patterns"
                )

    def _no_stamp(self, items: tuple[Any, ...], operation: str) -> None:
        if tuples.has_incomplete_versionstamp(items):
            raise NStoreError(
                f"{self.name}.{operation}() cannot take an incomplete Versionstamp: its key "
                "is only known once the transaction commits"
            )

    def _pattern(self, pattern: Any, operation: str) -> tuple[Any, ...]:
        if not isinstance(pattern, (tuple, list)):
            raise NStoreError(f"{self.name}.{operation}(): a pattern is a tuple, not {pattern!r}")
        checked: tuple[Any, ...] = tuple(pattern)
        if len(checked) != self.n:
            raise NStoreError(
                f"{self.name}.{operation}() takes patterns of {self.n} items, "
                f"got {len(checked)}: {checked!r}"
            )
        for item in checked:
            if not isinstance(item, Variable) and _has_variable(item):
                raise NStoreError(
                    f"{self.name}.{operation}(): variables stand for whole items, "
                    f"not inside {item!r}"
                )
        self._no_stamp(checked, operation)
        return checked

    def _check_value(self, value: Any) -> None:
        if type(value) is not bytes:
            raise NStoreError(f"{self.name}: a value is bytes, not {type(value).__name__}")

    # -- writes ----------------------------------------------------------------

    def _keys(self, packed: list[bytes]) -> list[bytes]:
        return [
            head + b"".join([packed[i] for i in perm])
            for head, perm in zip(self._heads, self.indices, strict=True)
        ]

    def _count(self, tr: Transaction, packed: list[bytes], delta: bytes) -> None:
        tr.add(self._total_key, delta)
        for head, item in zip(self._count_heads, packed, strict=True):
            tr.add(head + item, delta)

    async def add(self, tr: Transaction, *items: Any, value: bytes = b"") -> None:
        """Store the tuple ``items`` with ``value`` (replacing its value if
        it is already there).

        An item may hold one incomplete ``Versionstamp``: every index key is
        then written with ``set_versionstamped_key``, so the commit's stamp
        lands in each, and those keys cannot be read in this transaction.

        Raises:
            NStoreError: not ``n`` items, a variable among them, ``value``
                not bytes.
            ReadOnlyError: the store was opened read-only.
            TupleError: an item the tuple layer cannot encode.
        """
        refuse_if_read_only(self.writable, self.FORMAT)
        self._items(items, "add")
        self._check_value(value)
        if tuples.has_incomplete_versionstamp(items):
            self._write_stamped(tr, self._stamped_keys(items), value)
            return
        packed = [tuples.pack((item,)) for item in items]
        keys = self._keys(packed)
        exists = await tr.get(keys[0]) is not None
        for key in keys:
            tr.set(key, value)
        if not exists:
            self._count(tr, packed, _ONE)

    async def add_many(
        self, tr: Transaction, rows: Iterable[Sequence[Any]], *, value: bytes = b""
    ) -> int:
        """``add`` each tuple of ``rows`` with ``value``; return how many
        were new. Faster for bulk loads: the counters shared by the batch
        change once each. Every row is checked before anything is written.

        Raises:
            NStoreError, ReadOnlyError, TupleError: as ``add``, for any row.
        """
        refuse_if_read_only(self.writable, self.FORMAT)
        self._check_value(value)
        plain: list[list[bytes]] = []
        stamped: list[_StampedKeys] = []
        for row in rows:
            items = tuple(row)
            self._items(items, "add_many")
            if tuples.has_incomplete_versionstamp(items):
                stamped.append(self._stamped_keys(items))
            else:
                plain.append([tuples.pack((item,)) for item in items])
        deltas: dict[bytes, int] = {}
        added = 0
        for packed in plain:
            keys = self._keys(packed)
            exists = await tr.get(keys[0]) is not None
            for key in keys:
                tr.set(key, value)
            if not exists:
                added += 1
                for head, item in zip(self._count_heads, packed, strict=True):
                    deltas[head + item] = deltas.get(head + item, 0) + 1
        if added:
            deltas[self._total_key] = added
        for key, delta in deltas.items():
            tr.add(key, delta.to_bytes(8, "little", signed=True))
        for prepared in stamped:
            added += self._write_stamped(tr, prepared, value)
        return added

    def _stamped_keys(self, items: tuple[Any, ...]) -> _StampedKeys:
        raw = self.subspace.raw_prefix
        keys = [
            tuples.pack_with_versionstamp((s, *(items[i] for i in perm)), prefix=raw)
            for s, perm in enumerate(self.indices)
        ]
        counters = [
            (self._counts.pack_with_versionstamp((pos, item)), True)
            if tuples.has_incomplete_versionstamp((item,))
            else (self._count_heads[pos] + tuples.pack((item,)), False)
            for pos, item in enumerate(items)
        ]
        return _StampedKeys(keys, counters)

    def _write_stamped(self, tr: Transaction, stamped: _StampedKeys, value: bytes) -> int:
        keys, counters = stamped
        pending = _stamped(tr, self.subspace.raw_prefix)
        for key in keys:
            tr.set_versionstamped_key(key, value)
        if keys[0] in pending.tuples:
            return 0  # the same stamped tuple twice: one tuple, counted once
        pending.tuples.add(keys[0])
        tr.add(self._total_key, _ONE)
        for key, is_stamped in counters:
            if is_stamped:
                # The stamp is this commit's, so no counter exists for it yet:
                # set the number of this attempt's tuples holding it.
                pending.counts[key] = pending.counts.get(key, 0) + 1
                tr.set_versionstamped_key(
                    key, pending.counts[key].to_bytes(8, "little", signed=True)
                )
            else:
                tr.add(key, _ONE)
        return 1

    async def remove(self, tr: Transaction, *items: Any) -> None:
        """Delete the tuple ``items``; nothing happens if it is absent.

        Raises:
            NStoreError: not ``n`` items, a variable or an incomplete
                versionstamp among them.
            ReadOnlyError: the store was opened read-only.
            TupleError: an item the tuple layer cannot encode.
        """
        refuse_if_read_only(self.writable, self.FORMAT)
        self._items(items, "remove")
        self._no_stamp(items, "remove")
        packed = [tuples.pack((item,)) for item in items]
        keys = self._keys(packed)
        if await tr.get(keys[0]) is None:
            return
        for key in keys:
            tr.clear(key)
        self._count(tr, packed, _MINUS_ONE)

    async def get(self, tr: Transaction, *items: Any, snapshot: bool = False) -> bytes | None:
        """The value stored with the tuple ``items``, or ``None``.

        Raises:
            NStoreError: not ``n`` items, a variable or an incomplete
                versionstamp among them.
            TupleError: an item the tuple layer cannot encode.
        """
        self._items(items, "get")
        self._no_stamp(items, "get")
        key = self._heads[0] + b"".join([tuples.pack((item,)) for item in items])
        return await tr.get(key, snapshot=snapshot)

    async def recount(self, tr: Transaction) -> int:
        """Rebuild the counts from index 0 and return the number of tuples.

        Only needed for a store another program wrote (found itself keeps
        no counts). It reads the whole store, so it must fit in one
        transaction (5 s, 10 MB of counters).
        """
        refuse_if_read_only(self.writable, self.FORMAT)
        tr.clear_range(*self._counts.range())
        head = self._heads[0]
        counts: dict[bytes, int] = {}
        total = 0
        async for key, _ in tr.get_range(head + b"\x00", head + b"\xff"):
            total += 1
            for pos, item in enumerate(tuples.unpack(key, prefix_len=len(head))):
                counter = self._count_heads[pos] + tuples.pack((item,))
                counts[counter] = counts.get(counter, 0) + 1
        for counter, number in counts.items():
            tr.set(counter, number.to_bytes(8, "little", signed=True))
        tr.set(self._total_key, total.to_bytes(8, "little", signed=True))
        return total

    # -- counts ----------------------------------------------------------------

    async def total(self, tr: Transaction, *, snapshot: bool = False) -> int:
        """The number of tuples in the store."""
        return _int64(await tr.get(self._total_key, snapshot=snapshot))

    async def count(
        self, tr: Transaction, position: int, item: Any, *, snapshot: bool = False
    ) -> int:
        """The number of tuples holding ``item`` at ``position``."""
        if type(position) is not int or not 0 <= position < self.n:
            raise NStoreError(f"{self.name}: position is 0 to {self.n - 1}, not {position!r}")
        key = self._count_heads[position] + tuples.pack((item,))
        return _int64(await tr.get(key, snapshot=snapshot))

    async def _estimate(self, tr: Transaction, key: bytes) -> int:
        # Snapshot reads: the plan only orders the work, the results do not
        # depend on it, so hot counters must not make queries conflict.
        try:
            return _int64(await tr.get(key, snapshot=True))
        except AccessedUnreadable:
            # A counter this transaction set with a versionstamp: a stamp
            # belongs to one commit, so it is in few tuples.
            return 1

    # -- reads -----------------------------------------------------------------

    def _prepare(self, pattern: tuple[Any, ...]) -> _Scan:
        bound = frozenset(i for i, x in enumerate(pattern) if not isinstance(x, Variable))
        s = _choose(self.n, bound)
        perm = self.indices[s]
        k = len(bound)
        head = self._heads[s] + b"".join([tuples.pack((pattern[i],)) for i in perm[:k]])
        slots = [(j, pattern[i].name) for j, i in enumerate(perm[k:])]
        return _Scan(head, slots)

    async def _scan(
        self, tr: Transaction, scan: _Scan, seed: Mapping[str, Any], snapshot: bool
    ) -> AsyncIterator[Binding]:
        head, slots = scan
        if not slots:
            # Fully bound: read the exact key. A range scan would miss it
            # (ranges hold the keys that extend a tuple, not the tuple).
            if await tr.get(head, snapshot=snapshot) is not None:
                yield dict(seed)
            return
        skip = len(head)
        # pack(t)+00 .. pack(t)+ff holds exactly the tuples that extend t;
        # found's [pack(t), strinc(pack(t))) also held "title\x00x" for
        # "title" (a string continuing with an escaped NUL).
        async for key, _ in tr.get_range(head + b"\x00", head + b"\xff", snapshot=snapshot):
            rest = tuples.unpack(key, prefix_len=skip)
            row = dict(seed)
            for j, name in slots:
                if name in row and not _same(row[name], rest[j]):
                    break  # a variable repeated in the pattern must match itself
                row[name] = rest[j]
            else:
                yield row

    def select(
        self,
        tr: Transaction,
        *pattern: Any,
        seed: Mapping[str, Any] | None = None,
        snapshot: bool = False,
    ) -> AsyncIterator[Binding]:
        """The bindings of the variables of ``pattern`` for every tuple that
        matches it, each a new dict extending ``seed``, in the key order of
        the index scanned (found's order). Variables named in ``seed`` are
        bound to their seed value. One range scan (one read if ``pattern``
        binds every position).

        Raises:
            NStoreError: not ``n`` items, a variable nested in an item, an
                incomplete versionstamp.
            TupleError: an item the tuple layer cannot encode.
        """
        pattern = self._pattern(pattern, "select")
        seed = dict(seed) if seed else {}
        return self._scan(tr, self._prepare(_substitute(pattern, seed)), seed, snapshot)

    async def _join(
        self,
        tr: Transaction,
        bindings: AsyncIterable[Mapping[str, Any]],
        pattern: tuple[Any, ...],
        snapshot: bool,
    ) -> AsyncIterator[Binding]:
        async for seed in bindings:
            scan = self._prepare(_substitute(pattern, seed))
            async for row in self._scan(tr, scan, seed, snapshot):
                yield row

    def where(
        self,
        tr: Transaction,
        bindings: AsyncIterable[Mapping[str, Any]],
        *pattern: Any,
        snapshot: bool = False,
    ) -> AsyncIterator[Binding]:
        """For each binding of ``bindings``, ``select`` ``pattern`` with that
        binding as seed: a nested-loop join, one scan per input binding,
        streaming (the input is read as the output is consumed).

        Raises:
            NStoreError: as ``select``.
        """
        return self._join(tr, bindings, self._pattern(pattern, "where"), snapshot)

    def query(
        self,
        tr: Transaction,
        pattern: Sequence[Any],
        *patterns: Sequence[Any],
        snapshot: bool = False,
        planned: bool = True,
    ) -> AsyncIterator[Binding]:
        """The bindings that match every pattern at once, streamed.

        With ``planned`` (the default) the patterns are joined in the order
        ``plan`` chooses; otherwise left to right, as found does. The set
        of results is the same; their order is not.

        Raises:
            NStoreError: as ``select``, for any of the patterns.
        """
        checked = [self._pattern(p, "query") for p in (pattern, *patterns)]
        return self._query(tr, checked, snapshot, planned)

    async def _query(
        self, tr: Transaction, patterns: list[tuple[Any, ...]], snapshot: bool, planned: bool
    ) -> AsyncIterator[Binding]:
        if planned and len(patterns) > 1:
            patterns = [p for p, _ in await self._plan(tr, patterns)]
        rows = self._scan(tr, self._prepare(patterns[0]), {}, snapshot)
        for pattern in patterns[1:]:
            rows = self._join(tr, rows, pattern, snapshot)
        async for row in rows:
            yield row

    async def plan(self, tr: Transaction, pattern: Sequence[Any], *patterns: Sequence[Any]) -> Plan:
        """The order ``query`` joins the patterns in, each with the index it
        scans: ``[(pattern, index_no), ...]``.

        The first pattern is the most selective: the fewest tuples by the
        store's counts (a pattern's count is the smallest count of its known
        items, the total if it has none). Each next one shares a variable
        with those before when one can, the cheapest first (see ``_order``).
        The index of each binds all its known positions — constants and
        variables bound by the patterns before it — as its key prefix.
        Counts are read as snapshot reads: planning adds no conflicts.
        """
        checked = [self._pattern(p, "plan") for p in (pattern, *patterns)]
        return await self._plan(tr, checked)

    async def _plan(self, tr: Transaction, patterns: list[tuple[Any, ...]]) -> Plan:
        wanted: dict[bytes, int] = {self._total_key: 0}
        per_pattern: list[list[bytes]] = []
        for pattern in patterns:
            keys = [
                self._count_heads[pos] + tuples.pack((x,))
                for pos, x in enumerate(pattern)
                if not isinstance(x, Variable)
            ]
            per_pattern.append(keys)
            wanted.update(dict.fromkeys(keys, 0))
        numbers = await asyncio.gather(*(self._estimate(tr, key) for key in wanted))
        found = dict(zip(wanted, numbers, strict=True))
        counts = [min((found[k] for k in keys), default=None) for keys in per_pattern]
        plan: Plan = []
        known: set[str] = set()
        for i in _order(patterns, counts, found[self._total_key]):
            pattern = patterns[i]
            bound = frozenset(
                pos
                for pos, x in enumerate(pattern)
                if not isinstance(x, Variable) or x.name in known
            )
            plan.append((pattern, _choose(self.n, bound)))
            known |= _names(pattern)
        return plan
