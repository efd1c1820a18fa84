"""found 0.13's ``found.ext.vnstore``: ``shale.found.vnstore``'s functions,
handle and exception (the same objects). found's web UI module is the
submodule ``server``.

The flat ``shale.found.vnstore`` stays for code written against found's
older layout (``from found import vnstore``).
"""

from __future__ import annotations

from shale.found.vnstore import (
    Variable,
    VNStore,
    VNStoreException,
    add,
    ask,
    change_apply,
    change_changes,
    change_continue,
    change_create,
    change_get,
    change_list,
    change_message,
    get,
    make,
    query,
    remove,
    select,
    var,
    where,
)

__all__ = [
    "VNStore",
    "VNStoreException",
    "Variable",
    "add",
    "ask",
    "change_apply",
    "change_changes",
    "change_continue",
    "change_create",
    "change_get",
    "change_list",
    "change_message",
    "get",
    "make",
    "query",
    "remove",
    "select",
    "var",
    "where",
]
