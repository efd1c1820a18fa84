"""The memory engine's sorted key structure against a plain sorted list."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shale.engines.memory import SortedKeys

keys = st.binary(max_size=3)


@settings(max_examples=200)
@given(st.sets(keys, max_size=300), keys, keys, st.integers(1, 5))
def test_sorted_keys_match_a_sorted_list(
    inserted: set[bytes], a: bytes, b: bytes, load: int
) -> None:
    begin, end = sorted((a, b))
    store = SortedKeys()
    store.LOAD = load  # tiny chunks exercise every split
    for key in inserted:
        store.add(key)
    model = sorted(inserted)
    assert list(store) == model and len(store) == len(model)
    inside = [k for k in model if begin <= k < end]
    assert list(store.irange(begin, end)) == inside
    assert list(store.irange(begin, end, reverse=True)) == inside[::-1]
    rebuilt = SortedKeys(model)
    assert list(rebuilt.irange(begin, end, reverse=True)) == inside[::-1]
