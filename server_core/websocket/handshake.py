"""The opening handshake checks and plain HTTP responses, shared by both engines.

Both engines get the same, already parsed request head, so the handshake is
validated once here and an invalid one gets the same ``400`` whichever library
frames the messages afterwards. Responses that are not ``101`` (handshake
errors, the denial-response extension, ``403``/``500`` before accept) are plain
HTTP/1.1 and are written here too. Sans-I/O: no asyncio, no socket.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from server_core.http import response as resp
from server_core.http.head import TOKEN
from server_core.state import RequestHead
from server_core.websocket.events import HandshakeError

WEBSOCKET_VERSION = b"13"


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of header ``name`` (lower-case) in order of appearance."""
    return [value for key, value in headers if key == name]


def split_tokens(values: Iterable[bytes]) -> list[str]:
    """Comma-separated tokens of one or more header lines, trimmed, empties dropped."""
    tokens = []
    for value in values:
        for token in value.decode("latin-1").split(","):
            token = token.strip()
            if token:
                tokens.append(token)
    return tokens


# RFC 9110 5.6.2: token = 1*tchar
_TOKEN = TOKEN
_PARAM = rb"\s*;\s*" + _TOKEN + rb'(?:\s*=\s*(?:' + _TOKEN + rb'|"(?:[^"\\]|\\.)*"))?'
# RFC 6455 9.1: extension = extension-token *( ";" extension-param )
_EXTENSION = re.compile(rb"\s*" + _TOKEN + rb"(?:" + _PARAM + rb")*\s*")
_TOKEN_ONLY = re.compile(rb"\s*" + _TOKEN + rb"\s*")


def _check_list(head: RequestHead, name: bytes, item: re.Pattern[bytes]) -> None:
    """Each non-empty element of a comma list must match ``item`` (RFC 9110 5.6.1 allows empties)."""
    for value in header_values(head.headers, name):
        for element in value.split(b","):
            if element.strip() and not item.fullmatch(element):
                raise HandshakeError(400, f"malformed {name.decode()} header")


def check_request(head: RequestHead) -> None:
    """Raise :class:`HandshakeError` (400) unless ``head`` is a valid opening handshake.

    The HTTP layer already saw ``Connection: upgrade`` and ``Upgrade: websocket``;
    what is left is RFC 6455 section 4.2.1.
    """
    # "An HTTP/1.1 or higher GET request, including a "Request-URI" [...]"
    if head.method != "GET":
        raise HandshakeError(400, "WebSocket handshake must use GET")
    if head.http_version != "1.1":
        raise HandshakeError(400, "WebSocket handshake needs HTTP/1.1")
    # "A |Host| header field containing the server's authority."
    if len(header_values(head.headers, b"host")) != 1:
        raise HandshakeError(400, "WebSocket handshake needs exactly one Host header")
    # "A |Sec-WebSocket-Key| header field with a base64-encoded value that,
    #  when decoded, is 16 bytes in length."
    keys = header_values(head.headers, b"sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, "WebSocket handshake needs exactly one Sec-WebSocket-Key header")
    try:
        raw_key = base64.b64decode(keys[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key is not the base64 encoding of 16 bytes")
    # "A |Sec-WebSocket-Version| header field, with a value of 13."
    # Section 4.4: a server that does not speak the requested version answers
    # with the versions it does speak.
    versions = header_values(head.headers, b"sec-websocket-version")
    if [value.strip() for value in versions] != [WEBSOCKET_VERSION]:
        raise HandshakeError(400, "Sec-WebSocket-Version must be 13",
                             [(b"sec-websocket-version", WEBSOCKET_VERSION)])
    # "An |Upgrade| header field containing the value "websocket"": one
    # protocol, so both engines answer the same request the same way.
    if [t.lower() for t in split_tokens(header_values(head.headers, b"upgrade"))] != ["websocket"]:
        raise HandshakeError(400, "Upgrade must be exactly 'websocket'")
    # Sec-WebSocket-Protocol = 1#token; Sec-WebSocket-Extensions = 1#extension.
    _check_list(head, b"sec-websocket-protocol", _TOKEN_ONLY)
    _check_list(head, b"sec-websocket-extensions", _EXTENSION)


def offered_subprotocols(head: RequestHead) -> list[str]:
    """The subprotocols the client offers, in its order of preference."""
    return split_tokens(header_values(head.headers, b"sec-websocket-protocol"))


def response_head(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HTTP/1.1 status line and header block (names lower-cased), by the HTTP response
    encoder's rules: a field that is not a token name or holds a control is a RuntimeError."""
    lines = [resp.status_line(status)]
    for name, value in headers:
        lines.append(resp.field_line(bytes(name).lower(), bytes(value)))
    lines.append(b"\r\n")
    return b"".join(lines)


def simple_response(status: int, text: str, default_headers: Iterable[tuple[bytes, bytes]] = (),
                    extra_headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete response with a short plain-text body and ``Connection: close``."""
    body = text.encode("utf-8")
    headers = [
        *default_headers,
        *extra_headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
    ]
    return response_head(status, headers) + body


class DenialResponse:
    """The HTTP response of the ASGI ``websocket.http.response`` extension, as bytes.

    The application streams the body (``more_body``); without a
    ``content-length`` of its own the body is chunked so the client knows where
    it ends. The connection closes after it either way (``connection: close``).
    """

    def __init__(self, status: int, app_headers: Iterable[tuple[bytes, bytes]],
                 default_headers: Iterable[tuple[bytes, bytes]]) -> None:
        headers = list(default_headers)
        has_length = False
        for name, value in app_headers:
            name = bytes(name).lower()
            has_length = has_length or name == b"content-length"
            headers.append((name, bytes(value)))
        self.chunked = not has_length
        if self.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        headers.append((b"connection", b"close"))
        self.status = status
        self.head = response_head(status, headers)

    def body(self, data: bytes, more: bool) -> bytes:
        """The bytes for one ``websocket.http.response.body`` message."""
        if not self.chunked:
            return data
        return (resp.chunk(data) if data else b"") + (b"" if more else resp.LAST_CHUNK)
