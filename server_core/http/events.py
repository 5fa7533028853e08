"""The neutral events both HTTP/1.1 parser adapters emit.

``feed(data)`` on either adapter returns a list of these. The protocol never
sees an httptools callback or an h11 event: it only sees a
:class:`~server_core.state.RequestHead`, then zero or more :class:`Body`, then
:class:`EndOfMessage` — or a :class:`ParseError` that already knows which status
to answer with, after which the adapter emits nothing more.

A request that is complete when its head is emitted carries its whole body on
the head (``RequestHead.body``: ``b""`` for a request without one, or a
Content-Length body that arrived in the same read on httptools) and has no
Body or EndOfMessage events: two fewer events for most requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from server_core.state import RequestHead


@dataclass(slots=True)
class Body:
    """A piece of the current request's body, already de-chunked."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The current request's body is complete (trailers, if any, are dropped)."""


@dataclass(slots=True)
class ParseError:
    """The request cannot be served; answer ``status`` and close the connection.

    ``status`` is 400 for malformed syntax, 413/414/431 for the size limits,
    501 for a method or transfer coding we do not implement and 505 for an
    HTTP version we do not speak.
    """

    status: int
    reason: str


@dataclass(slots=True)
class Held:
    """The adapter stopped parsing with complete requests still to come (see MessageReader.held).

    Always the last event of a feed(): the connection stops reading until it
    has served the requests already parsed, then feeds ``b""`` to go on.
    """


Event = RequestHead | Body | EndOfMessage | ParseError | Held

# A single instance is enough: the event carries no data.
END_OF_MESSAGE = EndOfMessage()
HELD = Held()

__all__ = ["Body", "END_OF_MESSAGE", "EndOfMessage", "Event", "HELD", "Held", "ParseError", "RequestHead"]
