"""Proxy headers from trusted peers: who the client really is, and over what.

Sans-I/O. A peer is trusted when its address is in ``--forwarded-allow-ips``
(IP addresses, CIDR networks, or ``*`` for everyone). A request from a trusted
peer may say, through ``X-Forwarded-*`` headers, what the proxy saw:

- ``X-Forwarded-For``: the chain of addresses the request passed through. It
  is walked from the right (the hop nearest to us) to the left; the first
  address that is not itself a trusted proxy is the client. When every hop is
  trusted the leftmost address is the client. The client's port is unknown
  then and reported as 0. A hop that is not an IP address (``unknown``, a
  name, junk) ends the walk and the peer stays the client: what lies beyond
  it cannot be judged.
- ``X-Forwarded-Proto``: ``http``, ``https``, ``ws`` or ``wss`` — the scheme
  the nearest proxy received (its last value). For an ``http`` scope ``ws``
  means ``http`` and ``wss`` means ``https`` (``resolve_all(http=True)``); the
  WebSocket side maps ``http``/``https`` back to ``ws``/``wss``.
- ``X-Forwarded-Port``: uvicorn ignores it; we apply it to the port of the
  ``server`` tuple (the address the client connected to), which is what it
  describes. ASGI's ``client`` has no place for it.

RFC 7239 ``Forwarded`` says the same in one field: a list of elements, one
per proxy, each with ``for=`` (the address that proxy received the request
from, ``"[2001:db8::1]:4711"`` for IPv6 and ports), ``proto=`` (the scheme it
received) and ``host=`` (the Host it received). The elements are walked from
the right like X-Forwarded-For; the element of the first untrusted ``for=``
(or the leftmost, when all are trusted) gives the client with its port, the
scheme and the host, which becomes ``server`` (the name and port the client
asked for). An obfuscated identifier (``_hidden``), ``unknown``, a missing
``for=`` or a malformed field leaves the peer in place.

Both families present: **X-Forwarded-* wins** and Forwarded is ignored.
Almost every proxy sets X-Forwarded-For (nginx, HAProxy ``option forwardfor``,
cloud load balancers) and few also overwrite Forwarded, so a Forwarded field
next to X-Forwarded-* is much more likely a client's invention that the proxy
passed on than the proxy's own word. A proxy that speaks only Forwarded must
then remove X-Forwarded-* sent by clients (``http-request del-header``).

A UNIX-socket peer has no address (``client`` is None); it is trusted only
with ``*``, since anyone who can write to the socket file could claim anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from server_core.http.head import TOKEN

Address = tuple[str, int]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https", "ws", "wss"})
# What a forwarded scheme means for an ``http`` scope: the WebSocket side maps
# http/https back to ws/wss itself.
HTTP_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Trust decisions are cached per peer host; the cache is bounded so a flood of
# distinct peers cannot grow it forever.
CACHE_SIZE = 4096
# What a host string is (cached): not an IP address, an untrusted one, a trusted one.
_NOT_ADDRESS, _UNTRUSTED, _TRUSTED = 0, 1, 2


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
        self._cache: dict[str, int] = {}

    def is_trusted(self, host: str | None) -> bool:
        """True when a peer (or a hop named in X-Forwarded-For) is a trusted proxy."""
        if self.trust_all:
            return True
        if host is None:  # a UNIX-socket peer
            return False
        return self._kind(host) == _TRUSTED

    def _kind(self, host: str) -> int:
        kind = self._cache.get(host)
        if kind is None:
            kind = self._decide(host)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[host] = kind
        return kind

    def _decide(self, host: str) -> int:
        if host in self.literals:
            return _TRUSTED
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return _NOT_ADDRESS
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:10.0.0.1 from a dual-stack listener is the IPv4 peer.
            address = address.ipv4_mapped
        return _TRUSTED if any(address in network for network in self.networks) else _UNTRUSTED

    def _hop_is_client(self, host: str) -> bool | None:
        """Walking a chain: True if ``host`` is the client (untrusted), False to go on, None to stop (not an address)."""
        kind = self._kind(host)
        if kind == _NOT_ADDRESS:
            return None
        return kind == _UNTRUSTED and not self.trust_all

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
        forwarded: list[bytes] = []
        proto = port = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"x-forwarded-proto":
                proto = value
            elif name == b"x-forwarded-port":
                port = value
            elif name == b"forwarded":
                forwarded.append(value)
        if forwarded and not forwarded_for and proto is None and port is None:
            return self._apply_forwarded(client, server, scheme, forwarded, http)
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
            verdict = self._hop_is_client(hop)
            if verdict is None:
                return None  # not an address: the peer stays the client
            if verdict:
                return hop
        return hops[0]

    def _apply_forwarded(self, client: Address | None, server: Address | None, scheme: str,
                         values: list[bytes], http: bool) -> tuple[Address | None, Address | None, str]:
        """RFC 7239 ``Forwarded`` from a trusted peer (see the module's docstring)."""
        elements = parse_forwarded(values)
        if not elements:
            return client, server, scheme
        chosen = elements[0]
        for element in reversed(elements):
            node = _node(element.get("for"))
            if node is None:
                return client, server, scheme  # unknown, obfuscated or junk: the peer stays
            verdict = self._hop_is_client(node[0])
            if verdict is None:
                return client, server, scheme
            if verdict:
                chosen = element
                break
        else:
            node = _node(chosen.get("for"))
        assert node is not None
        client = node
        proto = chosen.get("proto")
        if proto is not None:
            candidate = proto.lower()
            if candidate in SCHEMES:
                scheme = HTTP_SCHEMES[candidate] if http else candidate
        host = chosen.get("host")
        if host is not None:
            match = _HOST_RE.fullmatch(host)
            if match is not None:
                name, port_text = match.groups()
                port = int(port_text) if port_text else (443 if scheme in ("https", "wss") else 80)
                if 0 < port < 65536:
                    server = (name.strip("[]"), port)
        return client, server, scheme


def _bare_host(hop: str) -> str:
    """An address from X-Forwarded-For without brackets or port ("[::1]:80" → "::1")."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:  # IPv4 with a port; a bare IPv6 has several colons
        return hop.split(":", 1)[0]
    return hop


# RFC 7239 §4:
#   Forwarded   = 1#forwarded-element
#   forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
#   forwarded-pair = token "=" value
#   value          = token / quoted-string
# One pair (or an empty one) and the separator after it; OWS is allowed around
# the list's commas (RFC 9110 §5.6.1) and tolerated around ";".
_TOKEN = TOKEN.decode("ascii")
_QUOTED = r'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
_PAIR_RE = re.compile(r"[ \t]*(?:(" + _TOKEN + r")=(" + _TOKEN + r"|" + _QUOTED + r"))?[ \t]*([;,]|$)")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
# RFC 7239 §6:  node = nodename [ ":" node-port ]
#   nodename = IPv4address / "[" IPv6address "]" / "unknown" / obfnode
#   node-port = port / obfport ("_" 1*(ALPHA / DIGIT / "." / "_" / "-"))
_NODE_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?::([0-9]{1,5}|_[A-Za-z0-9._-]+))?")
# host= is a Host value (RFC 9110 §7.2): uri-host [ ":" port ].
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[-A-Za-z0-9._~%!$&'()*+,;=]+)(?::([0-9]{1,5}))?")
# A bound on the elements read (a proxy chain is a handful of hops).
MAX_FORWARDED_ELEMENTS = 64


def parse_forwarded(values: Iterable[bytes]) -> list[dict[str, str]] | None:
    """The elements of ``Forwarded`` field values, parameter names lower-cased, values unquoted.

    None when the field is malformed (bad syntax, a parameter repeated in one
    element, too many elements): then none of it is believed.
    """
    elements: list[dict[str, str]] = []
    for raw in values:
        text = raw.decode("latin-1")
        element: dict[str, str] = {}
        pos, end = 0, len(text)
        while True:
            match = _PAIR_RE.match(text, pos)
            if match is None:
                return None
            name, value, separator = match.groups()
            if name is not None:
                name = name.lower()
                if name in element:
                    return None  # "Each parameter MUST NOT occur more than once per forwarded-element"
                if value.startswith('"'):
                    value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
                element[name] = value
            if separator != ";":
                if element:
                    elements.append(element)
                    if len(elements) > MAX_FORWARDED_ELEMENTS:
                        return None
                element = {}
            pos = match.end()
            if not separator or pos >= end:
                if element:
                    elements.append(element)
                break
    return elements


def _node(text: str | None) -> Address | None:
    """A ``for=`` node as (address, port), or None (missing, ``unknown``, obfuscated, junk)."""
    if text is None:
        return None
    match = _NODE_RE.fullmatch(text)
    if match is None:
        return None
    host, port_text = match.groups()
    bracketed = host.startswith("[")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if bracketed != (address.version == 6):
        return None  # IPv6 only in brackets, IPv4 never
    port = int(port_text) if port_text and port_text[0] != "_" else 0
    if port > 65535:
        return None
    return host, port
