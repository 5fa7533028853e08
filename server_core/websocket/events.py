"""The neutral vocabulary between a WebSocket engine and the ASGI session.

An *engine* wraps one WebSocket library (websockets' sans-I/O protocol or
wsproto) behind a single interface: bytes from the network go in, these events
come out; calls to send something return the bytes to write. Pings from the
peer are answered inside the engine (the answer is collected by
:meth:`Engine.data_to_send`); pongs are reported because the session's
keep-alive needs them.

This module imports neither asyncio nor socket: engines and their tests run
without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Close codes used by the server (RFC 6455 section 7.4.1 and the IANA registry).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
NO_STATUS_RCVD = 1005
ABNORMAL_CLOSURE = 1006
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012


@dataclass(frozen=True, slots=True)
class Text:
    """A complete text message (fragments already reassembled, UTF-8 checked)."""

    data: str


@dataclass(frozen=True, slots=True)
class Bytes:
    """A complete binary message (fragments already reassembled)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer answered a ping (the session's keep-alive listens for these)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer sent a Close frame.

    When the peer started the closing handshake the engine has already queued
    the echo (see :meth:`Engine.data_to_send`); when we started it, this is the
    peer's answer. Either way the handshake is complete and the server closes
    the TCP connection (RFC 6455 section 7.1.1: the server closes first).
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer broke the protocol; the engine failed the connection.

    A Close frame with ``code`` (1002 protocol error, 1007 invalid UTF-8, 1009
    message too big) is queued in :meth:`Engine.data_to_send`; nothing more is
    read from this connection.
    """

    code: int
    reason: str


Event = Text | Bytes | Pong | Close | ProtocolError


class HandshakeError(Exception):
    """The opening handshake cannot be completed; the client gets ``status``."""

    def __init__(self, status: int, reason: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class Engine(Protocol):
    """One WebSocket connection, sans I/O, after the request head was validated."""

    #: The negotiated ``Sec-WebSocket-Extensions`` value, or None (set by accept).
    extensions: str | None

    def accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> bytes:
        """Complete the opening handshake; return the ``101`` response bytes.

        ``headers`` are added to the response. Raises :class:`HandshakeError`
        when the request cannot be accepted after all (e.g. a malformed
        extension offer).
        """
        ...

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the network; return the events they complete."""
        ...

    def data_to_send(self) -> bytes:
        """Bytes the engine produced on its own while receiving (pongs, close echo)."""
        ...

    def send_text(self, data: str) -> bytes:
        """Frame a text message."""
        ...

    def send_bytes(self, data: bytes) -> bytes:
        """Frame a binary message."""
        ...

    def send_ping(self, payload: bytes) -> bytes:
        """Frame a ping."""
        ...

    def send_close(self, code: int, reason: str) -> bytes:
        """Start (or answer) the closing handshake; ``b""`` if a Close was already sent."""
        ...


# RFC 6455 section 7.4: codes an endpoint may put in a Close frame it sends.
# 1004-1006 and 1015 are reserved for reporting, never sent; 1000-2999 belong
# to the protocol and its extensions, 3000-4999 to libraries and applications.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def sendable_close_code(code: int) -> bool:
    """True when ``code`` may be sent in a Close frame."""
    return code in _SENDABLE or 3000 <= code <= 4999


def truncate_reason(reason: str) -> str:
    """Cut a close reason to the 123 UTF-8 bytes a control frame can carry.

    A control frame payload is at most 125 bytes (RFC 6455 section 5.5) and the
    code takes two; the cut never splits a character.
    """
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode("utf-8", "ignore")
