"""Every layer records its format version in its subspace and checks it on open.

As FoundationDB's directory layer does: a newer major version is refused
(the layout changed in a way this code cannot read), a newer minor version
is opened read-only (this code can read it but could break what the newer
code added).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from shale import tuple as tuples
from shale.core.database import Database
from shale.core.transaction import Transaction
from shale.errors import FormatVersionError, ReadOnlyError

__all__ = ["FormattedLayer", "LayerFormat", "check_format", "refuse_if_read_only"]


@dataclass(frozen=True, slots=True)
class LayerFormat:
    """A layer's name and the ``(major, minor)`` version this code writes."""

    name: str
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.name} {self.major}.{self.minor}"


async def _check(tr: Transaction, key: bytes, expected: LayerFormat) -> bool:
    raw = await tr.get(key)
    if raw is None:
        tr.set(key, tuples.pack((expected.name, expected.major, expected.minor)))
        return True
    try:
        name, major, minor = tuples.unpack(raw)
    except ValueError:
        raise FormatVersionError(f"unreadable {expected.name} metadata at {key!r}") from None
    if name != expected.name:
        raise FormatVersionError(
            f"the subspace at {key!r} holds a {name} layer, not {expected.name}"
        )
    if major > expected.major:
        raise FormatVersionError(
            f"this {name} has format {major}.{minor}, newer than this Shale reads "
            f"({expected.major}.x); upgrade shaledb"
        )
    return (major, minor) <= (expected.major, expected.minor)


async def check_format(db_or_tr: Database | Transaction, key: bytes, expected: LayerFormat) -> bool:
    """Check (or, on first use, write) the format stored at ``key``.

    Returns whether the layer may write (``False``: open read-only).

    Raises:
        FormatVersionError: a newer major version, another layer, or garbage.
    """
    if isinstance(db_or_tr, Transaction):
        return await _check(db_or_tr, key, expected)
    return await db_or_tr.transact(_check, key, expected)


def refuse_if_read_only(writable: bool, what: LayerFormat) -> None:
    """Raise ``ReadOnlyError`` for a write to a layer opened read-only."""
    if not writable:
        raise ReadOnlyError(
            f"this {what.name} was written by a newer Shale (minor format above "
            f"{what.major}.{what.minor}) and is open read-only"
        )


class FormattedLayer:
    """What every layer handle shares about its format version: where it is
    stored (``_meta_key``, set by the subclass), the check on open, and
    whether the handle may write."""

    __slots__ = ("_meta_key", "_writable")
    FORMAT: ClassVar[LayerFormat]
    _meta_key: bytes

    @property
    def writable(self) -> bool:
        """``False`` when opened on a newer minor format: writes then raise
        ``ReadOnlyError``. A handle no check has looked at yet (as found's
        ``make()`` builds) may write."""
        return getattr(self, "_writable", True)

    async def _check_format(self, db_or_tr: Database | Transaction) -> None:
        self._writable = await check_format(db_or_tr, self._meta_key, self.FORMAT)

    def _require_writable(self) -> None:
        refuse_if_read_only(self.writable, self.FORMAT)
