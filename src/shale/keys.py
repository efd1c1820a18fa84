"""Key arithmetic shared by every level, from engines to layers.

It imports nothing from the rest of Shale, so engines can use it without
depending on the core above them.
"""

from __future__ import annotations

from shale.errors import UsageError

__all__ = ["strinc"]


def strinc(key: bytes) -> bytes:
    """The first key after every key that starts with ``key`` (FDB's ``strinc``)."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        raise UsageError("a key made only of 0xFF bytes has no next prefix")
    return stripped[:-1] + bytes((stripped[-1] + 1,))
