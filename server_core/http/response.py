"""Encoding a response head and its body framing, without I/O.

The cycle collects the application's status and headers, then asks
:func:`encode_head` for the bytes to write and the framing to use for the body.
Framing is chosen automatically: the application's ``content-length`` when it
gave one; the exact length when the whole body came in the first message;
otherwise chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from server_core.http.head import TOKEN

# Body framing of a response.
LENGTH = 0  # Content-Length given or computed: body bytes are written as they are
CHUNKED = 1  # Transfer-Encoding: chunked
UNTIL_CLOSE = 2  # HTTP/1.0 without a length: the body ends when we close
NO_BODY = 3  # HEAD, 1xx, 204, 304: no body bytes at all

# RFC 9110 §5.1: field-name = token.  §5.5: a field value never contains
# CR, LF or NUL; other controls (except HTAB) are refused as well, so an
# application cannot split a response by accident or by injection.
_NAME_RE = re.compile(TOKEN)
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii"))


STATUS_LINES = {int(status): _status_line(int(status)) for status in HTTPStatus}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached for the registered codes."""
    line = STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status code {status!r}")
        line = _status_line(status)
    return line


class ServerHeaders:
    """The server's own response headers (server, date, --header), encoded once.

    ``fields`` as the worker keeps them; ``block`` the same already as header
    lines, appended whole to every response that does not set its own
    ``server`` or ``date``.
    """

    __slots__ = ("base", "date", "fields", "block")

    def __init__(self, base: list[tuple[bytes, bytes]], date: list[tuple[bytes, bytes]]) -> None:
        self.base = base
        self.date = date
        self.fields = base + date
        self.block = b"".join(b"%s: %s\r\n" % field for field in self.fields)


_server_headers: ServerHeaders | None = None


def server_headers(base: list[tuple[bytes, bytes]], date: list[tuple[bytes, bytes]]) -> ServerHeaders:
    """The encoded server headers for these lists, made again only when one is replaced.

    The worker replaces its date list once a second (never changes one in
    place), so checking identity is enough. The cache holds both lists, so
    neither id can be reused while it stands.
    """
    global _server_headers
    cached = _server_headers
    if cached is None or cached.date is not date or cached.base is not base:
        cached = _server_headers = ServerHeaders(base, date)
    return cached


# What encode_head() must look at among the application's headers; any other
# name is copied through.
_CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _SERVER, _DATE = range(5)
_SPECIAL = {b"content-length": _CONTENT_LENGTH, b"transfer-encoding": _TRANSFER_ENCODING,
            b"connection": _CONNECTION, b"server": _SERVER, b"date": _DATE}

# An application's header field, checked and encoded: (line, kind, argument).
# ``kind`` is one of the above, or None for a field copied through as it is;
# ``argument`` is the Content-Length as an int, or whether Connection asks to close.
Encoded = tuple[bytes, int | None, Any]

# Applications send the same fields again and again (content-type, cache-control,
# often the same content-length), so each (name, value) tuple is checked and
# encoded once: a dictionary lookup then replaces two regular expressions, a
# lower() and a formatting per header. Bounded, so distinct values (cookies,
# etags) cannot grow it forever, and long values are never kept.
_encoded: dict[tuple[bytes, bytes], Encoded] = {}
_ENCODED_MAX = 1024
_ENCODED_VALUE_MAX = 256


def field_line(name: bytes, value: bytes) -> bytes:
    """``name: value\r\n``, or RuntimeError when the name is not a token or the value holds a control."""
    if not _NAME_RE.fullmatch(name):
        raise RuntimeError(f"invalid HTTP header name {name!r}")
    if _BAD_VALUE_RE.search(value):
        raise RuntimeError(f"invalid HTTP header value {value!r}")
    return b"%s: %s\r\n" % (name, value)


def _encode_field(field: tuple[bytes, bytes]) -> Encoded:
    name, value = field
    line = field_line(name, value)
    kind = _SPECIAL.get(name.lower())
    argument: Any = None
    if kind == _CONTENT_LENGTH:
        if not value.strip().isdigit():
            raise RuntimeError(f"invalid content-length {value!r}")
        argument = int(value)
    elif kind == _CONNECTION:
        argument = b"close" in value.lower()
    encoded = (line, kind, argument)
    if type(field) is tuple and type(name) is bytes and type(value) is bytes \
            and len(value) <= _ENCODED_VALUE_MAX:
        if len(_encoded) >= _ENCODED_MAX:
            _encoded.clear()
        _encoded[field] = encoded
    return encoded


def encode_head(status: int, headers: Iterable[tuple[bytes, bytes]], defaults: ServerHeaders, *,
                keep_alive: bool, http10: bool, head_request: bool,
                body_length: int | None) -> tuple[bytes, int, int | None, bool]:
    """Encode a response head.

    ``defaults`` are the server's own headers (server, date, --header); server
    and date are left out where the application set them. ``body_length`` is
    the length of the whole body when it is already known (the application
    sent it in one message), else None. Returns ``(head, framing,
    content_length, keep_alive)``; ``keep_alive`` is False when the response
    asks to close. Raises RuntimeError for an invalid header from the
    application.
    """
    parts = [STATUS_LINES.get(status) or status_line(status)]
    append = parts.append
    content_length: int | None = None
    chunked = False
    seen_server = seen_date = False
    known = _encoded
    for field in headers:
        try:
            encoded = known.get(field)  # type: ignore[call-overload]
        except TypeError:  # a list, or bytearrays: not a key
            encoded = None
        if encoded is None:
            encoded = _encode_field(field)
        line, kind, argument = encoded
        if kind is not None:
            if kind == _CONTENT_LENGTH:
                if content_length is not None:
                    raise RuntimeError(f"invalid content-length {field[1]!r}")
                content_length = argument
            elif kind == _TRANSFER_ENCODING:
                # The application asks for chunked; we do the chunking, and
                # never forward another coding we would not apply.
                chunked = True
                continue
            elif kind == _CONNECTION:
                if argument:
                    keep_alive = False
                continue
            elif kind == _SERVER:
                seen_server = True
            else:
                seen_date = True
        append(line)
    if chunked and content_length is not None:
        raise RuntimeError("response has both content-length and transfer-encoding")
    if not (seen_server or seen_date):
        append(defaults.block)
    else:
        for name, value in defaults.fields:
            if (name == b"server" and seen_server) or (name == b"date" and seen_date):
                continue
            append(b"%s: %s\r\n" % (name, value))

    if status < 200 or status == 204 or status == 304:
        framing = NO_BODY
        content_length = None
    elif content_length is not None and not chunked:
        framing = NO_BODY if head_request else LENGTH
    elif body_length is not None and not chunked:
        content_length = body_length
        if head_request and body_length == 0:
            # A HEAD answer whose application sent no body: we do not know the
            # length a GET would have had, so say nothing about it.
            framing = NO_BODY
        else:
            append(b"content-length: %d\r\n" % body_length)
            framing = NO_BODY if head_request else LENGTH
    elif http10:
        keep_alive = False
        framing = NO_BODY if head_request else UNTIL_CLOSE
    else:
        append(b"transfer-encoding: chunked\r\n")
        framing = NO_BODY if head_request else CHUNKED

    if not keep_alive:
        append(b"connection: close\r\n")
    elif http10:
        append(b"connection: keep-alive\r\n")
    append(b"\r\n")
    return b"".join(parts), framing, content_length, keep_alive


def simple_response(status: int, text: str, defaults: ServerHeaders, *,
                    keep_alive: bool = False) -> bytes:
    """A complete plain-text response (errors, 503) in one buffer."""
    body = text.encode("utf-8")
    head, _, _, _ = encode_head(
        status, [(b"content-type", b"text/plain; charset=utf-8")], defaults,
        keep_alive=keep_alive, http10=False, head_request=False, body_length=len(body))
    return head + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never call with empty data: that ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
