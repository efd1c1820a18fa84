"""Property tests: a transaction behaves like a dict with its own writes on
top of a snapshot, on every engine, for any sequence of operations."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shale
from shale.engines.atomic import apply_atomic
from shale.engines.base import MutationType
from shale.testing import check_serializable, run_random_history

KEYS = [bytes(p) for n in (1, 2) for p in itertools.product(b"abc\x00", repeat=n)]
key = st.sampled_from(KEYS)
value = st.binary(max_size=3)

operation = st.one_of(
    st.tuples(st.just("set"), key, value),
    st.tuples(st.just("clear"), key),
    st.tuples(st.just("clear_range"), key, key),
    st.tuples(st.just("add"), key, st.binary(min_size=1, max_size=2)),
    st.tuples(st.just("byte_max"), key, value),
    st.tuples(st.just("compare_and_clear"), key, value),
    st.tuples(st.just("get"), key),
    st.tuples(st.just("range"), key, key, st.integers(0, 3), st.booleans()),
    st.tuples(st.just("selector"), key, st.booleans(), st.integers(-2, 2)),
)
history = st.lists(st.lists(operation, max_size=12), min_size=1, max_size=4)

ATOMIC = {
    "add": MutationType.ADD,
    "byte_max": MutationType.BYTE_MAX,
    "compare_and_clear": MutationType.COMPARE_AND_CLEAR,
}


def resolve(model: dict[bytes, bytes], sel: shale.KeySelector) -> bytes:
    keys = sorted(model)
    below = [k for k in keys if (k <= sel.key if sel.or_equal else k < sel.key)]
    index = len(below) - 1 + sel.offset
    if index < 0:
        return b""
    return keys[index] if index < len(keys) else b"\xff"


async def step(tr: shale.Transaction, model: dict[bytes, bytes], op: tuple[Any, ...]) -> None:
    name = op[0]
    if name == "set":
        tr.set(op[1], op[2])
        model[op[1]] = op[2]
    elif name == "clear":
        tr.clear(op[1])
        model.pop(op[1], None)
    elif name == "clear_range":
        begin, end = sorted(op[1:3])
        tr.clear_range(begin, end)
        for k in [k for k in model if begin <= k < end]:
            del model[k]
    elif name in ATOMIC:
        getattr(tr, name)(op[1], op[2])
        result = apply_atomic(ATOMIC[name], model.get(op[1]), op[2])
        if result is None:
            model.pop(op[1], None)
        else:
            model[op[1]] = result
    elif name == "get":
        assert await tr.get(op[1]) == model.get(op[1])
    elif name == "range":
        begin, end, limit, reverse = *sorted(op[1:3]), op[3], op[4]
        expected = sorted((k, v) for k, v in model.items() if begin <= k < end)
        expected = expected[::-1] if reverse else expected
        expected = expected[:limit] if limit else expected
        assert await tr.get_range(begin, end, limit=limit, reverse=reverse) == expected
        streamed = [
            kv async for kv in tr.get_range(begin, end, limit=limit, reverse=reverse, batch_size=1)
        ]
        assert streamed == expected
    else:
        sel = shale.KeySelector(op[1], op[2], op[3])
        assert await tr.get_key(sel) == resolve(model, sel)


async def play(url: str, transactions: list[list[tuple[Any, ...]]]) -> None:
    async with await shale.open(url) as db:
        committed: dict[bytes, bytes] = {}
        for ops in transactions:
            model = dict(committed)
            async with db.transaction() as tr:
                for op in ops:
                    await step(tr, model, op)
            committed = model
            async with db.transaction() as tr:
                assert dict(await tr.get_range(b"", b"\xff")) == committed


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(transactions=history)
def test_transactions_match_the_dict_model(
    engine: str, tmp_path: Path, transactions: list[list[tuple[Any, ...]]]
) -> None:
    if engine == "memory":
        url = "memory://"
    else:
        path = tmp_path / "model.db"
        for leftover in tmp_path.glob("model.db*"):
            leftover.unlink()
        url = f"sqlite:////{str(path).lstrip('/')}"
    asyncio.run(play(url, transactions))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), workers=st.integers(2, 12), keys=st.integers(3, 20))
def test_random_concurrent_histories_are_serializable(seed: int, workers: int, keys: int) -> None:
    """``shale.testing``'s randomized check (streams abandoned after a few
    rows, limits, reverse, selectors, clear_range) over many seeds and
    shapes, on the reference engine."""

    async def check() -> None:
        async with await shale.open("memory://") as db:
            records = await run_random_history(
                db, transactions=120, workers=workers, keys=keys, seed=seed
            )
            await check_serializable(db, records)

    asyncio.run(check())
