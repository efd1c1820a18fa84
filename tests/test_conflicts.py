"""The resolver and its version map against brute force over every write."""

from __future__ import annotations

import itertools
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shale
from shale.engines import conflicts, local
from shale.engines.base import CommitRequest
from shale.engines.conflicts import VersionMap, coalesce
from shale.errors import ConflictError

ALPHABET = [bytes(p) for n in (1, 2, 3) for p in itertools.product(b"ab\x00", repeat=n)]
KEYS = sorted({b"", *ALPHABET})
key = st.sampled_from(KEYS)
span = st.tuples(key, key).map(sorted).filter(lambda r: r[0] < r[1])
step = st.one_of(
    st.tuples(st.just("assign"), span),
    st.tuples(st.just("many"), st.lists(span, max_size=40)),
    st.tuples(st.just("compact"), st.integers(0, 30)),
)


def _newest(model: dict[bytes, int], begin: bytes, end: bytes) -> int:
    return max((v for k, v in model.items() if begin <= k < end), default=0)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=40), load=st.sampled_from([2, 3, 256]))
def test_version_map_matches_a_dict(steps: list[tuple[str, object]], load: int) -> None:
    conflicts._LOAD, saved = load, conflicts._LOAD  # tiny chunks exercise splits and merges
    try:
        vmap = VersionMap()
        model: dict[bytes, int] = {}
        floor = 0
        for version, (name, arg) in enumerate(steps, start=1):
            if name == "compact":
                floor = max(floor, min(int(arg), version))  # type: ignore[call-overload]
                vmap.compact(floor)
                continue
            spans = [arg] if name == "assign" else coalesce(arg)  # type: ignore[list-item,arg-type]
            if name == "assign":
                vmap.assign(*spans[0], version)
            else:
                vmap.assign_all(spans, version)
            for begin, end in spans:
                for k in KEYS:
                    if begin <= k < end:
                        model[k] = version
            for begin, end in itertools.combinations(KEYS, 2):
                expected = _newest(model, begin, end)
                got = vmap.max_over(begin, end)
                assert got == expected or (got <= floor and expected <= floor), (begin, end)
            for k in KEYS:
                expected = model.get(k, 0)
                got = vmap.version_at(k)
                assert got == expected or (got <= floor and expected <= floor), k
    finally:
        conflicts._LOAD = saved


def test_coalesce_merges_overlapping_and_touching_ranges() -> None:
    assert coalesce([(b"c", b"d"), (b"a", b"b"), (b"b", b"c"), (b"x", b"x")]) == [(b"a", b"d")]
    assert coalesce([(b"a", b"c"), (b"b", b"z"), (b"0", b"1")]) == [(b"0", b"1"), (b"a", b"z")]


read_set = st.tuples(st.sets(key, max_size=3), st.lists(span, max_size=3))
write_set = st.tuples(st.sets(key, max_size=4), st.lists(span, max_size=2))


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(st.tuples(st.booleans(), write_set), min_size=1, max_size=30),
    reads=st.lists(st.tuples(st.integers(0, 30), read_set), max_size=20),
    tail=st.sampled_from([1, 2, 32]),
    tail_keys=st.sampled_from([1, 3, 1 << 18]),
)
def test_resolver_matches_brute_force(
    batches: list[tuple[bool, tuple[set[bytes], list[list[bytes]]]]],
    reads: list[tuple[int, tuple[set[bytes], list[list[bytes]]]]],
    tail: int,
    tail_keys: int,
) -> None:
    """Batches sharing a version (``same``), checks reaching past ``tail``
    batches and a ``tail_keys`` bound below the history's keys exercise
    both the raw batches and the folded map, and folding on demand."""
    saved = local.TAIL, local.TAIL_KEYS
    local.TAIL, local.TAIL_KEYS = tail, tail_keys
    try:
        resolver = local.Resolver(window=60.0)
        history: list[tuple[int, set[bytes], list[tuple[bytes, bytes]]]] = []
        version = 0
        for same, (keys, ranges) in batches:
            if not (same and version):
                version += 1
            pairs = [(b, e) for b, e in ranges]
            resolver.record(version, keys, pairs)
            history.append((version, keys, pairs))
        for read_version, (read_keys, read_ranges) in reads:
            read_version %= version + 1
            pairs = [(b, e) for b, e in read_ranges]
            request = CommitRequest(read_version, [], read_keys=read_keys, read_ranges=pairs)
            expected = any(
                v > read_version
                and (
                    any(b <= k < e for k in read_keys for b, e in wr)
                    or any(rb <= k < re for k in wk for rb, re in pairs)
                    or any(b < re and rb < e for b, e in wr for rb, re in pairs)
                    or bool(wk & read_keys)
                )
                for v, wk, wr in history
            )
            if expected:
                with pytest.raises(ConflictError):
                    resolver.check(request)
            else:
                resolver.check(request)
    finally:
        local.TAIL, local.TAIL_KEYS = saved


async def test_the_resolver_keeps_keys_not_values(tmp_path: Path) -> None:
    """SQLite keeps values on disk; in memory, only the resolver's window of
    recent writes stays, and that must be keys (86 MB were held after 90 MB
    of commits when it kept the transactions' write dicts)."""
    async with await shale.open(f"sqlite:///{tmp_path}/r.db?synchronous=normal") as db:
        await db.set(b"warm", b"up")
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for i in range(60):
                async with db.transaction() as tr:
                    await tr.get(b"warm")
                    for j in range(10):
                        tr.set(b"k%03d-%d" % (i, j), os.urandom(100_000))
            held = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
    assert held < 5_000_000, f"{held} bytes held after 60 MB of commits"
