"""Subspaces: key prefixes as the composition primitive of layers.

A subspace is a prefix made by packing a tuple. Layers take a subspace and
build every key they use from it, so two layers in two subspaces can never
collide, and a whole layer is cleared with one range.
"""

from __future__ import annotations

from typing import Any

from shale import tuple as tuples

__all__ = ["Subspace"]


class Subspace:
    """Keys under ``raw_prefix + pack(prefix)``.

    ``Subspace(("app", 1))["users"]`` nests; ``pack``, ``unpack``, ``range``
    and ``contains`` translate between tuples and keys.
    """

    __slots__ = ("raw_prefix",)

    def __init__(self, prefix: tuple[Any, ...] = (), raw_prefix: bytes = b"") -> None:
        if not isinstance(prefix, tuple):
            raise TypeError(f"a subspace prefix is a tuple, not {type(prefix).__name__}")
        self.raw_prefix = raw_prefix + tuples.pack(prefix)

    def __repr__(self) -> str:
        return f"Subspace(raw_prefix={self.raw_prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subspace) and other.raw_prefix == self.raw_prefix

    def __hash__(self) -> int:
        return hash(self.raw_prefix)

    def __getitem__(self, name: Any) -> Subspace:
        return Subspace((name,), self.raw_prefix)

    def subspace(self, items: tuple[Any, ...]) -> Subspace:
        """The subspace nested under this one at ``items``."""
        return Subspace(items, self.raw_prefix)

    def key(self) -> bytes:
        """The raw prefix itself."""
        return self.raw_prefix

    def pack(self, items: tuple[Any, ...] = ()) -> bytes:
        """The key of ``items`` in this subspace."""
        return self.raw_prefix + tuples.pack(items)

    def pack_with_versionstamp(self, items: tuple[Any, ...]) -> bytes:
        """Like ``pack`` for a tuple holding one incomplete ``Versionstamp``;
        feed the result to ``set_versionstamped_key``."""
        return tuples.pack_with_versionstamp(items, prefix=self.raw_prefix)

    def unpack(self, key: bytes) -> tuple[Any, ...]:
        """The tuple a key of this subspace encodes.

        Raises:
            ValueError: ``key`` is not in this subspace.
        """
        if not self.contains(key):
            raise ValueError(f"key {key[:40]!r} is not in {self!r}")
        return tuples.unpack(key, prefix_len=len(self.raw_prefix))

    def range(self, items: tuple[Any, ...] = ()) -> tuple[bytes, bytes]:
        """``(begin, end)`` of every key that extends ``items`` in this
        subspace (the key of ``items`` itself excluded)."""
        base = self.pack(items)
        return base + b"\x00", base + b"\xff"

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` starts with this subspace's prefix."""
        return key.startswith(self.raw_prefix)
