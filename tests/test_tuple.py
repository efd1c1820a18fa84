"""The tuple encoding: official vectors, the documented table, ordering properties, errors.

Every test runs twice, against the pure-Python ``pack``/``unpack`` and against the compiled
accelerator (skipped, with its reason, where the extension was not built); the last section
checks the two against each other.
"""

from __future__ import annotations

import enum
import gc
import importlib
import json
import math
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shale.tuple as tup
from shale.tuple import (
    SingleFloat,
    TupleError,
    Versionstamp,
    compare,
    has_incomplete_versionstamp,
    pack_with_versionstamp,
)

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "data" / "tuple-vectors.json"
DOC = HERE.parent / "docs" / "tuple.md"

TR = bytes(range(1, 11))


def h(text: str) -> bytes:
    """Bytes from spaced hex, as the docs and the spec write them."""
    return bytes.fromhex(text.replace(" ", ""))


def canon(value: Any) -> Any:
    """A form that compares exactly: types kept apart (True is not 1), floats by their bits."""
    if isinstance(value, (tuple, list)):
        return ("tuple", tuple(canon(v) for v in value))
    if isinstance(value, float):
        return ("double", struct.pack(">d", value))
    if isinstance(value, SingleFloat):
        return ("single", struct.pack(">f", value.value))
    return (type(value).__name__, value)


# --------------------------------------------------------------------------- implementations


@pytest.fixture(scope="module", autouse=True, params=["pure", "accelerated"])
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Put one implementation behind ``tup.pack`` and ``tup.unpack`` for the whole module.

    The module's own functions (``range``, ``compare``) call them through the same names, so
    they are covered too. Module scope, because Hypothesis refuses function-scoped fixtures.
    """
    if request.param == "accelerated" and tup._compiled is None:
        pytest.skip(
            "shale._tuple_accel is not built (pip found no C compiler, or its self-check "
            "failed): only the pure-Python implementation is tested"
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tup, "pack", getattr(tup, f"_{request.param}_pack"))
        patch.setattr(tup, "unpack", getattr(tup, f"_{request.param}_unpack"))
        yield str(request.param)


# --------------------------------------------------------------------------- public surface


def test_all_is_pinned() -> None:
    assert set(tup.__all__) == {
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
    }
    for name in tup.__all__:
        assert hasattr(tup, name), name


def test_code_constants() -> None:
    codes = {
        "NULL_CODE": 0x00,
        "BYTES_CODE": 0x01,
        "STRING_CODE": 0x02,
        "NESTED_CODE": 0x05,
        "NEG_INT_START": 0x0B,
        "INT_ZERO_CODE": 0x14,
        "POS_INT_END": 0x1D,
        "FLOAT_CODE": 0x20,
        "DOUBLE_CODE": 0x21,
        "FALSE_CODE": 0x26,
        "TRUE_CODE": 0x27,
        "UUID_CODE": 0x30,
        "VERSIONSTAMP_CODE": 0x33,
    }
    assert {name: getattr(tup, name) for name in codes} == codes


def test_tuple_error_is_a_value_error() -> None:
    assert issubclass(TupleError, ValueError)


# --------------------------------------------------------------------------- official vectors


def _element(spec: list[Any]) -> Any:
    kind = spec[0]
    decoders: dict[str, Callable[[Any], Any]] = {
        "bool": bool,
        "bytes": bytes.fromhex,
        "str": str,
        "int": int,
        "float32": lambda bits: SingleFloat(struct.unpack(">f", bytes.fromhex(bits))[0]),
        "float64": lambda bits: struct.unpack(">d", bytes.fromhex(bits))[0],
        "uuid": uuid.UUID,
        "tuple": lambda items: tuple(_element(item) for item in items),
    }
    return None if kind == "null" else decoders[kind](spec[1])


def _vectors() -> list[Any]:
    cases = json.loads(VECTORS.read_text())["cases"]
    return [
        pytest.param(_element(case["tuple"]), bytes.fromhex(case["packed"]), id=f"v{i}")
        for i, case in enumerate(cases)
    ]


VECTOR_CASES = _vectors()


def test_vector_file_is_complete() -> None:
    assert len(VECTOR_CASES) == 616


@pytest.mark.parametrize(("value", "packed"), VECTOR_CASES)
def test_vector_packs(value: tuple[Any, ...], packed: bytes) -> None:
    assert tup.pack(value) == packed


@pytest.mark.parametrize(("value", "packed"), VECTOR_CASES)
def test_vector_unpacks(value: tuple[Any, ...], packed: bytes) -> None:
    assert canon(tup.unpack(packed)) == canon(value)


# --------------------------------------------------------------------------- documented table

_PACK_ROW = re.compile(r"^`pack\((?P<value>.+)\)` == `(?P<hex>[0-9a-f ]*)`$")
_REJECT_ROW = re.compile(r"^`unpack\((?P<hex>[0-9a-f ]+)\)` raises `TupleError`$")
_DOC_NAMES = {"SingleFloat": SingleFloat, "Versionstamp": Versionstamp, "UUID": uuid.UUID}


def _doc_rows() -> list[tuple[int, str]]:
    """(code, test case) for each row of the type-code table in docs/tuple.md."""
    text = DOC.read_text()
    table = text.split("## Type codes", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`0x"):
            rows.append((int(cells[0].strip("`"), 16), cells[4]))
    return rows


DOC_ROWS = _doc_rows()


def test_doc_table_lists_every_supported_code_once() -> None:
    codes = [code for code, _ in DOC_ROWS]
    assert len(codes) == len(set(codes))
    for name in tup.__all__:
        if name.endswith(("_CODE", "_START", "_END")):
            assert getattr(tup, name) in codes, name
    assert set(range(0x0B, 0x1E)) <= set(codes)


@pytest.mark.parametrize(("code", "case"), DOC_ROWS, ids=[f"0x{c:02x}" for c, _ in DOC_ROWS])
def test_doc_table_row(code: int, case: str) -> None:
    packing = _PACK_ROW.match(case)
    if packing is not None:
        value = eval(packing["value"], {"__builtins__": {}}, _DOC_NAMES)
        packed = h(packing["hex"])
        assert packed[0] == code, "the example does not use its row's code"
        assert tup.pack(value) == packed
        assert canon(tup.unpack(packed)) == canon(value)
        return
    rejecting = _REJECT_ROW.match(case)
    assert rejecting is not None, f"unreadable test case: {case}"
    data = h(rejecting["hex"])
    assert data[0] == code
    with pytest.raises(TupleError, match=f"unknown type code 0x{code:02x} at offset 0"):
        tup.unpack(data)


def test_undocumented_codes_are_rejected() -> None:
    supported = {code for code, case in DOC_ROWS if _PACK_ROW.match(case)}
    for code in set(range(256)) - supported:
        with pytest.raises(TupleError, match=f"unknown type code 0x{code:02x}"):
            tup.unpack(bytes([code]) + b"\x00" * 20)


def test_doc_versionstamp_table() -> None:
    text = DOC.read_text().split("## Versionstamped keys", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(pack_with_versionstamp\(.+\))` \| `([0-9a-f ]+)` \|$", text, re.M)
    assert len(rows) == 3
    names = {**_DOC_NAMES, "pack_with_versionstamp": pack_with_versionstamp}
    for call, packed in rows:
        assert eval(call, {"__builtins__": {}}, names) == h(packed), call


# --------------------------------------------------------------------------- encoding details


@pytest.mark.parametrize(
    ("value", "packed"),
    [
        ((), ""),
        ((None,), "00"),
        ((b"",), "01 00"),
        (("",), "02 00"),
        (("\U0001f4a9",), "02 f0 9f 92 a9 00"),
        ((255,), "15 ff"),
        ((65535,), "16 ff ff"),
        ((2**63 - 1,), "1c 7f ff ff ff ff ff ff ff"),
        ((2**64,), "1d 09 01 00 00 00 00 00 00 00 00"),
        ((-255,), "13 00"),
        ((-65535,), "12 00 00"),
        ((-(2**63),), "0c 7f ff ff ff ff ff ff ff"),
        ((-(2**64 - 2),), "0c 00 00 00 00 00 00 00 01"),
        ((-(2**64),), "0b f6 fe ff ff ff ff ff ff ff ff"),
        ((0.0,), "21 80 00 00 00 00 00 00 00"),
        ((-0.0,), "21 7f ff ff ff ff ff ff ff"),
        ((math.inf,), "21 ff f0 00 00 00 00 00 00"),
        ((-math.inf,), "21 00 0f ff ff ff ff ff ff"),
        ((math.nan,), "21 ff f8 00 00 00 00 00 00"),
        ((SingleFloat(1.5),), "20 bf c0 00 00"),
        (((),), "05 00"),
        (((None,),), "05 00 ff 00"),
        ((("a", 1, None),), "05 02 61 00 15 01 00 ff 00"),
        (((1, (2, None)),), "05 15 01 05 15 02 00 ff 00 00"),
        (((b"\x00",),), "05 01 00 ff 00 00"),
        ((("",),), "05 02 00 00"),
        (("a", 1, None, b"b"), "02 61 00 15 01 00 01 62 00"),
    ],
)
def test_spec_examples(value: tuple[Any, ...], packed: str) -> None:
    assert tup.pack(value) == h(packed)
    assert canon(tup.unpack(h(packed))) == canon(value)


def test_biggest_integers() -> None:
    top = 2**2040 - 1
    assert tup.pack((top,)) == b"\x1d\xff" + b"\xff" * 255
    assert tup.pack((-top,)) == b"\x0b\x00" + b"\x00" * 255
    assert tup.unpack(tup.pack((top, -top))) == (top, -top)


def test_java_form_of_the_largest_eight_byte_integer_decodes() -> None:
    assert tup.unpack(b"\x1c" + b"\xff" * 8) == (2**64 - 1,)
    assert tup.unpack(b"\x0c" + b"\x00" * 8) == (-(2**64 - 1),)


def test_bool_is_not_an_int() -> None:
    assert tup.pack((True, False, 1, 0)) == h("27 26 15 01 14")
    decoded = tup.unpack(h("27 26 15 01 14"))
    assert [type(v) for v in decoded] == [bool, bool, int, int]


def test_subclasses_pack_like_their_base() -> None:
    class Color(enum.IntEnum):
        RED = 7

    class Text(str):
        pass

    Point = namedtuple("Point", "x y")
    assert tup.pack((Color.RED, Text("a"), Point(1, 2))) == tup.pack((7, "a", (1, 2)))
    assert tup.pack(Point(1, None)) == tup.pack((1, None))


def test_lists_pack_like_tuples_and_decode_as_tuples() -> None:
    assert tup.pack([1, [2, None]]) == tup.pack((1, (2, None)))
    assert tup.unpack(tup.pack([1, [2, None]])) == (1, (2, None))


def test_prefix() -> None:
    assert tup.pack(("a",), prefix=b"\xfe") == b"\xfe\x02a\x00"
    assert tup.unpack(b"\xfe\x02a\x00", prefix_len=1) == ("a",)
    assert tup.pack((), prefix=b"p") == b"p"
    assert tup.pack((1,), prefix=bytearray(b"p")) == b"p\x15\x01"


def test_unpack_accepts_bytes_like() -> None:
    assert tup.unpack(bytearray(b"\x01a\x00")) == (b"a",)
    assert tup.unpack(memoryview(b"\x01a\x00")) == (b"a",)
    assert type(tup.unpack(bytearray(b"\x01a\x00"))[0]) is bytes


def test_escaped_strings_in_nested_tuples() -> None:
    value = (("\x00", b"\x00\x00", None, ("\x00\xff",)), b"\xff\x00")
    assert tup.unpack(tup.pack(value)) == value


def test_decoded_uuids_are_ordinary() -> None:
    original = uuid.UUID("12345678-1234-5678-1234-567812345678")
    (decoded,) = tup.unpack(tup.pack((original,)))
    assert type(decoded) is uuid.UUID
    assert decoded == original and hash(decoded) == hash(original)
    assert str(decoded) == str(original) and decoded.is_safe is uuid.SafeUUID.unknown
    assert pickle.loads(pickle.dumps(decoded)) == original
    with pytest.raises(TypeError):
        decoded.x = 1  # type: ignore[attr-defined]


def test_range() -> None:
    start, stop = tup.range(("a",))
    assert (start, stop) == (h("02 61 00 00"), h("02 61 00 ff"))
    assert start <= tup.pack(("a", None)) < stop
    assert start <= tup.pack(("a", (), "z" * 100)) < stop
    assert not start <= tup.pack(("a",)) < stop
    assert not start <= tup.pack(("b",)) < stop
    assert tup.range(()) == (b"\x00", b"\xff")


def test_compare() -> None:
    assert compare((1,), (2,)) == -1
    assert compare((2,), (1,)) == 1
    assert compare(("a", 1), ["a", 1]) == 0
    assert compare((), (None,)) == -1
    assert compare((None, "a"), ((), "a")) == -1
    assert compare((Versionstamp(TR),), (Versionstamp(),)) == -1
    assert compare((Versionstamp.incomplete(1),), (Versionstamp.incomplete(2),)) == -1
    with pytest.raises(TupleError, match="unsupported type 'set'"):
        compare(({1},), ())


def test_has_incomplete_versionstamp() -> None:
    assert not has_incomplete_versionstamp(())
    assert not has_incomplete_versionstamp((1, Versionstamp(TR), ("a",)))
    assert has_incomplete_versionstamp((Versionstamp(),))
    assert has_incomplete_versionstamp((1, [2, (Versionstamp.incomplete(4),)]))


# --------------------------------------------------------------------------- SingleFloat


def test_single_float_rounds_to_float32() -> None:
    assert SingleFloat(1.1).value == struct.unpack(">f", struct.pack(">f", 1.1))[0]
    assert SingleFloat(3).value == 3.0
    assert SingleFloat(1e300).value == math.inf
    assert SingleFloat(-1e300).value == -math.inf
    assert SingleFloat(10**400).value == math.inf
    assert math.isnan(SingleFloat(math.nan).value)


def test_single_float_equality_and_order_follow_the_bytes() -> None:
    assert SingleFloat(1.5) == SingleFloat(1.5)
    assert hash(SingleFloat(1.5)) == hash(SingleFloat(1.5))
    assert SingleFloat(0.0) != SingleFloat(-0.0)
    assert SingleFloat(math.nan) == SingleFloat(math.nan)
    assert SingleFloat(1.5) != 1.5
    ordered = [SingleFloat(v) for v in (-math.inf, -1.0, -0.0, 0.0, 1.0, math.inf, math.nan)]
    assert sorted(reversed(ordered)) == ordered
    assert SingleFloat(1.0) <= SingleFloat(1.0) < SingleFloat(2.0)
    assert SingleFloat(2.0) >= SingleFloat(2.0) > SingleFloat(1.0)
    assert repr(SingleFloat(1.5)) == "SingleFloat(1.5)"


def test_single_float_keeps_exact_bits_through_unpack() -> None:
    signaling_nan = h("20 ff a0 00 01")  # payload that a float64 round trip may quieten
    (value,) = tup.unpack(signaling_nan)
    assert tup.pack((value,)) == signaling_nan


@pytest.mark.parametrize("bad", ["1.0", None, True, b"x"])
def test_single_float_rejects_non_numbers(bad: Any) -> None:
    with pytest.raises(TypeError, match="SingleFloat needs an int or float"):
        SingleFloat(bad)


# --------------------------------------------------------------------------- Versionstamp


def test_versionstamp_accessors() -> None:
    stamp = Versionstamp(TR, 0x0B0C)
    assert stamp.tr_version == TR and stamp.user_version == 0x0B0C
    assert stamp.is_complete()
    assert stamp.to_bytes() == TR + b"\x0b\x0c"
    assert repr(stamp) == f"Versionstamp(tr_version={TR!r}, user_version=2828)"
    blank = Versionstamp()
    assert blank.tr_version is None and blank.user_version == 0 and not blank.is_complete()
    assert blank.to_bytes() == b"\xff" * 10 + b"\x00\x00"
    assert Versionstamp.incomplete(7) == Versionstamp(None, 7)


def test_versionstamp_is_immutable() -> None:
    stamp = Versionstamp(TR)
    with pytest.raises(AttributeError):
        stamp.tr_version = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        stamp.other = 1  # type: ignore[attr-defined]


def test_versionstamp_bytes_round_trip() -> None:
    stamp = Versionstamp(TR, 513)
    assert Versionstamp.from_bytes(stamp.to_bytes()) == stamp
    assert Versionstamp.from_bytes(b"xx" + stamp.to_bytes() + b"yy", start=2) == stamp
    assert Versionstamp.from_bytes(bytearray(stamp.to_bytes())) == stamp
    incomplete = Versionstamp.from_bytes(b"\xff" * 10 + b"\x00\x05")
    assert not incomplete.is_complete() and incomplete == Versionstamp.incomplete(5)


def test_versionstamp_placeholder_is_the_incomplete_stamp() -> None:
    assert Versionstamp(b"\xff" * 10, 3) == Versionstamp.incomplete(3)
    assert not Versionstamp(b"\xff" * 10).is_complete()


def test_versionstamp_equality_hash_and_order() -> None:
    assert Versionstamp(TR, 1) == Versionstamp(bytes(TR), 1)
    assert hash(Versionstamp(TR, 1)) == hash(Versionstamp(TR, 1))
    assert Versionstamp(TR, 1) != Versionstamp(TR, 2)
    assert Versionstamp(TR) != TR + b"\x00\x00"
    ordered = [
        Versionstamp(b"\x00" * 10, 9),
        Versionstamp(TR, 0),
        Versionstamp(TR, 1),
        Versionstamp.incomplete(0),
        Versionstamp.incomplete(1),
    ]
    assert sorted(reversed(ordered)) == ordered
    assert ordered[0] <= ordered[0] < ordered[3]
    assert ordered[4] >= ordered[4] > ordered[3]


def test_versionstamp_completed() -> None:
    done = Versionstamp.incomplete(4).completed(TR)
    assert done == Versionstamp(TR, 4)
    with pytest.raises(TupleError, match="already complete"):
        done.completed(TR)
    with pytest.raises(TupleError, match="placeholder"):
        Versionstamp().completed(b"\xff" * 10)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("x" * 10,), TypeError, "tr_version must be bytes or None, got str"),
        ((bytearray(10),), TypeError, "tr_version must be bytes or None, got bytearray"),
        ((b"x" * 9,), TupleError, "tr_version must be 10 bytes, got 9"),
        ((b"x" * 11,), TupleError, "tr_version must be 10 bytes, got 11"),
        ((TR, "1"), TypeError, "user_version must be an int, got str"),
        ((TR, True), TypeError, "user_version must be an int, got bool"),
        ((TR, -1), TupleError, r"user_version must be in 0\.\.65535, got -1"),
        ((TR, 65536), TupleError, r"user_version must be in 0\.\.65535, got 65536"),
    ],
)
def test_versionstamp_validation(args: tuple[Any, ...], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Versionstamp(*args)


def test_versionstamp_from_bytes_validation() -> None:
    with pytest.raises(TypeError, match="needs bytes, got str"):
        Versionstamp.from_bytes("x" * 12)  # type: ignore[arg-type]
    with pytest.raises(TupleError, match="needs 12 bytes from offset 3, only 9 there"):
        Versionstamp.from_bytes(bytes(12), start=3)
    with pytest.raises(TupleError, match="start must be >= 0"):
        Versionstamp.from_bytes(bytes(12), start=-1)


def test_complete_versionstamp_packs_and_unpacks() -> None:
    value = ("a", Versionstamp(TR, 0x0B0C), (Versionstamp(TR),))
    packed = tup.pack(value)
    assert packed[3:] == h("33 01 02 03 04 05 06 07 08 09 0a 0b 0c") + tup.pack(
        ((Versionstamp(TR),),)
    )
    assert tup.unpack(packed) == value


def test_pack_with_versionstamp_top_level() -> None:
    packed = pack_with_versionstamp(("a", Versionstamp.incomplete(3)))
    assert packed == h("02 61 00 33") + b"\xff" * 10 + h("00 03 04 00 00 00")


def test_pack_with_versionstamp_nested() -> None:
    packed = pack_with_versionstamp(("a", (Versionstamp(user_version=3),)))
    assert packed == h("02 61 00 05 33") + b"\xff" * 10 + h("00 03 00 05 00 00 00")


def test_pack_with_versionstamp_prefix_counts_in_the_offset() -> None:
    packed = pack_with_versionstamp((Versionstamp(),), prefix=b"\xaa\xbb")
    assert packed == h("aa bb 33") + b"\xff" * 10 + h("00 00 03 00 00 00")
    offset = struct.unpack("<I", packed[-4:])[0]
    assert packed[offset : offset + 10] == b"\xff" * 10


def test_pack_with_versionstamp_deep_offset() -> None:
    value = (b"\x00", [None, ("x", Versionstamp.incomplete(9))], 1)
    packed = pack_with_versionstamp(value, prefix=b"pre")
    offset = struct.unpack("<I", packed[-4:])[0]
    assert packed[offset : offset + 12] == b"\xff" * 10 + b"\x00\x09"
    assert tup.unpack(packed[:-4], prefix_len=3) == (
        b"\x00",
        (None, ("x", Versionstamp(None, 9))),
        1,
    )


def test_pack_with_versionstamp_needs_one_stamp() -> None:
    with pytest.raises(TupleError, match="needs one incomplete Versionstamp, found none"):
        pack_with_versionstamp(("a", Versionstamp(TR)))
    with pytest.raises(TupleError, match=r"exactly one .* found 2: t\[0\], t\[1\]\[0\]"):
        pack_with_versionstamp((Versionstamp(), (Versionstamp(),)))
    with pytest.raises(TupleError, match=r"cannot pack element t\[1\]: unsupported type 'set'"):
        pack_with_versionstamp((Versionstamp(), {1}))
    with pytest.raises(TypeError, match="needs a tuple or list, got str"):
        pack_with_versionstamp("abc")  # type: ignore[arg-type]


def test_plain_pack_refuses_an_incomplete_versionstamp() -> None:
    with pytest.raises(ValueError, match=r"incomplete Versionstamp at t\[1\]\[0\]"):
        tup.pack(("a", (Versionstamp(),)))
    with pytest.raises(TupleError, match="use pack_with_versionstamp"):
        tup.range((Versionstamp(),))


# --------------------------------------------------------------------------- errors


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (({1},), r"cannot pack element t\[0\]: unsupported type 'set'"),
        ((1, {}), r"cannot pack element t\[1\]: unsupported type 'dict'"),
        (("a", (1, Opaque())), r"t\[1\]\[1\]: unsupported type 'Opaque'"),
        ((bytearray(b"x"),), "unsupported type 'bytearray'"),
        ((1j,), "unsupported type 'complex'"),
        ((2**2040,), r"t\[0\]: integer needs 256 bytes, at most 255 fit"),
        ((-(2**2040),), "integer needs 256 bytes"),
        (([[2**3000]],), r"t\[0\]\[0\]\[0\]: integer needs"),
        (("\ud800",), r"t\[0\]: 'utf-8' codec can't encode"),
    ],
)
def test_unpackable_values(value: tuple[Any, ...], message: str) -> None:
    with pytest.raises(TupleError, match=message):
        tup.pack(value)


@pytest.mark.parametrize("bad", ["abc", b"abc", 5, None, {1: 2}])
def test_pack_needs_a_sequence(bad: Any) -> None:
    with pytest.raises(
        TypeError, match=f"pack\\(\\) needs a tuple or list, got {type(bad).__name__}"
    ):
        tup.pack(bad)


def test_pack_prefix_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="prefix must be bytes, got str"):
        tup.pack((1,), prefix="p")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("03", "unknown type code 0x03 at offset 0"),
        ("02 61 00 26 ff", "unknown type code 0xff at offset 4"),
        ("05 15 01 0a", "unknown type code 0x0a at offset 3"),
        ("02 61 62", "unterminated string at offset 0"),
        ("01 61 00 ff 62", "unterminated bytes at offset 0"),
        ("02 61 00 ff", "unterminated string at offset 0"),
        ("15 01 01 61", "unterminated bytes at offset 2"),
        ("05 15 01", "unterminated nested tuple at offset 0"),
        ("05 05 00", "unterminated nested tuple at offset 0"),
        ("15", "truncated integer at offset 0: needs 1 bytes after the type code, 0 left"),
        ("14 17 01 02", "truncated integer at offset 1: needs 3 bytes after the type code, 2 left"),
        ("11 01", "truncated integer at offset 0: needs 3 bytes"),
        ("1d", "truncated integer at offset 0"),
        ("1d 09 01", "truncated integer at offset 0: needs 10 bytes"),
        ("0b f6 01", "truncated integer at offset 0: needs 10 bytes"),
        ("21 00 00", "truncated double at offset 0: needs 8 bytes"),
        ("20 00", "truncated float at offset 0: needs 4 bytes"),
        ("00 30 00 01", "truncated UUID at offset 1: needs 16 bytes"),
        ("33 00", "truncated Versionstamp at offset 0: needs 12 bytes"),
        ("02 ff fe 00", "invalid UTF-8 in string at offset 0"),
    ],
)
def test_bad_bytes(data: str, message: str) -> None:
    with pytest.raises(TupleError, match=message):
        tup.unpack(h(data))


@pytest.mark.parametrize("bad", ["abc", 5, None, [1]])
def test_unpack_needs_bytes(bad: Any) -> None:
    with pytest.raises(TypeError, match="unpack\\(\\) needs bytes"):
        tup.unpack(bad)


@pytest.mark.parametrize("prefix_len", [-1, 4])
def test_unpack_prefix_len_in_range(prefix_len: int) -> None:
    with pytest.raises(TupleError, match=f"prefix_len {prefix_len} is outside 0..3"):
        tup.unpack(b"abc", prefix_len=prefix_len)


# --------------------------------------------------------------------------- properties

BOUNDARY_INTS = [
    sign * (2**bits + delta)
    for bits in (0, 8, 16, 56, 63, 64, 65, 2039)
    for delta in (-2, -1, 0, 1)
    for sign in (1, -1)
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.binary(max_size=12),
    st.text(max_size=8),
    st.text(alphabet=st.sampled_from("\x00\xff\u00d4\U0001f4a9a"), max_size=6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**2040) + 1, max_value=2**2040 - 1),
    st.sampled_from(BOUNDARY_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32).map(SingleFloat),
    st.uuids(),
    st.builds(Versionstamp, st.binary(min_size=10, max_size=10), st.integers(0, 0xFFFF)),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12)
TUPLES = st.lists(VALUES, max_size=5).map(tuple)


def _float_key(bits: int, width: int) -> int:
    sign = 1 << (width - 1)
    return (1 << width) - 1 - bits if bits & sign else bits | sign


def semantic_key(value: Any) -> Any:
    """The tuple order written from the values, independently of the encoder."""
    if isinstance(value, tuple):
        return (3, tuple(semantic_key(v) for v in value))
    if value is None:
        return (0,)
    if isinstance(value, bytes):
        return (1, value)
    if isinstance(value, str):
        return (2, [ord(c) for c in value])
    if isinstance(value, bool):
        return (8, int(value))
    if isinstance(value, int):
        return (4, value)
    if isinstance(value, SingleFloat):
        return (5, _float_key(struct.unpack(">I", struct.pack(">f", value.value))[0], 32))
    if isinstance(value, float):
        return (6, _float_key(struct.unpack(">Q", struct.pack(">d", value))[0], 64))
    if isinstance(value, uuid.UUID):
        return (9, value.bytes)
    assert isinstance(value, Versionstamp)
    return (10, value.to_bytes())


def tuple_key(value: tuple[Any, ...]) -> Any:
    return tuple(semantic_key(v) for v in value)


@given(TUPLES)
def test_round_trip(value: tuple[Any, ...]) -> None:
    assert canon(tup.unpack(tup.pack(value))) == canon(value)


@settings(max_examples=200)
@given(st.lists(TUPLES, min_size=2, max_size=8))
def test_byte_order_is_value_order(values: list[tuple[Any, ...]]) -> None:
    by_bytes = sorted(values, key=tup.pack)
    by_value = sorted(values, key=tuple_key)
    assert [tup.pack(v) for v in by_bytes] == [tup.pack(v) for v in by_value]
    a, b = values[0], values[1]
    expected = (tuple_key(a) > tuple_key(b)) - (tuple_key(a) < tuple_key(b))
    assert compare(a, b) == expected


@given(TUPLES, VALUES)
def test_extending_a_tuple_sorts_after_it(value: tuple[Any, ...], extra: Any) -> None:
    assert tup.pack(value) < tup.pack((*value, extra))


@given(TUPLES, st.lists(VALUES, min_size=1, max_size=3).map(tuple), TUPLES)
def test_range_holds_exactly_the_extensions(
    value: tuple[Any, ...], suffix: tuple[Any, ...], other: tuple[Any, ...]
) -> None:
    start, stop = tup.range(value)
    assert start <= tup.pack(value + suffix) < stop
    assert not start <= tup.pack(value) < stop
    extends = len(other) > len(value) and canon(other[: len(value)]) == canon(value)
    assert (start <= tup.pack(other) < stop) == extends


@given(TUPLES, st.binary(max_size=4))
def test_prefix_round_trip(value: tuple[Any, ...], prefix: bytes) -> None:
    packed = tup.pack(value, prefix=prefix)
    assert packed == prefix + tup.pack(value)
    assert canon(tup.unpack(packed, prefix_len=len(prefix))) == canon(value)


@given(st.binary(max_size=30))
def test_unpack_of_garbage_raises_only_tuple_error(data: bytes) -> None:
    try:
        value = tup.unpack(data)
    except TupleError:
        return
    if not has_incomplete_versionstamp(value):
        assert canon(tup.unpack(tup.pack(value))) == canon(value)


# --------------------------------------------------------------------------- against fdb.tuple


def _to_official(value: Any, fdb_tuple: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_to_official(v, fdb_tuple) for v in value)
    if isinstance(value, SingleFloat):
        return fdb_tuple.SingleFloat(value.value)
    return value


# fdb.tuple cannot pack a complete Versionstamp without the FoundationDB client library
# (its to_bytes reaches into fdb.impl), so the cross-check leaves versionstamps out.
OFFICIAL_SCALARS = SCALARS.filter(lambda v: not isinstance(v, Versionstamp))
OFFICIAL_TUPLES = st.lists(
    st.recursive(OFFICIAL_SCALARS, lambda i: st.lists(i, max_size=4).map(tuple), max_leaves=12),
    max_size=5,
).map(tuple)


@settings(max_examples=300)
@given(OFFICIAL_TUPLES)
def test_matches_official_fdb_tuple(value: tuple[Any, ...]) -> None:
    fdb_tuple = pytest.importorskip(
        "fdb.tuple", reason="the official bindings (package foundationdb) are not installed"
    )
    official = fdb_tuple.pack(_to_official(value, fdb_tuple))
    assert tup.pack(value) == official
    assert canon(tup.unpack(official)) == canon(value)
    assert canon(fdb_tuple.unpack(tup.pack(value))) == canon(_to_official(value, fdb_tuple))


# --------------------------------------------------------------------------- accelerator


def _outcome(function: Callable[..., Any], *args: Any) -> Any:
    """What a call gives: its value in canonical form, or its exception's type and message."""
    try:
        return ("value", canon(function(*args)))
    except Exception as exc:
        return ("error", type(exc), str(exc))


class _Text(str):
    pass


class _Small(enum.IntEnum):
    SEVEN = 7


_Pair = namedtuple("_Pair", "x y")

# Values the compiled code leaves to the pure one, to be encoded or refused there.
ODD_SCALARS = st.one_of(
    st.sampled_from([{1}, bytearray(b"x"), 1j, Opaque(), "\ud800", _Small.SEVEN, _Text("a")]),
    st.sampled_from([2**64 - 1, -(2**64 - 1), 2**2040, -(2**2040), True]),
    st.builds(_Pair, SCALARS, SCALARS),
    st.just(Versionstamp.incomplete(5)),
)
ANY_TUPLES = st.lists(
    st.recursive(
        st.one_of(SCALARS, ODD_SCALARS),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple)
        ),
        max_leaves=12,
    ),
    max_size=5,
).map(tuple)

# What the compiled code handles itself, without falling back.
COMMON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.binary(max_size=12),
    st.text(max_size=8),
    st.text(alphabet=st.sampled_from("\x00\xff\u00d4\U0001f4a9a"), max_size=6),
    st.integers(min_value=-(2**64 - 2), max_value=2**64 - 2),
    st.sampled_from([v for v in BOUNDARY_INTS if abs(v) <= 2**64 - 2]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.uuids(),
)
COMMON_TUPLES = st.lists(
    st.recursive(
        COMMON_SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple)
        ),
        max_leaves=12,
    ),
    max_size=5,
)

_FRAGMENTS = [bytes([code]) for code in (0, 1, 2, 5, 0x0B, 0x0C, 0x13, 0x14, 0x15, 0x1C, 0x1D)]
_FRAGMENTS += [bytes([code]) for code in (0x20, 0x21, 0x26, 0x27, 0x30, 0x33, 0xFF)]
_FRAGMENTS += [b"\x00\xff", b"\xff" * 8, b"\x00" * 8, "\u00d4".encode(), b"\xed\xa0\x80"]


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    """A valid packing with a few bytes changed, dropped or inserted."""
    data = bytearray(tup._pure_pack(draw(TUPLES)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["set", "drop", "insert", "cut"]))
        if edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.sampled_from(_FRAGMENTS))
        elif at < len(data):
            if edit == "drop":
                del data[at]
            else:
                data[at] = draw(st.integers(0, 255))
    return bytes(data)


GARBAGE = st.one_of(
    st.binary(max_size=40),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=3)), max_size=12).map(
        b"".join
    ),
    _damaged(),
)


class TestAcceleratorBuild:
    """Whether the extension is there and in use. These tests run once, not per implementation."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def implementation(cls) -> str:
        return "either"

    def test_extension_is_built_and_used(self) -> None:
        # Where a compiler exists pip builds the extension, so its absence is a build failure.
        if shutil.which("cc") is None and shutil.which("gcc") is None:
            pytest.skip("no C compiler here, so pip installs shale without its accelerator")
        module = importlib.import_module("shale._tuple_accel")
        source = Path(tup.__file__).with_name("_tuple_accel.c")
        if source.exists() and module.__file__ is not None:
            assert Path(module.__file__).stat().st_mtime >= source.stat().st_mtime, (
                "the built extension predates _tuple_accel.c: rebuild it (pip install -e .)"
            )
        assert tup._compiled is not None, "shale._tuple_accel failed its self-check at import"
        turned_off = os.environ.get("SHALE_PURE_TUPLE") == "1"
        assert tup.ACCELERATED is not turned_off

    def test_pure_tuple_variable_turns_it_off(self) -> None:
        code = "import shale.tuple as t; print(t.ACCELERATED, t.pack is t._pure_pack)"
        env = {**os.environ, "SHALE_PURE_TUPLE": "1"}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert result.stdout.split() == ["False", "True"]


class TestAcceleratorAgainstPure:
    """The compiled code checked against the pure one. These tests call both themselves."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def implementation(cls) -> Iterator[str]:
        # Replaces the module's fixture of the same name: these tests run once, not per
        # implementation. Without the extension there is nothing to compare.
        if tup._compiled is None:
            pytest.skip("shale._tuple_accel is not built: nothing to compare")
        yield "both"

    def test_public_functions_keep_their_names_and_docs(self) -> None:
        for name in ("pack", "unpack"):
            accelerated = getattr(tup, f"_accelerated_{name}")
            pure = getattr(tup, f"_pure_{name}")
            assert accelerated.__name__ == name and accelerated.__doc__ == pure.__doc__

    @settings(max_examples=500)
    @given(ANY_TUPLES, st.binary(max_size=3))
    def test_pack_gives_what_pure_gives(self, value: tuple[Any, ...], prefix: bytes) -> None:
        expected = _outcome(tup._pure_pack, value, prefix)
        assert _outcome(tup._accelerated_pack, value, prefix) == expected

    @settings(max_examples=500)
    @given(COMMON_TUPLES, st.binary(max_size=3))
    def test_common_values_never_fall_back(self, value: list[Any], prefix: bytes) -> None:
        packed = tup._compiled_pack(value, prefix)
        assert packed is not NotImplemented
        assert packed == tup._pure_pack(value, prefix)
        decoded = tup._compiled_unpack(packed, len(prefix))
        assert decoded is not NotImplemented
        assert canon(decoded) == canon(value)
        assert canon(decoded) == canon(tup._pure_unpack(packed, len(prefix)))

    @settings(max_examples=1000)
    @given(GARBAGE, st.integers(0, 3))
    def test_unpack_of_any_bytes_gives_what_pure_gives(self, data: bytes, prefix_len: int) -> None:
        prefix_len = min(prefix_len, len(data))
        compiled = tup._compiled_unpack(data, prefix_len)
        expected = _outcome(tup._pure_unpack, data, prefix_len)
        if compiled is not NotImplemented:
            assert expected == ("value", canon(compiled))
        assert _outcome(tup._accelerated_unpack, data, prefix_len) == expected

    @pytest.mark.parametrize(
        "value",
        [
            (SingleFloat(1.5),),
            (Versionstamp(TR),),
            (Versionstamp(),),
            (2**64 - 1,),
            (-(2**64 - 1),),
            (1, (2, [_Small.SEVEN])),
            (_Text("a"),),
            (_Pair(1, 2),),
            _Pair(1, 2),
            ({1},),
            ("\ud800",),
        ],
        ids=repr,
    )
    def test_pack_leaves_rare_values_to_pure(self, value: Any) -> None:
        assert tup._compiled_pack(value, b"") is NotImplemented
        assert _outcome(tup._accelerated_pack, value) == _outcome(tup._pure_pack, value)

    @pytest.mark.parametrize(
        ("data", "prefix_len"),
        [
            (h("20 3f c0 00 00"), 0),
            (h("33") + TR + h("00 01"), 0),
            (h("1d 09 01 00 00 00 00 00 00 00 00"), 0),
            (h("0b f6 fe ff ff ff ff ff ff ff ff"), 0),
            (h("15"), 0),
            (h("02 ff 00"), 0),
            (h("05 15 01"), 0),
            (h("03"), 0),
            (bytearray(h("15 01")), 0),
            (h("15 01"), True),
            (h("15 01"), -1),
            (h("15 01"), 3),
            (h("15 01"), 2**70),
        ],
        ids=repr,
    )
    def test_unpack_leaves_rare_input_to_pure(self, data: Any, prefix_len: Any) -> None:
        assert tup._compiled_unpack(data, prefix_len) is NotImplemented
        expected = _outcome(tup._pure_unpack, data, prefix_len)
        assert _outcome(tup._accelerated_unpack, data, prefix_len) == expected

    @pytest.mark.parametrize("depth", [1, 63, 64, 65, 300])
    def test_deep_nesting(self, depth: int) -> None:
        value: Any = ("x", None)
        for _ in range(depth):
            value = [value, None]
        packed = tup._pure_pack((value,))
        assert tup._accelerated_pack((value,)) == packed
        assert canon(tup._accelerated_unpack(packed)) == canon(tup._pure_unpack(packed))
        # Deeper than 64 levels the pure code takes over: the C stack stays bounded.
        assert (tup._compiled_pack((value,), b"") is not NotImplemented) == (depth < 64)
        assert (tup._compiled_unpack(packed, 0) is not NotImplemented) == (depth < 64)

    def test_no_memory_is_kept(self) -> None:
        values: list[Any] = [
            ("users", 2**40, -17, -(2**64 - 2), "\u00d4\x00" * 3, b"\x00\x01", 3.5, None, True),
            (uuid.UUID(int=2**127 + 5), (1, [None, ()], "x" * 300)),
            (SingleFloat(1.5), 2**70, Versionstamp(TR)),  # falls back
        ]
        garbage = [h("05 15 01"), h("02 ff 00"), h("30 01 02")]

        def work(rounds: int) -> None:
            for _ in range(rounds):
                for value in values:
                    tup._accelerated_unpack(tup._accelerated_pack(value, b"p"), 1)
                for data in garbage:
                    with pytest.raises(TupleError):
                        tup._accelerated_unpack(data)

        work(200)
        gc.collect()
        tracemalloc.start()
        try:
            work(200)
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            work(5000)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 64 * 1024, f"{grown} bytes kept after 5000 rounds"
