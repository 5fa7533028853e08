"""The zttp adapter (``--http zttp``): HTTP/1.1 requests through zttp's ``H1Connection``.

Sans-I/O, like the other two adapters. The shared checks of
:mod:`server_core.http.head` and :mod:`server_core.http.chunked` run before zttp
sees a byte, so all three parsers refuse exactly the same requests; zttp then
parses the head it is given and decodes chunked bodies. A Content-Length body
is opaque bytes of a length already checked, so it goes straight into Body
events (as on httptools) and the next message starts on a fresh connection
object, which costs a fraction of a microsecond.

Responses are encoded by corral's own writer (``server_core.http.response``),
the same for every parser, so zttp's send side is not used on HTTP/1.1.
"""

from __future__ import annotations

import zttp

from server_core.http.events import Event
from server_core.http.head import HeadLimits
from server_core.http.reader import Headers, LibraryError, MessageReader, body_event

_NEED_DATA = zttp.NEED_DATA
_SERVER = zttp.SERVER
_DQUOTE = ord('"')


class ZttpParser(MessageReader):
    """Request parser on zttp; see :class:`MessageReader` for the interface."""

    length_body_direct = True

    def __init__(self, limits: HeadLimits | None = None, *,
                 upgrade_tokens: frozenset[bytes] = frozenset()) -> None:
        super().__init__(limits, upgrade_tokens=upgrade_tokens)
        self._start_message()

    def _start_message(self) -> None:
        self._conn = zttp.H1Connection(_SERVER)
        self._complete = False

    def _parse_head(self, head: bytes) -> Headers:
        conn = self._conn
        line_end = head.find(b"\r\n")
        if head.find(_DQUOTE, 0, line_end) >= 0:
            # zttp refuses a raw DQUOTE in the target, which httptools, h11 and
            # the shared check accept (clients send it unencoded in queries).
            # The scope's target comes from the shared split, not from zttp, so
            # zttp is shown it percent-encoded and the three parsers agree.
            head = head[:line_end].replace(b'"', b"%22") + head[line_end:]
        try:
            event = conn.receive_event(head)
        except zttp.ProtocolError as exc:
            raise LibraryError(f"malformed request ({exc})") from None
        if type(event) is not zttp.Request:
            raise LibraryError("incomplete request head")
        self._complete = event.end_stream
        headers = event.headers
        if type(headers) is zttp.HeaderBlock:
            return headers.to_list(lowercase_names=True)
        return [(name.lower(), value) for name, value in headers]

    def _parse_body(self, piece: bytes, events: list[Event]) -> bool:
        conn = self._conn
        parts: list[bytes] = []
        try:
            conn.receive_data(piece)
            while True:
                event = conn.next_event()
                kind = type(event)
                if kind is zttp.Data:
                    parts.append(event.data)  # type: ignore[union-attr]
                elif kind is zttp.EndOfMessage:
                    self._complete = True
                    break
                elif event is _NEED_DATA:
                    break
                else:
                    raise LibraryError(f"unexpected {kind.__name__} in a request body")
        except zttp.ProtocolError as exc:
            raise LibraryError(f"malformed request body ({exc})") from None
        body_event(parts, events)
        return self._complete
