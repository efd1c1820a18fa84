"""Options a database is opened with: a misspelt one is an error naming the
ones the engine takes, and nothing is created or connected."""

from __future__ import annotations

from pathlib import Path

import pytest

import shale

URLS = {
    "memory": "memory://",
    "sqlite": "sqlite:///{tmp}/options.db",
    "shale": "shale://:token@127.0.0.1:9",  # nothing listens: the check comes first
}


@pytest.mark.parametrize("engine", sorted(URLS))
@pytest.mark.parametrize("how", ["query", "keyword"])
async def test_a_misspelt_option_is_refused_with_the_known_ones(
    engine: str, how: str, tmp_path: Path
) -> None:
    url = URLS[engine].format(tmp=tmp_path)
    options = {"synchronus": "normal"}
    if how == "query":
        url, options = url + "?synchronus=normal", {}
    with pytest.raises(
        shale.UsageError, match=r"unknown option 'synchronus' for \w+://; it takes "
    ):
        await shale.open(url, **options)
    assert list(tmp_path.iterdir()) == [], "a refused open created files"


async def test_every_option_named_in_the_error_is_accepted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ok.db?synchronous=normal&max_readers=8&max_transaction_age=2"
    async with await shale.open(url) as db:
        await db.set(b"k", b"v")
        assert await db.get(b"k") == b"v"


@pytest.mark.parametrize("option", ["ca", "verify", "server_hostname", "cert", "key"])
async def test_tls_options_on_plain_shale_are_refused(option: str) -> None:
    with pytest.raises(shale.UsageError, match=f"{option} is a TLS option.*use shale\\+tls://"):
        await shale.open(f"shale://:token@127.0.0.1:9?{option}=x")
