"""A versioned n-tuple store: tuples change only through change sets, and a
change takes its place in history when the transaction applying it commits.

A change is created, filled with ``add``/``remove`` (in one or several
transactions) and applied. Until applied it is invisible; once applied it is
history: its significance is the **commit versionstamp** of the applying
transaction, so the order of applied changes is their commit order and
``ask``/``select`` answer as if the changes had been applied one after the
other in that order. ``as_of=changeid`` answers as the store stood right
after that change (time travel).

Layout under the prefix ``P`` (flattened, as found's vnstore)::

    (*P, "meta")                  -> ("vnstore", major, minor)
    (*P, "columns")               -> the column names
    (*P, "change", cid)           -> (message,)         written by change_create
    (*P, "significance", cid)     -> (Versionstamp,)    set_versionstamped_value at apply
    (*P, "applied", Versionstamp) -> (cid,)             set_versionstamped_key at apply: the log
    (*P, "tuples", ...)           an NStore of (*items, cid, alive)

``docs/vnstore.md`` has the byte layout and the serializability argument.

Errors (all misuse: retrying the transaction cannot help)::

    UsageError
    └── VNStoreError                    wrong number of items, bad columns or message,
        │                               history() in a transaction that applied a change
        ├── NoActiveChange              add/remove with no change to write to
        ├── ChangeNotFound (KeyError)   no change has that id
        ├── ChangeApplied               the change is history and cannot be edited
        └── ChangeNotApplied            as_of a change that is not applied
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple
from uuid import UUID

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import UsageError
from shale.layers.format import LayerFormat, check_format, refuse_if_read_only
from shale.layers.nstore import NStore, Variable, var
from shale.subspace import Subspace
from shale.tuple import Versionstamp

__all__ = [
    "FORMAT",
    "Change",
    "ChangeApplied",
    "ChangeNotApplied",
    "ChangeNotFound",
    "Event",
    "NoActiveChange",
    "VNStore",
    "VNStoreError",
    "Variable",
    "var",
]

FORMAT: Final = LayerFormat("vnstore", 1, 0)

# Variables of the internal nstore patterns. User columns get their position
# as a name ("0", "1", ...), so a user variable can never shadow them.
_CID: Final = "cid"
_ALIVE: Final = "alive"
_MAX_APPLIES: Final = 0xFFFF + 1  # user versions per transaction and store


class VNStoreError(UsageError):
    """Root of the vnstore layer's errors; raised itself for a call that can
    never succeed (wrong number of items, bad columns or message)."""


class NoActiveChange(VNStoreError):
    """``add``/``remove`` without ``change=`` and no active change in the
    transaction (``change_create`` or ``change_continue`` sets it)."""


class ChangeNotFound(VNStoreError, KeyError):
    """No change has this id in the store."""


class ChangeApplied(VNStoreError):
    """The change is applied: it is history, so it can no longer be edited."""


class ChangeNotApplied(VNStoreError):
    """``as_of`` names a change that is not applied, so it has no place in history."""


class Change(NamedTuple):
    """A change set. ``significance`` is ``None`` until applied; then the
    complete commit versionstamp of the applying transaction, or, inside that
    transaction before it commits, an incomplete one (which sorts after
    every complete stamp: the change is the newest)."""

    uid: UUID
    message: str | None
    significance: Versionstamp | None

    @property
    def applied(self) -> bool:
        return self.significance is not None


class Event(NamedTuple):
    """What one change does to one tuple: add it (``alive``) or remove it."""

    items: tuple[Any, ...]
    alive: bool


# -- per-transaction state ---------------------------------------------------
#
# The active change and the changes applied by a transaction live beside the
# transaction, not in the database: the significance of a change applied in
# this transaction is written by a versionstamp operation and so cannot be
# read back before commit (AccessedUnreadable). The state is keyed weakly by
# the transaction and per store prefix, so several handles on one store in
# one transaction share it. ``get_versionstamp()``'s future is the validity
# token: the core resolves or fails it on commit, reset and close, and a
# finished token means the state belongs to an attempt that is over.


@dataclass(slots=True)
class _Local:
    token: asyncio.Future[bytes]
    active: UUID | None = None
    pending: dict[UUID, int] = field(default_factory=dict)  # applied here -> user version
    editable: set[UUID] = field(default_factory=set)  # known to exist and be unapplied


_LOCALS: Final[weakref.WeakKeyDictionary[Transaction, dict[bytes, _Local]]] = (
    weakref.WeakKeyDictionary()
)


def _retrieve(future: asyncio.Future[bytes]) -> None:
    # A transaction that writes nothing fails its stamp future; nobody else
    # may be waiting on it, and asyncio would log the failure as unhandled.
    if not future.cancelled():
        future.exception()


def _local(tr: Transaction, store: bytes) -> _Local | None:
    stores = _LOCALS.get(tr)
    if stores is None:
        return None
    local = stores.get(store)
    if local is not None and local.token.done():
        del stores[store]
        return None
    return local


def _local_for_write(tr: Transaction, store: bytes) -> _Local:
    local = _local(tr, store)
    if local is None:
        token = tr.get_versionstamp()
        token.add_done_callback(_retrieve)
        local = _Local(token)
        _LOCALS.setdefault(tr, {})[store] = local
    return local


def _bind(
    pattern: Sequence[Any], values: Sequence[Any], seed: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Bindings of ``pattern``'s variables to ``values`` on top of ``seed``;
    ``None`` when a variable would take two different values."""
    out = dict(seed) if seed else {}
    for item, value in zip(pattern, values, strict=True):
        if isinstance(item, Variable):
            if item.name in out and tuples.pack((out[item.name],)) != tuples.pack((value,)):
                return None  # as nstore: 1, 1.0 and True are different items
            out[item.name] = value
    return out


class VNStore:
    """A versioned store of tuples with ``len(columns)`` items.

    ``VNStore(prefix, columns)`` makes a handle without touching the
    database; ``await VNStore.open(db_or_tr, prefix, columns)`` also checks
    (or records) the format version and the column count.
    """

    def __init__(
        self,
        prefix: tuple[Any, ...] | Subspace,
        columns: Sequence[str],
        *,
        name: str = "vnstore",
    ) -> None:
        if isinstance(columns, str):  # tuple("abc") would silently make three columns
            raise VNStoreError(f"columns are a sequence of names, not the str {columns!r}")
        columns = tuple(columns)
        if not columns or not all(isinstance(c, str) for c in columns):
            raise VNStoreError(f"columns are one or more names (str), not {columns!r}")
        if len(set(columns)) != len(columns):
            raise VNStoreError(f"column names must be distinct: {columns!r}")
        self.name = name
        self.columns: tuple[str, ...] = columns
        self.subspace = prefix if isinstance(prefix, Subspace) else Subspace(tuple(prefix))
        self.tuples = NStore(self.subspace["tuples"], len(columns) + 2, name=f"{name}-tuples")
        self.writable = True
        self._key = self.subspace.key()

    def __repr__(self) -> str:
        return f"VNStore({self.name!r}, {self.subspace!r}, columns={self.columns!r})"

    @classmethod
    async def open(
        cls,
        db_or_tr: Database | Transaction,
        prefix: tuple[Any, ...] | Subspace,
        columns: Sequence[str],
        *,
        name: str = "vnstore",
    ) -> VNStore:
        """A handle after checking the stored format: a newer major version
        raises ``FormatVersionError``, a newer minor opens read-only.

        Raises:
            FormatVersionError: newer major format, or another layer here.
            VNStoreError: the store holds tuples of another length.
        """
        store = cls(prefix, columns, name=name)
        if isinstance(db_or_tr, Transaction):
            await store._open(db_or_tr)
        else:
            await db_or_tr.transact(store._open)
        return store

    async def _open(self, tr: Transaction) -> None:
        self.writable = await check_format(tr, self.subspace.pack(("meta",)), FORMAT)
        key = self.subspace.pack(("columns",))
        stored = await tr.get(key)
        if stored is None:
            if self.writable:
                tr.set(key, tuples.pack(self.columns))
        elif len(tuples.unpack(stored)) != len(self.columns):
            raise VNStoreError(
                f"this vnstore holds {len(tuples.unpack(stored))} columns "
                f"{tuples.unpack(stored)!r}, not {len(self.columns)}"
            )
        self.tuples = await NStore.open(
            tr, self.subspace["tuples"], len(self.columns) + 2, name=f"{self.name}-tuples"
        )

    # -- keys and checks -----------------------------------------------------

    def _change_key(self, cid: UUID) -> bytes:
        return self.subspace.pack(("change", cid))

    def _significance_key(self, cid: UUID) -> bytes:
        return self.subspace.pack(("significance", cid))

    def _check_arity(self, items: Sequence[Any], what: str) -> None:
        if len(items) != len(self.columns):
            raise VNStoreError(
                f"a {what} of this vnstore has {len(self.columns)} items "
                f"{self.columns!r}, not {len(items)}: {tuple(items)!r}"
            )

    def _check_writable(self) -> None:
        refuse_if_read_only(self.writable, FORMAT)

    async def _message(self, tr: Transaction, cid: UUID) -> tuple[str | None]:
        raw = await tr.get(self._change_key(cid))
        if raw is None:
            raise ChangeNotFound(f"no change {cid} in {self.name}")
        message: str | None = tuples.unpack(raw)[0]
        return (message,)

    async def _significance(self, tr: Transaction, cid: UUID) -> Versionstamp | None:
        local = _local(tr, self._key)
        if local is not None and cid in local.pending:
            return Versionstamp.incomplete(local.pending[cid])
        raw = await tr.get(self._significance_key(cid))
        if raw is None:
            return None
        stamp: Versionstamp = tuples.unpack(raw)[0]
        return stamp

    async def _editable(self, tr: Transaction, change: UUID | None) -> UUID:
        """The change a write goes to: ``change`` or the active one, checked
        to exist and not to be applied (an applied change is history)."""
        local = _local_for_write(tr, self._key)
        cid = change if change is not None else local.active
        if cid is None:
            raise NoActiveChange(
                f"no active change for {self.name} in this transaction: call "
                "change_create or change_continue first, or pass change="
            )
        if cid in local.editable and cid not in local.pending:
            return cid
        await self._message(tr, cid)
        if await self._significance(tr, cid) is not None:
            raise ChangeApplied(f"change {cid} is applied; create a new change to edit {self.name}")
        local.editable.add(cid)
        return cid

    # -- changes -------------------------------------------------------------

    async def change_create(self, tr: Transaction, message: str | None = None) -> UUID:
        """A new, unapplied change, which becomes the transaction's active change."""
        self._check_writable()
        if message is not None and not isinstance(message, str):
            raise VNStoreError(f"a change message is a str, not {type(message).__name__}")
        local = _local_for_write(tr, self._key)
        cid = uuid.uuid4()
        tr.set(self._change_key(cid), tuples.pack((message,)))
        local.active = cid
        local.editable.add(cid)
        return cid

    async def change_continue(self, tr: Transaction, cid: UUID) -> None:
        """Make ``cid`` the active change of this transaction for ``add``/``remove``.

        Raises:
            ChangeNotFound, ChangeApplied.
        """
        await self._editable(tr, cid)
        _local_for_write(tr, self._key).active = cid

    async def change_message(self, tr: Transaction, cid: UUID, message: str | None) -> None:
        """Replace the message of ``cid`` (applied or not: it is not history)."""
        self._check_writable()
        if message is not None and not isinstance(message, str):
            raise VNStoreError(f"a change message is a str, not {type(message).__name__}")
        await self._message(tr, cid)
        tr.set(self._change_key(cid), tuples.pack((message,)))

    async def change_get(self, tr: Transaction, cid: UUID) -> Change | None:
        """The change ``cid``, or ``None`` if there is none."""
        try:
            (message,) = await self._message(tr, cid)
        except ChangeNotFound:
            return None
        return Change(cid, message, await self._significance(tr, cid))

    async def change_list(self, tr: Transaction) -> list[Change]:
        """Every change, applied or not, ordered by id."""
        out = []
        async for key, value in tr.get_range(*self.subspace.range(("change",))):
            cid = self.subspace.unpack(key)[1]
            out.append(Change(cid, tuples.unpack(value)[0], await self._significance(tr, cid)))
        return out

    async def change_changes(self, tr: Transaction, cid: UUID) -> list[Event]:
        """What ``cid`` does: one event per tuple it adds or removes."""
        await self._message(tr, cid)
        names = [var(str(i)) for i in range(len(self.columns))]
        out = []
        async for row in self.tuples.select(tr, *names, cid, var(_ALIVE)):
            out.append(Event(tuple(row[v.name] for v in names), row[_ALIVE]))
        return out

    async def change_apply(self, tr: Transaction, cid: UUID) -> None:
        """Apply ``cid``: it becomes visible, ordered by this transaction's
        commit. Applying an applied change does nothing (as in found).

        Raises:
            ChangeNotFound: no such change.
        """
        self._check_writable()
        local = _local_for_write(tr, self._key)
        if cid in local.pending:
            return
        await self._message(tr, cid)
        if await self._significance(tr, cid) is not None:
            return
        order = len(local.pending)
        if order >= _MAX_APPLIES:
            raise VNStoreError(
                f"one transaction can apply at most {_MAX_APPLIES} changes of one vnstore"
            )
        stamp = Versionstamp.incomplete(order)
        tr.set_versionstamped_value(
            self._significance_key(cid), tuples.pack_with_versionstamp((stamp,))
        )
        tr.set_versionstamped_key(
            self.subspace.pack_with_versionstamp(("applied", stamp)), tuples.pack((cid,))
        )
        local.pending[cid] = order
        local.editable.discard(cid)

    async def history(self, tr: Transaction, *, reverse: bool = False) -> AsyncIterator[Change]:
        """The applied changes in commit order (newest first if ``reverse``).

        Raises:
            VNStoreError: this transaction applied a change of this
                store; its log key is unknown until commit.
        """
        local = _local(tr, self._key)
        if local is not None and local.pending:
            raise VNStoreError(
                f"this transaction applied changes of {self.name}; their place in the "
                "log is known only after commit, so read the history in another transaction"
            )
        async for key, value in tr.get_range(*self.subspace.range(("applied",)), reverse=reverse):
            stamp = self.subspace.unpack(key)[1]
            cid = tuples.unpack(value)[0]
            (message,) = await self._message(tr, cid)
            yield Change(cid, message, stamp)

    # -- tuples --------------------------------------------------------------

    async def add(
        self, tr: Transaction, *items: Any, value: bytes = b"", change: UUID | None = None
    ) -> None:
        """Add ``items`` in ``change`` (default: the active change). A change
        holds one event per tuple: this replaces its earlier remove.

        Raises:
            VNStoreError, NoActiveChange, ChangeNotFound, ChangeApplied.
        """
        self._check_writable()
        self._check_arity(items, "tuple")
        cid = await self._editable(tr, change)
        await self.tuples.remove(tr, *items, cid, False)
        await self.tuples.add(tr, *items, cid, True, value=value)

    async def remove(self, tr: Transaction, *items: Any, change: UUID | None = None) -> bool:
        """Remove ``items`` in ``change`` (default: the active change).

        Undoes the change's own ``add`` of ``items``, and records a removal
        if ``items`` is alive in the applied history. Returns whether either
        happened (``False``: nothing to remove).

        Raises:
            VNStoreError, NoActiveChange, ChangeNotFound, ChangeApplied.
        """
        self._check_writable()
        self._check_arity(items, "tuple")
        cid = await self._editable(tr, change)
        own = await self.tuples.get(tr, *items, cid, True) is not None
        if own:
            await self.tuples.remove(tr, *items, cid, True)
        alive = await self.ask(tr, *items)
        if alive:
            await self.tuples.add(tr, *items, cid, False)
        return own or alive

    async def _limit(self, tr: Transaction, as_of: UUID | None) -> Versionstamp | None:
        if as_of is None:
            return None
        significance = await self._significance(tr, as_of)
        if significance is None:
            await self._message(tr, as_of)
            raise ChangeNotApplied(f"change {as_of} is not applied, so it has no place in history")
        return significance

    async def _decide(
        self,
        tr: Transaction,
        items: Sequence[Any],
        limit: Versionstamp | None,
        seen: dict[UUID, Versionstamp | None],
    ) -> tuple[UUID, bool] | None:
        """The applied event (change, alive) that decides ``items``: the one
        with the greatest significance not above ``limit``."""
        best: tuple[UUID, bool] | None = None
        best_significance: Versionstamp | None = None
        async for row in self.tuples.select(tr, *items, var(_CID), var(_ALIVE)):
            cid = row[_CID]
            if cid not in seen:
                seen[cid] = await self._significance(tr, cid)
            significance = seen[cid]
            if significance is None or (limit is not None and significance > limit):
                continue
            if best_significance is None or significance > best_significance:
                best, best_significance = (cid, row[_ALIVE]), significance
        return best

    async def ask(self, tr: Transaction, *items: Any, as_of: UUID | None = None) -> bool:
        """Whether ``items`` is alive: added by the latest applied change that
        touched it (considering only changes up to ``as_of``)."""
        self._check_arity(items, "tuple")
        decided = await self._decide(tr, items, await self._limit(tr, as_of), {})
        return decided is not None and decided[1]

    async def _select(
        self,
        tr: Transaction,
        pattern: Sequence[Any],
        seed: Mapping[str, Any] | None,
        limit: Versionstamp | None,
        seen: dict[UUID, Versionstamp | None],
    ) -> AsyncIterator[dict[str, Any]]:
        inner = [var(str(i)) if isinstance(p, Variable) else p for i, p in enumerate(pattern)]
        async for row in self.tuples.select(tr, *inner, var(_CID), var(_ALIVE)):
            if not row[_ALIVE]:
                continue
            values = [row[str(i)] if isinstance(p, Variable) else p for i, p in enumerate(pattern)]
            bindings = _bind(pattern, values, seed)
            # Each live tuple is yielded once, at the event that decides it.
            if bindings is not None and await self._decide(tr, values, limit, seen) == (
                row[_CID],
                True,
            ):
                yield bindings

    async def select(
        self,
        tr: Transaction,
        *pattern: Any,
        seed: Mapping[str, Any] | None = None,
        as_of: UUID | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Bindings of ``pattern``'s variables for every live tuple matching
        it, on top of ``seed``; a variable used twice must match twice."""
        self._check_arity(pattern, "pattern")
        limit = await self._limit(tr, as_of)
        async for bindings in self._select(tr, pattern, seed, limit, {}):
            yield bindings

    async def where(
        self,
        tr: Transaction,
        bindings: AsyncIterable[dict[str, Any]],
        *pattern: Any,
        as_of: UUID | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """For each of ``bindings``, ``select`` ``pattern`` with the bound
        variables substituted (a nested-loop join)."""
        self._check_arity(pattern, "pattern")
        limit = await self._limit(tr, as_of)
        seen: dict[UUID, Versionstamp | None] = {}
        async for seed in bindings:
            bound = [
                seed[p.name] if isinstance(p, Variable) and p.name in seed else p for p in pattern
            ]
            async for out in self._select(tr, bound, seed, limit, seen):
                yield out

    def query(
        self,
        tr: Transaction,
        pattern: Sequence[Any],
        *patterns: Sequence[Any],
        as_of: UUID | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """``select`` the first pattern, then ``where`` each further one."""
        out = self.select(tr, *pattern, as_of=as_of)
        for other in patterns:
            out = self.where(tr, out, *other, as_of=as_of)
        return out
