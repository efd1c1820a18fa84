"""found's ``found.ext.pool``: run a blocking function over an iterator in
an executor, a bounded number at a time.

Not a database layer. found built it on ``aiostream``; this one needs only
asyncio. Unlike found, when ``p`` or ``f`` raises, the items still queued
are cancelled rather than left running unobserved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["pool_for_each_par_map"]

T = TypeVar("T")
R = TypeVar("R")


async def _items(iterator: Iterable[T] | AsyncIterable[T]) -> AsyncGenerator[T, None]:
    if isinstance(iterator, AsyncIterable):
        async for item in iterator:
            yield item
    else:
        for item in iterator:
            yield item


def _width(pool: Executor) -> int:
    # found reads the stdlib pools' private ``_max_workers``; an executor
    # without it does not say how many workers it has, so run one at a time.
    width = getattr(pool, "_max_workers", None)
    return width if isinstance(width, int) and width > 0 else 1


async def pool_for_each_par_map(
    loop: asyncio.AbstractEventLoop,
    pool: Executor,
    f: Callable[[R], Any],
    p: Callable[[T], R],
    iterator: Iterable[T] | AsyncIterable[T],
) -> None:
    """Run ``p(item)`` in ``pool`` for each item of ``iterator`` (sync or
    async), with at most the pool's worker count in flight, and call
    ``f(result)`` on the event loop as each one finishes (completion order).

    Returns once every item is done. The first exception of ``p`` or ``f``
    propagates, after the items not yet finished are cancelled.
    """
    width = _width(pool)
    items = _items(iterator)
    pending: set[asyncio.Future[R]] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < width:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    exhausted = True
                else:
                    pending.add(loop.run_in_executor(pool, p, item))
            if not pending:
                return
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                f(future.result())
    finally:
        for future in pending:
            future.cancel()
        await items.aclose()
