"""Key selectors: keys named by their position relative to another key."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeySelector"]


@dataclass(frozen=True, slots=True)
class KeySelector:
    """FoundationDB's key selector.

    It resolves to: the last key ``< key`` (``<= key`` if ``or_equal``), then
    ``offset`` keys forward (backward if negative). Resolving before the
    first key gives ``b""``; past the last key, ``b"\\xff"``.
    """

    key: bytes
    or_equal: bool
    offset: int

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError(f"a key selector's key must be bytes, not {type(self.key).__name__}")

    @classmethod
    def last_less_than(cls, key: bytes) -> KeySelector:
        return cls(key, False, 0)

    @classmethod
    def last_less_or_equal(cls, key: bytes) -> KeySelector:
        return cls(key, True, 0)

    @classmethod
    def first_greater_than(cls, key: bytes) -> KeySelector:
        return cls(key, True, 1)

    @classmethod
    def first_greater_or_equal(cls, key: bytes) -> KeySelector:
        return cls(key, False, 1)

    def __add__(self, offset: int) -> KeySelector:
        return KeySelector(self.key, self.or_equal, self.offset + offset)

    def __sub__(self, offset: int) -> KeySelector:
        return KeySelector(self.key, self.or_equal, self.offset - offset)
