"""found's module layout under ``shale.found``: every module of found at the
same path with the same names, found-style code ported by the import
prefix alone, ``get_addresses_for_key``, and the names Shale refuses.

The name lists are found's own (amirouche/asyncio-foundationdb at the
revision found-spec §0 describes): what ``found/__init__.py`` re-exports,
and what each other module defines, minus the modules it imports and the
CFFI ``ffi``/``lib`` of ``found._fdb``.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

import shale.found as found
import shale.found.base
import shale.found.ext.pool
import shale.found.ext.vnstore.server as vnserver
import shale.found.tuple
import shale.tuple
from found_support import db, opener, raises, url
from shale.found import bstore, eavstore, nstore, pstore, vnstore
from shale.found.ext import bstore as ext_bstore
from shale.found.ext import eavstore as ext_eavstore
from shale.found.ext import nstore as ext_nstore
from shale.found.ext import pstore as ext_pstore
from shale.found.ext import vnstore as ext_vnstore
from shale.server import serve

__all__ = ["db", "opener", "url"]  # fixtures, imported for pytest to find


def _names(text: str) -> set[str]:
    return set(text.split())


_STREAMING = {
    f"STREAMING_MODE_{mode}" for mode in _names("WANT_ALL ITERATOR EXACT SMALL MEDIUM LARGE SERIAL")
}
_PREDICATES = {
    f"ERROR_PREDICATE_{kind}"
    for kind in _names("RETRYABLE MAYBE_COMMITTED RETRYABLE_NOT_COMMITTED")
}
_MUTATIONS = {
    f"MUTATION_{op}"
    for op in _names(
        """ADD BIT_AND BIT_OR BIT_XOR APPEND_IF_FITS MAX MIN SET_VERSIONSTAMPED_KEY
        SET_VERSIONSTAMPED_VALUE BYTE_MIN BYTE_MAX COMPARE_AND_CLEAR"""
    )
}
# found.base's functions that found/__init__.py re-exports.
_BASE_FUNCTIONS = _names(
    """add add_network_thread_completion_hook append_if_fits add_conflict_range bit_and
    bit_or bit_xor byte_max byte_min cancel clear commit compare_and_clear
    database_set_option error_predicate estimated_size_bytes get get_addresses_for_key
    get_approximate_size get_client_version get_committed_version get_key
    get_range_split_points get_versionstamp gt gte lt lte make_transaction max min
    network_set_option next_prefix on_error open query read_version reset set set_option
    set_read_version set_versionstamped_key set_versionstamped_value transaction
    transactional watch"""
)
_BASE_TYPES = _names(
    """BaseFoundException FoundException CONFLICT_RANGE_TYPE_READ CONFLICT_RANGE_TYPE_WRITE
    KeySelector Hooks Transaction TransactionStats make_hooks"""
)
_TUPLE = _names(
    """pack unpack pack_with_versionstamp has_incomplete_versionstamp Versionstamp
    next_prefix NULL_CODE BYTES_CODE STRING_CODE NESTED_CODE NEG_INT_START INT_ZERO_CODE
    POS_INT_END DOUBLE_CODE FALSE_CODE TRUE_CODE UUID_CODE VERSIONSTAMP_CODE"""
)

FOUND_LAYOUT: dict[str, set[str]] = {
    "found": _STREAMING
    | _PREDICATES
    | _BASE_TYPES
    | _BASE_FUNCTIONS
    | _names("Versionstamp has_incomplete_versionstamp pack pack_with_versionstamp unpack")
    | _names("co all limit MAX_SIZE_TRANSACTION MAX_SIZE_KEY MAX_SIZE_VALUE")
    | _names("HEADER_VERSION VERSION __VERSION__"),
    "found.base": _STREAMING
    | _PREDICATES
    | _MUTATIONS
    | _BASE_TYPES
    | _BASE_FUNCTIONS
    | {"Database"},
    "found.tuple": _TUPLE,
    "found.ext": set(),
    "found.ext.nstore": _names(
        """bc stringify combinations ok is_permutation_prefix NStoreException Variable var
        make add remove get select where query"""
    ),
    "found.ext.eavstore": _names(
        """EAVStore EAVSTORE_SUFFIX_DATA EAVSTORE_SUFFIX_INDEX make create get remove update
        query"""
    ),
    "found.ext.bstore": _names(
        "BStoreException BSTORE_SUFFIX_HASH BSTORE_SUFFIX_BLOB BStore make get_or_create get"
    ),
    "found.ext.pstore": _names(
        """PStoreException FOUND_PSTORE_SAMPLE_COUNT PSTORE_SUFFIX_TOKENS PSTORE_SUFFIX_INDEX
        PSTORE_SUFFIX_COUNTERS PStore make index search"""
    ),
    "found.ext.pool": {"pool_for_each_par_map"},
    "found.ext.vnstore": _names(
        """VNStoreException make change_create change_list change_get change_continue
        change_message change_changes change_apply ask get add remove select where query"""
    ),
    "found.ext.vnstore.server": _names(
        """fromstring tostring jinja reply_bad_request read_body reply_not_found reply_html
        reply_redirect not_found with_change server main"""
    ),
}

# What each Shale module exports beyond found's names.
SHALE_EXTRAS: dict[str, set[str]] = {
    "found": {"Database", "close", "DEFAULT_RETRY_LIMIT", "Unsupported"},
    "found.base": {"close"},
    "found.ext.nstore": {"NStore"},
    "found.ext.pstore": {"remove"},
    "found.ext.vnstore": {"VNStore", "Variable", "var"},
}

# The flat modules earlier Shale code imports, and found 0.13's path for each.
FLAT_AND_EXT = [
    (nstore, ext_nstore),
    (eavstore, ext_eavstore),
    (bstore, ext_bstore),
    (pstore, ext_pstore),
    (vnstore, ext_vnstore),
]


# -- the layout ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FOUND_LAYOUT))
def test_every_found_module_and_name_exists_after_the_prefix_change(path: str) -> None:
    module = importlib.import_module(f"shale.{path}")
    missing = {name for name in FOUND_LAYOUT[path] if not hasattr(module, name)}
    assert not missing, f"shale.{path} lacks found's {sorted(missing)}"


@pytest.mark.parametrize("path", sorted(p for p in FOUND_LAYOUT if p != "found.ext"))
def test_all_is_found_names_plus_declared_extras(path: str) -> None:
    """``from found.X import *`` ports too, and nothing is exported by accident."""
    module = importlib.import_module(f"shale.{path}")
    assert set(module.__all__) == FOUND_LAYOUT[path] | SHALE_EXTRAS.get(path, set())


def test_the_package_imports_base_and_tuple_as_found_does() -> None:
    """``import found`` then ``found.base.X`` works in found without importing
    ``found.base``: its ``__init__`` does. ``found.ext`` it does not import.
    A fresh interpreter, since this module imports them all."""
    check = (
        "import sys; from shale import found; "
        "assert found.base.get is found.get and found.tuple.pack is found.pack; "
        "assert 'shale.found.ext' not in sys.modules; "
        "import shale.found.ext; assert 'shale.found.ext.nstore' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("flat", "ext"), FLAT_AND_EXT, ids=lambda m: m.__name__)
def test_flat_and_ext_modules_share_one_implementation(flat: Any, ext: Any) -> None:
    """The ext module has every name of the flat one, as the same object,
    and defines only found's helpers and constants itself."""
    assert set(flat.__all__) <= set(ext.__all__)
    for name in flat.__all__:
        assert getattr(ext, name) is getattr(flat, name), name
    for name in set(ext.__all__) - set(flat.__all__):
        assert getattr(getattr(ext, name), "__module__", ext.__name__) == ext.__name__, name


def test_base_names_are_the_package_names() -> None:
    for name in shale.found.base.__all__:
        if hasattr(found, name):
            assert getattr(shale.found.base, name) is getattr(found, name), name


def test_tuple_is_shale_tuple() -> None:
    """No second codec: every name but ``next_prefix`` is ``shale.tuple``'s."""
    for name in shale.found.tuple.__all__:
        if name != "next_prefix":
            assert getattr(shale.found.tuple, name) is getattr(shale.tuple, name), name
    assert shale.found.tuple.next_prefix is found.next_prefix
    with pytest.raises(ValueError):
        shale.found.tuple.next_prefix(b"\xff")


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("NULL_CODE", 0x00),
        ("BYTES_CODE", 0x01),
        ("STRING_CODE", 0x02),
        ("NESTED_CODE", 0x05),
        ("NEG_INT_START", 0x0B),
        ("INT_ZERO_CODE", 0x14),
        ("POS_INT_END", 0x1D),
        ("DOUBLE_CODE", 0x21),
        ("FALSE_CODE", 0x26),
        ("TRUE_CODE", 0x27),
        ("UUID_CODE", 0x30),
        ("VERSIONSTAMP_CODE", 0x33),
    ],
)
def test_tuple_type_codes_are_founds(name: str, code: int) -> None:
    assert getattr(shale.found.tuple, name) == code


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("MUTATION_ADD", 2),
        ("MUTATION_BIT_AND", 6),
        ("MUTATION_BIT_OR", 7),
        ("MUTATION_BIT_XOR", 8),
        ("MUTATION_APPEND_IF_FITS", 9),
        ("MUTATION_MAX", 12),
        ("MUTATION_MIN", 13),
        ("MUTATION_SET_VERSIONSTAMPED_KEY", 14),
        ("MUTATION_SET_VERSIONSTAMPED_VALUE", 15),
        ("MUTATION_BYTE_MIN", 16),
        ("MUTATION_BYTE_MAX", 17),
        ("MUTATION_COMPARE_AND_CLEAR", 20),
    ],
)
def test_mutation_codes_are_foundationdbs(name: str, code: int) -> None:
    assert getattr(shale.found.base, name) == code


def test_informational_constants() -> None:
    assert (found.HEADER_VERSION, found.VERSION, found.__VERSION__) == (730, 730, (0, 13, 0))
    assert ext_pstore.FOUND_PSTORE_SAMPLE_COUNT == 1337


@pytest.mark.parametrize(
    ("make", "fields", "suffixes"),
    [
        (
            eavstore.make,
            ("prefix_data", "prefix_index"),
            ("EAVSTORE_SUFFIX_DATA", "EAVSTORE_SUFFIX_INDEX"),
        ),
        (bstore.make, ("prefix_hash", "prefix_blob"), ("BSTORE_SUFFIX_HASH", "BSTORE_SUFFIX_BLOB")),
        (
            pstore.make,
            ("tokens", "prefix_index", "prefix_counters"),
            ("PSTORE_SUFFIX_TOKENS", "PSTORE_SUFFIX_INDEX", "PSTORE_SUFFIX_COUNTERS"),
        ),
    ],
)
def test_suffixes_are_the_ones_make_uses(
    make: Callable[..., Any], fields: tuple[str, ...], suffixes: tuple[str, ...]
) -> None:
    """found's layouts: each subspace is ``tuple(list(prefix) + SUFFIX)``."""
    module = importlib.import_module(make.__module__.replace("found.", "found.ext."))
    handle = make("name", ["app", 7])
    for field, suffix in zip(fields, suffixes, strict=True):
        assert getattr(handle, field) == tuple(["app", 7, *getattr(module, suffix)])


# -- found-style code, ported by the prefix change alone -----------------------------

# Written as it would be for found (found.open() reads no argument here: Shale
# takes its URL from $SHALE_URL), using found.base, found.tuple and found.ext.
FOUND_APP = """
import asyncio
from concurrent.futures import ThreadPoolExecutor

import found
import found.ext.eavstore
from found.base import Transaction, transactional
from found.ext import bstore
from found.ext.nstore import add, make, query, var
from found.ext.pool import pool_for_each_par_map
from found.ext.vnstore import change_apply, change_continue, change_create
from found.tuple import pack, unpack
import found.ext.vnstore as vnstore


async def main():
    db = await found.base.open()
    triples = make("triples", ["app", "triples"], 3)
    people = found.ext.eavstore.make("people", ["app", "people"])
    blobs = bstore.make("blobs", ["app", "blobs"])
    history = vnstore.make("history", ["app", "history"], ["uid", "key", "value"])

    async def fill(tx):
        for _ in range(3):
            await found.base.add(tx, pack(("counter",)), (1).to_bytes(8, "little"))
        uid = await found.ext.eavstore.create(tx, people, {"name": "ada"})
        await add(tx, triples, uid, "knows", "bob")
        blob = await bstore.get_or_create(tx, blobs, b"hello" * 30_000)
        change = await change_create(tx, history)
        change_continue(tx, history, change)
        await vnstore.add(tx, history, uid, "name", "ada")
        await change_apply(tx, history, change)
        return uid, blob

    uid, blob = await transactional(db, fill)

    async def read(tx):
        assert isinstance(tx, Transaction)
        start = pack(("counter",))
        counter = await found.base.get(tx, start)
        keys = [
            unpack(key)
            async for key, _ in found.base.query(tx, start, found.base.next_prefix(start))
        ]
        last = await found.base.get_key(tx, found.base.lt(b"\\x03"))
        rows = await found.all(query(tx, triples, (var("who"), "knows", "bob")))
        person = await found.ext.eavstore.get(tx, people, uid)
        data = await bstore.get(tx, blobs, blob)
        names = await found.all(await vnstore.query(tx, history, (uid, "name", var("n"))))
        where = await found.base.get_addresses_for_key(tx, start)
        return counter, keys, last, rows, person, data, names, where

    out = await transactional(db, read)
    squares = []
    with ThreadPoolExecutor(2) as pool:
        loop = asyncio.get_running_loop()
        await pool_for_each_par_map(loop, pool, squares.append, lambda x: x * x, range(4))
    return db, uid, out, sorted(squares)
"""


def port(source: str) -> str:
    """The porting rule of ``docs/found.md``, applied mechanically: the
    package ``found`` becomes ``shale.found`` in every import, and the name
    ``found`` is bound to Shale's package."""
    source = re.sub(r"^import found$", "from shale import found", source, flags=re.M)
    source = re.sub(
        r"^import found\.([\w.]+)$",
        r"import shale.found.\1\nfrom shale import found",
        source,
        flags=re.M,
    )
    source = re.sub(r"^import found\.([\w.]+) as", r"import shale.found.\1 as", source, flags=re.M)
    return re.sub(r"^from found([.\w]*) import", r"from shale.found\1 import", source, flags=re.M)


def test_the_porting_rule_touches_imports_only() -> None:
    ported = port(FOUND_APP)
    assert "import found" not in ported.replace("from shale import found", "")
    body = FOUND_APP.split("async def main", 1)[1]
    assert ported.split("async def main", 1)[1] == body


async def test_found_style_code_runs_after_the_prefix_change(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHALE_URL", url)
    namespace: dict[str, Any] = {"__name__": "found_app"}
    exec(compile(port(FOUND_APP), "found_app.py", "exec"), namespace)
    db, uid, out, squares = await namespace["main"]()
    try:
        counter, keys, last, rows, person, data, names, where = out
        assert counter == (3).to_bytes(8, "little")
        assert keys == [("counter",)]
        assert last == shale.tuple.pack(("counter",))  # the last key of type code 0x02
        assert rows == [{"who": uid}]
        assert person == {"name": "ada"}
        assert data == b"hello" * 30_000
        assert names == [{"n": "ada"}]
        host_port = url.rpartition("@")[2]
        assert where == ([host_port] if url.startswith("shale://") else [])
        assert squares == [0, 1, 4, 9]
    finally:
        await found.close(db)


# -- get_addresses_for_key --------------------------------------------------------------


# memory, sqlite and a plain shale:// server: found's test 50 in test_found.py.


Start = Callable[..., Awaitable[int]]


@pytest.fixture
async def start_server() -> AsyncIterator[Start]:
    """Starts servers of a memory database (token ``t``) on a given host;
    gives their port, and stops them after the test."""
    running = []

    async def start(host: str, **options: Any) -> int:
        server = await serve("memory://", "t", host=host, port=0, **options)
        running.append(server)
        return server.port

    yield start
    for server in running:
        await server.stop(drain=1.0)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_get_addresses_for_key_over_ipv6(start_server: Start) -> None:
    port = await start_server("::1")
    db = await found.open(f"shale://:t@[::1]:{port}")
    try:
        out = await found.transactional(db, found.get_addresses_for_key, b"k")
    finally:
        await found.close(db)
    assert out == [f"[::1]:{port}"]


async def test_get_addresses_for_key_over_tls(start_server: Start, tmp_path: Path) -> None:
    """FoundationDB marks a TLS address with ``:tls``; the host is the one in
    the URL, not resolved."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    ca = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca))
    port = await start_server("127.0.0.1", ssl_context=context)
    db = await found.open(f"shale+tls://:t@localhost:{port}", ca=str(ca))
    try:
        out = await found.transactional(db, found.get_addresses_for_key, b"k")
    finally:
        await found.close(db)
    assert out == [f"localhost:{port}:tls"]


async def test_get_addresses_for_key_fails_as_a_read_would(db: found.Database) -> None:
    cancelled = found.make_transaction(db)
    found.cancel(cancelled)
    await raises(1025, found.get_addresses_for_key(cancelled, b"k"))

    committed = found.make_transaction(db)
    await found.set(committed, b"k", b"v")
    await found.commit(committed)
    await raises(2017, found.get_addresses_for_key(committed, b"k"))

    late = found.make_transaction(db)
    found.set_option(late, 500, struct.pack("<q", 1))  # a 1 ms timeout
    await asyncio.sleep(0.01)
    await raises(1031, found.get_addresses_for_key(late, b"k"))


async def test_get_addresses_for_key_wants_bytes(db: found.Database) -> None:
    tx = found.make_transaction(db)
    with pytest.raises(AssertionError):
        await found.get_addresses_for_key(tx, "k")  # type: ignore[arg-type]
    found.cancel(tx)


# -- names Shale refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: found.network_set_option(30), "network thread"),
        (lambda: found.add_network_thread_completion_hook(lambda: None), "network thread"),
        (lambda: vnserver.main(), "templates"),
        (lambda: asyncio.run(vnserver.server({}, _never, _never)), "templates"),
        (lambda: asyncio.run(vnserver.jinja({}, "index.html", {})), "templates"),
    ],
    ids=["network_set_option", "completion_hook", "main", "server", "jinja"],
)
def test_unsupported_names_raise_a_precise_error(call: Callable[[], Any], says: str) -> None:
    with pytest.raises(found.Unsupported, match=says) as info:
        call()
    assert isinstance(info.value, NotImplementedError)
    assert isinstance(info.value, found.BaseFoundException)
    assert not isinstance(info.value, found.FoundException)  # no code: never retried


async def _never(*args: Any) -> Any:
    raise AssertionError("an unsupported name must not touch the ASGI channel")


# -- found.ext.nstore's index helpers ----------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "want"), [(3, 1, 3), (4, 2, 6), (6, 3, 20), (3, 3, 0), (2, 5, 0)]
)
def test_bc_is_founds_binomial(n: int, k: int, want: int) -> None:
    assert ext_nstore.bc(n, k) == want


def test_stringify_and_combinations() -> None:
    assert ext_nstore.stringify((1, 2, 0)) == "120"
    assert ext_nstore.combinations(range(3)) == ["0", "1", "2", "01", "02", "12", "012"]
    assert len(ext_nstore.combinations(range(5))) == 2**5 - 1


@pytest.mark.parametrize(
    ("combination", "index", "want"),
    [
        ((), (0, 1, 2), True),
        ((1, 0), (0, 1, 2), True),
        ((2,), (0, 1, 2), False),
        ((2, 0), (2, 0, 1), True),
    ],
)
def test_is_permutation_prefix(
    combination: tuple[int, ...], index: tuple[int, ...], want: bool
) -> None:
    assert ext_nstore.is_permutation_prefix(combination, index) is want


@pytest.mark.parametrize("n", range(1, 8))
def test_ok_accepts_the_indices_nstore_builds(n: int) -> None:
    store = nstore.make("x", [1], n)
    assert len(store.indices) == ext_nstore.bc(n, n // 2)
    assert ext_nstore.ok([ext_nstore.stringify(index) for index in store.indices], range(n))


def test_ok_names_the_combination_no_index_serves() -> None:
    with pytest.raises(nstore.NStoreException, match="combination=1"):
        ext_nstore.ok(["012"], range(3))


# -- found.ext.pool ------------------------------------------------------------------------


class _Gauge:
    """Counts calls running at once, in worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def square(self, x: int) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.01)
        with self.lock:
            self.now -= 1
        return x * x


async def _aiter_range(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.parametrize("source", [range, _aiter_range], ids=["sync", "async"])
async def test_pool_maps_every_item_within_the_pool_width(source: Callable[[int], Any]) -> None:
    gauge, results = _Gauge(), []
    with ThreadPoolExecutor(3) as pool:
        loop = asyncio.get_running_loop()
        await shale.found.ext.pool.pool_for_each_par_map(
            loop, pool, results.append, gauge.square, source(12)
        )
    assert sorted(results) == [i * i for i in range(12)]
    assert 1 < gauge.peak <= 3


async def test_pool_raises_the_first_failure() -> None:
    def boom(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="two"):
        loop = asyncio.get_running_loop()
        await shale.found.ext.pool.pool_for_each_par_map(loop, pool, lambda _: None, boom, range(6))


class _Inline(Executor):
    """An executor that does not say how many workers it has."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


async def test_pool_of_unknown_width_runs_one_at_a_time() -> None:
    results: list[int] = []
    loop = asyncio.get_running_loop()
    await shale.found.ext.pool.pool_for_each_par_map(loop, _Inline(), results.append, abs, [-1, -2])
    assert results == [1, 2]


# -- found.ext.vnstore.server's helpers ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "html"),
    [
        ("#none", None, "<code>#none</code>"),
        ("#true", True, "<code>#true</code>"),
        ("#false", False, "<code>#false</code>"),
        (" #i42 ", 42, "<code>#i42</code>"),
        ("#f1.5", 1.5, "<code>#f1.5</code>"),
        ("#u" + "ab" * 16, uuid.UUID(hex="ab" * 16), "<code>#u" + "AB" * 16 + "</code>"),
        ("plain", "plain", "plain"),
    ],
)
def test_form_syntax_round_trips(text: str, value: Any, html: str) -> None:
    assert vnserver.fromstring(text) == value
    assert type(vnserver.fromstring(text)) is type(value)
    assert vnserver.tostring(value) == html


def test_form_syntax_edges() -> None:
    assert isinstance(vnserver.fromstring("_"), uuid.UUID)
    assert vnserver.fromstring("_") != vnserver.fromstring("_")
    assert vnserver.tostring("<b>&") == "&lt;b&gt;&amp;"
    with pytest.raises(ValueError):
        vnserver.fromstring("#inope")
    with pytest.raises(NotImplementedError, match="bytes"):
        vnserver.tostring(b"raw")


class _Channel:
    """An ASGI peer: feeds request messages, records the reply."""

    def __init__(self, *incoming: dict[str, Any]) -> None:
        self.incoming = list(incoming)
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return self.incoming.pop(0)

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    @property
    def reply(self) -> tuple[int, dict[bytes, bytes], bytes]:
        start, body = self.sent
        return start["status"], dict(start["headers"]), body["body"]


async def test_read_body_joins_the_messages() -> None:
    channel = _Channel({"body": b"a=1"}, {"body": b"&b=2", "more_body": True}, {})
    channel.incoming[0]["more_body"] = True
    assert await vnserver.read_body(channel.receive) == b"a=1&b=2"


@pytest.mark.parametrize(
    ("reply", "args", "status", "body"),
    [
        (vnserver.reply_html, ("<p>hi</p>",), 200, b"<p>hi</p>"),
        (vnserver.reply_bad_request, ("no",), 400, b"no"),
        (vnserver.reply_not_found, (), 404, b"Not found"),
        (vnserver.not_found, (), 404, b"Not found"),
        (vnserver.reply_redirect, ("/history/",), 303, b"Redirect to: /history/"),
    ],
)
async def test_asgi_replies(
    reply: Callable[..., Any], args: tuple[Any, ...], status: int, body: bytes
) -> None:
    channel = _Channel()
    await reply(channel.send, *args)
    got_status, headers, got_body = channel.reply
    assert (got_status, got_body) == (status, body)
    assert headers[b"content-type"] == b"text/html"
    if status == 303:
        assert headers[b"location"] == b"/history/"


async def test_with_change(db: found.Database) -> None:
    store = ext_vnstore.make("ui", ["ui"], ["uid", "key", "value"])
    change = await found.transactional(db, ext_vnstore.change_create, store)
    state = {"database": db, "store": store}
    seen: list[tuple[uuid.UUID, dict[str, Any]]] = []

    async def record(changeid: uuid.UUID, out: dict[str, Any]) -> None:
        seen.append((changeid, out))

    await vnserver.with_change(_Channel().send, state, change.hex, record)
    assert [(c, out["uid"]) for c, out in seen] == [(change, change)]
    for bad, says in [
        ("xyz", b"Invalid change: xyz"),
        ("zz" * 16, b"Invalid change: "),
        (uuid.uuid4().hex, b"No such change: "),
    ]:
        channel = _Channel()
        await vnserver.with_change(channel.send, state, bad, record)
        status, _, body = channel.reply
        assert status == 400 and body.startswith(says)
    assert len(seen) == 1
