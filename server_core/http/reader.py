"""The part of a parser adapter both libraries share: splitting the stream.

Sans-I/O. :class:`MessageReader` cuts the byte stream into exactly one
message at a time — head, then body of the length the framing rules give —
and hands each piece to the library behind it. Because the library only ever
sees one message, a pipelined request is never read as part of the previous
body, every hardening rule runs on the same bytes for both libraries, and the
size limits count bytes as they arrive.

Subclasses implement three hooks: :meth:`_start_message`, :meth:`_parse_head`
and :meth:`_parse_body`.
"""

from __future__ import annotations

from server_core.http.chunked import ChunkScanner
from server_core.http.events import END_OF_MESSAGE, HELD, Body, Event, ParseError
from server_core.http.head import (
    HeadLimits,
    HeadScanner,
    Reject,
    SplitHead,
    check_head,
    interpret,
    match_head,
    semantics,
)
from server_core.state import RequestHead

_HEAD, _BODY, _UPGRADED, _CLOSED = range(4)

# Events one feed() returns at most while whole requests keep following: the
# rest of the bytes wait in ``MessageReader.held`` (see events.Held). A client
# pipelining tiny requests would otherwise turn one 256 KiB read into
# thousands of requests in memory at once (some 12 MB).
BATCH = 32

Headers = list[tuple[bytes, bytes]]


class LibraryError(Exception):
    """The library refused bytes our own checks let through (answered 400)."""


class MessageReader:
    """Feeds one request at a time to a parser library; emits neutral events."""

    # True when a Content-Length body goes straight into Body events, never
    # through the library (which must then start afresh after that message).
    length_body_direct = False

    def __init__(self, limits: HeadLimits | None = None, *,
                 upgrade_tokens: frozenset[bytes] = frozenset()) -> None:
        self.limits = limits or HeadLimits()
        # Upgrade tokens (b"websocket") after which the stream stops being
        # HTTP: parsing pauses and the bytes after the head wait in
        # ``trailing_data`` for whoever takes the connection over.
        self.upgrade_tokens = upgrade_tokens
        self._state = _HEAD
        # The slow path's scanner, only while it holds part of a head.
        self._scanner: HeadScanner | None = None
        # A head no longer than this cannot pass any size limit, so a whole
        # head of at most this many bytes may take the fast path.
        limits = self.limits
        self._fast_size = min(limits.request_line, limits.field_size, limits.head or limits.field_size)
        self._max_fields = limits.fields
        self._remaining = 0  # Content-Length bytes still to come
        self._chunks: ChunkScanner | None = None
        self._request: RequestHead | None = None  # the request whose body is arriving
        # Bytes after an upgrade head: a bytearray, so a client that keeps
        # sending costs linear time (the protocol also stops reading then).
        self._rest = bytearray()
        # True while part of a request head has arrived but not all of it
        # (set by feed() and eof(); an attribute, as it is read per request).
        self.head_started = False
        # Bytes not parsed yet after a feed() that returned BATCH events
        # (ending with HELD); the next feed() starts with them.
        self.held = b""

    # -- what the protocol uses ---------------------------------------------

    @property
    def in_body(self) -> bool:
        """True while a request body is being received."""
        return self._state == _BODY

    @property
    def closed(self) -> bool:
        """True once nothing more will be parsed (an error, or a non-keep-alive request)."""
        return self._state == _CLOSED

    @property
    def parsing(self) -> bool:
        """True while bytes read are still HTTP to parse (not closed, not after an upgrade head)."""
        return self._state < _UPGRADED

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after an upgrade head (the new protocol's first bytes)."""
        return bytes(self._rest)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes (possibly several requests)."""
        events: list[Event] = []
        if self.held:
            data, self.held = self.held + data, b""
        try:
            while data:
                state = self._state
                if state == _HEAD:
                    scanner = self._scanner
                    if scanner is None:  # no part of a head held from an earlier read
                        fast = match_head(data, self._fast_size, self._max_fields)
                        if fast is not None:
                            end, split = fast
                            head, data = (data, b"") if end == len(data) else (data[:end], data[end:])
                            self._on_head(head, split, events)
                            # (the state first: a body that follows its head skips the rest)
                            if data and self._state == _HEAD and len(events) >= BATCH:
                                self.held = data
                                events.append(HELD)
                                break
                            continue
                        scanner = self._scanner = HeadScanner(self.limits)
                    found = scanner.feed(data)
                    if found is None:
                        break
                    head, data = found
                    self._scanner = None
                    self._on_head(head, check_head(head), events)
                    if data and self._state == _HEAD and len(events) >= BATCH:
                        self.held = data
                        events.append(HELD)
                        break
                elif state == _BODY:
                    data = self._on_body(data, events)
                elif state == _UPGRADED:
                    self._rest += data
                    break
                else:  # closed: bytes after a non-keep-alive request are ignored
                    break
        except Reject as exc:
            self._state = _CLOSED
            events.append(ParseError(exc.status, exc.reason))
        except LibraryError as exc:
            self._state = _CLOSED
            events.append(ParseError(400, str(exc) or "malformed request"))
        scanner = self._scanner
        self.head_started = scanner is not None and self._state == _HEAD and scanner.started
        return events

    def eof(self) -> list[Event]:
        """The peer closed its sending side: a message cut short is an error.

        Held bytes are parsed first, all of them (nothing more will come).
        """
        events: list[Event] = []
        while self.held:
            events += self.feed(b"")
            if events and events[-1] is HELD:
                events.pop()
        state = self._state
        self._state = _CLOSED
        self.head_started = False
        if state == _BODY:
            events.append(ParseError(400, "request body truncated"))
        elif state == _HEAD and self._scanner is not None and self._scanner.started:
            events.append(ParseError(400, "request head truncated"))
        return events

    # -- the message state machine ------------------------------------------

    def _on_head(self, head: bytes, split: SplitHead, events: list[Event]) -> None:
        # The framing rules first, on the raw fields: the libraries disagree on
        # some of what they refuse, so they must never be the first to decide.
        meaning = semantics(split[2], split[3])
        request = interpret(split, meaning, self._parse_head(head))
        body = meaning[0]
        if request.upgrade is not None and request.upgrade in self.upgrade_tokens:
            if body is not None:
                # Its body would be read as the new protocol's first bytes
                # (WebSocket frames): a request cannot be both.
                raise Reject(400, "upgrade request with a body")
            events.append(request)
            self._state = _UPGRADED
            return
        events.append(request)
        if body is None:
            request.body = b""  # complete as it stands: no EndOfMessage event
            self._end(request)
        else:
            self._state = _BODY
            self._start_body(body)
            self._request = request
            if body < 0:
                self._chunks = ChunkScanner(self.limits.field_size, self.limits.fields)
            else:
                self._chunks = None
                self._remaining = body

    def _on_body(self, data: bytes, events: list[Event]) -> bytes:
        chunks = self._chunks
        if chunks is None:
            take = min(self._remaining, len(data))
            self._remaining -= take
            done = self._remaining == 0
            if self.length_body_direct:
                # A Content-Length body is opaque bytes of a length already
                # checked: nothing for the library to parse.
                piece = data if take == len(data) else data[:take]
                request = self._request
                assert request is not None
                if done and events and events[-1] is request:
                    # The whole body came with its head (the usual small
                    # upload): it travels on the head, not as events.
                    request.body = piece
                    self._end(request)
                else:
                    events.append(Body(piece))
                    if done:
                        self._finish(request, events)
                return data[take:] if take < len(data) else b""
        else:
            take = chunks.feed(data)
            done = chunks.done
        piece, rest = (data, b"") if take == len(data) else (data[:take], data[take:])
        if chunks is not None and chunks.trailer_at >= 0:
            # The libraries never see trailer fields (ASGI drops them; the
            # scanner checked their syntax): llhttp would act on framing
            # fields there and h11 would not, so the last chunk is closed
            # with an empty trailer section instead.
            piece = piece[:chunks.trailer_at] + b"\r\n" if done else piece[:chunks.trailer_at]
            if not piece:  # more trailer bytes to come: nothing to feed yet
                return rest
        complete = self._parse_body(piece, events)
        if done:
            if not complete:
                raise LibraryError("parser did not see the end of the body")
            assert self._request is not None
            self._finish(self._request, events)
        return rest

    def _finish(self, request: RequestHead, events: list[Event]) -> None:
        events.append(END_OF_MESSAGE)
        self._end(request)

    def _end(self, request: RequestHead) -> None:
        self._state = _HEAD if request.keep_alive else _CLOSED
        self._start_message()

    # -- hooks ----------------------------------------------------------------

    def _start_message(self) -> None:
        """Prepare the library for the next request."""
        raise NotImplementedError

    def _parse_head(self, head: bytes) -> Headers:
        """Parse one complete, pre-checked head; return its header fields.

        Names lower-cased, values stripped of OWS. The request line was already
        split by the shared checks; the library still parses it, and raises
        LibraryError if it refuses anything.
        """
        raise NotImplementedError

    def _start_body(self, length: int) -> None:
        """A body follows the head just parsed (``length`` -1 means chunked)."""

    def _parse_body(self, piece: bytes, events: list[Event]) -> bool:
        """Feed body bytes; append :class:`Body` events; return True once complete."""
        raise NotImplementedError


def body_event(parts: list[bytes], events: list[Event]) -> None:
    """Append the body pieces one library call produced, as a single event."""
    if parts:
        events.append(Body(parts[0] if len(parts) == 1 else b"".join(parts)))
