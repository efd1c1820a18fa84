"""A tiny run of ``bench/bench_server.py``: its own checks pass on every system.

Shale always runs, through a real ``shale serve`` subprocess. Redis and
PostgreSQL run when ``SHALE_TEST_REDIS_URL`` / ``SHALE_TEST_POSTGRES_URL``
is set, and must then be reachable: a set URL that the bench would skip is a
failure here, not a skip.
"""

from __future__ import annotations

import os

import pytest
from bench import bench_server

PEERS = {"redis": "SHALE_TEST_REDIS_URL", "postgresql": "SHALE_TEST_POSTGRES_URL"}


@pytest.mark.parametrize(
    "systems",
    [("shale-sqlite", "shale-sqlite-normal", "shale-memory"), ("redis",), ("postgresql",)],
    ids="+".join,
)
def test_server_benchmark_checks_itself(systems: tuple[str, ...]) -> None:
    for name in systems:
        if name in PEERS and not os.environ.get(PEERS[name]):
            pytest.skip(f"{PEERS[name]} is not set, so {name} is not benchmarked")
    rows = bench_server.run(
        seconds=0.3,
        clients=(1, 4),
        reads=20,
        systems=systems,
        redis_url=os.environ.get(PEERS["redis"]),
        postgres_url=os.environ.get(PEERS["postgresql"]),
    )
    skipped = [row for row in rows if row["table"] == "skipped"]
    assert not skipped
    # Two workloads at two client counts, and one latency run, per system.
    assert len([row for row in rows if row["table"] == "throughput"]) == 4 * len(systems)
    assert len([row for row in rows if row["table"] == "latency"]) == len(systems)
    assert "| system |" in bench_server.markdown(rows)
