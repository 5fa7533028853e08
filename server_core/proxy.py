"""Proxy headers from trusted peers: who the client really is, and over what.

Sans-I/O. A peer is trusted when its address is in ``--forwarded-allow-ips``
(IP addresses, CIDR networks, or ``*`` for everyone). A request from a trusted
peer may say, through ``X-Forwarded-*`` headers, what the proxy saw:

- ``X-Forwarded-For``: the chain of addresses the request passed through. It
  is walked from the right (the hop nearest to us) to the left; the first
  address that is not itself a trusted proxy is the client. When every hop is
  trusted the leftmost address is the client. The client's port is unknown
  then and reported as 0.
- ``X-Forwarded-Proto``: ``http``, ``https``, ``ws`` or ``wss`` — the scheme
  the nearest proxy received (its last value). For an ``http`` scope ``ws``
  means ``http`` and ``wss`` means ``https`` (``resolve_all(http=True)``); the
  WebSocket side maps ``http``/``https`` back to ``ws``/``wss``.
- ``X-Forwarded-Port``: uvicorn ignores it; we apply it to the port of the
  ``server`` tuple (the address the client connected to), which is what it
  describes. ASGI's ``client`` has no place for it.

A UNIX-socket peer has no address (``client`` is None); it is trusted only
with ``*``, since anyone who can write to the socket file could claim anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Address = tuple[str, int]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https", "ws", "wss"})
# What a forwarded scheme means for an ``http`` scope: the WebSocket side maps
# http/https back to ws/wss itself.
HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Trust decisions are cached per peer host; the cache is bounded so a flood of
# distinct peers cannot grow it forever.
CACHE_SIZE = 4096


class ProxyTrust:
    """Which peers may speak for their clients, and what they say."""

    def __init__(self, forwarded_allow_ips: Sequence[str]) -> None:
        self.trust_all = False
        self.networks: list[IPNetwork] = []
        # Entries that are not IP addresses are compared literally (uvicorn
        # allows this for e.g. a socket path standing for a UNIX peer).
        self.literals: set[str] = set()
        for entry in forwarded_allow_ips:
            entry = entry.strip()
            if not entry:
                continue
            if entry == "*":
                self.trust_all = True
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.literals.add(entry)
        self._cache: dict[str, bool] = {}

    def is_trusted(self, host: str | None) -> bool:
        """True when a peer (or a hop named in X-Forwarded-For) is a trusted proxy."""
        if self.trust_all:
            return True
        if host is None:  # a UNIX-socket peer
            return False
        cached = self._cache.get(host)
        if cached is None:
            cached = self._decide(host)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[host] = cached
        return cached

    def _decide(self, host: str) -> bool:
        if host in self.literals:
            return True
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:10.0.0.1 from a dual-stack listener is the IPv4 peer.
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def resolve(self, client: Address | None, scheme: str,
                headers: Iterable[tuple[bytes, bytes]]) -> tuple[Address | None, str]:
        """The client and scheme after applying proxy headers (unchanged if untrusted)."""
        client, _, scheme = self.resolve_all(client, None, scheme, headers)
        return client, scheme

    def resolve_all(self, client: Address | None, server: Address | None, scheme: str,
                    headers: Iterable[tuple[bytes, bytes]], *, http: bool = False
                    ) -> tuple[Address | None, Address | None, str]:
        """Like :meth:`resolve`, and X-Forwarded-Port applied to ``server``.

        With ``http``, the scheme is one of an ``http`` scope: a forwarded
        ``ws`` gives ``http`` and ``wss`` gives ``https``.
        """
        if not self.is_trusted(client[0] if client is not None else None):
            return client, server, scheme
        return self.apply(client, server, scheme, headers, http=http)

    def apply(self, client: Address | None, server: Address | None, scheme: str,
              headers: Iterable[tuple[bytes, bytes]], *, http: bool = False
              ) -> tuple[Address | None, Address | None, str]:
        """:meth:`resolve_all` for a peer already known to be trusted (decided once per connection)."""
        forwarded_for: list[bytes] = []
        proto = port = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-port":
                port = value
        if forwarded_for:
            host = self._client_host(forwarded_for)
            if host is not None:
                client = (host, 0)
        if proto is not None:
            candidate = proto.rsplit(b",", 1)[-1].strip().lower().decode("latin-1")
            if candidate in SCHEMES:
                scheme = HTTP_SCHEMES[candidate] if http else candidate
        if port is not None and server is not None:
            text = port.rsplit(b",", 1)[-1].strip()
            if text.isdigit() and 0 < int(text) < 65536:
                server = (server[0], int(text))
        return client, server, scheme

    def _client_host(self, values: list[bytes]) -> str | None:
        hops = [hop.strip() for value in values for hop in value.decode("latin-1").split(",")]
        hops = [_bare_host(hop) for hop in hops if hop]
        if not hops:
            return None
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0]


def _bare_host(hop: str) -> str:
    """An address from X-Forwarded-For without brackets or port ("[::1]:80" → "::1")."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:  # IPv4 with a port; a bare IPv6 has several colons
        return hop.split(":", 1)[0]
    return hop
