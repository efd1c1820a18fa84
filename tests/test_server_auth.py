"""Tokens and TLS between ``shale serve`` and the ``shale://`` engine.

Where the client finds its token (the ``token=`` option, then the URL's
password, then ``$SHALE_TOKEN``), that the token never shows in a repr, an
error or the server's log, that a refused token is not retried, and TLS end
to end with a CA made for the test. Servers run on loopback in the test's
event loop, or as ``shale serve`` subprocesses for the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme

import shale
from shale.server.protocol import PROTOCOL_VERSION, Limits, MessageType, frame
from shale.server.server import Server, serve

TOKEN = "s3cret/t@ken:with%odd chars"
"""Needs quoting in a URL: '/' and '@' would end the authority."""
WRONG = "not-the-token"
HANG = 5.0
"""Seconds before a wait counts as a hang: a guard, not a measurement."""


@pytest.fixture(autouse=True)
def no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHALE_TOKEN", raising=False)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await serve("memory://", TOKEN, host="127.0.0.1", port=0)
    yield running
    await running.stop(drain=1.0)


def url_for(server: Server, token: str | None = None, scheme: str = "shale") -> str:
    auth = f":{quote(token, safe='')}@" if token is not None else ""
    return f"{scheme}://{auth}127.0.0.1:{server.port}"


async def round_trip(db: shale.Database) -> None:
    """Write, read back, and commit a transaction that reads and writes."""
    await db.set(b"auth/a", b"1")
    assert await db.get(b"auth/a") == b"1"
    async with db.transaction() as tr:
        assert await tr.get(b"auth/a") == b"1"
        tr.set(b"auth/b", b"2")
        tr.clear(b"auth/a")
    async with db.transaction() as tr:
        assert await tr.get_range(b"auth/", b"auth0") == [(b"auth/b", b"2")]


# -- where the token comes from ----------------------------------------------------


async def test_token_option(server: Server) -> None:
    async with await shale.open(url_for(server), token=TOKEN) as db:
        await round_trip(db)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
async def test_a_token_read_from_a_file_with_its_newline_works(
    server: Server, tmp_path: Path, ending: str
) -> None:
    """``make run`` writes .shale-token with a trailing newline."""
    (tmp_path / "token").write_text(TOKEN + ending)
    token = (tmp_path / "token").read_text()
    db = await shale.open(url_for(server), token=token)
    try:
        await round_trip(db)
    finally:
        await db.close()
    with pytest.raises(shale.AuthenticationError, match="empty"):
        await shale.open(url_for(server), token="\n")


async def test_token_in_the_url_is_unquoted(server: Server) -> None:
    assert "@" in TOKEN and "/" in TOKEN
    async with await shale.open(url_for(server, TOKEN)) as db:
        await round_trip(db)


async def test_token_from_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHALE_TOKEN", TOKEN)
    async with await shale.open(url_for(server)) as db:
        await round_trip(db)


@pytest.mark.parametrize(
    ("option", "in_url", "env", "accepted"),
    [
        (TOKEN, WRONG, WRONG, True),
        (WRONG, TOKEN, TOKEN, False),
        (None, TOKEN, WRONG, True),
        (None, WRONG, TOKEN, False),
    ],
    ids=["option-over-url", "option-over-url-wrong", "url-over-env", "url-over-env-wrong"],
)
async def test_option_beats_url_beats_environment(
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    option: str | None,
    in_url: str,
    env: str,
    accepted: bool,
) -> None:
    monkeypatch.setenv("SHALE_TOKEN", env)
    options = {} if option is None else {"token": option}
    if accepted:
        async with await shale.open(url_for(server, in_url), **options) as db:
            await round_trip(db)
    else:
        with pytest.raises(shale.AuthenticationError, match="wrong token"):
            await shale.open(url_for(server, in_url), **options)


# -- the token stays secret ------------------------------------------------------------


async def test_repr_does_not_show_the_token(server: Server) -> None:
    for url in (url_for(server, TOKEN), f"{url_for(server)}?token={quote(TOKEN, safe='')}"):
        async with await shale.open(url) as db:
            await round_trip(db)
            shown = repr(db) + str(db) + repr(db.engine)
            assert "***" in repr(db)
            assert f"127.0.0.1:{server.port}" in repr(db)
            for secret in (TOKEN, quote(TOKEN, safe=""), quote(TOKEN)):
                assert secret not in shown


async def test_errors_and_logs_do_not_show_the_token(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shale.server")
    wrong = "wrong/t@ken-that-is-secret-too"
    failures: list[BaseException] = []
    with pytest.raises(shale.AuthenticationError) as refused:
        await shale.open(url_for(server, wrong))
    failures.append(refused.value)
    with pytest.raises(shale.EngineError) as bad_port:
        await shale.open(f"shale://:{quote(wrong, safe='')}@127.0.0.1:notaport")
    failures.append(bad_port.value)
    with socket_without_listener() as port, pytest.raises(shale.Unavailable) as unreachable:
        await shale.open(f"shale://:{quote(wrong, safe='')}@127.0.0.1:{port}", connect_timeout=0.2)
    failures.append(unreachable.value)
    async with await shale.open(url_for(server, TOKEN)) as db:
        await round_trip(db)
    text = " ".join(f"{e} {e!r} {e.__cause__!r}" for e in failures) + caplog.text
    assert "wrong token" in text
    for secret in (TOKEN, wrong, quote(TOKEN, safe=""), quote(wrong, safe="")):
        assert secret not in text


@contextlib.contextmanager
def socket_without_listener() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        yield sock.getsockname()[1]


async def test_authentication_error_is_not_retried(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shale.server")
    db = await shale.open(url_for(server), token=TOKEN)
    try:
        await round_trip(db)
        # The token is rotated and the client cut off: its reconnect is refused.
        server.token = b"rotated"
        for connection in list(server.connections):
            connection.close("rotating the token")
        failures: list[type[BaseException]] = []

        async def body(tr: shale.Transaction) -> bytes | None:
            try:
                return await tr.get(b"auth/b")
            except BaseException as exc:
                failures.append(type(exc))
                raise

        with pytest.raises(shale.AuthenticationError, match="wrong token"):
            await asyncio.wait_for(db.run(body, retries=5), HANG)
        # An attempt may start on the connection being cut (Unavailable, which
        # is retried); the refusal ends the run at once.
        assert failures[-1] is shale.AuthenticationError
        assert set(failures[:-1]) <= {shale.Unavailable}
        refusals = [r for r in caplog.records if r.getMessage().endswith("refused: wrong token")]
        assert len(refusals) == 1
    finally:
        await db.close()


async def test_refused_open_is_not_retried(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shale.server")
    with pytest.raises(shale.AuthenticationError, match="wrong token"):
        await asyncio.wait_for(shale.open(url_for(server), token=WRONG, connect_timeout=60), HANG)
    refusals = [r for r in caplog.records if r.getMessage().endswith("refused: wrong token")]
    assert len(refusals) == 1


# -- TLS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    authority.cert_pem.write_to_path(str(ca))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(context)
    return Certs(ca, cert, key, context)


@pytest.fixture
async def tls_server(certs: Certs) -> AsyncIterator[Server]:
    running = await serve(
        "memory://",
        TOKEN,
        host="127.0.0.1",
        port=0,
        ssl_context=certs.server_context,
        limits=Limits(handshake_timeout=1.0),
    )
    yield running
    await running.stop(drain=1.0)


async def test_tls_end_to_end(tls_server: Server, certs: Certs) -> None:
    url = f"shale+tls://localhost:{tls_server.port}"
    async with await shale.open(url, token=TOKEN, ca=str(certs.ca)) as db:
        await round_trip(db)


async def test_tls_ca_in_the_query_string(tls_server: Server, certs: Certs) -> None:
    url = f"shale+tls://127.0.0.1:{tls_server.port}?ca={quote(str(certs.ca))}"
    async with await shale.open(url, token=TOKEN) as db:
        await round_trip(db)


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, "unable to get local issuer certificate"),
        ({"server_hostname": "elsewhere.example"}, "Hostname mismatch"),
    ],
    ids=["system-cas", "wrong-hostname"],
)
async def test_tls_verification_failure_is_a_clear_error(
    tls_server: Server, certs: Certs, options: dict[str, str], reason: str
) -> None:
    if options:
        options = {**options, "ca": str(certs.ca)}
    url = f"shale+tls://localhost:{tls_server.port}"
    # A long connect_timeout: the failure must not be retried until it runs out.
    with pytest.raises(shale.AuthenticationError, match="failed TLS verification") as failed:
        await asyncio.wait_for(shale.open(url, token=TOKEN, connect_timeout=60, **options), HANG)
    assert reason in str(failed.value)
    assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    async with await shale.open(url, token=TOKEN, ca=str(certs.ca)) as db:
        await round_trip(db)


async def test_tls_without_verification(tls_server: Server) -> None:
    url = f"shale+tls://localhost:{tls_server.port}"
    async with await shale.open(url, token=TOKEN, verify="false") as db:
        await round_trip(db)


async def test_plain_client_to_a_tls_server_is_closed(tls_server: Server, certs: Certs) -> None:
    good = await shale.open(
        f"shale+tls://localhost:{tls_server.port}", token=TOKEN, ca=str(certs.ca)
    )
    try:
        with pytest.raises(shale.Unavailable, match="cannot reach the server"):
            await asyncio.wait_for(
                shale.open(url_for(tls_server), token=TOKEN, connect_timeout=0.5), HANG
            )
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port)
        try:
            writer.write(frame(MessageType.HELLO, 1, (PROTOCOL_VERSION, TOKEN.encode(), "plain")))
            # The server answers a non-TLS hello with at most a TLS alert, then closes.
            with contextlib.suppress(ConnectionResetError):
                received = await asyncio.wait_for(reader.read(), HANG)
                assert not received.startswith(b"\x00")
        finally:
            writer.close()
        await round_trip(good)
    finally:
        await good.close()


# -- shale serve --------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("SHALE_TOKEN", "SHALE_URL")}


@contextlib.asynccontextmanager
async def shale_serve(*args: str) -> AsyncIterator[int]:
    """``shale serve --inmem --port 0 ARGS`` until the block ends; its port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shale",
        "serve",
        "--inmem",
        "--port",
        "0",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert process.stderr is not None
    try:
        seen: list[str] = []
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, f"shale serve exited: {''.join(seen)}"
            seen.append(line)
            found = re.search(r"://[^:/']+:(\d+)'", line)
            if line.startswith("shale: serving") and found:
                break
        yield int(found.group(1))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, rest.decode()


async def test_shale_serve_with_tls(certs: Certs) -> None:
    tls = ("--token", TOKEN, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    async with shale_serve(*tls) as port:
        url = f"shale+tls://localhost:{port}"
        async with await shale.open(url, token=TOKEN, ca=str(certs.ca)) as db:
            await round_trip(db)
        with pytest.raises(shale.AuthenticationError, match="failed TLS verification"):
            await asyncio.wait_for(shale.open(url, token=TOKEN), HANG)


async def test_shale_serve_with_mutual_tls(certs: Certs, mutual: MutualCerts) -> None:
    # The server's certificate from one CA, the clients' from another.
    tls = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key))
    async with shale_serve("--token", TOKEN, *tls, "--tls-client-ca", str(mutual.ca)) as port:
        url = f"shale+tls://localhost:{port}"
        client = {"cert": str(mutual.client_cert), "key": str(mutual.client_key)}
        async with await shale.open(url, token=TOKEN, ca=str(certs.ca), **client) as db:
            await round_trip(db)
        with pytest.raises(shale.AuthenticationError, match="a client certificate is required"):
            await asyncio.wait_for(
                shale.open(url, token=TOKEN, ca=str(certs.ca), connect_timeout=60), HANG
            )


async def test_shale_serve_reads_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\nthe first line is the token\n")
    async with shale_serve("--token-file", str(token_file)) as port:
        async with await shale.open(f"shale://127.0.0.1:{port}", token=TOKEN) as db:
            await round_trip(db)
        with pytest.raises(shale.AuthenticationError, match="wrong token"):
            await shale.open(f"shale://127.0.0.1:{port}", token="the first line is the token")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((), "shale: a token is required: --token-file FILE, $SHALE_TOKEN or --token TOKEN"),
        (("--token-file", "{empty}"), "shale: the token file {empty} is empty"),
        (("--token", "t", "--tls-cert", "{empty}"), "shale: --tls-cert and --tls-key go together"),
        (("memory://", "--token", "t"), "shale: give a URL or --inmem, not both"),
        (
            ("--token", "t", "--tls-client-ca", "{empty}"),
            "shale: --tls-client-ca needs --tls-cert and --tls-key",
        ),
    ],
    ids=["no-token", "empty-token-file", "cert-without-key", "url-and-inmem", "client-ca-alone"],
)
def test_shale_serve_refuses_to_start(tmp_path: Path, args: tuple[str, ...], error: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    argv = [a.format(empty=empty) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "shale", "serve", "--inmem", "--port", "0", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [error.format(empty=empty)]


@dataclass
class MutualCerts:
    ca: Path
    client_cert: Path
    client_key: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory) -> MutualCerts:
    """A server that requires client certificates from its own CA."""
    authority = trustme.CA()
    folder = tmp_path_factory.mktemp("mtls")
    ca = folder / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    client = authority.issue_cert("client@example.com")
    cert, key = folder / "client.pem", folder / "client.key"
    for index, pem in enumerate(client.cert_chain_pems):
        pem.write_to_path(str(cert), append=index > 0)
    client.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    authority.configure_trust(context)
    context.verify_mode = ssl.CERT_OPTIONAL  # as `shale serve --tls-client-ca` sets it
    return MutualCerts(ca, cert, key, context)


@pytest.fixture
async def mtls_server(mutual: MutualCerts) -> AsyncIterator[Server]:
    running = await serve(
        "memory://", TOKEN, port=0, ssl_context=mutual.server_context, limits=Limits()
    )
    yield running
    await running.stop(drain=1.0)


async def test_mutual_tls_with_a_client_certificate(
    mtls_server: Server, mutual: MutualCerts
) -> None:
    url = f"shale+tls://localhost:{mtls_server.port}"
    options = {"ca": str(mutual.ca), "cert": str(mutual.client_cert), "key": str(mutual.client_key)}
    async with await shale.open(url, token=TOKEN, **options) as db:
        await round_trip(db)


async def test_mutual_tls_without_a_client_certificate_is_refused_at_once(
    mtls_server: Server, mutual: MutualCerts
) -> None:
    url = f"shale+tls://localhost:{mtls_server.port}"
    # A long connect_timeout: the refusal must not be retried until it runs out.
    with pytest.raises(shale.AuthenticationError, match="a client certificate is required"):
        await asyncio.wait_for(
            shale.open(url, token=TOKEN, ca=str(mutual.ca), connect_timeout=60), HANG
        )


async def test_a_client_certificate_that_cannot_be_loaded(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(shale.UsageError, match="cannot load the client certificate"):
        await shale.open("shale+tls://localhost:1", token=TOKEN, cert=str(missing))
    with pytest.raises(shale.UsageError, match="key= needs cert="):
        await shale.open("shale+tls://localhost:1", token=TOKEN, key=str(missing))


@pytest.mark.parametrize(
    ("url", "options", "error", "message"),
    [
        ("shale://127.0.0.1:99999", {}, shale.EngineError, "'127.0.0.1:99999' has an invalid port"),
        ("shale://:secret@:7480", {}, shale.EngineError, "shale://:7480 names no host"),
        ("shale://127.0.0.1", {"token": 42}, shale.UsageError, "the token is a str, not int"),
        (
            "shale://127.0.0.1",
            {"connect_timeout": "soon"},
            shale.UsageError,
            "connect_timeout must be a positive number of seconds, not 'soon'",
        ),
        (
            "shale://127.0.0.1",
            {"connect_timeout": "nan"},
            shale.UsageError,
            "connect_timeout must be a positive number of seconds, not 'nan'",
        ),
        ("shale://127.0.0.1", {"connect_timeout": 0}, shale.UsageError, "not 0"),
        ("shale+tls://127.0.0.1", {"verify": "maybe"}, shale.UsageError, "verify is true or false"),
    ],
    ids=["port", "no-host", "token-type", "timeout-text", "timeout-nan", "timeout-zero", "verify"],
)
async def test_a_bad_url_or_option_is_refused_before_connecting(
    url: str, options: dict[str, object], error: type[Exception], message: str
) -> None:
    # Nothing listens on these: an attempt to connect would fail differently.
    with pytest.raises(error) as refused:
        await shale.open(url, token=options.pop("token", TOKEN), **options)
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)
