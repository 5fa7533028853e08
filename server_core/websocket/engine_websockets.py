"""WebSocket engine on the websockets library's sans-I/O ``ServerProtocol``.

websockets reports *frames*; this adapter turns them into the neutral message
events of :mod:`server_core.websocket.events`: it reassembles fragmented
messages and checks that text is valid UTF-8 (websockets leaves both to its
asyncio layer, which we do not use). Pings are answered by the library itself;
message size limits (``max_size``, after decompression) are enforced by it too.

The request head was already parsed by corral's HTTP layer, so the library's
own HTTP parser is stepped past with a minimal dummy request and the real head
is handed to ``accept()`` as a ``Request`` object.
"""

from __future__ import annotations

import codecs
import logging
from typing import cast

from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from server_core.state import RequestHead
from server_core.websocket.events import (
    ABNORMAL_CLOSURE,
    INVALID_DATA,
    Bytes,
    Close,
    Event,
    HandshakeError,
    Pong,
    ProtocolError,
    Text,
)

# websockets logs every open and close at INFO and turns on per-frame debug
# formatting when its logger is enabled for DEBUG. Neither belongs on the hot
# path of a server with its own logs: keep only its warnings and errors, sent
# on to corral's error log.
_LOG = logging.Logger("corral.websocket.websockets", logging.WARNING)
_LOG.parent = logging.getLogger("corral.error")

# Enough of an HTTP request for ServerProtocol's parser to step past the head.
_DUMMY_REQUEST = b"GET / HTTP/1.1\r\n\r\n"


def _deflate_factory() -> ServerPerMessageDeflateFactory:
    # The settings websockets itself serves with: 4 KiB windows and a small
    # memLevel keep a connection's zlib state around 64 KiB instead of ~300.
    return ServerPerMessageDeflateFactory(
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )


class WebsocketsEngine:
    """An :class:`~server_core.websocket.events.Engine` on ``websockets.server.ServerProtocol``."""

    def __init__(self, head: RequestHead, *, max_size: int | None, per_message_deflate: bool) -> None:
        self.extensions: str | None = None
        self._head = head
        self._subprotocol: str | None = None
        self._proto = ServerProtocol(
            extensions=[_deflate_factory()] if per_message_deflate else None,
            # The application chose in websocket.accept; report its choice.
            # (websockets binds this callable to the protocol: a plain function.)
            select_subprotocol=lambda protocol, offered: cast(Subprotocol | None, self._subprotocol),
            max_size=max_size or None,
            logger=_LOG,
        )
        self._proto.receive_data(_DUMMY_REQUEST)
        self._proto.events_received()
        # A fragmented message being reassembled: its kind, parts and decoder.
        self._parts: list[bytes] | None = None
        self._text = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._failed = False

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Return the 101 response; extensions are negotiated from the client's offer."""
        head = self._head
        request = Request(
            head.raw_path.decode("latin-1") or "/",
            Headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers),
        )
        self._subprotocol = subprotocol
        response = self._proto.accept(request)
        if response.status_code != 101:
            raise HandshakeError(response.status_code, response.body.decode("utf-8", "replace").strip())
        # Our date header (kept current by the worker) replaces the library's.
        del response.headers["Date"]
        for name, value in headers:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.extensions = response.headers.get("Sec-WebSocket-Extensions")
        self._proto.send_response(response)
        return self.data_to_send()

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes; return complete messages, pongs, a close, or a protocol error."""
        if self._failed:
            return []
        proto = self._proto
        proto.receive_data(data)
        events: list[Event] = []
        for frame in proto.events_received():
            if not isinstance(frame, Frame):
                continue  # no HTTP events once the handshake is done
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                text = opcode is Opcode.TEXT
                if frame.fin:
                    # The common case: a whole message in one frame.
                    if text:
                        try:
                            events.append(Text(bytes(frame.data).decode("utf-8")))
                        except UnicodeDecodeError:
                            return self._fail_utf8(events)
                    else:
                        events.append(Bytes(bytes(frame.data)))
                else:
                    self._text = text
                    self._parts = []
                    self._decoder = codecs.getincrementaldecoder("utf-8")() if text else None
                    if not self._add_part(frame.data, False):
                        return self._fail_utf8(events)
            elif opcode is Opcode.CONT:
                if not self._add_part(frame.data, frame.fin):
                    return self._fail_utf8(events)
                if frame.fin:
                    events.append(self._finish_message())
            elif opcode is Opcode.PONG:
                events.append(Pong(bytes(frame.data)))
            elif opcode is Opcode.CLOSE:
                received = proto.close_rcvd
                if received is not None:
                    events.append(Close(int(received.code), received.reason))
            # PING: the library already queued the pong.
        if proto.parser_exc is not None:
            self._failed = True
            sent = proto.close_sent
            if sent is not None:
                events.append(ProtocolError(int(sent.code), sent.reason))
            else:
                events.append(ProtocolError(ABNORMAL_CLOSURE, str(proto.parser_exc)))
        return events

    def _add_part(self, data: bytes | bytearray | memoryview, final: bool) -> bool:
        """Append a fragment; False when the text so far is not valid UTF-8."""
        if self._parts is None:
            # websockets itself rejects a stray continuation frame.
            return True
        part = bytes(data)
        self._parts.append(part)
        if self._decoder is not None:
            # Decode as fragments arrive so invalid text fails at once, not
            # after the whole (possibly huge) message (RFC 6455 section 8.1).
            try:
                self._decoder.decode(part, final)
            except UnicodeDecodeError:
                return False
        return True

    def _finish_message(self) -> Event:
        parts, self._parts = self._parts or [], None
        payload = b"".join(parts)
        if self._text:
            return Text(payload.decode("utf-8"))
        return Bytes(payload)

    def _fail_utf8(self, events: list[Event]) -> list[Event]:
        # RFC 6455 section 8.1: invalid UTF-8 in a text message fails the
        # connection; 1007 says the payload was inconsistent with its type.
        self._failed = True
        self._parts = None
        self._proto.fail(INVALID_DATA, "invalid UTF-8 in text message")
        events.append(ProtocolError(INVALID_DATA, "invalid UTF-8 in text message"))
        return events

    def data_to_send(self) -> bytes:
        """Pongs, close echo or failure close frame queued by the library."""
        # The library's end-of-stream marker is an empty bytes: joining drops
        # it; the session closes the transport after a Close or ProtocolError.
        return b"".join(self._proto.data_to_send())

    def send_text(self, data: str) -> bytes:
        """Frame a text message (``b""`` once closing: the message is dropped)."""
        try:
            self._proto.send_text(data.encode("utf-8"))
        except InvalidState:
            return b""
        return b"".join(self._proto.data_to_send())

    def send_bytes(self, data: bytes) -> bytes:
        """Frame a binary message (``b""`` once closing: the message is dropped)."""
        try:
            self._proto.send_binary(data)
        except InvalidState:
            return b""
        return b"".join(self._proto.data_to_send())

    def send_ping(self, payload: bytes) -> bytes:
        """Frame a ping (``b""`` once closed)."""
        try:
            self._proto.send_ping(payload)
        except InvalidState:
            return b""
        return b"".join(self._proto.data_to_send())

    def send_close(self, code: int, reason: str) -> bytes:
        """Start the closing handshake; ``b""`` once a Close was sent or received."""
        if self._proto.state is not State.OPEN:
            return b""
        self._proto.send_close(code, reason)
        return b"".join(self._proto.data_to_send())
