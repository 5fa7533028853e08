"""``--proxy-protocol``: a gate in front of every connection until its PROXY header is read.

With ``--proxy-protocol`` each listener's protocol factory is wrapped by
:func:`gated`. The :class:`ProxyGate` it makes is the connection's first
protocol: it refuses a peer that is not in ``--forwarded-allow-ips`` (a
UNIX-socket peer only with ``*``) before reading anything, reads one PROXY
header (:mod:`server_core.proxy_protocol`), and then hands the transport to the
real protocol: ``transport.set_protocol(real)``, ``real.connection_made(...)``
with a transport whose ``peername``/``sockname`` are the header's source and
destination (:class:`ProxiedTransport`), and ``real.data_received(rest)`` with
whatever followed the header. The HTTP protocols, the WebSocket hand-off and
anything else that asks the transport for the addresses see the client's, and
are not changed. A LOCAL header (a balancer's own health check) keeps the real
transport. A malformed or truncated header, or none within
``--timeout-request-head`` seconds, closes the connection without a response.

With TLS (``--ssl-certfile``) the header comes before the handshake, so the
listeners are created without TLS and the gate starts it after the header:
asyncio's own ``SSLProtocol`` goes between the transport (with the header's
addresses) and the real protocol, and gets the bytes that followed the header
(the start of the client's handshake).

Without ``--proxy-protocol`` none of this runs: the worker builds its factory
as before, so a connection costs nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from server_core.proxy import ProxyTrust
from server_core.proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyHeaderParser
from server_core.state import ServerState

logger = logging.getLogger("corral.error")

ProtocolFactory = Callable[[], asyncio.Protocol]


class ProxiedTransport:
    """A transport that answers ``peername`` and ``sockname`` from a PROXY header.

    Everything else is the real transport's: each method is looked up once
    and then kept on the instance, so later calls cost what they cost on the
    transport itself.
    """

    def __init__(self, transport: asyncio.BaseTransport, peername: Any, sockname: Any) -> None:
        self._transport = transport
        self._addresses = {"peername": peername, "sockname": sockname}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._addresses:
            return self._addresses[name]
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._transport, name)
        if callable(value):
            setattr(self, name, value)  # found here directly next time
        return value

    def __repr__(self) -> str:
        return f"<ProxiedTransport {self._addresses['peername']!r} over {self._transport!r}>"


class _Refusals:
    """The first refusal of a worker is a warning (a misconfigured balancer shows); the rest debug."""

    warned = False

    @classmethod
    def log(cls, peer: Any, reason: str) -> None:
        if cls.warned:
            logger.debug("PROXY protocol: closed the connection from %s: %s", peer, reason)
            return
        cls.warned = True
        logger.warning("PROXY protocol: closed the connection from %s: %s (further refusals are logged "
                       "at debug level)", peer, reason)


class ProxyGate(asyncio.Protocol):
    """A connection's protocol until its PROXY header has arrived."""

    def __init__(self, state: ServerState, factory: ProtocolFactory, trust: ProxyTrust,
                 tls: ssl.SSLContext | None = None) -> None:
        self.state = state
        self.factory = factory
        self.trust = trust
        self.tls = tls
        self.parser = ProxyHeaderParser()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False  # handed over or refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else None  # None: a UNIX-socket peer
        if not self.trust.is_trusted(host):
            self._refuse("the peer is not in --forwarded-allow-ips")
            return
        self.state.connections.add(self)
        timeout = self.state.settings.timeout_request_head
        self.timer = asyncio.get_running_loop().call_later(timeout, self._expired, timeout)
        if self.state.stopping:
            self.shutdown(self.state.retiring)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        try:
            result = self.parser.feed(data)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        if result is not None:
            self._hand_over(*result)

    def eof_received(self) -> bool | None:
        if not self.done:
            self._refuse("the connection ended before a complete PROXY header"
                         if self.parser.started else "the connection ended without a PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._forget()

    # -- the graceful stop (state.connections) ------------------------------------

    def shutdown(self, retire: bool = False) -> None:
        """A full stop closes a connection that sent nothing yet; a retiring worker waits for the header."""
        if not retire and not self.parser.started and not self.done:
            self.done = True
            self._forget()
            assert self.transport is not None
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.done:
            self.done = True
            self._forget()
            self.transport.abort()

    # -- internals ----------------------------------------------------------------

    def _hand_over(self, header: ProxyHeader, rest: bytes) -> None:
        self.done = True
        self._forget()
        transport = self.transport
        assert transport is not None
        real = self.factory()
        carrier: Any = transport if header.local else ProxiedTransport(transport, header.source, header.destination)
        if self.tls is not None:
            # TLS starts now, under the real protocol (which sees the TLS
            # transport, whose peername/sockname come from ``carrier``).
            real = _tls_protocol(real, self.tls, self.state.settings.timeout_tls_handshake)
        transport.set_protocol(real)
        real.connection_made(carrier)
        if rest and not transport.is_closing():
            _feed(real, rest)

    def _expired(self, timeout: float) -> None:
        self.timer = None
        if not self.done:
            self._refuse(f"no complete PROXY header within {timeout:g}s")

    def _refuse(self, reason: str) -> None:
        self.done = True
        self._forget()
        _Refusals.log(self.peer if self.peer else "a UNIX-socket peer", reason)
        if self.transport is not None:
            # Nothing was written, and nothing will be: the client is not told why.
            self.transport.abort()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state.connections.discard(self)


def _tls_protocol(app: asyncio.BaseProtocol, context: ssl.SSLContext, timeout: float) -> Any:
    """asyncio's server-side TLS layer in front of ``app`` (what ``create_server(ssl=...)`` builds)."""
    return sslproto.SSLProtocol(asyncio.get_running_loop(), app, context, None,  # type: ignore[arg-type]
                                server_side=True, ssl_handshake_timeout=timeout)  # type: ignore[arg-type]


def _feed(protocol: Any, data: bytes) -> None:
    """Give ``data`` to a protocol as its transport would (a BufferedProtocol through its buffer)."""
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


def gated(state: ServerState, factory: ProtocolFactory, tls: ssl.SSLContext | None = None) -> ProtocolFactory:
    """``factory`` behind a :class:`ProxyGate` (the ``--proxy-protocol`` listener factory).

    With ``tls`` the listeners must be created without it: the gate starts
    TLS after the header.
    """
    settings = state.settings
    allowed = settings.proxy_protocol_allow_ips
    trust = ProxyTrust(settings.forwarded_allow_ips if allowed is None else allowed)

    def gate() -> asyncio.Protocol:
        return ProxyGate(state, factory, trust, tls)

    return gate
