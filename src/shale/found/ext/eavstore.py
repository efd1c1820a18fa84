"""found 0.13's ``found.ext.eavstore``: ``shale.found.eavstore``'s functions
and handle (the same objects), plus found's constants.

The flat ``shale.found.eavstore`` stays for code written against found's
older layout (``from found import eavstore``).
"""

from __future__ import annotations

from typing import Final

from shale.found.eavstore import EAVStore, create, get, make, query, remove, update
from shale.layers.eavstore import DATA, INDEX

__all__ = [
    "EAVSTORE_SUFFIX_DATA",
    "EAVSTORE_SUFFIX_INDEX",
    "EAVStore",
    "create",
    "get",
    "make",
    "query",
    "remove",
    "update",
]

# The last prefix item of the data and index subspaces; lists, as in found,
# to build them the way found does: ``tuple(list(prefix) + EAVSTORE_SUFFIX_DATA)``.
EAVSTORE_SUFFIX_DATA: Final[list[bytes]] = [DATA]
EAVSTORE_SUFFIX_INDEX: Final[list[bytes]] = [INDEX]
