"""found's ``found.tuple``: the names found's tuple module has, taken from
``shale.tuple`` (one codec; found's and Shale's bytes are FoundationDB's).

``next_prefix`` is ``shale.found.next_prefix``: on a key made only of
``0xFF`` bytes it raises ``ValueError`` (found's ``found.tuple`` version
raised ``IndexError``). Where ``shale.tuple`` differs from found's codec
(an incomplete versionstamp in plain ``pack``, nested stamps,
``SingleFloat``), ``docs/tuple.md`` says how.
"""

from __future__ import annotations

from shale.found.ops import next_prefix
from shale.tuple import (
    BYTES_CODE,
    DOUBLE_CODE,
    FALSE_CODE,
    INT_ZERO_CODE,
    NEG_INT_START,
    NESTED_CODE,
    NULL_CODE,
    POS_INT_END,
    STRING_CODE,
    TRUE_CODE,
    UUID_CODE,
    VERSIONSTAMP_CODE,
    Versionstamp,
    has_incomplete_versionstamp,
    pack,
    pack_with_versionstamp,
    unpack,
)

__all__ = [
    "BYTES_CODE",
    "DOUBLE_CODE",
    "FALSE_CODE",
    "INT_ZERO_CODE",
    "NEG_INT_START",
    "NESTED_CODE",
    "NULL_CODE",
    "POS_INT_END",
    "STRING_CODE",
    "TRUE_CODE",
    "UUID_CODE",
    "VERSIONSTAMP_CODE",
    "Versionstamp",
    "has_incomplete_versionstamp",
    "next_prefix",
    "pack",
    "pack_with_versionstamp",
    "unpack",
]
