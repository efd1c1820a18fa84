"""found's small async helpers (``co``, ``all``, ``limit``).

``all`` shadows the builtin because found's API names it so.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

__all__ = ["all", "co", "limit"]

P = ParamSpec("P")
T = TypeVar("T")


def co(func: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """Make a plain function awaitable, for APIs that expect coroutines."""

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return func(*args, **kwargs)

    wrapper.__name__ = getattr(func, "__name__", "co")
    wrapper.__doc__ = func.__doc__
    return wrapper


async def all(aiterator: AsyncIterable[T]) -> list[T]:
    """Collect an async iterable into a list."""
    return [item async for item in aiterator]


async def limit(aiterator: AsyncIterable[T], length: int) -> AsyncIterator[T]:
    """At most ``length`` items of ``aiterator``; none if ``length <= 0``.

    It stops pulling as soon as it has ``length`` items, so the source is
    never read further than needed.
    """
    if length <= 0:
        return
    count = 0
    async for item in aiterator:
        yield item
        count += 1
        if count >= length:
            return
