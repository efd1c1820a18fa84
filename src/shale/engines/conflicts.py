"""The resolver's memory of recent writes: for every key, the newest
version that wrote it.

FoundationDB's resolvers keep the same thing in a skip list: a sorted map
of boundary keys, each starting a segment of the key space written last at
one version. A write of ``[begin, end)`` at version ``v`` (always the
newest) replaces the boundaries inside it by one segment; a read of
``[begin, end)`` at read version ``r`` conflicts if the highest version of
the segments it overlaps is above ``r``. Both cost a bisection and the
segments touched, whatever the number of commits since ``r`` — a
transaction 20,000 commits old is checked as fast as a young one — and
only keys are kept, never values.

Boundaries live in chunks of a few hundred (as ``SortedKeys`` does in the
memory engine), each with its highest version, so a read over many
segments looks at one number per chunk. Versions at or below the floor
can no longer conflict with any checkable read; ``compact`` merges them
away.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from shale.engines.base import KeyRange

__all__ = ["VersionMap", "coalesce"]

_LOAD = 256
"""Boundaries per chunk: a chunk's insert moves at most a few kB."""


def coalesce(ranges: Iterable[KeyRange]) -> list[KeyRange]:
    """``ranges`` sorted, with overlapping and touching ones merged."""
    out: list[KeyRange] = []
    for begin, end in sorted(ranges):
        if begin >= end:
            continue
        if out and begin <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((begin, end))
    return out


class VersionMap:
    """Segments of the key space, each with the version that wrote it last;
    keys before the first boundary, and segments at version 0, were not
    written inside the window."""

    def __init__(self) -> None:
        self._keys: list[list[bytes]] = []
        self._vers: list[list[int]] = []
        self._firsts: list[bytes] = []
        self._maxes: list[int] = []
        self._size = 0

    def __len__(self) -> int:
        """The number of boundaries, which is what the map costs."""
        return self._size

    # -- reads -------------------------------------------------------------

    def version_at(self, key: bytes) -> int:
        c = bisect.bisect_right(self._firsts, key) - 1
        if c < 0:
            return 0
        keys = self._keys[c]
        return self._vers[c][bisect.bisect_right(keys, key) - 1]

    def max_over(self, begin: bytes, end: bytes) -> int:
        """The newest version that wrote any key in ``[begin, end)``."""
        newest = self.version_at(begin)
        c1, i1 = self._position(begin, bisect.bisect_right)
        c2, i2 = self._position(end, bisect.bisect_left)
        if c1 == c2:
            if i1 < i2:
                newest = max(newest, max(self._vers[c1][i1:i2]))
            return newest
        for part in (self._vers[c1][i1:], self._vers[c2][:i2]):
            if part:
                newest = max(newest, max(part))
        if c1 + 1 < c2:
            newest = max(newest, max(self._maxes[c1 + 1 : c2]))
        return newest

    def _position(self, key: bytes, side: Callable[[list[bytes], bytes], int]) -> tuple[int, int]:
        """``(chunk, index)`` of the first boundary at or after ``key``
        (``bisect_left``) or strictly after it (``bisect_right``)."""
        c = bisect.bisect_right(self._firsts, key) - 1
        if c < 0:
            return 0, 0
        return c, side(self._keys[c], key)

    # -- writes ------------------------------------------------------------

    def assign(self, begin: bytes, end: bytes, version: int) -> None:
        """Mark ``[begin, end)`` written at ``version``, the newest so far."""
        firsts = self._firsts
        if not firsts:
            self._keys.append([begin, end])
            self._vers.append([version, 0])
            firsts.append(begin)
            self._maxes.append(version)
            self._size = 2
            return
        c1 = bisect.bisect_right(firsts, begin) - 1
        c2 = bisect.bisect_right(firsts, end, c1 if c1 > 0 else 0) - 1
        if c1 < 0:  # before the first boundary: it goes into the first chunk
            c1 = 0
            c2 = c2 if c2 > 0 else 0
        keys1, vers1 = self._keys[c1], self._vers[c1]
        keys2, vers2 = self._keys[c2], self._vers[c2]
        i1 = bisect.bisect_left(keys1, begin)
        i2 = bisect.bisect_left(keys2, end)
        if i2 < len(keys2) and keys2[i2] == end:
            new_keys, new_vers = [begin], [version]
        else:
            # The segment that contained ``end`` goes on after it.
            after = vers2[i2 - 1] if i2 else 0
            new_keys, new_vers = [begin, end], [version, after]
        if c1 == c2:
            removed = i2 - i1
            keys1[i1:i2] = new_keys
            vers1[i1:i2] = new_vers
        else:
            removed = len(keys1) - i1 + i2 + sum(len(self._keys[c]) for c in range(c1 + 1, c2))
            keys1[i1:] = new_keys + keys2[i2:]
            vers1[i1:] = new_vers + vers2[i2:]
            del self._keys[c1 + 1 : c2 + 1], self._vers[c1 + 1 : c2 + 1]
            del firsts[c1 + 1 : c2 + 1], self._maxes[c1 + 1 : c2 + 1]
        self._size += len(new_keys) - removed
        firsts[c1] = keys1[0]
        self._maxes[c1] = version  # the newest version, now in this chunk
        if len(keys1) > 2 * _LOAD:
            self._split(c1)

    def assign_all(self, ranges: list[KeyRange], version: int) -> None:
        """``assign`` each of ``ranges`` (sorted, disjoint and not touching,
        as ``coalesce`` makes them). Many at once are merged in one pass
        over the map rather than one bisection and splice each."""
        if len(ranges) * 16 < self._size or len(ranges) < 32:
            for begin, end in ranges:
                self.assign(begin, end, version)
            return
        old_keys = [k for chunk in self._keys for k in chunk]
        old_vers = [v for chunk in self._vers for v in chunk]
        keys: list[bytes] = []
        vers: list[int] = []
        i, current = 0, 0
        for begin, end in ranges:
            while i < len(old_keys) and old_keys[i] < begin:
                keys.append(old_keys[i])
                current = old_vers[i]
                vers.append(current)
                i += 1
            keys.append(begin)
            vers.append(version)
            while i < len(old_keys) and old_keys[i] < end:
                current = old_vers[i]
                i += 1
            if not (i < len(old_keys) and old_keys[i] == end):
                keys.append(end)
                vers.append(current)
        keys.extend(old_keys[i:])
        vers.extend(old_vers[i:])
        self._rebuild(keys, vers)

    def compact(self, floor: int) -> None:
        """Forget versions at or below ``floor``: no read still checked can
        conflict with them, so their segments merge with their neighbours."""
        keys: list[bytes] = []
        vers: list[int] = []
        previous = 0
        for chunk_keys, chunk_vers in zip(self._keys, self._vers, strict=True):
            for key, version in zip(chunk_keys, chunk_vers, strict=True):
                if version <= floor:
                    version = 0
                if version != previous:
                    keys.append(key)
                    vers.append(version)
                    previous = version
        self._rebuild(keys, vers)

    def _rebuild(self, keys: list[bytes], vers: list[int]) -> None:
        self._keys = [keys[i : i + _LOAD] for i in range(0, len(keys), _LOAD)]
        self._vers = [vers[i : i + _LOAD] for i in range(0, len(vers), _LOAD)]
        self._firsts = [chunk[0] for chunk in self._keys]
        self._maxes = [max(chunk) for chunk in self._vers]
        self._size = len(keys)

    def _split(self, c: int) -> None:
        keys, vers = self._keys[c], self._vers[c]
        key_chunks = [keys[i : i + _LOAD] for i in range(0, len(keys), _LOAD)]
        ver_chunks = [vers[i : i + _LOAD] for i in range(0, len(vers), _LOAD)]
        self._keys[c : c + 1] = key_chunks
        self._vers[c : c + 1] = ver_chunks
        self._firsts[c : c + 1] = [chunk[0] for chunk in key_chunks]
        self._maxes[c : c + 1] = [max(chunk) for chunk in ver_chunks]
