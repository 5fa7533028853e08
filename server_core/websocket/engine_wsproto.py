"""WebSocket engine on wsproto's ``WSConnection`` (pure Python).

wsproto streams data frames in pieces as bytes arrive and validates UTF-8
itself; this adapter reassembles pieces into whole messages, answers pings
(wsproto leaves that to its user), enforces ``max_size`` (wsproto has no
limit: a message growing past it fails the connection with 1009 before it is
buffered whole, and :class:`BoundedDeflate` caps inflation the same way) and tells a peer's Close apart from wsproto's own parse
failure, which it also reports as a ``CloseConnection``.

wsproto performs the opening handshake with its own h11 parser; it is given a
minimal request rebuilt from the validated head, with only the headers the
handshake reads (so a long but legal head never trips h11's size limits).
"""

from __future__ import annotations

import zlib
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.events import (
    Pong as WsprotoPong,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import ProtocolError as WsprotoError

from server_core.state import RequestHead
from server_core.websocket.events import (
    MESSAGE_TOO_BIG,
    Bytes,
    Close,
    Event,
    HandshakeError,
    Pong,
    ProtocolError,
    Text,
)

# Request headers wsproto's handshake looks at; the rest stay out of its parser.
_HANDSHAKE_HEADERS = (
    b"connection",
    b"upgrade",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
)


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that stops inflating a message once it passes ``max_size``.

    wsproto inflates each received piece without an output limit, so a few
    kilobytes of compressed zeros would become gigabytes before any size check
    could see them. Here inflation is capped at the bytes the message may still
    grow by, and going over fails the connection with 1009.
    """

    def __init__(self, max_size: int | None) -> None:
        super().__init__()
        self._max_size = max_size
        self._inflated = 0  # bytes of the current message inflated so far

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        """Inflate one received piece, at most up to the message's size limit."""
        decompressor = self._decompressor
        if self._max_size is None or decompressor is None or not (
                self._inbound_compressed and self._inbound_is_compressible):
            return super().frame_inbound_payload_data(proto, data)
        room = self._max_size - self._inflated
        try:
            # One byte over the room is enough to know the message is too big.
            inflated = decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._inflated > self._max_size:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        """End of a frame; the end of a message resets the count."""
        if fin:
            self._inflated = 0
        return super().frame_inbound_complete(proto, fin)


def handshake_request(head: RequestHead) -> bytes:
    """A minimal HTTP request carrying the handshake headers of ``head``."""
    # The Host value is irrelevant to wsproto but it IDNA-decodes it; a fixed
    # one keeps an exotic (yet valid) Host from failing the handshake here.
    lines = [b"GET / HTTP/1.1\r\nhost: localhost\r\n"]
    for name, value in head.headers:
        if name in _HANDSHAKE_HEADERS:
            lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class WsprotoEngine:
    """An :class:`~server_core.websocket.events.Engine` on ``wsproto.WSConnection``."""

    def __init__(self, head: RequestHead, *, max_size: int | None, per_message_deflate: bool) -> None:
        self.extensions: str | None = None
        self._max_size = max_size or None
        self._deflate = per_message_deflate
        self._conn = WSConnection(ConnectionType.SERVER)
        try:
            self._conn.receive_data(handshake_request(head))
            requests = [event for event in self._conn.events() if isinstance(event, Request)]
        except WsprotoError as exc:
            raise HandshakeError(400, str(exc)) from exc
        if not requests:
            raise HandshakeError(400, "incomplete WebSocket handshake")
        self._offered_extensions = bool(requests[0].extensions)
        # A message being reassembled: its pieces and their total size.
        self._parts: list[bytes] | list[str] = []
        self._size = 0
        self._pending = bytearray()
        self._done = False  # failed, or the closing handshake completed

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Return the 101 response; per-message-deflate if enabled and offered."""
        extensions: list[Extension] = []
        if self._deflate and self._offered_extensions:
            extensions.append(BoundedDeflate(self._max_size))
        try:
            data = self._conn.send(AcceptConnection(
                subprotocol=subprotocol, extensions=extensions, extra_headers=list(headers)))
        except WsprotoError as exc:
            raise HandshakeError(400, str(exc)) from exc
        self.extensions = _response_header(data, b"sec-websocket-extensions")
        return data

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes; return complete messages, pongs, a close, or a protocol error."""
        if self._done:
            return []
        conn = self._conn
        conn.receive_data(data)
        events: list[Event] = []
        for event in conn.events():
            if isinstance(event, TextMessage | BytesMessage):
                if self._max_size is not None:
                    self._size += len(event.data)
                    if self._size > self._max_size:
                        return self._fail(events, MESSAGE_TOO_BIG, "message too big")
                if event.message_finished and not self._parts:
                    # The common case: a whole message in one piece.
                    events.append(Text(event.data) if isinstance(event, TextMessage) else Bytes(bytes(event.data)))
                    self._size = 0
                elif event.message_finished:
                    self._parts.append(event.data)  # type: ignore[arg-type]
                    events.append(self._finish_message(isinstance(event, TextMessage)))
                else:
                    self._parts.append(event.data)  # type: ignore[arg-type]
            elif isinstance(event, Ping):
                # RFC 6455 section 5.5.2: answer with a Pong, unless our Close
                # is already out (nothing may follow it).
                if conn.state is ConnectionState.OPEN:
                    self._pending += conn.send(event.response())
            elif isinstance(event, WsprotoPong):
                events.append(Pong(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                if conn.state is ConnectionState.OPEN:
                    # wsproto reports its own parse failures as a close
                    # "received" while the connection is still open.
                    return self._fail(events, int(event.code), event.reason or "protocol error")
                if conn.state is ConnectionState.REMOTE_CLOSING:
                    # The peer started the closing handshake: echo its code.
                    self._pending += conn.send(event.response())
                self._done = True
                events.append(Close(int(event.code), event.reason or ""))
                return events
        return events

    def _finish_message(self, text: bool) -> Event:
        parts, self._parts = self._parts, []
        self._size = 0
        if text:
            return Text("".join(parts))  # type: ignore[arg-type]
        return Bytes(b"".join(parts))  # type: ignore[arg-type]

    def _fail(self, events: list[Event], code: int, reason: str) -> list[Event]:
        # Fail the connection (RFC 6455 section 7.1.7): send a Close with the
        # reason and read nothing more.
        self._done = True
        self._parts = []
        self._pending += self._conn.send(CloseConnection(code=code, reason=reason))
        events.append(ProtocolError(code, reason))
        return events

    def data_to_send(self) -> bytes:
        """Pongs, close echo or failure close frame produced while receiving."""
        if not self._pending:
            return b""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def send_text(self, data: str) -> bytes:
        """Frame a text message (``b""`` once closing: the message is dropped)."""
        if self._conn.state is not ConnectionState.OPEN:
            return b""
        return self._conn.send(TextMessage(data=data))

    def send_bytes(self, data: bytes) -> bytes:
        """Frame a binary message (``b""`` once closing: the message is dropped)."""
        if self._conn.state is not ConnectionState.OPEN:
            return b""
        return self._conn.send(BytesMessage(data=data))

    def send_ping(self, payload: bytes) -> bytes:
        """Frame a ping (``b""`` once closing)."""
        if self._conn.state is not ConnectionState.OPEN:
            return b""
        return self._conn.send(Ping(payload=payload))

    def send_close(self, code: int, reason: str) -> bytes:
        """Start the closing handshake; ``b""`` once a Close was sent or received."""
        if self._conn.state is not ConnectionState.OPEN or self._done:
            return b""
        return self._conn.send(CloseConnection(code=code, reason=reason))


def _response_header(response: bytes, name: bytes) -> str | None:
    """The value of header ``name`` in a serialized response head, or None."""
    for line in response.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None
