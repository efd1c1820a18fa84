"""The FoundationDB tuple encoding: order-preserving keys built from typed values.

``pack`` turns a tuple of values into bytes whose bytewise order is the order of the values
(type first, then value), and ``unpack`` turns them back. The output is byte-for-byte the
one of the official ``fdb.tuple`` for every standard type, so keys written by Shale can be
read by FoundationDB's own bindings and the other way round. ``docs/tuple.md`` lists every
type code with an example that the test suite checks.

This module depends on nothing else in Shale. ``pack`` and ``unpack`` run in C when the
optional extension ``shale._tuple_accel`` was built (``ACCELERATED`` tells; the environment
variable ``SHALE_PURE_TUPLE=1`` turns it off). It hands every error and every rare type to
the pure-Python code here, so results and messages are the same either way.

Errors::

    ValueError
     └── TupleError     every value this module cannot encode or decode: an unsupported type,
                        an integer beyond 255 bytes, truncated or malformed bytes, a missing or
                        extra incomplete Versionstamp, an invalid Versionstamp argument
    TypeError           an argument of the wrong kind: ``pack`` of something that is not a
                        tuple or list, ``unpack`` of something that is not bytes, a
                        ``Versionstamp`` or ``SingleFloat`` built from the wrong type

Differences from ``fdb.tuple``, each deliberate:

* ``pack`` also accepts a list at the top level, and ``prefix`` must be bytes (not None).
* ``range`` returns a ``(start, stop)`` pair of bytes rather than a ``slice``.
* ``unpack`` rejects a string, byte string or nested tuple that lacks its terminator instead
  of reading to the end of the input, so a damaged key is reported, not misread.
* A ``Versionstamp`` whose transaction version is the placeholder ``ff`` x 10 *is* the
  incomplete stamp: both pack to the same bytes, so they compare equal and ``unpack`` gives
  back what ``pack`` was given.
* ``ctypes.c_float`` / ``ctypes.c_double`` are not accepted; use ``SingleFloat`` / ``float``.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import os
import struct
import uuid
from collections.abc import Callable
from types import NotImplementedType
from typing import Any, Final, TypeAlias

__all__ = [
    "ACCELERATED",
    "BYTES_CODE",
    "DOUBLE_CODE",
    "FALSE_CODE",
    "FLOAT_CODE",
    "INT_ZERO_CODE",
    "NEG_INT_START",
    "NESTED_CODE",
    "NULL_CODE",
    "POS_INT_END",
    "STRING_CODE",
    "TRUE_CODE",
    "UUID_CODE",
    "VERSIONSTAMP_CODE",
    "SingleFloat",
    "TupleError",
    "Versionstamp",
    "compare",
    "has_incomplete_versionstamp",
    "pack",
    "pack_with_versionstamp",
    "range",
    "unpack",
]

# `range` below is the public name FoundationDB users expect; module code uses this one.
_builtin_range = builtins.range

NULL_CODE: Final = 0x00
BYTES_CODE: Final = 0x01
STRING_CODE: Final = 0x02
NESTED_CODE: Final = 0x05
NEG_INT_START: Final = 0x0B
INT_ZERO_CODE: Final = 0x14
POS_INT_END: Final = 0x1D
FLOAT_CODE: Final = 0x20
DOUBLE_CODE: Final = 0x21
FALSE_CODE: Final = 0x26
TRUE_CODE: Final = 0x27
UUID_CODE: Final = 0x30
VERSIONSTAMP_CODE: Final = 0x33

Packable: TypeAlias = "tuple[Any, ...] | list[Any]"

# Python's rule (not Java's): |v| >= 2**64 - 1 already takes the 0x1d / 0x0b codes.
_INT_LIMIT: Final = (1 << 64) - 1
_MAX_INT_BYTES: Final = 255
_POS_HEADS: Final = [bytes([INT_ZERO_CODE + n]) for n in _builtin_range(9)]
_NEG_HEADS: Final = [bytes([INT_ZERO_CODE - n]) for n in _builtin_range(9)]
# One's-complement offsets for negative ints, indexed by byte length.
_MASKS: Final = [(1 << (8 * n)) - 1 for n in _builtin_range(_MAX_INT_BYTES + 1)]
_SIGN64: Final = 1 << 63
_SIGN32: Final = 1 << 31
_ALL32: Final = (1 << 32) - 1

_STRUCT_D: Final = struct.Struct(">d")
_STRUCT_Q_SIGNED: Final = struct.Struct(">q")
_STRUCT_CODE_Q: Final = struct.Struct(">BQ")
_STRUCT_CODE_I: Final = struct.Struct(">BI")
_STRUCT_Q: Final = struct.Struct(">Q")
_STRUCT_I: Final = struct.Struct(">I")
_STRUCT_F: Final = struct.Struct(">f")
_STRUCT_H: Final = struct.Struct(">H")
_STRUCT_OFFSET: Final = struct.Struct("<I")

_PLACEHOLDER: Final = b"\xff" * 10

# Bound once: looking the classmethod up on int costs more than the conversion. Byte order
# is big-endian throughout; since Python 3.11 that is the default of to_bytes / from_bytes.
_from_bytes: Final = int.from_bytes


class TupleError(ValueError):
    """A value that cannot be tuple-encoded, or bytes that are not a valid tuple encoding."""


@functools.total_ordering
class SingleFloat:
    """An IEEE 754 single-precision float, packed with type code 0x20.

    Plain Python floats pack as doubles (0x21); wrap a value in ``SingleFloat`` to store the
    4-byte form. The value is rounded to float32 on construction (overflow gives infinity).
    Equality, hashing and ordering follow the packed bytes, so ``-0.0 != 0.0``, a NaN equals
    a NaN with the same bits, and NaNs sort beyond the infinities.
    """

    __slots__ = ("_bits",)

    def __init__(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"SingleFloat needs an int or float, got {type(value).__name__}")
        try:
            packed = _STRUCT_F.pack(float(value))
        except OverflowError:
            # struct refuses what C's double-to-float conversion rounds to infinity.
            packed = _STRUCT_F.pack(float("inf") if value > 0 else float("-inf"))
        self._bits: int = _STRUCT_I.unpack(packed)[0]

    @classmethod
    def _from_bits(cls, bits: int) -> SingleFloat:
        # Keeps the exact 32 bits, which a round trip through a Python float could change.
        self = object.__new__(cls)
        self._bits = bits
        return self

    @property
    def value(self) -> float:
        """The value as a Python float (exact: every float32 is a double)."""
        result: float = _STRUCT_F.unpack(_STRUCT_I.pack(self._bits))[0]
        return result

    def _order_key(self) -> int:
        return self._bits ^ _ALL32 if self._bits & _SIGN32 else self._bits | _SIGN32

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SingleFloat):
            return self._bits == other._bits
        return NotImplemented

    def __hash__(self) -> int:
        return hash((SingleFloat, self._bits))

    def __lt__(self, other: SingleFloat) -> bool:
        if isinstance(other, SingleFloat):
            return self._order_key() < other._order_key()
        return NotImplemented

    def __repr__(self) -> str:
        return f"SingleFloat({self.value!r})"


@functools.total_ordering
class Versionstamp:
    """A 96-bit versionstamp: a 10-byte transaction version and a 2-byte user version.

    The transaction version is assigned by the database at commit. Until then the stamp is
    *incomplete* (``tr_version`` is None, packed as the placeholder ``ff`` x 10); pack a key
    holding one with ``pack_with_versionstamp``. The user version (0..65535) orders several
    stamps written by one transaction. Instances are immutable; equality, hashing and
    ordering follow ``to_bytes()``, so every complete stamp sorts before every incomplete one.

    Raises:
        TypeError: ``tr_version`` is not bytes or None, or ``user_version`` is not an int.
        TupleError: ``tr_version`` is not 10 bytes long, or ``user_version`` is out of range.
    """

    __slots__ = ("_tr_version", "_user_version")

    LENGTH: Final = 12
    TR_VERSION_LENGTH: Final = 10

    def __init__(self, tr_version: bytes | None = None, user_version: int = 0) -> None:
        if tr_version is not None:
            if not isinstance(tr_version, bytes):
                raise TypeError(
                    f"Versionstamp tr_version must be bytes or None, "
                    f"got {type(tr_version).__name__}"
                )
            if len(tr_version) != self.TR_VERSION_LENGTH:
                raise TupleError(f"Versionstamp tr_version must be 10 bytes, got {len(tr_version)}")
            tr_version = None if tr_version == _PLACEHOLDER else bytes(tr_version)
        if isinstance(user_version, bool) or not isinstance(user_version, int):
            raise TypeError(
                f"Versionstamp user_version must be an int, got {type(user_version).__name__}"
            )
        if not 0 <= user_version <= 0xFFFF:
            raise TupleError(f"Versionstamp user_version must be in 0..65535, got {user_version}")
        self._tr_version: bytes | None = tr_version
        self._user_version: int = int(user_version)

    @classmethod
    def incomplete(cls, user_version: int = 0) -> Versionstamp:
        """An incomplete stamp, to be filled in by the database at commit."""
        return cls(None, user_version)

    @classmethod
    def from_bytes(cls, data: bytes, start: int = 0) -> Versionstamp:
        """Read the 12-byte form at ``data[start:]``; the placeholder gives an incomplete stamp.

        Raises:
            TypeError: ``data`` is not bytes-like.
            TupleError: fewer than 12 bytes from ``start``, or ``start`` is negative.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Versionstamp.from_bytes needs bytes, got {type(data).__name__}")
        if start < 0:
            raise TupleError(f"Versionstamp.from_bytes start must be >= 0, got {start}")
        chunk = bytes(data[start : start + cls.LENGTH])
        if len(chunk) != cls.LENGTH:
            raise TupleError(
                f"Versionstamp needs 12 bytes from offset {start}, only {len(chunk)} there"
            )
        return cls(chunk[:10], _STRUCT_H.unpack_from(chunk, 10)[0])

    @property
    def tr_version(self) -> bytes | None:
        """The 10-byte transaction version, or None while incomplete."""
        return self._tr_version

    @property
    def user_version(self) -> int:
        """The 2-byte user version, 0..65535."""
        return self._user_version

    def is_complete(self) -> bool:
        """Whether the transaction version is known."""
        return self._tr_version is not None

    def to_bytes(self) -> bytes:
        """The 12-byte form: transaction version (or placeholder) then big-endian user version."""
        return (self._tr_version or _PLACEHOLDER) + _STRUCT_H.pack(self._user_version)

    def completed(self, tr_version: bytes) -> Versionstamp:
        """This incomplete stamp with the transaction version the database assigned.

        Raises:
            TupleError: this stamp is already complete, or ``tr_version`` is the placeholder.
        """
        if self._tr_version is not None:
            raise TupleError(f"{self!r} is already complete")
        done = Versionstamp(tr_version, self._user_version)
        if done._tr_version is None:
            raise TupleError("cannot complete a Versionstamp with the placeholder ff x 10")
        return done

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Versionstamp):
            return self.to_bytes() == other.to_bytes()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __lt__(self, other: Versionstamp) -> bool:
        if isinstance(other, Versionstamp):
            return self.to_bytes() < other.to_bytes()
        return NotImplemented

    def __repr__(self) -> str:
        return f"Versionstamp(tr_version={self._tr_version!r}, user_version={self._user_version})"


# --------------------------------------------------------------------------- encoding

_Encoder: TypeAlias = Callable[[Any], bytes]


def _encode_none(_: None) -> bytes:
    return b"\x00"


def _encode_nested_none(_: None) -> bytes:
    # Inside a nested tuple a bare 00 would read as its terminator.
    return b"\x00\xff"


def _encode_bytes(value: bytes) -> bytes:
    # `0 in value` is a memchr; `b"\x00" in value` first tries its argument as an int and
    # pays for the exception, costing several times more.
    if 0 in value:
        value = value.replace(b"\x00", b"\x00\xff")
    return b"\x01%s\x00" % value


def _encode_str(value: str) -> bytes:
    data = value.encode()
    if 0 in data:
        data = data.replace(b"\x00", b"\x00\xff")
    return b"\x02%s\x00" % data


def _encode_int(value: int) -> bytes:
    if value > 0:
        if value < _INT_LIMIT:
            n = (value.bit_length() + 7) >> 3
            return _POS_HEADS[n] + value.to_bytes(n)
    elif value == 0:
        return b"\x14"
    elif value > -_INT_LIMIT:
        n = (value.bit_length() + 7) >> 3
        return _NEG_HEADS[n] + (value + _MASKS[n]).to_bytes(n)
    n = (value.bit_length() + 7) >> 3
    if n > _MAX_INT_BYTES:
        raise TupleError(
            f"integer needs {n} bytes, at most {_MAX_INT_BYTES} fit "
            f"(the range is -(2**2040 - 1) .. 2**2040 - 1)"
        )
    if value > 0:
        return bytes((POS_INT_END, n)) + value.to_bytes(n)
    return bytes((NEG_INT_START, n ^ 0xFF)) + (value + _MASKS[n]).to_bytes(n)


def _encode_double(value: float) -> bytes:
    # Negative floats flip every bit, others only the sign bit: bytes then sort like values.
    (bits,) = _STRUCT_Q_SIGNED.unpack(_STRUCT_D.pack(value))
    return _STRUCT_CODE_Q.pack(DOUBLE_CODE, ~bits if bits < 0 else bits | _SIGN64)


def _encode_single(value: SingleFloat) -> bytes:
    bits = value._bits
    return _STRUCT_CODE_I.pack(FLOAT_CODE, bits ^ _ALL32 if bits & _SIGN32 else bits | _SIGN32)


def _encode_bool(value: bool) -> bytes:
    return b"\x27" if value else b"\x26"


def _encode_uuid(value: uuid.UUID) -> bytes:
    return b"\x30" + value.bytes


def _encode_versionstamp(value: Versionstamp) -> bytes:
    if value._tr_version is None:
        raise TupleError("incomplete Versionstamp in a plain pack(); use pack_with_versionstamp()")
    return b"\x33" + value._tr_version + _STRUCT_H.pack(value._user_version)


def _encode_nested(value: tuple[Any, ...] | list[Any]) -> bytes:
    out = [b"\x05"]
    for item in value:
        encode = _NESTED_ENCODERS.get(type(item))
        if encode is None:
            encode = _encoder_for(item)
        out.append(encode(item))
    out.append(b"\x00")
    return b"".join(out)


# Dispatch on the exact type: one dict lookup instead of a chain of isinstance calls.
# bool must have its own entry, or True would pack as the integer 1.
_ENCODERS: Final[dict[type, _Encoder]] = {
    type(None): _encode_none,
    bytes: _encode_bytes,
    str: _encode_str,
    int: _encode_int,
    float: _encode_double,
    bool: _encode_bool,
    tuple: _encode_nested,
    list: _encode_nested,
    uuid.UUID: _encode_uuid,
    Versionstamp: _encode_versionstamp,
    SingleFloat: _encode_single,
}
_NESTED_ENCODERS: Final[dict[type, _Encoder]] = {
    **_ENCODERS,
    type(None): _encode_nested_none,
}
# Subclasses (IntEnum, namedtuple, ...) miss the exact-type table; bool precedes int.
_SUBCLASS_ENCODERS: Final[tuple[tuple[type, _Encoder], ...]] = (
    (bool, _encode_bool),
    (int, _encode_int),
    (float, _encode_double),
    (str, _encode_str),
    (bytes, _encode_bytes),
    (tuple, _encode_nested),
    (list, _encode_nested),
    (uuid.UUID, _encode_uuid),
    (Versionstamp, _encode_versionstamp),
    (SingleFloat, _encode_single),
)


def _encoder_for(value: object) -> _Encoder:
    for cls, encode in _SUBCLASS_ENCODERS:
        if isinstance(value, cls):
            return encode
    raise TupleError(f"unsupported type {type(value).__qualname__!r}")


def _check_sequence(t: object, function: str) -> None:
    if not isinstance(t, (tuple, list)):
        raise TypeError(f"{function}() needs a tuple or list, got {type(t).__name__}")


def _check_prefix(prefix: object) -> bytes:
    if isinstance(prefix, (bytes, bytearray, memoryview)):
        return bytes(prefix)
    raise TypeError(f"prefix must be bytes, got {type(prefix).__name__}")


def pack(t: Packable, prefix: bytes = b"") -> bytes:
    """Encode the values of ``t`` as ``prefix`` followed by their order-preserving bytes.

    Raises:
        TypeError: ``t`` is not a tuple or list, or ``prefix`` is not bytes.
        TupleError: an element cannot be encoded (the message gives its position, as
            ``t[i][j]``), including an incomplete ``Versionstamp``.
    """
    if type(t) is not tuple:
        _check_sequence(t, "pack")
    if type(prefix) is not bytes:
        prefix = _check_prefix(prefix)
    out = [prefix]
    try:
        # str, bytes and small positive ints fill most keys; inlining them saves a call each.
        for item in t:
            cls = type(item)
            if cls is str:
                data = item.encode()
                if 0 in data:
                    data = data.replace(b"\x00", b"\x00\xff")
                out.append(b"\x02%s\x00" % data)
            elif cls is int and 0 < item < _INT_LIMIT:
                n = (item.bit_length() + 7) >> 3
                out.append(_POS_HEADS[n] + item.to_bytes(n))
            elif cls is bytes:
                if 0 in item:
                    item = item.replace(b"\x00", b"\x00\xff")
                out.append(b"\x01%s\x00" % item)
            else:
                encode = _ENCODERS.get(cls)
                if encode is None:
                    encode = _encoder_for(item)
                out.append(encode(item))
    except ValueError as exc:
        raise _located(t, exc) from None
    return b"".join(out)


def _located(t: Packable, exc: ValueError) -> TupleError:
    """The error of ``pack(t)``, redone by the slow walk that knows each element's path."""
    stamps: list[tuple[int, tuple[int, ...]]] = []
    try:
        _walk(t, False, (), [], 0, stamps)
    except TupleError as located:
        return located
    if stamps:
        return TupleError(
            f"incomplete Versionstamp at {_where(stamps[0][1])} in a plain pack(); "
            f"use pack_with_versionstamp()"
        )
    return exc if isinstance(exc, TupleError) else TupleError(str(exc))


def _where(path: tuple[int, ...]) -> str:
    return "t" + "".join(f"[{i}]" for i in path)


def _walk(
    t: Packable,
    nested: bool,
    path: tuple[int, ...],
    out: list[bytes],
    pos: int,
    stamps: list[tuple[int, tuple[int, ...]]],
) -> int:
    """Encode ``t`` into ``out`` starting at byte ``pos``; return the position after it.

    Unlike ``pack`` this accepts incomplete Versionstamps, recording in ``stamps`` the
    offset of each placeholder with the element's path, and it names the path of an
    element that cannot be encoded.
    """
    table = _NESTED_ENCODERS if nested else _ENCODERS
    for index, item in enumerate(t):
        where = (*path, index)
        if isinstance(item, (tuple, list)):
            out.append(b"\x05")
            pos = _walk(item, True, where, out, pos + 1, stamps)
            out.append(b"\x00")
            pos += 1
            continue
        if isinstance(item, Versionstamp) and item._tr_version is None:
            stamps.append((pos + 1, where))
            chunk = b"\x33" + item.to_bytes()
        else:
            try:
                chunk = (table.get(type(item)) or _encoder_for(item))(item)
            except ValueError as exc:
                raise TupleError(f"cannot pack element {_where(where)}: {exc}") from exc
        out.append(chunk)
        pos += len(chunk)
    return pos


def pack_with_versionstamp(t: Packable, prefix: bytes = b"") -> bytes:
    """Pack ``t`` for a versionstamped key or value: one incomplete Versionstamp, anywhere.

    The result is ``prefix + pack(t)`` followed by the 4-byte little-endian offset of the
    stamp's 10-byte placeholder, counted from the start of the prefix. The database strips
    the offset and writes the commit version over the placeholder.

    Raises:
        TypeError: ``t`` is not a tuple or list, or ``prefix`` is not bytes.
        TupleError: no incomplete Versionstamp, more than one, or an element that cannot
            be encoded.
    """
    _check_sequence(t, "pack_with_versionstamp")
    prefix = _check_prefix(prefix)
    out = [prefix]
    stamps: list[tuple[int, tuple[int, ...]]] = []
    _walk(t, False, (), out, len(prefix), stamps)
    if not stamps:
        raise TupleError("pack_with_versionstamp() needs one incomplete Versionstamp, found none")
    if len(stamps) > 1:
        places = ", ".join(_where(path) for _, path in stamps)
        raise TupleError(
            f"pack_with_versionstamp() needs exactly one incomplete Versionstamp, "
            f"found {len(stamps)}: {places}"
        )
    out.append(_STRUCT_OFFSET.pack(stamps[0][0]))
    return b"".join(out)


def has_incomplete_versionstamp(t: Packable) -> bool:
    """Whether ``t`` or any tuple nested in it holds an incomplete Versionstamp."""
    for item in t:
        if isinstance(item, Versionstamp):
            if item._tr_version is None:
                return True
        elif isinstance(item, (tuple, list)) and has_incomplete_versionstamp(item):
            return True
    return False


# --------------------------------------------------------------------------- decoding

_Decoder: TypeAlias = Callable[[bytes, int], tuple[Any, int]]


def _truncated(what: str, start: int, need: int, data: bytes) -> TupleError:
    have = max(len(data) - start - 1, 0)
    return TupleError(
        f"truncated {what} at offset {start}: needs {need} bytes after the type code, {have} left"
    )


def _escaped_end(data: bytes, stop: int, start: int, what: str) -> int:
    """The offset of the 00 ending the string at ``start``, given its first escape at ``stop``.

    A terminator is the first 00 not followed by ff.
    """
    while True:
        stop = data.find(b"\x00", stop + 2)
        if stop < 0:
            raise TupleError(f"unterminated {what} at offset {start}: no 00 terminator")
        if data[stop + 1 : stop + 2] != b"\xff":
            return stop


def _decode_unknown(data: bytes, pos: int) -> tuple[Any, int]:
    raise TupleError(f"unknown type code 0x{data[pos - 1]:02x} at offset {pos - 1}")


def _decode_big_int(data: bytes, pos: int) -> tuple[int, int]:
    negative = data[pos - 1] == NEG_INT_START
    if pos >= len(data):
        raise _truncated("integer", pos - 1, 1, data)
    n = data[pos] ^ 0xFF if negative else data[pos]
    end = pos + 1 + n
    if end > len(data):
        raise _truncated("integer", pos - 1, n + 1, data)
    value = _from_bytes(data[pos + 1 : end])
    return (value - _MASKS[n] if negative else value), end


def _decode_single(data: bytes, pos: int) -> tuple[SingleFloat, int]:
    if pos + 4 > len(data):
        raise _truncated("float", pos - 1, 4, data)
    (bits,) = _STRUCT_I.unpack_from(data, pos)
    return SingleFloat._from_bits(bits ^ _SIGN32 if bits & _SIGN32 else bits ^ _ALL32), pos + 4


def _decode_uuid_public(data: bytes, pos: int) -> tuple[uuid.UUID, int]:
    end = pos + 16
    if end > len(data):
        raise _truncated("UUID", pos - 1, 16, data)
    return uuid.UUID(bytes=data[pos:end]), end


def _choose_uuid_decoder() -> _Decoder:
    """A UUID decoder that skips ``UUID.__init__``'s argument parsing (about 3x faster).

    It fills the ``int`` and ``is_safe`` slots as ``UUID.__init__`` does. Should a Python
    version store UUIDs differently, the self-check fails and the public constructor is used.
    """
    new = object.__new__
    cls = uuid.UUID
    unknown = uuid.SafeUUID.unknown
    try:
        set_int = cls.__dict__["int"].__set__
        set_safe = cls.__dict__["is_safe"].__set__
    except (KeyError, AttributeError):
        return _decode_uuid_public

    def decode(data: bytes, pos: int) -> tuple[uuid.UUID, int]:
        end = pos + 16
        if end > len(data):
            raise _truncated("UUID", pos - 1, 16, data)
        made: uuid.UUID = new(cls)
        set_int(made, _from_bytes(data[pos:end]))
        set_safe(made, unknown)
        return made, end

    sample = bytes(_builtin_range(0x30, 0x41))
    try:
        made = decode(sample, 1)[0]
        expected = uuid.UUID(bytes=sample[1:])
        same = made == expected and str(made) == str(expected) and made.is_safe is unknown
    except (AttributeError, TypeError):
        return _decode_uuid_public
    return decode if same else _decode_uuid_public


def _decode_versionstamp(data: bytes, pos: int) -> tuple[Versionstamp, int]:
    if pos + 12 > len(data):
        raise _truncated("Versionstamp", pos - 1, 12, data)
    return Versionstamp.from_bytes(data, pos), pos + 12


# Indexed by type code; the frequent codes never get here, unpack() decodes them inline.
_DECODERS: Final[list[_Decoder]] = [_decode_unknown] * 256
_DECODERS[NEG_INT_START] = _decode_big_int
_DECODERS[POS_INT_END] = _decode_big_int
_DECODERS[FLOAT_CODE] = _decode_single
_DECODERS[UUID_CODE] = _choose_uuid_decoder()
_DECODERS[VERSIONSTAMP_CODE] = _decode_versionstamp


def _check_data(data: object, prefix_len: int) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"unpack() needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if not 0 <= prefix_len <= len(data):
        raise TupleError(f"prefix_len {prefix_len} is outside 0..{len(data)} (the data length)")
    return data


def unpack(data: bytes, prefix_len: int = 0) -> tuple[Any, ...]:
    """Decode ``data[prefix_len:]`` into the tuple that ``pack`` encoded; lists come back as
    tuples. Java's ``1c ff x 8`` form of 2**64 - 1 is accepted too.

    Raises:
        TypeError: ``data`` is not bytes-like.
        TupleError: an unknown type code, truncated or unterminated data, invalid UTF-8;
            the message gives the offset.
    """
    if type(data) is not bytes or prefix_len:
        data = _check_data(data, prefix_len)
    # One long loop on purpose: every depth in it (a stack instead of recursion) and the
    # common codes inline, because a Python call per element costs about as much as
    # decoding a small element. The rare codes go through the _DECODERS table.
    end = len(data)
    out: list[Any] = []
    stack: list[tuple[list[Any], int]] | None = None
    careful = 0xFF in data  # escapes and nested Nones contain ff; most keys have none
    pos = prefix_len
    try:
        while pos < end:
            code = data[pos]
            if code == 2:
                stop = data.find(b"\x00", pos + 1)
                if stop < 0:
                    raise TupleError(f"unterminated string at offset {pos}: no 00 terminator")
                if careful and data[stop + 1 : stop + 2] == b"\xff":
                    stop = _escaped_end(data, stop, pos, "string")
                    out.append(data[pos + 1 : stop].replace(b"\x00\xff", b"\x00").decode())
                else:
                    out.append(data[pos + 1 : stop].decode())
                pos = stop + 1
            elif code > 0x14:
                if code < 0x1D:
                    if code == 0x15:
                        out.append(data[pos + 1])
                        pos += 2
                        continue
                    stop = pos + code - 0x13
                    if stop > end:
                        raise _truncated("integer", pos, code - 0x14, data)
                    out.append(_from_bytes(data[pos + 1 : stop]))
                    pos = stop
                elif code == 0x21:
                    if pos + 9 > end:
                        raise _truncated("double", pos, 8, data)
                    (bits,) = _STRUCT_Q.unpack_from(data, pos + 1)
                    bits = bits ^ _SIGN64 if bits & _SIGN64 else ~bits
                    out.append(_STRUCT_D.unpack(_STRUCT_Q_SIGNED.pack(bits))[0])
                    pos += 9
                elif code == 0x27 or code == 0x26:
                    out.append(code == 0x27)
                    pos += 1
                else:
                    value, pos = _DECODERS[code](data, pos + 1)
                    out.append(value)
            elif code == 1:
                stop = data.find(b"\x00", pos + 1)
                if stop < 0:
                    raise TupleError(f"unterminated bytes at offset {pos}: no 00 terminator")
                if careful and data[stop + 1 : stop + 2] == b"\xff":
                    stop = _escaped_end(data, stop, pos, "bytes")
                    out.append(data[pos + 1 : stop].replace(b"\x00\xff", b"\x00"))
                else:
                    out.append(data[pos + 1 : stop])
                pos = stop + 1
            elif code == 0:
                if stack and not (careful and data[pos + 1 : pos + 2] == b"\xff"):
                    value = tuple(out)
                    out = stack.pop()[0]
                    out.append(value)
                    pos += 1
                else:
                    out.append(None)
                    pos += 2 if stack else 1
            elif code == 5:
                if stack is None:
                    stack = []
                stack.append((out, pos))
                out = []
                pos += 1
            elif code == 0x14:
                out.append(0)
                pos += 1
            elif code > 0x0B:
                n = 0x14 - code
                stop = pos + n + 1
                if stop > end:
                    raise _truncated("integer", pos, n, data)
                out.append(_from_bytes(data[pos + 1 : stop]) - _MASKS[n])
                pos = stop
            else:
                value, pos = _DECODERS[code](data, pos + 1)
                out.append(value)
    except UnicodeDecodeError as exc:
        raise TupleError(f"invalid UTF-8 in string at offset {pos}: {exc.reason}") from None
    except IndexError:  # only the one-byte integer skips the length check
        raise _truncated("integer", pos, 1, data) from None
    if stack:
        raise TupleError(f"unterminated nested tuple at offset {stack[-1][1]}: no 00 terminator")
    return tuple(out)


def range(t: Packable) -> tuple[bytes, bytes]:
    """The key range ``(start, stop)`` holding every tuple that strictly extends ``t``.

    ``fdb.tuple.range`` returns a ``slice``; a plain pair of bytes unpacks more naturally
    (``start, stop = range(t)``). ``pack(t)`` itself lies outside the range.
    """
    packed = pack(t)
    return packed + b"\x00", packed + b"\xff"


def _pack_lenient(t: Packable) -> bytes:
    """``pack(t)``, except that incomplete Versionstamps encode as their placeholder."""
    try:
        return pack(t)
    except TupleError:
        if not has_incomplete_versionstamp(t):
            raise
    out: list[bytes] = []
    _walk(t, False, (), out, 0, [])
    return b"".join(out)


def compare(a: Packable, b: Packable) -> int:
    """-1, 0 or 1 as ``a`` sorts before, with or after ``b`` (the order of packed bytes).

    Raises:
        TupleError: either tuple holds a value that cannot be encoded.
    """
    left = _pack_lenient(a)
    right = _pack_lenient(b)
    return (left > right) - (left < right)


# --------------------------------------------------------------------------- accelerator

# The stdlib's heapq and json do the same: pure definitions first, then the compiled ones
# over them when the extension is there. The pure functions stay the reference, and the
# fallback whenever the compiled code returns NotImplemented, which it does for every error
# and every rare type so that each message is written once, above.
_pure_pack: Final = pack
_pure_unpack: Final = unpack

_Compiled: TypeAlias = Callable[[Any, Any], Any]


def _load_accelerator() -> tuple[_Compiled, _Compiled] | None:
    """The compiled ``pack`` and ``unpack``, set up and checked against the pure ones."""
    try:
        # By name, so that mypy, which cannot read the extension, sees a plain module.
        accel = importlib.import_module("shale._tuple_accel")
    except ImportError:
        return None
    sample: list[Any] = [None, b"a\x00b", "\xd4\x00", 0, 1, -1, 2**64 - 2, -(2**64 - 2)]
    sample += [2.5, -0.0, True, (False, [None, ()])]
    if _DECODERS[UUID_CODE] is not _decode_uuid_public:
        # The slots that _choose_uuid_decoder found to work; without them the compiled code
        # leaves every UUID to the pure one.
        slots = uuid.UUID.__dict__
        accel._init(uuid.UUID, slots["int"], slots["is_safe"], uuid.SafeUUID.unknown)
        sample.append(uuid.UUID(int=2**128 - 2))
    # A build that disagrees with this file (a stale .so, a changed UUID layout) is unused.
    packed = _pure_pack(sample, b"p")
    if accel.pack(sample, b"p") != packed:
        return None
    if repr(accel.unpack(packed, 1)) != repr(_pure_unpack(packed, 1)):
        return None
    return accel.pack, accel.unpack


_compiled = _load_accelerator()
# Without the extension the _accelerated_* functions below just run the pure ones.
_compiled_pack: Final[Callable[[Any, bytes], bytes | NotImplementedType]] = (
    _pure_pack if _compiled is None else _compiled[0]
)
_compiled_unpack: Final[Callable[[Any, int], tuple[Any, ...] | NotImplementedType]] = (
    _pure_unpack if _compiled is None else _compiled[1]
)

ACCELERATED: Final = _compiled is not None and os.environ.get("SHALE_PURE_TUPLE") != "1"
"""Whether ``pack`` and ``unpack`` run the compiled ``shale._tuple_accel``: it was built,
passed its self-check, and ``SHALE_PURE_TUPLE=1`` is not set."""


def _accelerated_pack(t: Packable, prefix: bytes = b"") -> bytes:
    packed = _compiled_pack(t, prefix)
    if packed is NotImplemented:
        return _pure_pack(t, prefix)
    return packed


def _accelerated_unpack(data: bytes, prefix_len: int = 0) -> tuple[Any, ...]:
    values = _compiled_unpack(data, prefix_len)
    if values is NotImplemented:
        return _pure_unpack(data, prefix_len)
    return values


# The public names, docstrings and signatures (help(), inspect) stay those of the pure ones.
functools.update_wrapper(_accelerated_pack, _pure_pack)
functools.update_wrapper(_accelerated_unpack, _pure_unpack)

if ACCELERATED:
    pack = _accelerated_pack
    unpack = _accelerated_unpack
