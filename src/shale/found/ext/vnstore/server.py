"""found's ``found.ext.vnstore.server``: the helpers of found's vnstore web
UI, without the UI.

found ships an ASGI app (``server``, run by ``main`` with uvicorn) that
renders its own Jinja templates. Those templates are found's, not Shale's,
so ``jinja``, ``server`` and ``main`` raise ``Unsupported``. The helpers
that need no template work as in found: the value syntax of its forms
(``fromstring``, ``tostring``), the ASGI replies, ``read_body`` and
``with_change``. One difference: ``tostring`` HTML-escapes strings (found
inserted them raw into pages it marked safe).
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn
from uuid import UUID, uuid4

from shale.found.errors import Unsupported
from shale.found.transaction import transactional
from shale.found.vnstore import change_get

__all__ = [
    "fromstring",
    "jinja",
    "main",
    "not_found",
    "read_body",
    "reply_bad_request",
    "reply_html",
    "reply_not_found",
    "reply_redirect",
    "server",
    "tostring",
    "with_change",
]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

_UI: str = (
    "found's vnstore web UI renders found's own templates, which Shale does not ship; "
    "run found's server, or build pages on shale.found.ext.vnstore's functions"
)


# -- the value syntax of the UI's forms ------------------------------------------------


def fromstring(value: str) -> Any:
    """A form field as a tuple item: ``_`` a new ``uuid4``, ``#none``,
    ``#true``, ``#false``, ``#u<hex>`` a UUID, ``#i<int>``, ``#f<float>``;
    anything else is the stripped text.

    Raises:
        ValueError: a ``#u``, ``#i`` or ``#f`` value that does not parse.
    """
    value = value.strip()
    constants: dict[str, Any] = {"#none": None, "#true": True, "#false": False}
    if value == "_":
        return uuid4()
    if value in constants:
        return constants[value]
    if value.startswith("#u"):
        return UUID(hex=value[2:])
    if value.startswith("#i"):
        return int(value[2:])
    if value.startswith("#f"):
        return float(value[2:])
    return value


def tostring(value: Any) -> str:
    """HTML for a tuple item, in ``fromstring``'s syntax inside ``<code>``;
    a string is shown as itself, escaped.

    Raises:
        NotImplementedError: a type the syntax has no form for (as in found).
    """
    if value is None or isinstance(value, bool):
        return f"<code>#{str(value).lower()}</code>"
    if isinstance(value, UUID):
        return f"<code>#u{value.hex.upper()}</code>"
    if isinstance(value, int):
        return f"<code>#i{value}</code>"
    if isinstance(value, float):
        return f"<code>#f{value}</code>"
    if isinstance(value, str):
        return html.escape(value)
    raise NotImplementedError(f"no form syntax for {type(value).__name__}: {value!r}")


# -- ASGI helpers -------------------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    """The whole body of an HTTP request, however many messages carry it."""
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _reply(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/html"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def reply_html(send: Send, html: str) -> None:
    """200 with ``html``."""
    await _reply(send, 200, html.encode("utf8"), [])


async def reply_bad_request(send: Send, message: str) -> None:
    """400 with ``message`` as the body."""
    await _reply(send, 400, message.encode("utf8"), [])


async def reply_not_found(send: Send) -> None:
    """404, ``Not found``."""
    await _reply(send, 404, b"Not found", [])


not_found = reply_not_found
"""found has both names for the same reply."""


async def reply_redirect(send: Send, path: str) -> None:
    """303 to ``path``."""
    location = path.encode("utf8")
    await _reply(send, 303, b"Redirect to: " + location, [(b"location", location)])


async def with_change(
    send: Send,
    state: MutableMapping[str, Any],
    change_hex: str,
    fn: Callable[[UUID, dict[str, Any]], Awaitable[Any]],
) -> None:
    """Call ``fn(changeid, change)`` for the change ``change_hex`` names
    (32 hex digits), read with ``state["database"]`` and ``state["store"]``
    as found's server keeps them; reply 400 if it is malformed or unknown."""
    try:
        change = UUID(hex=change_hex) if len(change_hex) == 32 else None
    except ValueError:
        change = None
    if change is None:
        await reply_bad_request(send, f"Invalid change: {change_hex}")
        return
    out = await transactional(state["database"], change_get, state["store"], change)
    if not out:
        await reply_bad_request(send, f"No such change: {change.hex}")
        return
    await fn(change, out)


# -- what needs found's templates ------------------------------------------------------


async def jinja(state: MutableMapping[str, Any], template: str, context: Any) -> NoReturn:
    """Raises ``Unsupported``: the templates are found's."""
    raise Unsupported(f"jinja({template!r}): {_UI}")


async def server(scope: Message, receive: Receive, send: Send) -> NoReturn:
    """Raises ``Unsupported``: found's ASGI app renders found's templates."""
    raise Unsupported(f"server: {_UI}")


def main() -> NoReturn:
    """Raises ``Unsupported``: found's ``found-vnstore`` command serves ``server``."""
    raise Unsupported(f"main: {_UI}")
