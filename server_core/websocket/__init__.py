"""WebSockets: the hand-off from HTTP and the choice of engine.

The HTTP protocol parses the upgrade request; when it asks for ``websocket``
and ``--ws`` is not ``none``, it calls :func:`handoff`, switches the transport
to the protocol returned and forgets the connection. From then on
:class:`~server_core.websocket.session.WebSocketSession` owns it.
"""

from __future__ import annotations

import asyncio

from server_core.state import RequestHead, ServerState
from server_core.websocket.session import ClientDisconnected, EngineFactory, WebSocketSession

__all__ = ["ClientDisconnected", "engine_factory", "handoff"]

# --ws names accepted for each engine ("websockets-sansio" is uvicorn's name
# for the same sans-I/O implementation).
WEBSOCKETS_NAMES = ("auto", "websockets", "websockets-sansio")
WSPROTO_NAMES = ("wsproto",)


def engine_factory(name: str) -> EngineFactory:
    """The engine class for a ``--ws`` choice; imported only when chosen."""
    if name in WEBSOCKETS_NAMES:
        from server_core.websocket.engine_websockets import WebsocketsEngine

        return WebsocketsEngine
    if name in WSPROTO_NAMES:
        from server_core.websocket.engine_wsproto import WsprotoEngine

        return WsprotoEngine
    raise ValueError(f"unknown WebSocket implementation {name!r}")


def handoff(state: ServerState, transport: asyncio.Transport, head: RequestHead,
            client: tuple[str, int] | None, server: tuple[str, int] | None,
            scheme: str, buffered: bytes) -> asyncio.Protocol:
    """Take over an upgraded connection; return the protocol to switch the transport to.

    ``client`` and ``scheme`` ("http"/"https") are already resolved through
    proxy headers; ``buffered`` holds the bytes received after the request head.
    The session registers itself in ``state.connections`` at once, answers an
    invalid handshake with 400, and otherwise starts the application.
    """
    session = WebSocketSession(state, transport, head, engine_factory(state.settings.ws),
                               client, server, scheme, buffered)
    session.start()
    return session
