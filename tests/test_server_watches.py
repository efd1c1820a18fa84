"""Watches through ``shale serve``: any client's commit fires them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import shale
from shale.server import Server, serve

TOKEN = "watch-token"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    served = await serve(f"sqlite:///{tmp_path}/db.sqlite", TOKEN, port=0)
    yield served
    await served.stop(drain=1.0)


async def connect(server: Server) -> shale.Database:
    return await shale.open(f"shale://127.0.0.1:{server.port}", token=TOKEN)


async def watch(db: shale.Database, key: bytes) -> asyncio.Future[None]:
    async with db.transaction() as tr:
        future = tr.watch(key)
    return future


async def test_a_commit_by_another_client_fires_a_watch(server: Server) -> None:
    watcher, writer = await connect(server), await connect(server)
    try:
        await writer.set(b"k", b"1")
        fired = await watch(watcher, b"k")
        await asyncio.sleep(0.05)
        assert not fired.done()
        await writer.set(b"k", b"1")  # the same value: not a change
        await asyncio.sleep(0.05)
        assert not fired.done()
        await writer.set(b"k", b"2")
        await asyncio.wait_for(fired, 5)
    finally:
        await watcher.close()
        await writer.close()


async def test_a_change_before_the_watch_registers_fires_it_at_once(server: Server) -> None:
    watcher, writer = await connect(server), await connect(server)
    try:
        tr = watcher.transaction()
        assert await tr.get(b"k") is None
        future = tr.watch(b"k")
        await writer.set(b"k", b"new")  # lands before the watch reaches the server
        await tr.commit()
        await asyncio.wait_for(future, 5)
    finally:
        await watcher.close()
        await writer.close()


async def test_a_cancelled_watch_leaves_nothing_on_the_server(server: Server) -> None:
    watcher, writer = await connect(server), await connect(server)
    try:
        fired = await watch(watcher, b"k")
        for _ in range(100):
            if any(c.watches for c in server.connections):
                break
            await asyncio.sleep(0.01)
        assert sum(len(c.watches) for c in server.connections) == 1
        fired.cancel()
        await watcher.close()
        for _ in range(100):
            if not any(c.watches for c in server.connections) and not server.db._watches:
                break
            await asyncio.sleep(0.01)
        assert not any(c.watches for c in server.connections)
        assert b"k" not in server.db._watches
        await writer.set(b"k", b"after")
    finally:
        await writer.close()


async def test_a_watch_survives_a_server_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    first = await serve(url, TOKEN, port=0)
    port = first.port
    watcher = await shale.open(f"shale://127.0.0.1:{port}", token=TOKEN)
    try:
        fired = await watch(watcher, b"k")
        await first.stop(drain=1.0)
        second = await serve(url, TOKEN, port=port)
        try:
            writer = await shale.open(f"shale://127.0.0.1:{port}", token=TOKEN)
            try:
                await writer.set(b"k", b"v")
                await asyncio.wait_for(fired, 10)
            finally:
                await writer.close()
        finally:
            await second.stop(drain=1.0)
    finally:
        await watcher.close()
