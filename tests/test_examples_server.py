"""examples/producer.py and examples/consumer.py against a real ``shale serve``.

Every process is real: the server, the consumer and the producer, talking
over loopback TCP. Timeouts only stop a hang from stalling the suite.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN = "example-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_accepting(port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with status {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"the server did not accept connections within {timeout} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ``shale serve --inmem`` process; yields the clients' environment and
    checks, after the test, that SIGTERM stops it with status 0."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    command = [sys.executable, "-m", "shale", "serve", "--inmem"]
    command += ["--token-file", str(token_file), "--port", str(port)]
    with (tmp_path / "server.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until_accepting(port, process, timeout=15)
        env = {**os.environ, "SHALE_URL": f"shale://127.0.0.1:{port}", "SHALE_TOKEN": TOKEN}
        yield env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    assert status == 0, (tmp_path / "server.log").read_text()


def test_consumer_prints_what_the_producer_sends(server: dict[str, str]) -> None:
    consumer = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "consumer.py"), "--count", "5"],
        env=server,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        producer = subprocess.run(
            [sys.executable, str(EXAMPLES / "producer.py"), "--count", "5", "--interval", "0.05"],
            env=server,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert producer.returncode == 0, producer.stderr
        assert producer.stdout.splitlines() == [f"sent message_{i}" for i in range(5)]
        out, err = consumer.communicate(timeout=60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    assert consumer.returncode == 0, err
    assert [line.split()[0] for line in out.splitlines()] == [f"message_{i}" for i in range(5)]


def run_example(name: str, env: dict[str, str], *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line.split()[0] for line in result.stdout.splitlines()]


def test_a_restarted_consumer_resumes_after_what_it_printed(server: dict[str, str]) -> None:
    sent = run_example("producer.py", server, "--count", "7", "--interval", "0")
    assert sent == ["sent"] * 7
    # Started after the messages were sent: it reads the feed from its origin.
    assert run_example("consumer.py", server, "--count", "5") == [f"message_{i}" for i in range(5)]
    assert run_example("consumer.py", server, "--count", "2") == ["message_5", "message_6"]
