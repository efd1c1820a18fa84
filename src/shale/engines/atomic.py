"""Atomic-operation semantics, shared by every engine that has none natively.

The rules are FoundationDB's (its ``MutationType`` documentation): integers
are little-endian; an existing value is zero-extended or truncated to the
parameter's length; a missing value is zeros, except for the operations
noted, which store the parameter itself.
"""

from __future__ import annotations

import struct

from shale.engines.base import Mutation, MutationType

__all__ = ["MAX_VALUE_SIZE", "apply_atomic", "apply_versionstamp", "is_atomic"]

MAX_VALUE_SIZE = 100_000

_OFFSET = struct.Struct("<I")

_ATOMIC = frozenset(
    {
        MutationType.ADD,
        MutationType.BIT_AND,
        MutationType.BIT_OR,
        MutationType.BIT_XOR,
        MutationType.APPEND_IF_FITS,
        MutationType.MAX,
        MutationType.MIN,
        MutationType.BYTE_MAX,
        MutationType.BYTE_MIN,
        MutationType.COMPARE_AND_CLEAR,
    }
)


def is_atomic(op: MutationType) -> bool:
    """Whether ``op`` needs the stored value to compute its result."""
    return op in _ATOMIC


def _resized(old: bytes, size: int) -> int:
    return int.from_bytes(old[:size].ljust(size, b"\x00"), "little")


def apply_atomic(op: MutationType, old: bytes | None, param: bytes) -> bytes | None:
    """The value after applying ``op`` with ``param`` to ``old`` (``None``: absent).

    Returns ``None`` when the result is that the key is cleared.
    """
    size = len(param)
    if op is MutationType.COMPARE_AND_CLEAR:
        return None if old == param else old
    if op is MutationType.APPEND_IF_FITS:
        base = old or b""
        return base + param if len(base) + size <= MAX_VALUE_SIZE else base
    if old is None and op in (
        MutationType.BIT_AND,
        MutationType.MIN,
        MutationType.BYTE_MIN,
        MutationType.BYTE_MAX,
    ):
        return param
    if op is MutationType.BYTE_MAX:
        assert old is not None
        return max(old, param)
    if op is MutationType.BYTE_MIN:
        assert old is not None
        return min(old, param)
    current = _resized(old or b"", size)
    operand = int.from_bytes(param, "little")
    if op is MutationType.ADD:
        result = (current + operand) % (1 << (8 * size)) if size else 0
    elif op is MutationType.BIT_AND:
        result = current & operand
    elif op is MutationType.BIT_OR:
        result = current | operand
    elif op is MutationType.BIT_XOR:
        result = current ^ operand
    elif op is MutationType.MAX:
        result = max(current, operand)
    elif op is MutationType.MIN:
        result = min(current, operand)
    else:
        raise ValueError(f"not an atomic operation: {op!r}")
    return result.to_bytes(size, "little")


def apply_versionstamp(data: bytes, stamp: bytes) -> bytes:
    """Replace the 10 bytes at the offset named by ``data``'s last 4 bytes.

    The offset was validated when the operation was recorded, so it is in
    range here.
    """
    (offset,) = _OFFSET.unpack_from(data, len(data) - 4)
    body = data[:-4]
    return body[:offset] + stamp + body[offset + 10 :]


def materialize(mutation: Mutation, stamp: bytes) -> Mutation:
    """Turn a versionstamped mutation into a plain ``SET`` once ``stamp`` is known."""
    op, key, param = mutation
    if op is MutationType.SET_VERSIONSTAMPED_KEY:
        return (MutationType.SET, apply_versionstamp(key, stamp), param)
    if op is MutationType.SET_VERSIONSTAMPED_VALUE:
        return (MutationType.SET, key, apply_versionstamp(param, stamp))
    return mutation
