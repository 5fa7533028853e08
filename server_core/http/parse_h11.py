"""The h11 adapter: one request at a time through a fresh ``h11.Connection``.

Sans-I/O. h11 accepts some things we refuse (bare LF line endings, any token
as a method, whitespace after a chunk size, Content-Length together with
Transfer-Encoding on some paths); the shared checks in
:mod:`server_core.http.head` and :mod:`server_core.http.chunked` run before h11
sees a byte, so both parsers refuse exactly the same requests.

h11 will not parse a second request until it has seen our response, and our
responses are written by the shared cycle, not through h11, so each request
gets its own connection object: :class:`MessageReader` already hands over one
message at a time.
"""

from __future__ import annotations

import h11

from server_core.http.events import Event
from server_core.http.head import HeadLimits
from server_core.http.reader import Headers, LibraryError, MessageReader, body_event

# h11's own default, used when --h11-max-incomplete-event-size is not given.
DEFAULT_MAX_INCOMPLETE_EVENT_SIZE = 16 * 1024


class H11Parser(MessageReader):
    """Request parser on h11; see :class:`MessageReader` for the interface."""

    def __init__(self, limits: HeadLimits | None = None, *,
                 upgrade_tokens: frozenset[bytes] = frozenset(),
                 max_incomplete_event_size: int | None = None) -> None:
        size = max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        limits = limits or HeadLimits()
        if limits.head is None or limits.head > size:
            # h11's limit bounds the head; apply it as a byte limit as they arrive.
            limits = HeadLimits(limits.request_line, limits.fields, limits.field_size, size)
        super().__init__(limits, upgrade_tokens=upgrade_tokens)
        self._max_event = size
        self._start_message()

    def _start_message(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_event)
        self._complete = False

    def _parse_head(self, head: bytes) -> Headers:
        conn = self._conn
        conn.receive_data(head)
        try:
            event = conn.next_event()
            if not isinstance(event, h11.Request):
                raise LibraryError("incomplete request head")
            # Without a body h11 reports the end of the message at once.
            self._complete = conn.next_event() is not h11.NEED_DATA
        except h11.RemoteProtocolError as exc:
            raise LibraryError(f"malformed request ({exc})") from None
        # Iterating h11's Headers gives lower-cased names; strip OWS like httptools.
        return [(name, value.strip(b" \t")) for name, value in event.headers]

    def _parse_body(self, piece: bytes, events: list[Event]) -> bool:
        conn = self._conn
        conn.receive_data(piece)
        parts: list[bytes] = []
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    self._complete = True
                    break
                else:
                    raise LibraryError(f"unexpected {type(event).__name__} in a request body")
        except h11.RemoteProtocolError as exc:
            raise LibraryError(f"malformed request body ({exc})") from None
        body_event(parts, events)
        return self._complete
