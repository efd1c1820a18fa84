"""Run a coroutine at once, and make a task of it only if it has to wait.

Most of the server's requests never wait: a read from an open snapshot of
an embedded engine completes in the call. A task per request would cost
more than such a read (Python 3.12's eager task factory does what this
does, but 3.11 is the floor). So a request's coroutine is stepped once
here; if it finishes, its result comes back in an already-done future,
and only a coroutine that suspends is handed to a task, which resumes it
where it stopped.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["start"]

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """A future of ``coro``'s outcome, done already if it never suspended."""
    loop = asyncio.get_running_loop()
    try:
        first = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the future carries it, as a task would
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return asyncio.ensure_future(_finish(coro, first))


async def _finish(coro: Coroutine[Any, Any, T], first: Any) -> T:
    return await _resume(coro, first)  # type: ignore[no-any-return]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive ``coro`` from where ``start`` left it: pass what the task
    sends or throws (a cancellation) on to it, and its yields up."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            yielded = coro.send(sent)
        except StopIteration as stop:
            return stop.value
