"""One ASGI ``http`` request/response exchange, the same on every wire.

An :class:`HTTPStream` is the application's side of one request. The
connection that parsed the request (HTTP/1.1 on httptools, h11 or zttp, or one
HTTP/2 stream on zttp) feeds it neutral events — :meth:`body`, :meth:`end`,
:meth:`disconnect` — and the stream hands the application's answer back as
neutral actions through the narrow :class:`Wire` interface: send the head and
body pieces, end, answer an error, reset. The stream owns ASGI (the scope,
``receive``/``send``, the rules about message order, 100-continue on demand,
the 500 for an early failure, the access log line); the connection owns the
bytes (framing, keep-alive, pipelining, flow control, HTTP/2 windows).

Its state is one of four, in this order:

``REQUEST``   the application runs; no ``http.response.start`` yet
``RESPONSE``  the response started (its head leaves with the first body piece)
``DONE``      the response is complete (or was answered with 500 for the app)
``CLOSED``    the client went away first: ``receive()`` answers
              ``http.disconnect`` and ``send()`` raises :class:`ClientDisconnected`

The request body is tracked beside it (``body_complete``), since a response
may start, and even finish, before the whole body arrived.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from server_core.state import ClientDisconnected, RequestHead

if TYPE_CHECKING:
    from server_core.state import ServerState

logger = logging.getLogger("corral.error")

REQUEST, RESPONSE, DONE, CLOSED = range(4)
STATE_NAMES = ("REQUEST", "RESPONSE", "DONE", "CLOSED")

_DISCONNECT = {"type": "http.disconnect"}


class Wire(Protocol):
    """What a stream needs from the connection that carries it.

    Every call names the stream, so one connection may carry many (HTTP/2).
    """

    state: ServerState
    loop: asyncio.AbstractEventLoop
    # True while the transport (or, on HTTP/2, this connection's send window)
    # is full: a streaming send() then waits in drain().
    write_paused: bool

    def send_body(self, stream: HTTPStream, body: bytes, end: bool) -> None:
        """Write a piece of the response (the head first, once); ``end`` completes it.

        Raises RuntimeError (before writing anything) when the body
        contradicts the head (more than its Content-Length, or less at the end).
        """

    def send_continue(self, stream: HTTPStream) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body."""

    def send_error(self, stream: HTTPStream, status: int) -> None:
        """Answer ``status`` in place of the application (nothing was sent yet)."""

    def reset(self, stream: HTTPStream) -> None:
        """Abandon a response whose head already left (cut the connection or the stream)."""

    def stream_done(self, stream: HTTPStream) -> None:
        """The stream is finished with (complete, abandoned or closed): move on."""

    def want_body(self, stream: HTTPStream) -> None:
        """The application waits for body bytes: make sure they are being read."""

    def body_consumed(self, stream: HTTPStream, size: int) -> None:
        """The application took ``size`` buffered body bytes."""

    async def drain(self, stream: HTTPStream) -> None:
        """Wait until the stream may write again (or is closed)."""


def release(waiters: list[asyncio.Future[None]]) -> None:
    """Resolve every future in ``waiters`` (callers hand over the list and start a new one)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def http_scope(head: RequestHead, client: tuple[str, int] | None, server: tuple[str, int] | None,
               scheme: str, root_path: str, app_state: dict[str, Any]) -> dict[str, Any]:
    """The ASGI ``http`` scope of one request (client/server/scheme already proxy-resolved).

    As uvicorn and ASGI 2.4: ``path`` and ``raw_path`` include ``root_path``;
    ``state`` is a shallow copy of the lifespan state.
    """
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": head.http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "method": head.method,
        "root_path": root_path,
        "path": root_path + head.path if root_path else head.path,
        "raw_path": root_path.encode("ascii") + head.raw_path if root_path else head.raw_path,
        "query_string": head.query_string,
        "headers": head.headers,
        "state": app_state.copy(),
    }


class HTTPStream:
    """The application's view of one request, and the response it sends back."""

    __slots__ = (
        "wire", "head", "scope", "phase", "task", "stream_id",
        "body", "body_size", "body_complete", "body_given", "continue_sent",
        "status", "headers", "head_sent", "bytes_sent", "start_time", "_waiter", "eof",
    )

    def __init__(self, wire: Wire, head: RequestHead, scope: dict[str, Any], stream_id: int = 0) -> None:
        self.wire = wire
        self.head = head
        self.scope = scope
        self.phase = REQUEST
        self.task: asyncio.Task[None] | None = None
        self.stream_id = stream_id
        self.body: list[bytes] = []
        self.body_size = 0  # bytes in ``body``, not yet handed to the application
        self.body_complete = False
        self.body_given = False  # the last http.request (more_body False) was handed out
        self.continue_sent = False
        self.status = 0
        self.headers: Any = ()
        self.head_sent = False  # set by the wire when the head leaves
        self.bytes_sent = 0  # body bytes, counted by the wire
        self.start_time = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self.eof = False  # the client half-closed (see half_close)

    def __repr__(self) -> str:
        return f"<HTTPStream {self.stream_id} {self.head.method} {self.head.raw_path!r} {STATE_NAMES[self.phase]}>"

    # -- events, fed by the connection ---------------------------------------

    def body_received(self, data: bytes) -> None:
        """A piece of this request's body arrived."""
        self.body.append(data)
        self.body_size += len(data)
        if self._waiter is not None:
            self._wake()

    def end(self) -> None:
        """The whole request body arrived."""
        self.body_complete = True
        if self._waiter is not None:
            self._wake()

    def disconnect(self) -> None:
        """The client is gone (connection lost, stream reset): CLOSED unless already DONE."""
        if self.phase != DONE:
            self.phase = CLOSED
        self._wake()

    def half_close(self) -> None:
        """The client will send nothing more but may still read (HTTP/1.1 FIN before any answer).

        ``receive()`` answers ``http.disconnect`` once the body is consumed,
        so a long poll or a disconnect listener does not wait on a socket in
        CLOSE-WAIT; ``send()`` still answers.
        """
        self.eof = True
        self._wake()

    @property
    def waiting(self) -> bool:
        """True while the application waits in ``receive()``."""
        return self._waiter is not None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- running the application ---------------------------------------------

    def start(self, app: Any, fresh_context: bool, timed: bool) -> asyncio.Task[None]:
        """Run the application for this request in a task.

        The task leaves ``state.tasks`` by itself at the end of :meth:`run`,
        which saves a done callback (and a pass of the loop) per request.
        """
        self.start_time = time.monotonic() if timed else 0.0
        coro = self.run(app)
        loop = self.wire.loop
        if fresh_context:
            task = loop.create_task(coro, context=contextvars.Context())
        else:
            task = loop.create_task(coro)
        self.task = task
        return task

    async def run(self, app: Any) -> None:
        """Call the application and make sure the client gets an answer."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            if self.phase == CLOSED:
                # The client left and the application noticed: no traceback.
                logger.debug("Client left before the response to %s %s was complete",
                             self.head.method, self.head.path)
            else:
                logger.error("Exception in ASGI application", exc_info=True)
            self._abandon()
        except Exception:
            logger.error("Exception in ASGI application", exc_info=True)
            self._abandon()
        except asyncio.CancelledError:
            self._abandon()
            raise
        else:
            if result is not None:
                logger.error("ASGI callable returned a value (%r); it should return None", result)
            phase = self.phase
            if phase == REQUEST and self.eof:
                # It saw http.disconnect (the client half-closed): nothing to answer.
                self.phase = CLOSED
                self._abandon()
            elif phase == REQUEST:
                logger.error("ASGI callable returned without starting response.")
                self._abandon()
            elif phase == RESPONSE:
                if not self.eof:
                    logger.error("ASGI callable returned without completing response.")
                self._abandon()
            elif phase == CLOSED:
                self._abandon()
        finally:
            self.wire.state.tasks.discard(self.task)  # type: ignore[arg-type]

    def _abandon(self) -> None:
        """The application ended without a complete response: 500 if nothing was sent, else reset."""
        phase = self.phase
        if phase == DONE:
            return
        wire = self.wire
        if phase == CLOSED:  # the client left: nothing to answer, and nobody to answer
            wire.stream_done(self)
            self._report(cut=True)
            return
        self.phase = DONE
        self._wake()
        if not self.head_sent:
            # Nothing reached the client yet: a clean 500 is still possible.
            self.status = 500
            wire.send_error(self, 500)
        else:
            wire.reset(self)
        wire.stream_done(self)
        self._report()

    # -- the ASGI callables ----------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the body as it arrives, then ``http.disconnect``."""
        while True:
            if self.phase >= DONE:
                return _DISCONNECT
            if self.body:
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                size, self.body_size = self.body_size, 0
                self.wire.body_consumed(self, size)
                self.body_given = self.body_complete
                return {"type": "http.request", "body": body, "more_body": not self.body_complete}
            if self.body_complete:
                if not self.body_given:
                    self.body_given = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if self.eof:
                    # The application is told the client is gone: from now on
                    # it is (ASGI 2.4: a send() after this raises an OSError).
                    self.phase = CLOSED
                    return _DISCONNECT
                # The body was all handed out: wait for the end of the response
                # or for the client to go away.
            else:
                if self.head.expect_continue and not self.continue_sent and self.phase == REQUEST:
                    # RFC 9110 §10.1.1: the client waits for 100 before sending
                    # the body; send it only now that the application wants it.
                    self.continue_sent = True
                    self.wire.send_continue(self)
                self.wire.want_body(self)
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = self.wire.loop.create_future()
            await waiter

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI ``send``: ``http.response.start`` then ``http.response.body`` messages."""
        kind = message["type"]
        phase = self.phase
        if phase == CLOSED:
            raise ClientDisconnected("client disconnected")
        if kind == "http.response.body":
            if phase != RESPONSE:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} " + (
                    "after the response completed." if phase == DONE else "before http.response.start."))
            body = message.get("body", b"")
            wire = self.wire
            if message.get("more_body", False):
                wire.send_body(self, body, False)
                if wire.write_paused:
                    await wire.drain(self)
                    if self.phase == CLOSED:
                        raise ClientDisconnected("client disconnected")
            else:
                wire.send_body(self, body, True)
                self.phase = DONE
                if self._waiter is not None:  # a receive() waiting for the end: http.disconnect
                    self._wake()
                wire.stream_done(self)
                if wire.state.timed:
                    self._report()
        elif kind == "http.response.start":
            if phase != REQUEST:
                raise RuntimeError("Unexpected ASGI message 'http.response.start' sent twice.")
            status = int(message["status"])
            if status < 200:
                # 1xx are interim answers, never the response: sent as one it
                # would end the exchange while the client waits for the real
                # one (and on HTTP/1.1 misattribute the next pipelined answer).
                raise RuntimeError(f"http.response.start with status {status}: "
                                   "an informational status is not a final response")
            self.status = status
            self.headers = message.get("headers", ())
            self.phase = RESPONSE
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} in an http scope.")

    def _report(self, cut: bool = False) -> None:
        """The finished request to the access log and the metrics, whichever are on."""
        state = self.wire.state
        if not state.timed:
            return
        head = self.head
        # A response the client never received whole is reported as nginx
        # does: 499, "client closed request" (but a 408 is the server's own
        # answer to a body that stalled: that one went out).
        status = 499 if cut and self.status != 408 else self.status
        duration = time.monotonic() - self.start_time
        if state.record is not None:
            state.record(head.method, status, self.bytes_sent, duration)
        access_log = state.access_log
        if access_log is not None:
            access_log.log(self.scope["client"], head.method, head.raw_path, head.query_string,
                           head.http_version, status, self.bytes_sent, duration)
