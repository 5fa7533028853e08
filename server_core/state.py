"""State shared by every connection of one worker, and the head of a request.

``ServerState`` is created once per worker by :func:`server_core.worker.serve`
and handed to each protocol instance. Protocols register themselves in
``connections`` so a graceful stop can reach every one of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server_core.metrics import WorkerMetrics
from server_core.settings import ServerSettings

if TYPE_CHECKING:  # the sans-I/O parsers import RequestHead from here
    import asyncio

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Connection(Protocol):
    """What a graceful stop needs from any connection (HTTP or WebSocket)."""

    def shutdown(self, retire: bool) -> None:
        """Stop after the current exchange.

        ``retire=False`` (the whole server stops): idle keep-alive connections
        close at once. ``retire=True`` (this worker leaves, others serve on): an
        idle keep-alive connection stays open until its next request, served
        with ``Connection: close``, or until the keep-alive timeout. Either way
        a connection whose request bytes are already waiting is served, and an
        open WebSocket is closed with 1012 (retire) or 1001 (shutdown).
        """

    def abort(self) -> None:
        """Close the transport now (after the graceful timeout)."""


@dataclass(eq=False)
class ServerState:
    """Per-worker state: the app, its lifespan state, live connections, counters."""

    settings: ServerSettings
    app: ASGIApp
    # The lifespan ``state`` dict; each request scope gets a shallow copy.
    app_state: dict[str, Any] = field(default_factory=dict)
    connections: set[Connection] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    total_requests: int = 0
    # Set by the worker when a graceful stop begins; new connections that the
    # loop still delivers are served one request with ``Connection: close``.
    stopping: bool = False
    retiring: bool = False
    # Default response headers, already encoded: [(b"server", b"corral"), ...]
    # ("date" is kept current by the worker and read from ``date_header``).
    # Both lists are REPLACED when they change, never mutated in place: the
    # response encoder caches the encoded block by the lists' identity.
    default_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    date_header: list[tuple[bytes, bytes]] = field(default_factory=list)
    # server_core.logs.AccessLog when --access-log is on, else None.
    access_log: Any = None
    # Called once when limit_max_requests is reached (the worker asks to be recycled).
    on_request_limit: Callable[[], None] | None = None
    # Request/connection counters sent to the master with each heartbeat
    # (server_core.metrics): the protocols call metrics.record(...) etc.
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    # ``metrics.record`` when requests are counted (--metrics-bind), else None.
    record: Callable[[str, int, int, float], None] | None = None
    # True when a finished request is reported at all (access log or metrics):
    # then, and only then, each request takes the time when it starts.
    timed: bool = False


class ClientDisconnected(OSError):
    """The client went away: ``send()`` (HTTP and WebSocket) and a WSGI body read raise it then.

    ASGI 2.4 asks for an ``OSError`` subclass; one class serves every
    protocol, so an application can catch it once.
    """


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and headers, neutral between httptools and h11."""

    method: str
    raw_path: bytes  # the path part of the target, still percent-encoded
    path: str  # percent-decoded, as the ASGI scope wants it
    query_string: bytes
    http_version: str  # "1.0" or "1.1"
    headers: list[tuple[bytes, bytes]]  # names lower-cased, values as received
    keep_alive: bool
    # Lower-cased Upgrade token when the client asked to upgrade
    # (``Connection: upgrade`` + ``Upgrade: websocket``), else None.
    upgrade: bytes | None = None
    expect_continue: bool = False
    # The X-Forwarded-For/-Proto/-Port fields, in order (names lower-cased,
    # values trimmed): all a trusted proxy's headers that the server applies.
    forwarded: tuple[tuple[bytes, bytes], ...] = ()
    # The whole body, when the parser had all of it by the time it emitted
    # this head (b"" for a request without one): no Body or EndOfMessage
    # event follows for this request. None: they follow.
    body: bytes | None = None
