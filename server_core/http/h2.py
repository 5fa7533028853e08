"""HTTP/2 on zttp (``--http zttp --http2``): many streams over one connection.

:class:`H2Protocol` is the :class:`~server_core.http.stream.Wire` of every
request stream on one HTTP/2 connection: zttp's ``H2Connection`` parses frames
and keeps the HPACK tables and flow-control windows; this module turns its
events into :class:`~server_core.http.stream.HTTPStream` events and the
streams' actions into zttp calls. The ASGI side is the very same object as on
HTTP/1.1.

A connection arrives here in one of two ways: TLS with ALPN ``h2``, or a
cleartext connection whose first bytes are the HTTP/2 connection preface
(prior knowledge). Either way :class:`~server_core.http.protocol.HTTPProtocol`
accepted it and hands it over (:func:`takeover`), as it does for WebSockets.

What bounds a client here:
- at most ``MAX_STREAMS`` streams whose application still runs, whatever the
  client resets (each reset stream counts until its application returns), so
  a rapid-reset flood (CVE-2023-44487) cannot start unbounded work; a client
  that keeps resetting or opening refused streams gets ``GOAWAY
  ENHANCE_YOUR_CALM``;
- request bodies: reading stops while more than ``HIGH_WATER`` bytes wait for
  the applications, and zttp returns window credit only for what it parsed,
  so the client's windows close too;
- responses: a streaming ``send()`` waits while its stream's window is closed
  or the transport's buffer is full, and reading stops while the transport's
  buffer is full (so PING/SETTINGS floods whose answers are not read push
  back through the kernel);
- header lists: ``--limit-request-fields`` and ``--limit-request-field-size``
  apply to the decoded list (answered 431); zttp caps the encoded block
  (``MAX_HEADER_LIST_SIZE`` 65536) and CONTINUATION runs.
"""

from __future__ import annotations

import asyncio
import logging
from itertools import chain
from typing import Any, cast
from urllib.parse import unquote

import zttp

from server_core.http.response import server_headers
from server_core.http.stream import CLOSED, DONE, HTTPStream, http_scope, release
from server_core.proxy import ProxyTrust
from server_core.state import ClientDisconnected, RequestHead, ServerState

logger = logging.getLogger("corral.error")

# zttp's advertised SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it, or
# beyond this many running applications, are refused.
MAX_STREAMS = 128
# Refused or client-reset streams tolerated beyond the ones that were served,
# before the connection is closed as abusive.
ABUSE_ALLOWANCE = 2 * MAX_STREAMS
# Streams one connection may open in all. zttp 0.0.35 treats the 4097th
# stream of a connection as a flood and kills the connection with every
# stream in flight; so from this many on corral sends the client away (as
# nginx does after http2_max_requests), at the connection's next idle moment,
# and at the latest MAX_STREAMS streams later, leaving room for the streams a
# client may already have sent.
MAX_CONNECTION_STREAMS = 4096 - 3 * MAX_STREAMS
# Request body bytes buffered for the applications before reading stops, and
# the level at which it resumes (as on HTTP/1.1).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# RFC 9113 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# RFC 9113 §8.2.2: connection-specific fields have no place in HTTP/2; an
# application written for HTTP/1.1 may still set them.
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                b"upgrade"})
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
_SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8


def strip_connect_protocol(preface: bytes) -> bytes:
    """The server's first SETTINGS frame without ``SETTINGS_ENABLE_CONNECT_PROTOCOL``.

    zttp announces extended CONNECT (RFC 8441, WebSockets over HTTP/2), which
    corral does not serve; a browser told it may would try its WebSockets
    there and fail instead of opening an HTTP/1.1 connection. The setting's
    default is off, so leaving it out is the whole fix.
    """
    if len(preface) < 9 or preface[3] != 0x4 or preface[4] & 0x1:
        return preface  # not a SETTINGS frame (or an ACK): leave it alone
    length = int.from_bytes(preface[:3], "big")
    payload = preface[9:9 + length]
    kept = b"".join(payload[i:i + 6] for i in range(0, len(payload) - len(payload) % 6, 6)
                    if int.from_bytes(payload[i:i + 2], "big") != _SETTINGS_ENABLE_CONNECT_PROTOCOL)
    return len(kept).to_bytes(3, "big") + preface[3:9] + kept + preface[9 + length:]


class H2Protocol(asyncio.Protocol):
    """One HTTP/2 connection; the Wire of each of its request streams."""

    # The Wire contract: a streaming send() asks drain() whenever this is
    # true. Whether a stream must wait depends on its own window, so drain()
    # decides, and returns at once when it need not wait.
    write_paused = True

    def __init__(self, state: ServerState, trust: ProxyTrust | None = None) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.trust = trust
        self.conn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.streams: dict[int, HTTPStream] = {}
        self.last_stream_id = 0
        self.served = 0
        self.refused = 0  # streams refused or reset by the client before their answer
        self.buffered = 0  # request body bytes not yet taken by the applications
        self.read_paused = False
        self.transport_paused = False
        self.closing = False  # GOAWAY sent: finish the streams, then close
        self.leaving = False  # GOAWAY wanted: at the next moment without a stream (see shutdown)
        self._leave_timer: asyncio.TimerHandle | None = None
        self.gone = False
        self._waiters: list[asyncio.Future[None]] = []
        self._lengths: dict[int, int] = {}  # Content-Length bytes still owed, by stream
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        # --timeout-request-body: when each stream whose application waits
        # for body bytes began to wait, and one timer for all of them.
        self._body_waits: dict[int, float] = {}
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport,  # type: ignore[override]
                        client: tuple[str, int] | None = None, server: tuple[str, int] | None = None,
                        scheme: str | None = None) -> None:
        """Start the connection: our SETTINGS, then whatever the client sent."""
        self.transport = cast(asyncio.Transport, transport)
        self.state.connections.add(self)
        self.state.metrics.connections_total += 1
        if scheme is None:
            peer = transport.get_extra_info("peername")
            client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            here = transport.get_extra_info("sockname")
            server = (str(here[0]), int(here[1])) if isinstance(here, tuple) else None
            scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        self.client, self.server, self.scheme = client, server, scheme
        self.conn.initiate_connection()
        self.transport.write(strip_connect_protocol(self.conn.data_to_send()))
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: every stream still open sees ``http.disconnect``."""
        self.gone = True
        self.state.connections.discard(self)
        self._cancel_timers()
        for stream in list(self.streams.values()):
            stream.disconnect()
        self._wake_all()

    def eof_received(self) -> bool | None:
        """An HTTP/2 client that half-closes is gone: close (connection_lost follows)."""
        return False

    def data_received(self, data: bytes) -> None:
        """Feed the frames to zttp and act on its events."""
        if self.gone:
            return
        conn = self.conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is zttp.Data:
                    self._on_data(event)  # type: ignore[arg-type]
                elif kind is zttp.Request:
                    self._on_request(event)  # type: ignore[arg-type]
                elif kind is zttp.EndOfMessage:
                    stream = self.streams.get(event.stream_id)  # type: ignore[union-attr]
                    if stream is not None:
                        stream.end()
                elif event is zttp.NEED_DATA:
                    break
                elif kind is zttp.RstStream:
                    self._on_reset(event)  # type: ignore[arg-type]
                elif kind is zttp.WindowUpdate:
                    self._wake_all()
                elif kind is zttp.GoAway:
                    self.closing = True
                elif event is zttp.CONNECTION_CLOSED:
                    break
                # Settings and Ping: zttp answers them itself.
        except zttp.ProtocolError as exc:
            logger.warning("Invalid HTTP/2 frames received: %s", exc)
            self._close()
            return
        if self.closing and not self.streams:
            self._close()
            return
        self.flush()

    # -- events from the client ----------------------------------------------------

    def _on_request(self, event: zttp.Request) -> None:
        stream_id = event.stream_id
        self.last_stream_id = stream_id  # client stream ids only increase (zttp checks)
        if self.closing or len(self.streams) >= MAX_STREAMS:
            # After our GOAWAY, or too many applications still running (reset
            # streams included): the client may retry this one elsewhere.
            self._refuse(stream_id)
            return
        state = self.state
        settings = state.settings
        headers = _fields(event.headers)
        limit = settings.limit_request_field_size
        # The decoded list's size as HTTP/1.1 lines (name: value CRLF), in one
        # C-level sum: held to --limit-request-head-size as on HTTP/1.1, and a
        # usual list, far below the field limit in total, needs no per-field loop.
        size = sum(map(len, chain.from_iterable(headers))) + 2 * len(headers)
        if len(headers) > settings.limit_request_fields or size > settings.limit_request_head_size or (
                size > limit and any(len(name) + len(value) + 2 > limit for name, value in headers)):
            self.served += 1
            self._answer(stream_id, 431, b"Request Header Fields Too Large")
            return
        raw_path, query = event.path, event.query
        try:
            path = raw_path.decode("ascii")
        except UnicodeDecodeError:
            self.served += 1
            self._answer(stream_id, 400, b"Bad Request")
            return
        if b"%" in raw_path:
            path = unquote(path)
        head = RequestHead(event.method.decode("ascii"), raw_path, path, query, "2", headers, True,
                           None, event.expect_continue)
        state.total_requests += 1
        limit_requests = settings.limit_max_requests
        if limit_requests is not None and state.total_requests == limit_requests \
                and state.on_request_limit is not None:
            state.on_request_limit()
        client, server, scheme = self.client, self.server, self.scheme
        if self.trust is not None:
            client, server, scheme = self.trust.apply(client, server, scheme, headers, http=True)
        stream = HTTPStream(self, head, http_scope(head, client, server, scheme, settings.root_path,
                                                   state.app_state), stream_id)
        if event.end_stream:
            stream.body_complete = True
        self.streams[stream_id] = stream
        self._busy()
        if stream_id >= 2 * MAX_CONNECTION_STREAMS - 1 and not self.closing:
            # This connection has served enough (see MAX_CONNECTION_STREAMS):
            # send the client away, now if it reaches zttp's hard limit soon.
            if stream_id >= 2 * (MAX_CONNECTION_STREAMS + MAX_STREAMS) - 1:
                self._goaway()
            else:
                self.shutdown(True)
        concurrency = settings.limit_concurrency
        if concurrency is not None and len(state.tasks) >= concurrency:
            stream.status = 503
            stream.phase = DONE
            self.send_error(stream, 503)
            self.stream_done(stream)
            if state.record is not None:
                state.record(head.method, 503, 0, 0.0)
            return
        state.tasks.add(stream.start(state.app, settings.reset_contextvars, state.timed))

    def _on_data(self, event: zttp.Data) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.phase >= DONE:
            return  # answered already: the rest of its body is dropped
        data = event.data
        stream.body_received(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER:
            self._pause_reading()

    def _on_reset(self, event: zttp.RstStream) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and stream.phase < DONE:
            self.refused += 1
            stream.disconnect()
            self._wake_all()
        self._check_abuse()

    def _refuse(self, stream_id: int) -> None:
        self.refused += 1
        try:
            self.conn.stream(stream_id).reset(REFUSED_STREAM)
        except zttp.ProtocolError:
            pass
        self._check_abuse()

    def _check_abuse(self) -> None:
        """Close a connection whose client mostly resets or overruns its streams."""
        if self.refused > self.served + ABUSE_ALLOWANCE and not self.gone:
            logger.warning("HTTP/2 client %s reset or overran %d streams (served %d): closing",
                           self.client, self.refused, self.served)
            try:
                self.conn.close(ENHANCE_YOUR_CALM, self.last_stream_id)
            except zttp.ProtocolError:
                pass
            self._close()

    def _answer(self, stream_id: int, status: int, text: bytes) -> None:
        """A plain answer from the server itself (an error, or in place of the application)."""
        if status != 500 and self.state.record is not None:  # a 500 is reported by its stream
            self.state.record("", status, len(text), 0.0)
        s = self.conn.stream(stream_id)
        s.send_response(status, self._defaults([_TEXT_PLAIN, (b"content-length", b"%d" % len(text))]))
        s.send_data(text)
        s.end_message()

    # -- the Wire of each stream (see server_core.http.stream.Wire) ------------------

    def send_body(self, stream: HTTPStream, body: bytes, end: bool) -> None:
        """The head with the first piece, then DATA; ``end``: END_STREAM."""
        stream_id = stream.stream_id
        head_request = stream.head.method == "HEAD"
        if not stream.head_sent:
            headers, length = self._response_headers(stream.headers)
            if length is not None and not head_request and stream.status not in (204, 304):
                self._lengths[stream_id] = length
        if self._lengths and stream_id in self._lengths:
            self._count_length(stream_id, len(body), end)
        try:
            s = self.conn.stream(stream_id)
            if not stream.head_sent:
                if end and (head_request or not body):
                    s.send_response(stream.status, headers, True)
                    stream.head_sent = True
                    self._flush_soon()
                    return
                s.send_response(stream.status, headers, False)
                stream.head_sent = True
            if body and not head_request:
                s.send_data(body)
                stream.bytes_sent += len(body)
            if end:
                s.end_message()
        except zttp.LocalProtocolError as exc:
            if stream.phase == CLOSED or self.gone:
                raise ClientDisconnected("client disconnected") from None
            raise RuntimeError(f"HTTP/2 response refused: {exc}") from None
        self._flush_soon()

    def _count_length(self, stream_id: int, size: int, end: bool) -> None:
        """Hold the body to the Content-Length the application declared (zttp does not)."""
        left = self._lengths[stream_id] - size
        if left < 0 or (end and left):
            del self._lengths[stream_id]
            raise RuntimeError("Response content %s than Content-Length" % ("longer" if left < 0 else "shorter"))
        if end:
            del self._lengths[stream_id]
        else:
            self._lengths[stream_id] = left

    def _response_headers(self, headers: Any) -> tuple[list[tuple[bytes, bytes]], int | None]:
        """The application's fields for HTTP/2 (lower-case, no connection fields) with the server's
        own, and the Content-Length it declared."""
        state = self.state
        defaults = server_headers(state.default_headers, state.date_header)
        names = _default_names(defaults)
        fields: list[tuple[bytes, bytes]] = []
        overridden = False
        length = None
        for name, value in headers:
            name = name.lower()
            if name in names:
                if name in _CONNECTION_FIELDS:
                    continue
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise RuntimeError(f"invalid Content-Length {value!r}") from None
                else:
                    overridden = True
            fields.append((name, value))
        if overridden:  # the application set its own server, date or --header field
            present = {name for name, _ in fields}
            return fields + [field for field in defaults.fields if field[0] not in present], length
        return fields + defaults.fields, length

    def _defaults(self, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``fields`` (the server's own answer) with the server, date and --header fields."""
        state = self.state
        return fields + server_headers(state.default_headers, state.date_header).fields

    def send_continue(self, stream: HTTPStream) -> None:
        """``100 Continue`` on the stream."""
        try:
            self.conn.stream(stream.stream_id).send_informational(100)
        except zttp.ProtocolError:
            return
        self._flush_soon()

    def send_error(self, stream: HTTPStream, status: int) -> None:
        """A plain error in place of the application's answer (nothing was sent yet)."""
        text = b"Internal Server Error" if status == 500 else b"Service Unavailable"
        try:
            self._answer(stream.stream_id, status, text)
        except zttp.ProtocolError:
            return
        self._flush_soon()

    def reset(self, stream: HTTPStream) -> None:
        """A response cut short after its head: RST_STREAM, the connection goes on."""
        try:
            self.conn.stream(stream.stream_id).reset(INTERNAL_ERROR)
        except zttp.ProtocolError:
            return
        self._flush_soon()

    def stream_done(self, stream: HTTPStream) -> None:
        """Forget the stream; close after the last one once GOAWAY went out."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self._lengths.pop(stream.stream_id, None)
        if self._body_waits:
            self._body_waits.pop(stream.stream_id, None)
        self.buffered -= stream.body_size
        if stream.phase != CLOSED:
            self.served += 1
            if not stream.body_complete:
                # Answered before the whole body came: tell the client to stop
                # sending it (RFC 9113 §8.1), the connection goes on.
                try:
                    self.conn.stream(stream.stream_id).reset(NO_ERROR)
                except zttp.ProtocolError:
                    pass
        if self.read_paused and self.buffered < LOW_WATER and not self.transport_paused:
            self._resume_reading()
        if not self.streams:
            if self.closing or self.leaving:
                self._goaway()
                return
            self._idle()
        self._flush_soon()

    def want_body(self, stream: HTTPStream) -> None:
        """An application waits for body bytes: read, unless too much already waits.

        The wait is timed (--timeout-request-body): only a stream whose body
        is still arriving gets here, so a request that came whole costs nothing.
        """
        if self.read_paused and self.buffered < HIGH_WATER:
            self._resume_reading()
        now = self.loop.time()
        self._body_waits[stream.stream_id] = now
        if self._body_timer is None and not self.gone:
            self._body_timer = self.loop.call_at(now + self.state.settings.timeout_request_body,
                                                 self._on_body_timer)

    def _on_body_timer(self) -> None:
        """Cut the streams whose body stalled while their application waited; re-arm for the rest."""
        self._body_timer = None
        if self.gone:
            return
        timeout = self.state.settings.timeout_request_body
        now = self.loop.time()
        earliest: float | None = None
        for stream_id, since in list(self._body_waits.items()):
            stream = self.streams.get(stream_id)
            if stream is None or stream.phase >= DONE or stream.body_complete or not stream.waiting \
                    or stream.body:
                del self._body_waits[stream_id]  # no longer waiting: want_body() starts it again
            elif now >= since + timeout:
                del self._body_waits[stream_id]
                self._body_timeout(stream)
            elif earliest is None or since + timeout < earliest:
                earliest = since + timeout
        if earliest is not None:
            self._body_timer = self.loop.call_at(earliest, self._on_body_timer)
        self.flush()

    def _body_timeout(self, stream: HTTPStream) -> None:
        """A stalled body: 408 on the stream if nothing was sent yet, else RST_STREAM CANCEL.

        The application sees http.disconnect; the connection and its other streams go on.
        """
        logger.debug("HTTP/2 request body timed out after %ss (%s %s)", self.state.settings.timeout_request_body,
                     stream.head.method, stream.head.path)
        try:
            if not stream.head_sent:
                stream.status = 408
                self._answer(stream.stream_id, 408, b"Request Timeout")
                # The client may stop sending the body (RFC 9113 §8.1).
                self.conn.stream(stream.stream_id).reset(NO_ERROR)
            else:
                self.conn.stream(stream.stream_id).reset(CANCEL)
        except zttp.ProtocolError:
            pass
        stream.disconnect()

    def body_consumed(self, stream: HTTPStream, size: int) -> None:
        """An application took ``size`` buffered body bytes."""
        self.buffered -= size
        if self.read_paused and self.buffered < LOW_WATER and not self.transport_paused:
            self._resume_reading()

    async def drain(self, stream: HTTPStream) -> None:
        """Wait while the stream's window holds bytes back or the transport's buffer is full."""
        self.flush()
        while not self.gone and stream.phase != CLOSED:
            if not self.transport_paused:
                try:
                    pending = self.conn.stream(stream.stream_id).pending_bytes
                except zttp.ProtocolError:
                    return
                if not pending:
                    return
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        release(waiters)

    # -- writing ----------------------------------------------------------------------

    def _flush_soon(self) -> None:
        """Write zttp's frames at the end of this pass of the loop (one write for many streams)."""
        if self._flush_handle is None and not self.gone:
            self._flush_handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every frame zttp has queued."""
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        data = self.conn.data_to_send()
        if data and not self.gone:
            assert self.transport is not None
            self.transport.write(data)

    # -- flow control -----------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's buffer is full: streams wait, and nothing more is read."""
        self.transport_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        """The transport drained: streams go on, reading resumes."""
        self.transport_paused = False
        self._wake_all()
        if self.buffered < LOW_WATER:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.read_paused and not self.gone:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.gone:
            self.read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    # -- deadlines and shutdown -------------------------------------------------------

    def _idle(self) -> None:
        """No stream open: close after the keep-alive timeout unless one opens."""
        if self._timer is None and not self.gone:
            self._timer = self.loop.call_later(self.state.settings.timeout_keep_alive, self._on_idle)

    def _busy(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle(self) -> None:
        self._timer = None
        if not self.streams and not self.gone:
            self.shutdown(False)

    def shutdown(self, retire: bool) -> None:
        """Send the client away: GOAWAY naming the last stream served, then close.

        The same for a retiring worker and a full stop. HTTP/2 tells the
        client exactly which requests were taken, so it retries the others on
        a new connection and none is lost.

        The GOAWAY goes out with the answer that leaves the connection without
        a stream in flight, so the client reads both before it sends again:
        a client on the h2 library (httpx, for one) fails every stream whose
        frames come after a GOAWAY, and one whose request crossed our GOAWAY.
        Meanwhile new streams are served, as a retiring HTTP/1.1 connection
        serves its next request. At the latest after the keep-alive timeout
        the GOAWAY goes anyway (a connection that is never idle, or a client
        that sends nothing more). On a full stop an idle connection goes at once.
        """
        if self.gone or self.closing:
            return
        if not self.streams and not retire:
            self._goaway()
            return
        if not self.leaving:
            self.leaving = True
            self._leave_timer = self.loop.call_later(self.state.settings.timeout_keep_alive, self._goaway)

    def _goaway(self) -> None:
        """GOAWAY now with the last stream taken; close once no stream is left."""
        if self.gone:
            return
        if not self.closing:
            self.closing = True
            try:
                self.conn.close(NO_ERROR, self.last_stream_id)
            except zttp.ProtocolError:
                pass
        self.flush()
        if not self.streams:
            self._close()

    def abort(self) -> None:
        """Close the transport now (after the graceful timeout)."""
        if self.transport is not None and not self.gone:
            self.gone = True
            self.transport.abort()

    def _close(self) -> None:
        if not self.gone and self.transport is not None:
            self.flush()
            self.gone = True
            self.transport.close()
        self._cancel_timers()
        self._wake_all()

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._body_timer, self._leave_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._body_timer = self._leave_timer = None


_names: tuple[Any, frozenset[bytes]] = (None, frozenset())


def _default_names(defaults: Any) -> frozenset[bytes]:
    """The names ``_response_headers`` looks at: the server's own fields (never sent twice), the
    connection fields (dropped) and content-length (held to the body)."""
    global _names
    if _names[0] is not defaults:
        _names = (defaults, frozenset(name for name, _ in defaults.fields) | _CONNECTION_FIELDS
                  | {b"content-length"})
    return _names[1]


def _fields(headers: Any) -> list[tuple[bytes, bytes]]:
    """The request's fields as ASGI wants them: lower-case names, one ``cookie`` (RFC 9113 §8.2.3)."""
    if type(headers) is zttp.HeaderBlock:
        fields = headers.to_list(lowercase_names=True)
        if len(headers.getall(b"cookie")) < 2:
            return fields
    else:
        fields = [(name.lower(), value) for name, value in headers]
    cookies = [value for name, value in fields if name == b"cookie"]
    if len(cookies) > 1:
        fields = [field for field in fields if field[0] != b"cookie"]
        fields.append((b"cookie", b"; ".join(cookies)))
    return fields


def takeover(http1: Any, transport: asyncio.BaseTransport, data: bytes) -> H2Protocol:
    """Turn an accepted connection over to HTTP/2 (ALPN h2, or the preface in ``data``)."""
    h2 = H2Protocol(http1.state, http1.trust)
    transport.set_protocol(h2)
    h2.connection_made(transport, http1.client, http1.server, http1.scheme)
    if data:
        h2.data_received(data)
    if h2.state.stopping:  # after the bytes already here: a request in them is served
        h2.shutdown(h2.state.retiring)
    return h2
