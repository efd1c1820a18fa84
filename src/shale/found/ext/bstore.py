"""found 0.13's ``found.ext.bstore``: ``shale.found.bstore``'s functions,
handle and exception (the same objects), plus found's constants.

The flat ``shale.found.bstore`` stays for code written against found's
older layout (``from found import bstore``).
"""

from __future__ import annotations

from typing import Final

from shale.found.bstore import BStore, BStoreException, get, get_or_create, make
from shale.layers.bstore import CHUNK, HASH

__all__ = [
    "BSTORE_SUFFIX_BLOB",
    "BSTORE_SUFFIX_HASH",
    "BStore",
    "BStoreException",
    "get",
    "get_or_create",
    "make",
]

# The last prefix item of the hash index and of the chunks; lists, as in found.
BSTORE_SUFFIX_HASH: Final[list[bytes]] = [HASH]
BSTORE_SUFFIX_BLOB: Final[list[bytes]] = [CHUNK]
