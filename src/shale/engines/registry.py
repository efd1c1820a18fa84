"""Engines by URL scheme, found through the ``shale.engines`` entry-point group.

Built-in engines register exactly as third-party ones do, in
``pyproject.toml``::

    [project.entry-points."shale.engines"]
    sqlite = "shale.engines.sqlite:SQLiteEngine"

An engine's module is imported only when a URL with its scheme is opened,
so an engine whose driver is missing costs nothing until it is used, and
then fails with the name of the extra that installs it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import cast

from shale.engines.base import Engine
from shale.errors import EngineError, UnknownEngineError

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_EXTRAS",
    "PLANNED",
    "Registry",
    "default_registry",
    "scheme_of",
]

ENTRY_POINT_GROUP = "shale.engines"

KNOWN_EXTRAS: Mapping[str, str] = {}
"""Schemes served by an engine that ships with shaledb behind an extra,
mapped to that extra's name."""

PLANNED = frozenset({"lmdb", "postgresql", "redis", "etcd", "fdb"})
"""Schemes of engines on the roadmap but not in this release."""


def scheme_of(url: str) -> str:
    """The scheme of a database URL (the part before ``://``), lower-cased."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise UnknownEngineError(f"{url!r} is not a database URL (expected scheme://...)")
    return scheme.lower()


@dataclass(frozen=True)
class Registry:
    """Maps URL schemes to engine classes, loading each on first use."""

    entries: Mapping[str, EntryPoint]
    extras: Mapping[str, str]
    planned: frozenset[str] = frozenset()

    @classmethod
    def from_entry_points(
        cls,
        found: Iterable[EntryPoint],
        extras: Mapping[str, str] = KNOWN_EXTRAS,
        planned: frozenset[str] = PLANNED,
    ) -> Registry:
        """Build a registry; two different engines claiming one scheme is an error."""
        entries: dict[str, EntryPoint] = {}
        for point in found:
            scheme = point.name.lower()
            previous = entries.get(scheme)
            if previous is not None and previous.value != point.value:
                raise EngineError(
                    f"URL scheme {scheme!r} is claimed by two engines: {previous.value} "
                    f"and {point.value}; uninstall one of them"
                )
            entries[scheme] = point
        return cls(entries, extras, planned)

    def schemes(self) -> list[str]:
        """The schemes of every installed engine, sorted."""
        return sorted(self.entries)

    def engine_class(self, url: str) -> type[Engine]:
        """The engine class serving ``url``.

        Raises:
            UnknownEngineError: no installed engine serves the scheme; the
                message lists the known schemes, or the extra to install.
        """
        scheme = scheme_of(url)
        point = self.entries.get(scheme)
        if point is not None:
            try:
                return cast(type[Engine], point.load())
            except ImportError as exc:
                raise UnknownEngineError(
                    self._missing(scheme, f"it failed to import: {exc}")
                ) from exc
        raise UnknownEngineError(self._missing(scheme, "no installed engine serves it"))

    def _missing(self, scheme: str, why: str) -> str:
        known = ", ".join(f"{s}://" for s in self.schemes()) or "none"
        message = f"cannot open {scheme}:// URLs: {why}. Installed engines: {known}"
        if scheme in self.extras:
            return f"{message}. Install it with: pip install 'shaledb[{self.extras[scheme]}]'"
        if scheme in self.planned:
            return f"{message}. The {scheme}:// engine is planned but not in this release"
        return message


@functools.cache
def default_registry() -> Registry:
    """The registry of every engine installed in this environment."""
    return Registry.from_entry_points(entry_points(group=ENTRY_POINT_GROUP))
