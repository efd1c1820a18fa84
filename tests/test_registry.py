"""Engines by URL scheme: entry points, errors that say what to install."""

from __future__ import annotations

from importlib.metadata import Distribution, EntryPoint
from pathlib import Path

import pytest

import shale
from shale.engines.memory import MemoryEngine
from shale.engines.registry import ENTRY_POINT_GROUP, Registry, default_registry


class ToyEngine(MemoryEngine):
    """A third-party engine: the memory engine under another scheme."""

    scheme = "toy"


def fake_distribution(tmp_path: Path, name: str, entries: dict[str, str]) -> list[EntryPoint]:
    """Entry points of a real (if tiny) installed distribution on disk."""
    info = tmp_path / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{scheme} = {target}\n" for scheme, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return list(Distribution.at(info).entry_points.select(group=ENTRY_POINT_GROUP))


def test_builtins_register_through_entry_points() -> None:
    assert {"memory", "sqlite"} <= set(default_registry().schemes())


async def test_third_party_engine_is_found_by_scheme(tmp_path: Path) -> None:
    points = fake_distribution(tmp_path, "shale_toy", {"toy": f"{__name__}:ToyEngine"})
    registry = Registry.from_entry_points([*default_registry().entries.values(), *points])
    async with await shale.open("toy://", registry=registry) as db:
        assert isinstance(db.engine, ToyEngine)
        await db.set(b"k", b"v")
        assert await db.get(b"k") == b"v"


def test_duplicate_scheme_is_an_error(tmp_path: Path) -> None:
    points = fake_distribution(tmp_path, "shale_clash", {"memory": f"{__name__}:ToyEngine"})
    with pytest.raises(shale.EngineError, match="'memory' is claimed by two engines"):
        Registry.from_entry_points([*default_registry().entries.values(), *points])


def test_same_engine_listed_twice_is_not_a_duplicate() -> None:
    builtin = list(default_registry().entries.values())
    assert Registry.from_entry_points(builtin + builtin).schemes() == default_registry().schemes()


async def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(
        shale.UnknownEngineError,
        match=r"Installed engines: memory://, shale://, shale\+tls://, sqlite://",
    ):
        await shale.open("nosuch://somewhere")


async def test_planned_scheme_says_so() -> None:
    with pytest.raises(shale.UnknownEngineError, match="planned but not in this release"):
        await shale.open("redis://127.0.0.1:6379/0")


def test_known_extra_names_the_install_command(tmp_path: Path) -> None:
    registry = Registry.from_entry_points([], extras={"toy": "toy"})
    with pytest.raises(shale.UnknownEngineError, match=r"pip install 'shaledb\[toy\]'"):
        registry.engine_class("toy://")
    points = fake_distribution(tmp_path, "shale_broken", {"toy": "no_such_module_xyz:Engine"})
    broken = Registry.from_entry_points(points, extras={"toy": "toy"})
    with pytest.raises(shale.UnknownEngineError, match=r"failed to import.*shaledb\[toy\]"):
        broken.engine_class("toy://")


@pytest.mark.parametrize("url", ["", "memory", "://x", "no scheme here"])
async def test_not_a_url(url: str) -> None:
    with pytest.raises(shale.UnknownEngineError, match="not a database URL"):
        await shale.open(url or "://")
