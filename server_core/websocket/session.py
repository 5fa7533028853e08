"""One ASGI WebSocket session, the same over either engine.

:class:`WebSocketSession` is the ``asyncio.Protocol`` a connection switches to
after its upgrade request. It feeds network bytes to an engine (websockets or
wsproto, see :mod:`server_core.websocket.events`), turns the neutral events
into ASGI ``websocket.*`` messages, and turns the application's messages back
into engine calls. Everything ASGI lives here once: the scope, accept and
subprotocols, the denial-response extension, close codes both ways, the
keep-alive ping, the receive queue with its back-pressure, write flow control,
and graceful shutdown.

Life of a session (``_phase``)::

    CONNECTING --accept--> OPEN --close sent--> CLOSING --peer's Close--> CLOSED
        |  `--http.response.start--> RESPONDING --last body--> CLOSED
        `--close / error / shutdown--> CLOSED (403 / 500 / 503)
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from server_core.state import ClientDisconnected, RequestHead, ServerState
from server_core.websocket import handshake
from server_core.websocket.events import (
    ABNORMAL_CLOSURE,
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    SERVICE_RESTART,
    Bytes,
    Close,
    Engine,
    HandshakeError,
    Pong,
    ProtocolError,
    Text,
    sendable_close_code,
    truncate_reason,
)
from server_core.websocket.keepalive import KeepAlive

logger = logging.getLogger("corral.error")

# After we send a Close, how long the peer has to answer before the TCP
# connection is closed anyway (websockets' default close timeout is 10 s; a
# stopping worker should not wait that long on a silent peer).
CLOSE_TIMEOUT = 5.0
# Bytes a client may send before the application accepted (they are kept for
# after the accept); past this, reading pauses until the accept.
PRE_ACCEPT_BUFFER = 64 * 1024

CONNECTING, OPEN, CLOSING, RESPONDING, CLOSED = "connecting", "open", "closing", "responding", "closed"

EngineFactory = Callable[..., Engine]



class WebSocketSession(asyncio.Protocol):
    """An upgraded connection running one ASGI ``websocket`` scope."""

    def __init__(self, state: ServerState, transport: asyncio.Transport, head: RequestHead,
                 engine_factory: EngineFactory, client: tuple[str, int] | None,
                 server: tuple[str, int] | None, scheme: str, buffered: bytes) -> None:
        self._state = state
        self._settings = settings = state.settings
        self._transport = transport
        self._head = head
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._client = client
        self._server = server
        # A trusted proxy may say "wss" itself (X-Forwarded-Proto); TLS here says "https".
        self._scheme = "wss" if scheme in ("https", "wss") else "ws"
        self._loop = asyncio.get_running_loop()
        self._phase = CONNECTING
        self._transport_closed = False
        self._subprotocols: list[str] = []

        # Receive side: ASGI messages waiting for the app, and the one
        # websocket.disconnect it gets once they are consumed.
        self._connect_sent = False
        self._queue: deque[dict[str, Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._disconnect: dict[str, Any] | None = None
        self._pre_accept = bytearray(buffered)
        self._max_queue = settings.ws_max_queue if settings.ws_max_queue > 0 else None
        self._low_water = (self._max_queue or 0) // 2
        # Reading pauses while the app lags behind (``_read_paused``: its queue
        # or the pre-accept buffer is full) and while the transport's write
        # buffer is full (``_write_paused``: the peer does not read what we
        # send, such as the pongs of a ping flood), so that the kernel's
        # buffers push back on the peer instead of our memory growing.
        self._read_paused = False
        self._write_paused = False

        # Send side: write flow control and the denial response, if any.
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._denial: handshake.DenialResponse | None = None

        self._started = self._loop.time() if state.access_log is not None else 0.0
        self._close_timer: asyncio.TimerHandle | None = None
        self._keepalive = KeepAlive(self._loop, settings.ws_ping_interval, settings.ws_ping_timeout,
                                    self._send_ping, self._ping_timed_out)

    # -- start -------------------------------------------------------------------

    def start(self) -> None:
        """Register the connection, check the handshake and start the application."""
        state = self._state
        state.connections.add(self)
        state.metrics.websocket_opened()
        if state.stopping:
            # The worker is leaving: send the client to a worker that stays.
            self._write(handshake.simple_response(503, "Service Unavailable", self._default_headers()))
            self._access(503)
            self._close_transport(GOING_AWAY)
            return
        try:
            handshake.check_request(self._head)
            settings = self._settings
            self._engine = self._engine_factory(
                self._head, max_size=settings.ws_max_size, per_message_deflate=settings.ws_per_message_deflate)
        except HandshakeError as exc:
            self._refuse(exc)
            return
        self._subprotocols = handshake.offered_subprotocols(self._head)
        coro = self._run_asgi(self._scope())
        if self._settings.reset_contextvars:
            # A task copies the current context: create it inside an empty one
            # so nothing set at import or in lifespan leaks into the app.
            task = contextvars.Context().run(self._loop.create_task, coro)
        else:
            task = self._loop.create_task(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
        # Whoever had the transport may have paused it; we read from now on.
        if not self._transport.is_reading():
            self._transport.resume_reading()

    def _scope(self) -> dict[str, Any]:
        head = self._head
        root_path = self._settings.root_path
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": head.http_version,
            "scheme": self._scheme,
            "server": self._server,
            "client": self._client,
            "root_path": root_path,
            "path": root_path + head.path,
            # As for http (ASGI 2.4): raw_path carries the root path too.
            "raw_path": root_path.encode("ascii", "ignore") + head.raw_path if root_path else head.raw_path,
            "query_string": head.query_string,
            "headers": head.headers,
            "subprotocols": self._subprotocols,
            "state": dict(self._state.app_state),
            "extensions": {"websocket.http.response": {}},
        }

    def _default_headers(self) -> list[tuple[bytes, bytes]]:
        return [*self._state.default_headers, *self._state.date_header]

    def _refuse(self, exc: HandshakeError) -> None:
        """Answer an invalid opening handshake with its status and close."""
        body = f"Invalid WebSocket handshake: {exc.reason}\n"
        self._write(handshake.simple_response(exc.status, body, self._default_headers(), exc.headers))
        self._access(exc.status)
        self._close_transport(ABNORMAL_CLOSURE)

    # -- asyncio.Protocol ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Feed the engine once open; before that, keep the bytes for later."""
        if self._phase is OPEN or self._phase is CLOSING:
            self._feed(data)
        elif self._phase is CONNECTING:
            self._pre_accept += data
            if len(self._pre_accept) > PRE_ACCEPT_BUFFER:
                self._pause_reading()
        # RESPONDING / CLOSED: the client has nothing more to say; drop it.

    def eof_received(self) -> bool | None:
        """The peer half-closed: let the transport close (``connection_lost`` follows)."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Tell the app (``websocket.disconnect`` 1006 unless a Close said more) and unregister."""
        self._transport_closed = True
        if self in self._state.connections:
            self._state.metrics.websocket_closed()
        self._state.connections.discard(self)
        self._cancel_timers()
        self._set_disconnect(ABNORMAL_CLOSURE, "")
        self._phase = CLOSED
        self._write_ready.set()

    def pause_writing(self) -> None:
        """The transport's buffer is full: the app's next send waits, and we stop reading."""
        self._write_ready.clear()
        self._write_paused = True
        self._sync_reading()

    def resume_writing(self) -> None:
        """The transport drained: let the app send again, and read again."""
        self._write_ready.set()
        self._write_paused = False
        self._sync_reading()

    # -- Connection (graceful stop) ----------------------------------------------

    def shutdown(self, retire: bool) -> None:
        """Close with 1012 (retire) or 1001 (shutdown); the app gets websocket.disconnect."""
        code, reason = (SERVICE_RESTART, "service restart") if retire else (GOING_AWAY, "going away")
        if self._phase is CONNECTING:
            self._write(handshake.simple_response(503, "Service Unavailable", self._default_headers()))
            self._access(503)
            self._close_transport(code, reason)
        elif self._phase is OPEN:
            # Disconnect first so the app learns why (1012/1001), not the echo.
            self._set_disconnect(code, reason)
            self._start_close(code, reason)
        # RESPONDING finishes its response; CLOSING already has its close timer.

    def abort(self) -> None:
        """Drop the connection now (the graceful timeout has passed)."""
        self._cancel_timers()
        self._phase = CLOSED  # the app's sends fail from now on; connection_lost tells it 1006
        if not self._transport_closed:
            self._transport.abort()

    # -- network side --------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        engine = self._engine
        assert engine is not None
        try:
            events = engine.receive_data(data)
        except Exception:
            # A bug in an engine must not leave a half-parsed connection open.
            logger.error("WebSocket engine failed on received data", exc_info=True)
            self._close_transport(INTERNAL_ERROR)
            return
        out = engine.data_to_send()
        if out:
            self._write(out)
        queue = self._queue
        for event in events:
            # Ordered by frequency: messages dominate.
            if type(event) is Text:
                queue.append({"type": "websocket.receive", "text": event.data})
            elif type(event) is Bytes:
                queue.append({"type": "websocket.receive", "bytes": event.data})
            elif type(event) is Pong:
                self._keepalive.pong()
            elif type(event) is Close or type(event) is ProtocolError:
                # Either the closing handshake completed or the engine failed
                # the connection (its Close frame is written above); the
                # server closes TCP first (RFC 6455 section 7.1.1).
                self._close_transport(event.code, event.reason)
        if queue:
            self._wake()
            if self._max_queue is not None and len(queue) >= self._max_queue:
                self._pause_reading()

    def _write(self, data: bytes) -> None:
        if data and not self._transport_closed and not self._transport.is_closing():
            self._transport.write(data)

    def _close_transport(self, code: int, reason: str = "") -> None:
        """Finish: the app's disconnect carries ``code``; the transport flushes then closes."""
        self._phase = CLOSED
        self._cancel_timers()
        self._set_disconnect(code, reason)
        if not self._transport_closed:
            self._transport.close()

    def _pause_reading(self) -> None:
        """The app lags behind: stop reading until it catches up."""
        if not self._read_paused:
            self._read_paused = True
            self._sync_reading()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            self._sync_reading()

    def _sync_reading(self) -> None:
        """Read from the transport only while the app keeps up and the peer reads what we write."""
        transport = self._transport
        if self._transport_closed or transport.is_closing():
            return
        if self._read_paused or self._write_paused:
            if transport.is_reading():
                transport.pause_reading()
        elif not transport.is_reading():
            transport.resume_reading()

    def _set_disconnect(self, code: int, reason: str) -> None:
        # The first reason the session ended is the one the app hears.
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _start_close(self, code: int, reason: str) -> None:
        """Send our Close and give the peer CLOSE_TIMEOUT seconds to answer."""
        assert self._engine is not None
        self._write(self._engine.send_close(code, truncate_reason(reason)))
        self._phase = CLOSING
        self._cancel_timers()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self._close_transport, code, reason)

    def _cancel_timers(self) -> None:
        self._keepalive.stop()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    # -- keep-alive ----------------------------------------------------------------

    def _send_ping(self, payload: bytes) -> None:
        if self._phase is OPEN and self._engine is not None:
            self._write(self._engine.send_ping(payload))

    def _ping_timed_out(self) -> None:
        """The peer stopped answering: close 1011 without waiting for it."""
        if self._phase is not OPEN:
            return
        if self._write_paused:
            # The peer has not read what we sent for a whole ping timeout: a
            # Close frame would only queue behind the rest, so drop it now.
            self._set_disconnect(INTERNAL_ERROR, "keepalive ping timeout")
            self.abort()
            return
        if self._read_paused:
            # We stopped reading because the app lags behind: the pong may be
            # sitting unread in the socket. Not the peer's fault; keep pinging.
            self._keepalive.start()
            return
        assert self._engine is not None
        reason = "keepalive ping timeout"
        self._write(self._engine.send_close(INTERNAL_ERROR, reason))
        self._close_transport(INTERNAL_ERROR, reason)

    # -- ASGI ----------------------------------------------------------------------

    async def _run_asgi(self, scope: dict[str, Any]) -> None:
        app: Any = self._state.app
        try:
            result = await app(scope, self.receive, self.send)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Cancelled (the worker is stopping) or exiting: just close.
                self.abort()
                raise
            # Sending on a closed WebSocket is how many apps learn it closed:
            # not worth an error once the client is really gone.
            if not (isinstance(exc, ClientDisconnected) and self._phase is CLOSED):
                logger.error("Exception in ASGI application", exc_info=exc)
            self._app_failed()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned %r", result)
            if self._phase is CONNECTING:
                logger.error("ASGI callable returned without accepting or closing the WebSocket")
                self._app_failed()
            elif self._phase is OPEN:
                self._start_close(NORMAL_CLOSURE, "")
            elif self._phase is RESPONDING:
                logger.error("ASGI callable returned without completing the denial response")
                self._close_transport(ABNORMAL_CLOSURE)

    def _app_failed(self) -> None:
        """500 before accept, close 1011 after it, drop a half-sent denial response."""
        if self._phase is CONNECTING:
            self._write(handshake.simple_response(500, "Internal Server Error", self._default_headers()))
            self._access(500)
            self._close_transport(INTERNAL_ERROR)
        elif self._phase is OPEN:
            self._start_close(INTERNAL_ERROR, "")
        elif self._phase is RESPONDING:
            self._close_transport(INTERNAL_ERROR)

    async def receive(self) -> dict[str, Any]:
        """ASGI receive: connect first, then messages, then websocket.disconnect."""
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        queue = self._queue
        while not queue:
            if self._disconnect is not None:
                return self._disconnect
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = queue.popleft()
        if self._read_paused and len(queue) <= self._low_water and self._phase is not CONNECTING:
            self._resume_reading()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI send: accept, messages, close, or the denial response."""
        kind = message["type"]
        phase = self._phase
        if phase is OPEN:
            if kind == "websocket.send":
                await self._send_message(message)
            elif kind == "websocket.close":
                code = message.get("code")
                code = NORMAL_CLOSURE if code is None else int(code)
                if not sendable_close_code(code):
                    raise RuntimeError(f"invalid WebSocket close code {code}")
                self._start_close(code, message.get("reason") or "")
            else:
                raise RuntimeError(f"Expected 'websocket.send' or 'websocket.close', got {kind!r}")
        elif phase is CONNECTING:
            if kind == "websocket.accept":
                await self._accept(message)
            elif kind == "websocket.close":
                # Closed before accept: the handshake is refused (ASGI: 403).
                self._write(handshake.simple_response(403, "", self._default_headers()))
                self._access(403)
                self._close_transport(int(message.get("code") or NORMAL_CLOSURE), message.get("reason") or "")
            elif kind == "websocket.http.response.start":
                self._start_response(message)
            else:
                raise RuntimeError("Expected 'websocket.accept', 'websocket.close' or "
                                   f"'websocket.http.response.start', got {kind!r}")
        elif phase is RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected 'websocket.http.response.body', got {kind!r}")
            await self._send_body(message)
        elif kind == "websocket.close":
            pass  # closing or closed already: nothing left to close
        elif kind in ("websocket.send", "websocket.accept", "websocket.http.response.start",
                      "websocket.http.response.body"):
            raise ClientDisconnected("the WebSocket is closed")
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} on a closed WebSocket")

    async def _send_message(self, message: dict[str, Any]) -> None:
        engine = self._engine
        assert engine is not None
        text = message.get("text")
        if text is not None:
            data = engine.send_text(text)
        else:
            payload = message.get("bytes")
            if payload is None:
                raise RuntimeError("'websocket.send' needs 'text' or 'bytes'")
            data = engine.send_bytes(payload)
        self._transport.write(data)
        if not self._write_ready.is_set():
            await self._drain()

    async def _drain(self) -> None:
        await self._write_ready.wait()
        if self._transport_closed:
            raise ClientDisconnected("the WebSocket closed while sending")

    async def _accept(self, message: dict[str, Any]) -> None:
        engine = self._engine
        assert engine is not None
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and subprotocol not in self._subprotocols:
            raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client")
        headers = self._default_headers()
        for name, value in message.get("headers") or ():
            headers.append((bytes(name).lower(), bytes(value)))
        try:
            response = engine.accept(subprotocol, headers)
        except HandshakeError as exc:
            self._refuse(exc)
            raise ClientDisconnected(f"WebSocket handshake failed: {exc.reason}") from exc
        self._write(response)
        self._phase = OPEN
        self._access(101)
        self._keepalive.start()
        if self._pre_accept:
            early, self._pre_accept = bytes(self._pre_accept), bytearray()
            self._feed(early)
        if self._read_paused and (self._max_queue is None or len(self._queue) < self._max_queue):
            self._resume_reading()

    def _start_response(self, message: dict[str, Any]) -> None:
        """websocket.http.response.start: the denial response's head."""
        self._denial = handshake.DenialResponse(int(message["status"]), message.get("headers") or (),
                                                self._default_headers())
        self._write(self._denial.head)
        self._phase = RESPONDING
        self._access(self._denial.status)

    async def _send_body(self, message: dict[str, Any]) -> None:
        assert self._denial is not None
        more = bool(message.get("more_body", False))
        self._write(self._denial.body(message.get("body") or b"", more))
        if not more:
            self._close_transport(NORMAL_CLOSURE)
        elif not self._write_ready.is_set():
            await self._drain()

    def _access(self, status: int) -> None:
        access_log = self._state.access_log
        if access_log is not None:
            head = self._head
            access_log.log(self._client, head.method, head.raw_path, head.query_string,
                           head.http_version, status, 0, self._loop.time() - self._started)
