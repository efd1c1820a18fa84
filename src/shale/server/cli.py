"""``shale serve``: the server's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from pathlib import Path

from shale.core.database import DEFAULT_URL
from shale.errors import UsageError
from shale.server.protocol import Limits
from shale.server.server import DEFAULT_PORT, serve

__all__ = ["add_serve_parser", "run_serve"]

_DEFAULTS = Limits()


def add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a database to other processes over TCP",
        description=(
            "Serve the database at URL (default: $SHALE_URL, else "
            f"{DEFAULT_URL}) until SIGINT or SIGTERM. Clients connect with "
            "shale.open('shale://HOST:PORT', token=TOKEN)."
        ),
    )
    parser.add_argument("url", metavar="URL", nargs="?", default=argparse.SUPPRESS)
    parser.add_argument("--inmem", action="store_true", help="serve a new in-memory database")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--token-file", type=Path, help="read the token from this file (its first line)"
    )
    secret.add_argument("--token", help="the token itself (other users can see it with ps)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port (%(default)s)")
    parser.add_argument("--tls-cert", type=Path, help="certificate chain (PEM) for TLS")
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) for TLS")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="also require a client certificate signed by this CA (PEM): mutual TLS",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=float,
        default=_DEFAULTS.handshake_timeout,
        help="seconds a new connection has to authenticate (%(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=_DEFAULTS.idle_timeout,
        help="seconds of client silence before its connection is closed (%(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also log conflicts")


def _token(args: argparse.Namespace) -> str:
    """From --token-file or --token (exclusive), else $SHALE_TOKEN."""
    if args.token:
        return str(args.token)
    if args.token_file:
        lines: list[str] = Path(args.token_file).read_text().splitlines()
        if not lines or not lines[0].strip():
            raise UsageError(f"the token file {args.token_file} is empty")
        return lines[0].strip()
    token = os.environ.get("SHALE_TOKEN", "")
    if token:
        return token
    raise UsageError("a token is required: --token-file FILE, $SHALE_TOKEN or --token TOKEN")


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535; argparse words the error."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535; 0 picks a free one)")
    return port


def _ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        if args.tls_client_ca:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    for option, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except ssl.SSLError as exc:
        raise UsageError(
            f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate "
            f"chain and its key in PEM ({exc.reason or exc})"
        ) from None
    if args.tls_client_ca:
        context.load_verify_locations(cafile=str(args.tls_client_ca))
        # Optional at the TLS layer, required by the server: a client
        # without one is told so (AUTHENTICATION) rather than reset.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def run_serve(args: argparse.Namespace) -> int:
    """Serve until a signal; the exit status."""
    given = getattr(args, "url", None)  # positional, or --url before the command
    if args.inmem and given:
        raise UsageError("give a URL or --inmem, not both")
    url = "memory://" if args.inmem else given or os.environ.get("SHALE_URL") or DEFAULT_URL
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    limits = Limits(handshake_timeout=args.handshake_timeout, idle_timeout=args.idle_timeout)
    token, context = _token(args), _ssl(args)
    asyncio.run(_serve(url, token, args.host, args.port, limits, context))
    return 0


async def _serve(
    url: str,
    token: str,
    host: str,
    port: int,
    limits: Limits,
    context: ssl.SSLContext | None,
) -> None:
    server = await serve(url, token, host=host, port=port, limits=limits, ssl_context=context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheme = "shale+tls" if context else "shale"
    print(
        f"shale: serving {url} — connect with "
        f"shale.open('{scheme}://{host}:{server.port}', token=...)",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    logging.getLogger("shale.server").info("signal received; shutting down")
    await server.stop()
