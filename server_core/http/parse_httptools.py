"""The httptools (llhttp) adapter: one request at a time, callbacks into lists.

Sans-I/O. :class:`~server_core.http.reader.MessageReader` hands this adapter
one pre-checked head, then exactly that request's body bytes; llhttp parses
them through the callbacks below. llhttp is already strict; the shared checks
in :mod:`server_core.http.head` and :mod:`server_core.http.chunked` run first
so that both parsers refuse exactly the same requests with the same status.
"""

from __future__ import annotations

import httptools

from server_core.http.events import Event
from server_core.http.head import HeadLimits
from server_core.http.reader import Headers, LibraryError, MessageReader, body_event


class HttptoolsParser(MessageReader):
    """Request parser on httptools; see :class:`MessageReader` for the interface."""

    # llhttp would only count a Content-Length body's bytes and hand them back
    # through a callback; a fresh parser for the next message costs less.
    length_body_direct = True

    def __init__(self, limits: HeadLimits | None = None, *,
                 upgrade_tokens: frozenset[bytes] = frozenset()) -> None:
        super().__init__(limits, upgrade_tokens=upgrade_tokens)
        self._headers: list[tuple[bytes, bytes]] = []
        self._fields: list[tuple[bytes, bytes]] = []  # the head's fields, once it is complete
        self._body: list[bytes] = []
        self._headers_done = False
        self._complete = False
        self._fresh = True  # no parser yet: _start_message makes one
        self._start_message()

    # -- llhttp callbacks (called from inside feed_data) -----------------------
    # No on_url: the shared checks already split the request line, and each
    # callback llhttp finds on this object costs a Python call per request.

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp has already dropped the leading OWS, not the trailing.
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # After the head, llhttp reports trailer fields through on_header too:
        # ASGI has no request trailers, so they go to a list nobody reads
        # (cheaper than a test in on_header, which runs for every field).
        self._fields, self._headers = self._headers, []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    # -- MessageReader hooks ---------------------------------------------------

    def _start_message(self) -> None:
        # llhttp readies itself for the next keep-alive request; only after an
        # upgrade pause, a Content-Length body it never saw (or before the
        # first request) is a fresh one needed.
        if self._fresh:
            self._parser = httptools.HttpRequestParser(self)
        self._headers = []
        self._headers_done = False
        self._complete = False
        self._upgraded = self._fresh = False

    def _parse_head(self, head: bytes) -> Headers:
        try:
            self._parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            # llhttp stops after an upgrade head; whether we really switch
            # protocols is decided by the caller.
            self._upgraded = self._fresh = True
        except httptools.HttpParserError as exc:
            raise LibraryError(f"malformed request ({exc})") from None
        if not self._headers_done:
            raise LibraryError("incomplete request head")
        return self._fields

    def _start_body(self, length: int) -> None:
        if length >= 0:
            self._fresh = True  # the body goes around llhttp (length_body_direct)
        elif self._upgraded:
            # The client asked for an upgrade we do not perform (h2c, or
            # websocket with --ws none) and sent a chunked body: llhttp has
            # stopped, so a new parser primed for a chunked body decodes it.
            self._parser = httptools.HttpRequestParser(self)
            self._parser.feed_data(b"PUT / HTTP/1.1\r\nhost: _\r\ntransfer-encoding: chunked\r\n\r\n")
            self._complete = False

    def _parse_body(self, piece: bytes, events: list[Event]) -> bool:
        parts: list[bytes] = []
        self._body = parts
        try:
            self._parser.feed_data(piece)
        except httptools.HttpParserError as exc:
            raise LibraryError(f"malformed request body ({exc})") from None
        body_event(parts, events)
        return self._complete
