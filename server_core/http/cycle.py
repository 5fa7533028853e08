"""One ASGI ``http`` request/response cycle, shared by both parsers.

A :class:`RequestCycle` is created by the protocol for each request head. It
builds the scope, receives the body pieces the protocol routes to it, and runs
the application with its own bound ``receive``/``send`` methods (no closures
per request). It writes through the protocol, which owns the transport, the
flow control and the order of pipelined responses.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server_core.http import response as resp
from server_core.state import RequestHead

if TYPE_CHECKING:
    from server_core.http.protocol import HTTPProtocol

logger = logging.getLogger("corral.error")

_DISCONNECT = {"type": "http.disconnect"}

# A body piece smaller than this is copied to join its head or chunk framing
# in one buffer; a larger one is written as it is, beside them.
COPY_LIMIT = 16 * 1024


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


class ClientDisconnected(OSError):
    """``send()`` after the client went away (ASGI spec 2.4 asks for an OSError)."""


class RequestCycle:
    """The application's view of one request, and the response it sends back."""

    __slots__ = (
        "protocol", "head", "scope", "keep_alive", "task",
        "body", "body_size", "body_complete", "disconnected",
        "started", "complete", "continue_sent", "head_sent", "body_given", "framing", "length_left",
        "status", "headers", "bytes_sent", "start_time", "_waiter", "failed_status",
    )

    def __init__(self, protocol: HTTPProtocol, head: RequestHead, scope: dict[str, Any]) -> None:
        self.protocol = protocol
        self.head = head
        self.scope = scope
        self.keep_alive = head.keep_alive
        self.task: asyncio.Task[None] | None = None
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_complete = False
        self.disconnected = False
        self.started = False
        self.complete = False
        self.continue_sent = False
        self.head_sent = False
        self.body_given = False  # the last http.request (more_body False) was handed out
        self.framing = resp.LENGTH
        self.length_left: int | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.bytes_sent = 0
        self.start_time = 0.0
        self._waiter: asyncio.Future[None] | None = None
        # Set when the request turned out malformed mid-body: answer this instead.
        self.failed_status: int | None = None

    # -- fed by the protocol ---------------------------------------------------

    def body_received(self, data: bytes) -> None:
        """A piece of this request's body arrived."""
        self.body.append(data)
        self.body_size += len(data)
        if self._waiter is not None:
            self._wake()

    def message_complete(self) -> None:
        """The whole request body arrived."""
        self.body_complete = True
        if self._waiter is not None:
            self._wake()

    def lost(self) -> None:
        """The client is gone: ``receive()`` answers ``http.disconnect`` from now on."""
        self.disconnected = True
        self._wake()

    def wake(self) -> None:
        """Let a waiting ``receive()`` look again (the client half-closed)."""
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- running the application -------------------------------------------------

    def start(self, app: Any, fresh_context: bool) -> asyncio.Task[None]:
        """Run the application for this request in a task.

        The task leaves ``state.tasks`` by itself at the end of :meth:`run`,
        which saves a done callback (and a pass of the loop) per request.
        """
        self.start_time = time.monotonic() if self.protocol.state.access_log is not None else 0.0
        coro = self.run(app)
        loop = self.protocol.loop
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
            if not self.disconnected:
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
            if not self.started:
                if self.protocol.client_eof:
                    # It saw http.disconnect (the client half-closed): nothing to answer.
                    self.disconnected = True
                elif not self.disconnected:
                    logger.error("ASGI callable returned without starting response.")
                self._abandon()
            elif not self.complete:
                if not (self.disconnected or self.protocol.client_eof):
                    logger.error("ASGI callable returned without completing response.")
                self._abandon()
        finally:
            self.protocol.state.tasks.discard(self.task)

    def _abandon(self) -> None:
        """The application failed: answer 500 if nothing was sent yet, else cut the connection."""
        if self.complete:
            return
        self.complete = True
        if self.disconnected:
            self.protocol.response_complete(self)
        elif not self.head_sent:
            # Nothing reached the client yet: a clean 500 is still possible.
            self.keep_alive = False
            self.status = 500
            body = resp.simple_response(500, "Internal Server Error", self.protocol.defaults())
            self.protocol.write(body)
            self.protocol.response_complete(self)
            self._log_access()
        else:
            self.keep_alive = False
            self.protocol.response_complete(self, broken=True)

    # -- the ASGI callables ---------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the body as it arrives, then ``http.disconnect``."""
        while True:
            if self.disconnected or self.complete:
                return _DISCONNECT
            if self.body:
                body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                self.body = []
                self.protocol.body_consumed(self.body_size)
                self.body_size = 0
                self.body_given = self.body_complete
                return {"type": "http.request", "body": body, "more_body": not self.body_complete}
            if self.body_complete:
                if not self.body_given:
                    self.body_given = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                if self.protocol.client_eof:
                    # The client half-closed: nothing more will come. send()
                    # still works (it may be waiting for its answer).
                    return _DISCONNECT
                # The body was all handed out: wait for the end of the response
                # or for the client to go away.
            else:
                if self.head.expect_continue and not self.continue_sent and not self.started:
                    # RFC 9110 §10.1.1: the client waits for 100 before sending
                    # the body; send it only now that the application wants it.
                    self.continue_sent = True
                    self.protocol.write(resp.CONTINUE)
                self.protocol.want_body()
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = self.protocol.loop.create_future()
            await waiter

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI ``send``: ``http.response.start`` then ``http.response.body`` messages."""
        kind = message["type"]
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        if kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} " + (
                    "after the response completed." if self.complete else "before http.response.start."))
            body = message.get("body", b"")
            more = message.get("more_body", False)
            protocol = self.protocol
            if more:
                # Written at the end of this pass of the loop, together with
                # whatever the application sends before it waits: a response
                # streamed in many small messages leaves in few writes.
                if not self.head_sent:
                    protocol.write_soon(self._head(None))
                    self.head_sent = True
                if body:
                    self._body(body, protocol.write_soon)
                if protocol.write_paused:
                    await protocol.drain()
                    if self.disconnected:
                        raise ClientDisconnected("client disconnected")
            else:
                self._last_body(body)
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("Unexpected ASGI message 'http.response.start' sent twice.")
            self.started = True
            self.status = int(message["status"])
            self.headers = message.get("headers", ())
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} in an http scope.")

    # -- writing ---------------------------------------------------------------------

    def _head(self, body_length: int | None) -> bytes:
        """Encode the response head (sent with the first body message); sets the framing."""
        protocol = self.protocol
        state = protocol.state
        keep_alive = self.keep_alive
        # Stopping (retire, shutdown, the client's FIN): the connection closes
        # after the last request already received, and only after it.
        if keep_alive and (protocol.closing or state.stopping) and not protocol.queue:
            keep_alive = False
        # A request whose body we have not finished reading cannot be followed
        # by another on the same connection (we would have to read and discard
        # an unknown amount, and a 100-continue client may never send it).
        if not self.body_complete:
            keep_alive = False
        request = self.head
        head, self.framing, self.length_left, self.keep_alive = resp.encode_head(
            self.status, self.headers, resp.server_headers(state.default_headers, state.date_header),
            keep_alive=keep_alive,
            http10=request.http_version == "1.0", head_request=request.method == "HEAD",
            body_length=body_length)
        if self.framing != resp.LENGTH:
            self.length_left = None  # only a length-framed body is counted
        return head

    def _body(self, body: bytes, write: Callable[[bytes], None]) -> None:
        """Frame and write one non-empty piece of the body."""
        framing = self.framing
        if framing == resp.NO_BODY:
            return
        if framing == resp.CHUNKED:
            if len(body) < COPY_LIMIT:
                write(resp.chunk(body))
            else:  # no copy of a large body to frame it
                write(b"%x\r\n" % len(body))
                write(body)
                write(b"\r\n")
        else:
            if self.length_left is not None:
                if len(body) > self.length_left:
                    raise RuntimeError("Response content longer than Content-Length")
                self.length_left -= len(body)
            write(body)
        self.bytes_sent += len(body)

    def _last_body(self, body: bytes) -> None:
        """The last body message: write what is left of the response in one go, and finish."""
        protocol = self.protocol
        if not self.head_sent:
            head = self._head(len(body))
            if self.framing == resp.LENGTH and len(body) < COPY_LIMIT:
                # The usual response: head and whole body in one write (one
                # system call), without the overhead of a deferred write.
                # Checked before anything is written: a wrong Content-Length
                # still gets a clean 500.
                if len(body) != self.length_left:
                    raise RuntimeError("Response content %s than Content-Length" % (
                        "longer" if len(body) > self.length_left else "shorter"))  # type: ignore[operator]
                self.length_left = 0
                self.head_sent = True
                protocol.write(head + body)
                self.bytes_sent = len(body)
                self._finish()
                return
            protocol.write_soon(head)
            self.head_sent = True
        if body:
            self._body(body, protocol.write_soon)
        if self.framing == resp.CHUNKED:
            protocol.write_soon(resp.LAST_CHUNK)
        elif self.length_left:
            raise RuntimeError("Response content shorter than Content-Length")
        protocol.flush()
        self._finish()

    def _finish(self) -> None:
        self.complete = True
        if self._waiter is not None:  # a receive() waiting for the end: http.disconnect
            self._wake()
        protocol = self.protocol
        protocol.response_complete(self)
        if protocol.state.access_log is not None:
            self._log_access()

    def _log_access(self) -> None:
        access_log = self.protocol.state.access_log
        if access_log is not None:
            head = self.head
            access_log.log(self.scope["client"], head.method, head.raw_path, head.query_string,
                           head.http_version, self.status, self.bytes_sent,
                           time.monotonic() - self.start_time)
