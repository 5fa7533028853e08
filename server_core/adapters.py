"""Serving ASGI 2 and WSGI applications through the ASGI 3 core.

Everything behind ``HTTPProtocol`` speaks ASGI 3 (``app(scope, receive,
send)``). ``--interface asgi2`` wraps a two-step application
(``app(scope)(receive, send)``) in :class:`ASGI2Adapter`; ``--interface wsgi``
wraps a PEP 3333 application in :class:`WSGIAdapter`, which runs it in a thread
pool and streams both ways: the request body is pulled from ASGI ``receive``
only as the application reads ``wsgi.input``, and each response chunk is sent
(and flow-controlled by the transport) as the application yields it, so neither
side is ever held whole in memory. :class:`MessageLogger` wraps any of them to
log each ASGI message at ``--log-level trace``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from server_core.state import ClientDisconnected

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

# Threads running WSGI requests: each request holds one for its whole life, so
# this caps the concurrent WSGI requests of a worker (as gunicorn's gthread).
DEFAULT_WSGI_THREADS = 10
# corral's TRACE level (below DEBUG), as server_core.logs names it.
TRACE = 5


class ASGI2Adapter:
    """Present a two-step ASGI 2 application as an ASGI 3 callable."""

    def __init__(self, app: Callable[[Scope], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Instantiate the ASGI 2 app for this scope and run it."""
        # The app is told the truth about the protocol version it is served with.
        scope["asgi"] = {**scope.get("asgi", {}), "version": "2.0"}
        instance = self.app(scope)
        await instance(receive, send)


class MessageLogger:
    """Log every ASGI message of the app at TRACE (``--log-level trace``).

    The worker wraps the app in this only when TRACE is enabled, so the normal
    request path pays nothing. Bodies are logged by size, never by content.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger
        self.counter = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, logging its scope, each message both ways and the outcome."""
        self.counter += 1
        number, log = self.counter, self.logger

        async def traced_receive() -> Any:
            message = await receive()
            log.log(TRACE, "ASGI [%d] Receive %s", number, _summary(message))
            return message

        async def traced_send(message: Any) -> None:
            log.log(TRACE, "ASGI [%d] Send %s", number, _summary(message))
            await send(message)

        log.log(TRACE, "ASGI [%d] Started scope=%s", number, _summary(scope))
        try:
            await self.app(scope, traced_receive, traced_send)
        except BaseException as exc:
            log.log(TRACE, "ASGI [%d] Raised exception %r", number, exc)
            raise
        log.log(TRACE, "ASGI [%d] Completed", number)


def _summary(message: Any) -> dict[str, Any]:
    """A message or scope with bytes payloads replaced by their size."""
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key in ("body", "bytes") and isinstance(value, (bytes, bytearray)):
            out[key] = f"<{len(value)} bytes>"
        elif key == "state":
            out[key] = sorted(value)
        else:
            out[key] = value
    return out




class WSGIAdapter:
    """Present a PEP 3333 application as an ASGI 3 callable.

    Each HTTP request runs the WSGI app in a thread of a pool of ``threads``.
    A lifespan scope is answered for the app (WSGI has no lifespan), and a
    WebSocket is refused (a 403 by the protocol).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int = DEFAULT_WSGI_THREADS) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="corral-wsgi")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope with the WSGI application."""
        kind = scope["type"]
        if kind == "lifespan":
            await _answer_lifespan(receive, send, self.executor)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})
        elif kind == "http":
            loop = asyncio.get_running_loop()
            exchange = _WSGIExchange(self.app, scope, receive, send, loop)
            await loop.run_in_executor(self.executor, exchange.run)
        else:
            raise RuntimeError(f"WSGI adapter cannot serve ASGI scope type {kind!r}")


async def _answer_lifespan(receive: Receive, send: Send, executor: ThreadPoolExecutor) -> None:
    """Complete startup and shutdown for an app that has no lifespan of its own."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Requests still running in threads were given up by the worker;
            # don't wait for them, but don't start new ones either.
            executor.shutdown(wait=False, cancel_futures=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_environ(scope: Scope, body: Any) -> dict[str, Any]:
    """The PEP 3333 environ for an ASGI HTTP scope, reading the body from ``body``."""
    root_path: str = scope.get("root_path", "")
    # WSGI strings are "bytes as latin-1": PATH_INFO comes from the undecoded
    # bytes so a non-UTF-8 escape such as %FF survives as \xff.
    raw = scope.get("raw_path")
    path = unquote_to_bytes(raw).decode("latin-1") if raw else scope["path"].encode("utf-8").decode("latin-1")
    # ASGI's path includes root_path; WSGI splits it into SCRIPT_NAME + PATH_INFO.
    script = root_path.rstrip("/").encode("utf-8").decode("latin-1")
    if script and (path == script or path.startswith(script + "/")):
        path = path[len(script):]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        # WSGI strings are "bytes as latin-1": re-encode the decoded ASGI text.
        "SCRIPT_NAME": script,
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "80",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper()
        # A header spelled with "_" would become the same CGI variable as its
        # "-" twin (X_Forwarded_For vs X-Forwarded-For): drop it so a client
        # cannot spoof a header a proxy in front of us set.
        if "_" in name:
            continue
        value = raw_value.decode("latin-1")
        if name == "CONTENT-TYPE":
            key = "CONTENT_TYPE"
        elif name == "CONTENT-LENGTH":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.replace("-", "_")
        if key in environ:
            separator = "; " if key == "HTTP_COOKIE" else ","
            environ[key] = environ[key] + separator + value
        else:
            environ[key] = value
    return environ


async def _on_loop(func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Call an ASGI ``receive``/``send`` on the event loop's thread (never the WSGI thread's)."""
    return await func(*args)


class _BodyReader(io.RawIOBase):
    """``wsgi.input``: the request body, pulled from ASGI ``receive`` on demand.

    Lives in the WSGI thread; each time its buffer runs dry it asks the event
    loop for the next ``http.request`` message and blocks until it arrives. An
    application that never reads the body never makes us buffer it.
    """

    def __init__(self, receive: Receive, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._receive = receive
        self._loop = loop
        self._buffer = bytearray()
        self._more = True

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Fetch one more body message; False once the body is complete."""
        if not self._more:
            return False
        message: dict[str, Any] = asyncio.run_coroutine_threadsafe(_on_loop(self._receive), self._loop).result()
        if message["type"] == "http.disconnect":
            self._more = False
            raise ClientDisconnected("client disconnected before sending the whole body")
        self._buffer += message.get("body", b"")
        self._more = bool(message.get("more_body", False))
        return True

    def readinto(self, target: Any) -> int:
        """Copy up to ``len(target)`` body bytes into ``target``; 0 at the end."""
        while not self._buffer and self._fill():
            pass
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        del self._buffer[:count]
        return count

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes (all of the rest when negative or None)."""
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        while len(self._buffer) < size and self._fill():
            pass
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        """Read one line (up to ``size`` bytes when given)."""
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                end += 1
                break
            if limit is not None and len(self._buffer) >= limit:
                end = limit
                break
            if not self._fill():
                end = len(self._buffer)
                break
        if limit is not None:
            end = min(end, limit)
        data = bytes(self._buffer[:end])
        del self._buffer[:end]
        return data


class _WSGIExchange:
    """One WSGI request/response, run in a pool thread."""

    def __init__(self, app: Callable[..., Iterable[bytes]], scope: Scope, receive: Receive,
                 send: Send, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.scope = scope
        self.send_async = send
        self.loop = loop
        self.body = _BodyReader(receive, loop)
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False

    def _send(self, message: dict[str, Any]) -> None:
        """Send an ASGI message from the WSGI thread and wait for it to be written."""
        asyncio.run_coroutine_threadsafe(_on_loop(self.send_async, message), self.loop).result()

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """PEP 3333 ``start_response``: record status and headers until the first body byte."""
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # Too late to change the response: re-raise so the server
                    # aborts the connection instead of sending a lie.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code, _, _ = status.partition(" ")
        self.status = int(code)
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return self.write

    def write(self, data: bytes) -> None:
        """Send ``data`` at once (PEP 3333's legacy ``write`` callable)."""
        if data:
            self._send_body(data, more=True)

    def _send_body(self, data: bytes, *, more: bool) -> None:
        if not self.headers_sent:
            if self.status is None:
                raise RuntimeError("WSGI application produced a body before calling start_response")
            self.headers_sent = True
            self._send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        self._send({"type": "http.response.body", "body": data, "more_body": more})

    def run(self) -> None:
        """Call the application and stream its response."""
        environ = build_environ(self.scope, self.body)
        result = self.app(environ, self.start_response)
        try:
            for chunk in result:
                # PEP 3333: headers go out with the first non-empty chunk, so an
                # app may still call start_response(exc_info) before that.
                if chunk:
                    self._send_body(bytes(chunk), more=True)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        self._send_body(b"", more=False)
