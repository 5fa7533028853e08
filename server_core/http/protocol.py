"""The HTTP/1.1 connection: one asyncio.Protocol for the three parsers.

It feeds bytes to the parser adapter (httptools, h11 or zttp), turns the
neutral events into :class:`~server_core.http.stream.HTTPStream` objects served
one at a time in arrival order (pipelining), and is their
:class:`~server_core.http.stream.Wire`: it encodes each response (framing,
keep-alive), and owns everything about the connection: flow control in both
directions, the keep-alive and request-head deadlines, the concurrency limit,
graceful shutdown and the WebSocket hand-off.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any, cast

from server_core.http import H2_PREFACE, make_parser
from server_core.http import response as resp
from server_core.http.events import HELD, Body, EndOfMessage, ParseError
from server_core.http.response import ServerHeaders, server_headers, simple_response
from server_core.http.stream import CLOSED, DONE, HTTPStream, http_scope, release
from server_core.proxy import ProxyTrust
from server_core.state import RequestHead, ServerState

logger = logging.getLogger("corral.error")

# Request bytes buffered for the application before we stop reading from the
# socket, and the level at which reading resumes.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Deferred response bytes (HTTPProtocol.write_soon) written at once beyond this.
FLUSH_SIZE = 64 * 1024
# Pipelined requests parsed ahead of the one being served, before we stop reading.
MAX_PIPELINE = 16
# After answering a request whose body was not read: how long to keep reading
# and dropping input before closing (see HTTPProtocol._linger).
LINGER_SECONDS = 2.0
# A body piece smaller than this is copied to join its head or chunk framing
# in one buffer; a larger one is written as it is, beside them.
COPY_LIMIT = 16 * 1024

_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT

# server_core.websocket.handoff, looked up once (False: not available).
_handoff: Any = None


def websocket_handoff() -> Any:
    """The WebSocket hand-off function, or None when the package is missing."""
    global _handoff
    if _handoff is None:
        try:
            from server_core.websocket import handoff
        except ImportError:
            _handoff = False
        else:
            _handoff = handoff
    return _handoff or None


# One ProxyTrust per settings object: its cache then serves every connection.
_trust: dict[int, tuple[Any, ProxyTrust]] = {}


def proxy_trust(state: ServerState) -> ProxyTrust:
    """The worker's ProxyTrust for ``state.settings``, built once."""
    settings = state.settings
    found = _trust.get(id(settings))
    if found is None or found[0] is not settings:
        found = (settings, ProxyTrust(settings.forwarded_allow_ips))
        _trust[id(settings)] = found
    return found[1]


def _running(tasks: set[asyncio.Task[Any]]) -> int:
    """How many of ``tasks`` still run, forgetting those that ended.

    A request task leaves the set by itself at the end of its coroutine
    (HTTPStream.run), which costs nothing per request; one cancelled before
    its first step never runs that code, so the count is made exact here, only
    when it decides a refusal.
    """
    for task in [task for task in tasks if task.done()]:
        tasks.discard(task)
    return len(tasks)


class HTTPProtocol(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (httptools, h11 or zttp underneath)."""

    # Slots: CPython keeps a shared-key instance dict only up to 30 names, and
    # attribute access on this hot object gets slower past it.
    __slots__ = (
        "state", "loop", "ws_enabled", "parser", "trust", "transport", "client", "server", "scheme", "tls",
        "cycle", "receiving", "queue", "keep_alive", "framing", "length_left", "broken",
        "buffered", "read_paused", "write_paused", "_drain_waiters", "_pending", "_pending_size",
        "closing", "retiring", "gone", "lingering", "client_eof", "head_at", "idle_since",
        "_timer", "_timer_when", "sniff", "_sniffed",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        settings = state.settings
        self.loop = asyncio.get_running_loop()
        self.ws_enabled = settings.ws != "none" and websocket_handoff() is not None
        self.parser = make_parser(settings, frozenset((b"websocket",)) if self.ws_enabled else frozenset())
        self.trust = proxy_trust(state) if settings.proxy_headers else None
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.tls = False
        self.cycle: HTTPStream | None = None  # the request being answered
        self.receiving: HTTPStream | None = None  # the request whose body is arriving
        self.queue: deque[HTTPStream | ParseError] = deque()
        # The response in progress (one at a time): its framing, the
        # Content-Length bytes still owed, and whether the connection stays open.
        self.keep_alive = True
        self.framing = resp.LENGTH
        self.length_left: int | None = None
        self.broken = False  # a response was cut short: close, never reuse
        self.buffered = 0  # request body bytes not yet taken by the application
        self.read_paused = False
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pending: list[bytes] = []  # deferred writes (see write_soon)
        self._pending_size = 0
        self.closing = False  # shutdown asked: close after the current exchange
        self.retiring = False
        self.gone = False  # the transport is closed (or handed over)
        self.lingering = False  # answered and half-closed; dropping input until close
        # The client half-closed (FIN): a request's receive() answers
        # http.disconnect once its body is consumed, while send() still works.
        self.client_eof = False
        self.head_at: float | None = None  # when the first byte of a pending head arrived
        # When the connection went idle; while a request runs (so it is not
        # idle), when its application began to wait in receive() for body
        # bytes (--timeout-request-body): one slot for both deadlines.
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        # HTTP/2 on: the first bytes may be the HTTP/2 preface (prior knowledge).
        self.sniff = settings.http2
        self._sniffed = b""

    # -- connection lifecycle -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        """Register the connection and start its keep-alive deadline."""
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance here.
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        self.state.metrics.connections_total += 1
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        here = transport.get_extra_info("sockname")
        self.server = (str(here[0]), int(here[1])) if isinstance(here, tuple) else None
        if self.trust is not None and not self.trust.is_trusted(self.client[0] if self.client is not None else None):
            self.trust = None  # proxy headers from this peer are ignored: decided once, not per request
        self.tls = transport.get_extra_info("sslcontext") is not None
        self.scheme = "https" if self.tls else "http"
        self.idle_since = self.loop.time()
        self._arm(self.idle_since + self.state.settings.timeout_keep_alive)
        if self.sniff and self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_h2(b"")
                return
        if self.state.stopping:
            # Accepted as the worker stops: served like any other connection
            # then — closed at once on a full stop unless its request bytes
            # are already waiting, kept until its first request when retiring.
            self.shutdown(self.state.retiring)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a running request sees ``http.disconnect``."""
        self.gone = True
        self._pending = []
        self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for cycle in (self.cycle, self.receiving):
            if cycle is not None:
                cycle.disconnect()
        self._release_drain()

    def eof_received(self) -> bool | None:
        """The client half-closed: finish what is pending, then close."""
        if self.lingering or self.tls:
            # TLS transports close on the peer's EOF whatever we return (and
            # warn if we ask otherwise): connection_lost follows, and a
            # running request sees http.disconnect.
            return False
        self._dispatch(self.parser.eof())
        # Keep the transport open for writing while something is still to be
        # answered (a client may half-close after its last request).
        busy = self.cycle is not None or bool(self.queue)
        if busy:
            # Nothing more will come: answer what is pending, then close. The
            # application learns it through receive() (http.disconnect once the
            # body is consumed), as it would from uvicorn: a long poll or a
            # disconnect listener must not wait forever on a socket in CLOSE-WAIT.
            self.closing, self.retiring = True, False
            self.client_eof = True
            cycle = self.cycle
            if cycle is not None:
                if cycle.head_sent:
                    # A response already streaming to a client that left
                    # (an SSE stream, a download): the next send() raises at once.
                    cycle.disconnect()
                else:
                    cycle.half_close()
        return busy

    def data_received(self, data: bytes) -> None:
        """Parse the bytes and dispatch the events they complete."""
        if self.lingering:
            return  # the rest of an unread body, after our answer: dropped
        if self.sniff:
            data = self._sniffed + data
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self._sniffed = data  # too short to tell yet
                return
            self.sniff = False
            self._sniffed = b""
            if data.startswith(H2_PREFACE):
                self._to_h2(data)
                return
        self._dispatch(self.parser.feed(data))
        if self.parser.head_started:
            if self.head_at is None:
                self.head_at = now = self.loop.time()
                self._arm(now + self.state.settings.timeout_request_head)
        else:
            self.head_at = None

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is Body:
                if self.receiving is not None:
                    self._take_body(self.receiving, event.data)
            elif kind is EndOfMessage:
                if self.receiving is not None:
                    self.receiving.end()
                    self.receiving = None
            elif kind is RequestHead:
                self._on_head(event)
            elif event is HELD:
                # More requests follow in bytes the parser holds: they are
                # parsed once these are served (see _resume_reading).
                self._pause_reading()
            else:
                self._on_error(event)

    def _take_body(self, cycle: HTTPStream, data: bytes) -> None:
        """Hand a piece of body to its request, and stop reading while too much waits unread."""
        cycle.body_received(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            self._pause_reading()

    # -- requests ---------------------------------------------------------------

    def _on_head(self, head: RequestHead) -> None:
        self.head_at = None  # a head that follows in the same read gets its own deadline
        state = self.state
        settings = state.settings
        state.total_requests += 1
        limit = settings.limit_max_requests
        if limit is not None and state.total_requests == limit and state.on_request_limit is not None:
            state.on_request_limit()
        client, server, scheme = self.client, self.server, self.scheme
        if self.trust is not None:
            client, server, scheme = self.trust.apply(client, server, scheme, head.forwarded, http=True)
        scope = http_scope(head, client, server, scheme, settings.root_path, state.app_state)
        cycle = HTTPStream(self, head, scope)
        body = head.body
        if body is None:  # the body follows as events
            self.receiving = cycle
        else:  # the whole request is here
            cycle.body_complete = True
            if body:
                self._take_body(cycle, body)
        if self.cycle is None and not self.queue and not self.write_paused:
            self._run(cycle)
        else:  # behind another, or the client does not read its answers (resume_writing starts it)
            self.queue.append(cycle)
            if len(self.queue) >= MAX_PIPELINE or not self.parser.parsing:
                # Too many waiting, or an upgrade head queued behind a slow
                # request: what follows is the new protocol's, held (and
                # bounded) until the hand-off resumes reading.
                self._pause_reading()

    def _on_error(self, error: ParseError) -> None:
        # uvicorn's wording, so log watchers keep working; the reason is ours.
        logger.warning("Invalid HTTP request received: %s", error.reason)
        self._pause_reading()
        receiving = self.receiving
        self.receiving = None
        if receiving is not None and receiving is self.cycle:
            # The request being served turned out malformed mid-body.
            receiving.disconnect()  # the application sees http.disconnect
            if receiving.head_sent:
                self._close()
                return
            self.cycle = None
            self.queue.clear()
            self.queue.append(error)
        elif receiving is not None:
            # A queued request: answer the error in its place.
            self.queue.remove(receiving)
            self.queue.append(error)
        else:
            self.queue.append(error)
        if self.cycle is None:
            self._next()

    def _run(self, cycle: HTTPStream) -> None:
        state = self.state
        self.cycle = cycle
        head = cycle.head
        self.keep_alive = head.keep_alive
        self.broken = False
        if head.upgrade is not None and head.upgrade == b"websocket" and self.ws_enabled:
            self._handoff(cycle)
            return
        limit = state.settings.limit_concurrency
        # At most ``limit`` open connections (this one included) and ``limit``
        # running requests (this one not yet counted): each request counts once.
        if limit is not None and (len(state.connections) > limit or len(state.tasks) >= limit) \
                and (len(state.connections) > limit or _running(state.tasks) >= limit):
            # Overloaded: refuse without running the app, and close — the
            # request body (if any) is not read, and fewer connections is the point.
            cycle.status = 503
            cycle.phase = DONE
            self.keep_alive = False
            self.write(simple_response(503, "Service Unavailable", self.defaults()))
            self.stream_done(cycle)
            if state.record is not None:
                state.record(head.method, 503, 0, 0.0)
            return
        # The task takes itself out of state.tasks when it ends (HTTPStream.run).
        state.tasks.add(cycle.start(state.app, state.settings.reset_contextvars, state.timed))

    def _next(self) -> None:
        """Start the next queued request, or go idle."""
        while self.queue and not self.gone:
            if self.write_paused:
                # The client does not read its answers: start no more until
                # it does (resume_writing comes back here).
                return
            item = self.queue.popleft()
            if isinstance(item, ParseError):
                self.write(simple_response(item.status, item.reason, self.defaults()))
                if self.state.record is not None:  # no method to speak of: counted as "other"
                    self.state.record("", item.status, 0, 0.0)
                # The client may still be sending (a head past the size
                # limit): closing now would reset the connection, and the
                # client could lose the answer before reading it.
                self._linger()
                return
            if self.read_paused:
                self._maybe_resume(LOW_WATER)
            self._run(item)
            if self.cycle is not None:
                return
        if self.gone:
            return
        if self.closing and not self.retiring:
            self._close()
            return
        self.idle_since = now = self.loop.time()
        if self.parser.head_started and self.head_at is not None:
            deadline = self.head_at + self.state.settings.timeout_request_head
        else:
            deadline = now + self.state.settings.timeout_keep_alive
        if self._timer is None or deadline < self._timer_when:  # _arm's own test, inline: once per request
            self._arm(deadline)
        if self.read_paused:
            self._maybe_resume(LOW_WATER)

    # -- the Wire of each stream (see server_core.http.stream.Wire) ------------------

    def stream_done(self, stream: HTTPStream) -> None:
        """The stream is finished with (its response complete, abandoned or cut): move on."""
        if stream is not self.cycle:
            return
        self.cycle = None
        unread = stream is self.receiving and not stream.body_complete
        if unread:
            # The rest of that body would be parsed as nothing useful.
            self.receiving = None
        self.buffered -= stream.body_size
        broken = self.broken
        if broken or not self.keep_alive or self.gone or stream.phase == CLOSED:
            if unread and not broken:
                self._linger()
            else:
                self._close()
            return
        self._next()

    def send_body(self, stream: HTTPStream, body: bytes, end: bool) -> None:
        """Write a piece of the response, the head first; ``end``: the last piece."""
        if not stream.head_sent:
            head = self._encode_head(stream, len(body) if end else None)
            if end and self.framing == resp.LENGTH and len(body) < COPY_LIMIT:
                # The usual response: head and whole body in one write (one
                # system call), without the overhead of a deferred write.
                # Checked before anything is written: a wrong Content-Length
                # still gets a clean 500.
                if len(body) != self.length_left:
                    raise RuntimeError("Response content %s than Content-Length" % (
                        "longer" if len(body) > self.length_left else "shorter"))  # type: ignore[operator]
                self.length_left = 0
                stream.head_sent = True
                self.write(head + body)
                stream.bytes_sent = len(body)
                return
            # Written at the end of this pass of the loop, together with
            # whatever the application sends before it waits: a response
            # streamed in many small messages leaves in few writes.
            self.write_soon(head)
            stream.head_sent = True
        if body:
            self._frame(stream, body)
        if end:
            if self.framing == resp.CHUNKED:
                self.write_soon(resp.LAST_CHUNK)
            elif self.length_left:
                raise RuntimeError("Response content shorter than Content-Length")
            self.flush()

    def _encode_head(self, stream: HTTPStream, body_length: int | None) -> bytes:
        """Encode the response head (sent with the first body piece); sets the framing."""
        state = self.state
        keep_alive = self.keep_alive
        # Stopping (retire, shutdown, the client's FIN): the connection closes
        # after the last request already received, and only after it.
        if keep_alive and (self.closing or state.stopping) and not self.queue:
            keep_alive = False
        # A request whose body we have not finished reading cannot be followed
        # by another on the same connection (we would have to read and discard
        # an unknown amount, and a 100-continue client may never send it).
        if not stream.body_complete:
            keep_alive = False
        request = stream.head
        head, self.framing, length_left, self.keep_alive = resp.encode_head(
            stream.status, stream.headers, server_headers(state.default_headers, state.date_header),
            keep_alive=keep_alive,
            http10=request.http_version == "1.0", head_request=request.method == "HEAD",
            body_length=body_length)
        # Only a length-framed body is counted.
        self.length_left = length_left if self.framing == resp.LENGTH else None
        return head

    def _frame(self, stream: HTTPStream, body: bytes) -> None:
        """Frame and write one non-empty piece of the body."""
        framing = self.framing
        if framing == resp.NO_BODY:
            return
        write = self.write_soon
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
        stream.bytes_sent += len(body)

    def send_continue(self, stream: HTTPStream) -> None:
        """``100 Continue`` for a client waiting to send its body."""
        self.write(resp.CONTINUE)

    def send_error(self, stream: HTTPStream, status: int) -> None:
        """Answer ``status`` for a stream that sent nothing yet, and close after it."""
        self.keep_alive = False
        self.write(simple_response(status, "Internal Server Error" if status == 500 else "Error",
                                   self.defaults()))

    def reset(self, stream: HTTPStream) -> None:
        """A response cut short after its head left: HTTP/1.1 can only close the connection."""
        self.keep_alive = False
        self.broken = True

    # -- writing ------------------------------------------------------------------

    def defaults(self) -> ServerHeaders:
        """The server's own response headers (server, --header, date), encoded."""
        state = self.state
        return server_headers(state.default_headers, state.date_header)

    def write(self, data: bytes) -> None:
        """Write to the client now, after any deferred writes (dropped once the connection is gone)."""
        if self._pending:
            self._pending.append(data)
            self.flush()
        elif not self.gone:
            assert self.transport is not None
            self.transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write to the client at the end of this pass of the event loop.

        Each ``transport.write`` is a system call: what the application sends
        before it next waits leaves in one ``writelines`` (one ``writev``).
        A large amount is written at once, so the transport's flow control
        still sees it.
        """
        if self.gone:
            return
        pending = self._pending
        if not pending:
            self.loop.call_soon(self.flush)
        pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= FLUSH_SIZE:
            self.flush()

    def flush(self) -> None:
        """Write what :meth:`write_soon` deferred, now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_size = 0
        if not self.gone:
            assert self.transport is not None
            if len(pending) == 1:
                self.transport.write(pending[0])
            else:
                self.transport.writelines(pending)

    def body_consumed(self, stream: HTTPStream, size: int) -> None:
        """The application took ``size`` buffered body bytes."""
        self.buffered -= size
        if self.read_paused:
            self._maybe_resume(LOW_WATER)

    def want_body(self, stream: HTTPStream) -> None:
        """The application waits for body bytes: make sure we are reading, and start the body deadline.

        Only a request whose body is still arriving gets here, so a request
        that came whole costs nothing; the single timer serves this deadline
        too (see _on_timer).
        """
        self._maybe_resume(HIGH_WATER, body=True)
        self.idle_since = now = self.loop.time()  # busy, not idle: the slot times this wait
        self._arm(now + self.state.settings.timeout_request_body)

    async def drain(self, stream: HTTPStream) -> None:
        """Wait until the transport's write buffer drains (or the client goes)."""
        if not self.write_paused or self.gone:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    # -- flow control ---------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: send() waits, and no more is read or started.

        A client that sends requests without reading the answers would
        otherwise grow the write buffer without bound (pipelining); with
        reading paused, the kernel's buffers push back on it instead.
        """
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        """The transport drained: release waiting send() calls, start what waits, read again."""
        self.write_paused = False
        self._release_drain()
        if self.cycle is None and self.queue and not self.gone:
            self._next()
        self._maybe_resume(LOW_WATER)

    def _release_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        release(waiters)

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.gone:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _maybe_resume(self, water: int, body: bool = False) -> None:
        """Resume reading once buffered body, pipelined requests and unread answers are below the marks.

        ``body``: the application waits for the body of the request it
        serves, which only reading can bring, even while its client is slow
        to read (the pipeline limit still bounds what can pile up).
        """
        if self.read_paused and self.buffered < water and len(self.queue) < MAX_PIPELINE \
                and self.parser.parsing and (body or not self.write_paused):
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.gone:
            if self.parser.held:
                # Requests the parser held back (pipelined, see
                # reader.BATCH) come first: the socket is read again
                # only once they are all parsed. From the loop, never from
                # inside _next().
                self.loop.call_soon(self._feed_held)
                return
            self.read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def _feed_held(self) -> None:
        """Parse the next requests the parser held back, if the queue has room; read again after the last."""
        if self.gone or self.lingering or not self.parser.held or len(self.queue) >= MAX_PIPELINE \
                or self.write_paused:
            return  # _next() and resume_writing() come back here through _maybe_resume()
        self.data_received(b"")
        if not self.parser.held:
            self._maybe_resume(LOW_WATER)

    # -- deadlines --------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Make sure the single timer fires no later than ``deadline``."""
        timer = self._timer
        if timer is not None:
            if self._timer_when <= deadline:
                return  # it fires first and re-arms itself for the rest
            timer.cancel()
        self._timer_when = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.gone:
            return
        if self.cycle is not None or self.queue:
            # Busy: the deadline is set again when the connection idles. Only
            # an application waiting for the rest of its body has one now.
            stream = self.receiving
            if stream is not None and stream is self.cycle and stream.waiting and not stream.body:
                deadline = self.idle_since + self.state.settings.timeout_request_body
                if self.loop.time() >= deadline:
                    self._body_timeout(stream)
                else:
                    self._arm(deadline)
            return
        settings = self.state.settings
        if self.parser.head_started and self.head_at is not None:
            deadline = self.head_at + settings.timeout_request_head
            if self.loop.time() >= deadline:
                # Slowloris: a head that never completes. Answer and hang up.
                self.write(simple_response(408, "Request Timeout", self.defaults()))
                self._close()
                return
        elif not self.parser.in_body:
            deadline = self.idle_since + settings.timeout_keep_alive
            if self.loop.time() >= deadline:
                self._close()
                return
        else:
            return
        self._arm(deadline)

    def _body_timeout(self, stream: HTTPStream) -> None:
        """The body stalled while the application waited for it: 408 (if still possible) and close.

        The application's receive() answers http.disconnect, and its next send() raises.
        """
        logger.debug("Request body timed out after %ss (%s %s)", self.state.settings.timeout_request_body,
                    stream.head.method, stream.head.path)
        self.receiving = None
        if not stream.head_sent:
            stream.status = 408
            self.write(simple_response(408, "Request Timeout", self.defaults()))
        self._close()
        stream.disconnect()

    # -- shutdown -------------------------------------------------------------

    def shutdown(self, retire: bool) -> None:
        """Stop after the current exchange (see ``server_core.state.Connection``)."""
        self.closing = True
        self.retiring = retire
        if self.lingering:
            return  # closes by itself shortly
        if self.gone or self.cycle is not None or self.queue or self.parser.head_started or self.parser.in_body:
            return  # the response in progress (or to come) carries Connection: close
        if self._bytes_waiting():
            return  # a request already sits in the kernel: it will be served
        if not retire:
            self._close()
        # Retiring: keep the idle connection until its next request (answered
        # with Connection: close) or the keep-alive deadline.

    def abort(self) -> None:
        """Close the transport now (after the graceful timeout)."""
        if self.transport is not None and not self.gone:
            self.gone = True
            self._pending = []
            self.transport.abort()

    def _bytes_waiting(self) -> bool:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        # Peek on a temporary socket object over the same fd: the transport's
        # wrapper does not offer recv(), and nothing is consumed.
        probe = socket.socket(fileno=sock.fileno())
        try:
            return bool(probe.recv(1, _PEEK_FLAGS))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        finally:
            probe.detach()

    def _linger(self) -> None:
        """Close after answering a request whose body we did not read.

        Closing a socket with unread bytes makes the kernel send a reset, and
        a client still uploading may then lose the response it was sent. So we
        half-close (FIN after the response), read and drop what still comes
        for a moment, and only then close (RFC 9112 §9.6).
        """
        transport = self.transport
        if self.gone or transport is None or not transport.can_write_eof():
            self._close()
            return
        self.lingering = True
        self.queue.clear()
        self.flush()
        transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = self.loop.time() + LINGER_SECONDS
        self._timer = self.loop.call_at(self._timer_when, self._close)

    def _close(self) -> None:
        if not self.gone and self.transport is not None:
            self.flush()
            self.gone = True
            self.transport.close()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._release_drain()

    # -- hand-offs ------------------------------------------------------------------

    def _to_h2(self, data: bytes) -> None:
        """This connection speaks HTTP/2 (ALPN h2, or the preface in ``data``): hand it over."""
        from server_core.http.h2 import takeover

        assert self.transport is not None
        self.gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state.connections.discard(self)
        takeover(self, self.transport, data)


    def _handoff(self, cycle: HTTPStream) -> None:
        handoff = websocket_handoff()
        assert handoff is not None and self.transport is not None
        head = cycle.head
        scope = cycle.scope
        self.flush()  # earlier pipelined answers go out before the handshake's
        self.cycle = self.receiving = None
        self.gone = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state.connections.discard(self)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        new = handoff(self.state, self.transport, head, scope["client"], scope["server"],
                      scope["scheme"], self.parser.trailing_data)
        self.transport.set_protocol(new)
