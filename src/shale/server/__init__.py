"""The Shale server: serves one database to many clients over TCP (``shale serve``).

Its client is the ``shale://`` engine (``shale.engines.remote``); the
protocol between them is ``shale.server.protocol``, described for other
languages in ``docs/protocol.md``.
"""

from shale.server.protocol import Limits
from shale.server.server import Server, serve

__all__ = ["Limits", "Server", "serve"]
