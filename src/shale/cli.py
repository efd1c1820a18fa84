"""The ``shale`` command line (also ``python -m shale``).

Keys and values are given as text; ``\\xNN`` stands for any byte and ``\\\\``
for a backslash, so every key can be typed. With ``--tuple``, a key is a
JSON array packed with the tuple encoding (``'["users", 42]'``). Errors
print one line to stderr and exit non-zero; there are no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import shale
from shale import tuple as tuples
from shale.core.database import DEFAULT_URL
from shale.engines.sqlite import sqlite_path
from shale.server.cli import add_serve_parser, run_serve

__all__ = ["main"]

_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|\\)")
_PRINTABLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]+")

_READ_ONLY = frozenset({"get", "ls"})
"""Commands that must not create the database they read."""

EXIT_NOT_FOUND = 1
EXIT_ERROR = 2
_PAGE = 1000


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def parse_bytes(text: str) -> bytes:
    """Text with ``\\xNN`` and ``\\\\`` escapes, as bytes (UTF-8 elsewhere)."""
    raw = text.encode("utf-8")
    if b"\\" in _ESCAPE.sub(b"", raw):
        raise CLIError(f"bad escape in {text!r}: only \\xNN and \\\\ are allowed")

    def unescape(match: re.Match[bytes]) -> bytes:
        token = match.group(1)
        return b"\\" if token == b"\\" else bytes((int(token[1:], 16),))

    return _ESCAPE.sub(unescape, raw)


def show_bytes(data: bytes) -> str:
    """The inverse of ``parse_bytes``: valid UTF-8 as text with only its
    unprintable characters escaped (as their bytes), anything else as
    printable ASCII with the rest escaped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _show_raw(data)
    return "".join(
        "\\\\" if ch == "\\" else ch if ch.isprintable() else _escaped(ch.encode()) for ch in text
    )


def _escaped(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def _show_raw(data: bytes) -> str:
    out: list[str] = []
    pos = 0
    for match in _PRINTABLE.finditer(data):
        out.extend(f"\\x{b:02x}" for b in data[pos : match.start()])
        out.append(match.group().decode("ascii"))
        pos = match.end()
    out.extend(f"\\x{b:02x}" for b in data[pos:])
    return "".join(out).replace("\\x5c", "\\\\")


def show_key(key: bytes) -> str:
    """A key as a tuple if it is exactly one, else as escaped bytes."""
    try:
        decoded = tuples.unpack(key)
        if tuples.pack(decoded) == key and decoded:
            return repr(decoded)
    except ValueError:
        pass
    return show_bytes(key)


def _json_to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_json_to_tuple(v) for v in value)
    if isinstance(value, dict):
        raise CLIError("tuple keys hold strings, numbers, booleans, null and arrays, not objects")
    return value


def parse_key(text: str, as_tuple: bool) -> bytes:
    if not as_tuple:
        return parse_bytes(text)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--tuple key is not JSON: {exc.msg} in {text!r}") from None
    if not isinstance(items, list):
        raise CLIError(f"--tuple key must be a JSON array, not {text!r}")
    return tuples.pack(_json_to_tuple(items))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shale",
        description="Read and write a Shale database.",
        epilog=f"The database URL defaults to $SHALE_URL, else {DEFAULT_URL}.",
    )
    parser.add_argument("--version", action="version", version=f"shale {shale.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    # Taken before the command and after it, as the docs show both: with no
    # default, the command's parser does not overwrite what came before it.
    for taker in (parser, common):
        taker.add_argument(
            "--url",
            default=argparse.SUPPRESS,
            help=f"database URL (default: $SHALE_URL, else {DEFAULT_URL})",
        )
        taker.add_argument(
            "-t",
            "--tuple",
            action="store_true",
            default=argparse.SUPPRESS,
            help="keys are JSON arrays packed as tuples",
        )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = commands.add_parser("get", parents=[common], help="print the value of KEY")
    get.add_argument("key", metavar="KEY")
    put = commands.add_parser("set", parents=[common], help="set KEY to VALUE")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")
    clear = commands.add_parser("clear", parents=[common], help="remove KEY")
    clear.add_argument("key", metavar="KEY")
    ls = commands.add_parser("ls", parents=[common], help="list keys that start with PREFIX")
    ls.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    ls.add_argument("--limit", type=int, default=0, help="at most this many keys (0: all)")
    add_serve_parser(commands)
    return parser


async def run(args: argparse.Namespace) -> int:
    url = getattr(args, "url", None) or os.environ.get("SHALE_URL") or DEFAULT_URL
    if args.command in _READ_ONLY and urlsplit(url).scheme == "sqlite":
        path = sqlite_path(url)
        if not os.path.exists(path):  # opening it would create it
            raise CLIError(f"no database at {path} (give --url, or set SHALE_URL)")
    db = await shale.open(url)
    args.tuple = getattr(args, "tuple", False)
    try:
        if args.command == "get":
            value = await db.get(parse_key(args.key, args.tuple))
            if value is None:
                print(f"shale: no such key: {args.key}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(show_bytes(value))
        elif args.command == "set":
            await db.set(parse_key(args.key, args.tuple), parse_bytes(args.value))
        elif args.command == "clear":
            await db.clear(parse_key(args.key, args.tuple))
        else:
            await _ls(db, args)
    finally:
        await db.close()
    return 0


async def _ls(db: shale.Database, args: argparse.Namespace) -> None:
    """Page through the prefix, one short transaction per page, so listing
    a large database never hits the transaction age limit."""
    prefix = parse_key(args.prefix, args.tuple) if args.prefix else b""
    if args.limit < 0:
        raise CLIError(f"--limit must be >= 0, not {args.limit}")
    end = shale.strinc(prefix) if prefix.strip(b"\xff") else b"\xff"
    begin, end, left = prefix, min(end, b"\xff"), args.limit or -1
    while left:
        page = _PAGE if left < 0 else min(_PAGE, left)
        async with db.transaction() as tr:
            rows = await tr.get_range(begin, end, limit=page)
        for key, value in rows:
            print(f"{show_key(key)}\t{show_bytes(value)}")
        if len(rows) < page:
            return
        begin, left = rows[-1][0] + b"\x00", left - len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        return asyncio.run(run(args))
    except BrokenPipeError:
        # The reader went away (`shale ls | head`): not an error. Python
        # would complain again flushing stdout at exit, so point it at null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, shale.ShaleError, ValueError, OSError) as exc:
        print(f"shale: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
