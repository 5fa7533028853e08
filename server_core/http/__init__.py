"""HTTP/1.1 for corral: sans-I/O parser adapters, one protocol, one ASGI cycle.

``make_parser`` picks the adapter named by ``settings.http`` (httptools, h11 or
zttp); all three emit the neutral events of :mod:`server_core.http.events` and
refuse the same requests.
"""

from __future__ import annotations

from server_core.http.head import HeadLimits
from server_core.http.reader import MessageReader
from server_core.settings import ServerSettings

# What an HTTP/2 client sends first on a connection (RFC 9113 §3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def head_limits(settings: ServerSettings) -> HeadLimits:
    """The request-head limits a worker's settings ask for."""
    return HeadLimits(settings.limit_request_line, settings.limit_request_fields,
                      settings.limit_request_field_size, settings.limit_request_head_size)


def make_parser(settings: ServerSettings, upgrade_tokens: frozenset[bytes] = frozenset()) -> MessageReader:
    """A fresh request parser for one connection: ``settings.http`` names it (httptools by default)."""
    limits = head_limits(settings)
    if settings.http == "zttp":
        from server_core.http.parse_zttp import ZttpParser

        return ZttpParser(limits, upgrade_tokens=upgrade_tokens)
    if settings.http == "h11":
        from server_core.http.parse_h11 import H11Parser

        return H11Parser(limits, upgrade_tokens=upgrade_tokens,
                         max_incomplete_event_size=settings.h11_max_incomplete_event_size)
    from server_core.http.parse_httptools import HttptoolsParser

    return HttptoolsParser(limits, upgrade_tokens=upgrade_tokens)
