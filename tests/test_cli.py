"""The ``shale`` command, run as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shale.cli import build_parser, parse_bytes, show_bytes

ROOT = Path(__file__).resolve().parent.parent


def shale_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shale", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:////{str(tmp_path).lstrip('/')}/cli.db"


def test_help_and_version() -> None:
    helped = shale_cmd("--help")
    assert helped.returncode == 0
    for command in ("get", "set", "clear", "ls"):
        assert command in helped.stdout
    version = shale_cmd("--version")
    assert version.returncode == 0 and version.stdout.startswith("shale ")


def test_set_get_clear_ls(url: str) -> None:
    assert shale_cmd("set", "--url", url, "greeting", "hello").returncode == 0
    got = shale_cmd("get", "--url", url, "greeting")
    assert (got.returncode, got.stdout) == (0, "hello\n")
    assert shale_cmd("set", "--url", url, "-t", '["users", 42]', "alice").returncode == 0
    assert shale_cmd("set", "--url", url, "bin\\x00\\xff", "\\x01").returncode == 0
    listing = shale_cmd("ls", "--url", url)
    assert listing.stdout.splitlines() == [
        "('users', 42)\talice",
        "bin\\x00\\xff\t\\x01",
        "greeting\thello",
    ]
    assert shale_cmd("ls", "--url", url, "-t", '["users"]').stdout == "('users', 42)\talice\n"
    assert shale_cmd("ls", "--url", url, "--limit", "1").stdout.count("\n") == 1
    assert shale_cmd("clear", "--url", url, "greeting").returncode == 0
    missing = shale_cmd("get", "--url", url, "greeting")
    assert missing.returncode == 1
    assert missing.stderr == "shale: no such key: greeting\n"


def test_ls_pages_across_transactions(url: str) -> None:
    script = (
        "import asyncio, shale\n"
        "async def main():\n"
        f"    async with await shale.open({url!r}) as db:\n"
        "        async with db.transaction() as tr:\n"
        "            for i in range(2500): tr.set(b'p/%05d' % i, b'x')\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    lines = shale_cmd("ls", "--url", url, "p/").stdout.splitlines()
    assert len(lines) == 2500 and lines[0].startswith("p/00000") and lines[-1].startswith("p/02499")


def test_default_url_uses_shale_url(
    tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHALE_URL", url)
    assert shale_cmd("set", "k", "v", cwd=tmp_path).returncode == 0
    assert shale_cmd("get", "--url", url, "k").stdout == "v\n"
    assert not (tmp_path / "shale.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("get", "--url", "nosuch://x", "k"), "cannot open nosuch:// URLs"),
        (("get", "--url", "sqlite:////no/such/dir/x.db", "k"), "no database at /no/such/dir/x.db"),
        (("set", "--url", "sqlite:////no/such/dir/x.db", "k", "v"), "No such file or directory"),
        (
            ("serve", "memory://", "--token", "t", "--tls-cert", "/no.pem", "--tls-key", "/no.key"),
            "--tls-cert /no.pem: no such file",
        ),
        (("set", "--url", "memory://", "bad\\q", "v"), "bad escape"),
        (("set", "--url", "memory://", "-t", "[1,", "v"), "--tuple key is not JSON"),
        (("set", "--url", "memory://", "-t", '{"a": 1}', "v"), "must be a JSON array"),
        (("set", "--url", "memory://", "\\xff\\x00", "v"), "system keyspace"),
        (("ls", "--url", "memory://", "--limit", "-1"), "--limit must be >= 0"),
    ],
)
def test_errors_are_one_line(args: tuple[str, ...], message: str) -> None:
    result = shale_cmd(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("shale: ") and message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_bytes_round_trip_through_escapes() -> None:
    for data in (b"", b"plain", b"\x00\xff\\", "é".encode()):
        assert parse_bytes(show_bytes(data)) == data


def test_every_command_is_documented() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands
    for name in commands:
        assert f"shale {name}" in docs, f"`shale {name}` is not in docs/cli.md"


def test_url_and_tuple_before_the_command_as_the_docs_show(url: str) -> None:
    assert shale_cmd("--url", url, "set", "-t", '["users", 42]', "alice").returncode == 0
    assert shale_cmd("--url", url, "-t", "get", '["users", 42]').stdout == "alice\n"
    assert shale_cmd("get", "--url", url, "-t", '["users", 42]').stdout == "alice\n"
    assert shale_cmd("--url", url, "ls").stdout == "('users', 42)\talice\n"


def test_url_help_names_the_default() -> None:
    helped = shale_cmd("get", "--help").stdout
    assert "else sqlite:///shale.db" in " ".join(helped.split())
    assert "None" not in helped


def test_serve_takes_the_url_before_the_command_too() -> None:
    from shale.cli import build_parser

    args = build_parser().parse_args(["--url", "memory://", "serve", "--token", "t"])
    assert args.url == "memory://"
    args = build_parser().parse_args(
        ["--url", "memory://", "serve", "sqlite:///x.db", "--token", "t"]
    )
    assert args.url == "sqlite:///x.db", "the command's own URL wins"


@given(st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
def test_any_bytes_round_trip_through_what_is_shown(data: bytes) -> None:
    assert parse_bytes(show_bytes(data)) == data


def test_utf8_values_print_as_text(url: str) -> None:
    assert shale_cmd("set", "--url", url, "city", "Zürich — 東京").returncode == 0
    assert shale_cmd("get", "--url", url, "city").stdout == "Zürich — 東京\n"
    assert show_bytes(b"tab\there\n") == "tab\\x09here\\x0a"


def test_a_closed_pipe_ends_the_listing_quietly(url: str) -> None:
    for i in range(3):
        keys = [f"k{i}{j:04d}" for j in range(1000)]
        script = "import shale, asyncio\n"
        script += "async def main():\n"
        script += f"    async with await shale.open({url!r}) as db:\n"
        script += "        async with db.transaction() as tr:\n"
        script += f"            for k in {keys!r}: tr.set(k.encode(), b'v' * 100)\n"
        script += "asyncio.run(main())\n"
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    listing = subprocess.Popen(
        [sys.executable, "-m", "shale", "ls", "--url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.readline()
    listing.stdout.close()  # as `head -1` does
    assert listing.wait(timeout=60) == 0
    assert listing.stderr.read() == b""


@pytest.mark.parametrize("command", [("get", "k"), ("ls",)])
def test_reading_a_database_that_does_not_exist_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path}/missing.db"
    result = shale_cmd(*command, "--url", url)
    assert result.returncode == 2
    assert (
        result.stderr
        == f"shale: no database at {tmp_path}/missing.db (give --url, or set SHALE_URL)\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_bad_port_is_a_usage_error_not_a_traceback(port: str) -> None:
    result = shale_cmd("serve", "memory://", "--token", "t", "--port", port)
    assert result.returncode == 2
    assert "argument --port:" in result.stderr and "Traceback" not in result.stderr
