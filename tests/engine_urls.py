"""The engines the layer tests run on: memory, SQLite, and SQLite through a
server in the test's event loop, reached by the ``shale://`` engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from shale.server import serve

__all__ = ["ENGINES", "engine_url"]

ENGINES = ("memory", "shale", "sqlite")

_TOKEN = "layer-token"


@contextlib.asynccontextmanager
async def engine_url(engine: str, tmp_path: Path, file: str) -> AsyncIterator[str]:
    """A URL of ``engine``, with ``file`` in ``tmp_path`` as its storage."""
    if engine == "memory":
        yield "memory://"
    elif engine == "sqlite":
        yield f"sqlite:///{tmp_path}/{file}"
    else:
        server = await serve(f"sqlite:///{tmp_path}/{file}", _TOKEN, port=0)
        try:
            yield f"shale://:{_TOKEN}@127.0.0.1:{server.port}"
        finally:
            await server.stop(drain=1.0)
