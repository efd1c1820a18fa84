"""found 0.13's ``found.ext.pstore``: ``shale.found.pstore``'s functions,
handle and exception (the same objects), plus found's constants.

The flat ``shale.found.pstore`` stays for code written against found's
older layout (``from found import pstore``).
"""

from __future__ import annotations

from typing import Final

from shale.found.pstore import PStore, PStoreException, index, make, remove, search

__all__ = [
    "FOUND_PSTORE_SAMPLE_COUNT",
    "PSTORE_SUFFIX_COUNTERS",
    "PSTORE_SUFFIX_INDEX",
    "PSTORE_SUFFIX_TOKENS",
    "PStore",
    "PStoreException",
    "index",
    "make",
    "remove",
    "search",
]

# The last prefix item of the token dictionary, the postings and the
# per-document counters; lists, as in found.
PSTORE_SUFFIX_TOKENS: Final[list[bytes]] = [b"\x01"]
PSTORE_SUFFIX_INDEX: Final[list[bytes]] = [b"\x02"]
PSTORE_SUFFIX_COUNTERS: Final[list[bytes]] = [b"\x03"]

FOUND_PSTORE_SAMPLE_COUNT: Final = 1337
"""found's sample size (``$FOUND_PSTORE_SAMPLE_COUNT`` there). Kept so code
reading it runs; it has no effect: Shale's ``search`` scores every candidate."""
