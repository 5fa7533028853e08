"""Proxy-header trust rules (server_core.proxy), sans-I/O."""

from __future__ import annotations

import pytest

from server_core.http.head import semantics
from server_core.proxy import ProxyTrust, parse_forwarded


def xff(*values: str, proto: str | None = None, port: str | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-forwarded-for", value.encode()) for value in values]
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto.encode()))
    if port is not None:
        headers.append((b"x-forwarded-port", port.encode()))
    return headers


@pytest.mark.parametrize(("allow", "peer", "trusted"), [
    (["127.0.0.1"], "127.0.0.1", True),
    (["127.0.0.1"], "127.0.0.2", False),
    (["10.0.0.0/8"], "10.200.3.4", True),
    (["10.0.0.0/8"], "11.0.0.1", False),
    (["192.168.1.0/24", "::1"], "::1", True),
    (["2001:db8::/32"], "2001:db8:1::5", True),
    (["2001:db8::/32"], "2001:db9::5", False),
    (["10.0.0.1"], "::ffff:10.0.0.1", True),  # IPv4-mapped peer on a dual-stack socket
    (["*"], "203.0.113.9", True),
    ([], "127.0.0.1", False),
    (["not-an-ip"], "127.0.0.1", False),
])
def test_peer_trust(allow: list[str], peer: str, trusted: bool) -> None:
    trust = ProxyTrust(allow)
    assert trust.is_trusted(peer) is trusted
    assert trust.is_trusted(peer) is trusted  # cached answer is the same


def test_untrusted_peer_headers_ignored() -> None:
    trust = ProxyTrust(["10.0.0.1"])
    client = ("203.0.113.5", 4000)
    assert trust.resolve(client, "http", xff("1.2.3.4", proto="https")) == (client, "http")


def test_trusted_peer_sets_client_and_scheme() -> None:
    trust = ProxyTrust(["127.0.0.1"])
    assert trust.resolve(("127.0.0.1", 5000), "http", xff("1.2.3.4", proto="https")) == (("1.2.3.4", 0), "https")


def test_walk_right_to_left_first_untrusted_wins() -> None:
    trust = ProxyTrust(["10.0.0.0/8", "127.0.0.1"])
    # client -> 198.51.100.7 (untrusted, e.g. spoofed entry) -> 10.1.1.1 (our LB) -> us
    headers = xff("6.6.6.6, 198.51.100.7, 10.1.1.1")
    assert trust.resolve(("127.0.0.1", 1), "http", headers)[0] == ("198.51.100.7", 0)
    # The same chain split over several headers.
    headers = xff("6.6.6.6", "198.51.100.7, 10.1.1.1")
    assert trust.resolve(("127.0.0.1", 1), "http", headers)[0] == ("198.51.100.7", 0)


def test_all_hops_trusted_gives_leftmost() -> None:
    trust = ProxyTrust(["10.0.0.0/8", "127.0.0.1"])
    assert trust.resolve(("127.0.0.1", 1), "http", xff("10.9.9.9, 10.1.1.1"))[0] == ("10.9.9.9", 0)


def test_star_trusts_everything_and_takes_leftmost() -> None:
    trust = ProxyTrust(["*"])
    assert trust.resolve(("8.8.8.8", 1), "http", xff("1.1.1.1, 2.2.2.2"))[0] == ("1.1.1.1", 0)


def test_ipv6_hops_and_ports_in_forwarded_for() -> None:
    trust = ProxyTrust(["::1"])
    assert trust.resolve(("::1", 1), "http", xff("[2001:db8::7]:443"))[0] == ("2001:db8::7", 0)
    assert trust.resolve(("::1", 1), "http", xff("2001:db8::8"))[0] == ("2001:db8::8", 0)
    assert trust.resolve(("::1", 1), "http", xff("192.0.2.1:8080"))[0] == ("192.0.2.1", 0)


def test_unix_peer_trusted_only_with_star() -> None:
    headers = xff("1.2.3.4", proto="https")
    assert ProxyTrust(["127.0.0.1", "::1"]).resolve(None, "http", headers) == (None, "http")
    assert ProxyTrust(["*"]).resolve(None, "http", headers) == (("1.2.3.4", 0), "https")


@pytest.mark.parametrize(("proto", "scheme"), [
    ("https", "https"), ("HTTPS", "https"), ("wss", "wss"), ("ws", "ws"),
    ("gopher", "http"), ("http, https", "https"), ("", "http"),
])
def test_forwarded_proto(proto: str, scheme: str) -> None:
    trust = ProxyTrust(["127.0.0.1"])
    assert trust.resolve(("127.0.0.1", 1), "http", xff(proto=proto))[1] == scheme


@pytest.mark.parametrize(("port", "expected"), [("8443", 8443), ("0", 80), ("70000", 80), ("x", 80)])
def test_forwarded_port_applies_to_server(port: str, expected: int) -> None:
    trust = ProxyTrust(["127.0.0.1"])
    _, server, _ = trust.resolve_all(("127.0.0.1", 1), ("10.0.0.2", 80), "http", xff(port=port))
    assert server == ("10.0.0.2", expected)


def test_forwarded_port_ignored_from_untrusted_peer() -> None:
    trust = ProxyTrust(["127.0.0.1"])
    _, server, _ = trust.resolve_all(("9.9.9.9", 1), ("10.0.0.2", 80), "http", xff(port="8443"))
    assert server == ("10.0.0.2", 80)


def test_no_forwarded_for_keeps_client() -> None:
    trust = ProxyTrust(["127.0.0.1"])
    assert trust.resolve(("127.0.0.1", 7), "http", []) == (("127.0.0.1", 7), "http")
    assert trust.resolve(("127.0.0.1", 7), "http", xff(" , "))[0] == ("127.0.0.1", 7)


@pytest.mark.parametrize(("proto", "scheme"), [
    ("ws", "http"), ("wss", "https"), ("WSS", "https"), ("https", "https"), ("http", "http"),
    ("gopher", "https"),
])
def test_forwarded_proto_for_an_http_scope(proto: str, scheme: str) -> None:
    """An http scope never gets ws/wss: a proxy's ws means http, wss means https."""
    trust = ProxyTrust(["127.0.0.1"])
    _, _, got = trust.resolve_all(("127.0.0.1", 1), None, "https", xff(proto=proto), http=True)
    assert got == scheme


# -- junk in X-Forwarded-For ------------------------------------------------------


@pytest.mark.parametrize(("allow", "value", "client"), [
    (["127.0.0.1"], "garbage", ("127.0.0.1", 7)),
    (["127.0.0.1"], "unknown", ("127.0.0.1", 7)),
    (["127.0.0.1"], "1.2.3.4, garbage", ("127.0.0.1", 7)),   # the hop nearest to us is junk
    (["127.0.0.1"], "garbage, 1.2.3.4", ("1.2.3.4", 0)),     # an untrusted address comes first
    (["127.0.0.1"], "999.1.1.1", ("127.0.0.1", 7)),
    (["127.0.0.1"], "<script>", ("127.0.0.1", 7)),
    (["127.0.0.1", "10.0.0.0/8"], "garbage, 10.0.0.9", ("127.0.0.1", 7)),  # junk behind a trusted hop
    (["*"], "garbage", ("127.0.0.1", 7)),
    (["*"], "garbage, 10.0.0.9", ("127.0.0.1", 7)),
    (["*"], "1.2.3.4, 10.0.0.9", ("1.2.3.4", 0)),
])
def test_a_forwarded_for_hop_that_is_not_an_address_keeps_the_peer(allow: list[str], value: str,
                                                                   client: tuple[str, int]) -> None:
    """Issue 12: ``X-Forwarded-For: garbage`` from a trusted proxy made ("garbage", 0) the client."""
    trust = ProxyTrust(allow)
    assert trust.resolve(("127.0.0.1", 7), "http", xff(value))[0] == client


# -- RFC 7239 Forwarded -------------------------------------------------------------

PEER = ("127.0.0.1", 5000)
SERVER = ("10.0.0.2", 8000)


def fwd(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"forwarded", value.encode()) for value in values]


def forwarded(values: list[tuple[bytes, bytes]], allow: tuple[str, ...] = ("127.0.0.1", "10.0.0.0/8"),
              peer: tuple[str, int] | None = PEER, *, http: bool = False
              ) -> tuple[tuple[str, int] | None, tuple[str, int] | None, str]:
    return ProxyTrust(list(allow)).resolve_all(peer, SERVER, "http", values, http=http)


# Every Forwarded example of RFC 7239 (§4, §6, §6.3, §7.1, §7.4) and what the
# app sees with the peer 127.0.0.1 and 10.0.0.0/8 trusted.
@pytest.mark.parametrize(("value", "client"), [
    ('for="_gazonk"', PEER),                                           # §4, obfuscated
    ('For="[2001:db8:cafe::17]:4711"', ("2001:db8:cafe::17", 4711)),   # §4, names are case-insensitive
    ("for=192.0.2.60;proto=http;by=203.0.113.43", ("192.0.2.60", 0)),  # §4
    ("for=192.0.2.43, for=198.51.100.17", ("198.51.100.17", 0)),       # §4: the nearest untrusted hop
    ('for="[2001:db8:cafe::17]:47011"', ("2001:db8:cafe::17", 47011)),  # §6
    ('for="192.0.2.43:47011"', ("192.0.2.43", 47011)),                 # §6
    ("for=unknown", PEER),                                              # §6.2
    ('for=192.0.2.43,for="[2001:db8:cafe::17]",for=unknown', PEER),    # §6: unknown nearest
    ('for=192.0.2.43, for="[2001:db8:cafe::17]", for=unknown', PEER),
    ("for=_hidden, for=_SEVKISEK", PEER),                               # §6.3
    ("for=192.0.2.43,for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com",  # §7.1
     ("198.51.100.17", 0)),
    ('for=192.0.2.43, for="[2001:db8:cafe::17]"', ("2001:db8:cafe::17", 0)),  # §7.4
])
def test_rfc7239_examples(value: str, client: tuple[str, int]) -> None:
    assert forwarded(fwd(value))[0] == client


def test_forwarded_walks_right_to_left_past_trusted_proxies() -> None:
    # client 192.0.2.43 -> proxy 10.1.1.1 (trusted) -> proxy 10.2.2.2 (trusted, our peer's peer) -> us
    values = fwd("for=192.0.2.43;proto=https;host=shop.example, for=10.1.1.1;proto=http")
    assert forwarded(values) == (("192.0.2.43", 0), ("shop.example", 443), "https")
    # The same chain over two field lines.
    values = fwd("for=192.0.2.43;proto=https;host=shop.example", "for=10.1.1.1;proto=http")
    assert forwarded(values) == (("192.0.2.43", 0), ("shop.example", 443), "https")


def test_forwarded_spoofed_entries_left_of_the_first_untrusted_hop_are_ignored() -> None:
    values = fwd("for=6.6.6.6;proto=https;host=evil.example, for=198.51.100.7;proto=http, for=10.1.1.1")
    assert forwarded(values) == (("198.51.100.7", 0), SERVER, "http")


def test_forwarded_all_trusted_gives_the_leftmost() -> None:
    assert forwarded(fwd("for=10.9.9.9, for=10.1.1.1"))[0] == ("10.9.9.9", 0)
    assert forwarded(fwd("for=1.1.1.1, for=2.2.2.2"), allow=("*",))[0] == ("1.1.1.1", 0)


@pytest.mark.parametrize(("value", "server", "scheme"), [
    ("for=192.0.2.1;proto=https;host=example.com", ("example.com", 443), "https"),
    ('for=192.0.2.1;proto=http;host="example.com:8080"', ("example.com", 8080), "http"),
    ('for=192.0.2.1;host="[2001:db8::5]:8443"', ("2001:db8::5", 8443), "http"),
    ("for=192.0.2.1;host=example.com", ("example.com", 80), "http"),
    ("for=192.0.2.1;proto=HTTPS", SERVER, "https"),
    ("for=192.0.2.1;proto=wss", SERVER, "wss"),
    ("for=192.0.2.1;proto=gopher", SERVER, "http"),
    ('for=192.0.2.1;host="bad host"', SERVER, "http"),
    ('for=192.0.2.1;host="example.com:99999"', SERVER, "http"),
])
def test_forwarded_proto_and_host(value: str, server: tuple[str, int], scheme: str) -> None:
    assert forwarded(fwd(value))[1:] == (server, scheme)


def test_rfc7239_proto_for_an_http_scope() -> None:
    assert forwarded(fwd("for=192.0.2.1;proto=wss"), http=True)[2] == "https"


@pytest.mark.parametrize("value", [
    "for=[2001:db8::1]",             # IPv6 must be quoted (brackets are not token characters)
    'for="2001:db8::1"',             # and bracketed
    'for="[192.0.2.1]"',             # IPv4 never is
    "for=192.0.2.1;for=192.0.2.2",   # a parameter twice in one element
    "for=192.0.2.1 proto=https",     # no separator
    'for="192.0.2.1',                # unterminated quoted string
    "for=example.com",               # a name is no address
    'for="192.0.2.1:65536"',
    "for = 192.0.2.1",               # no whitespace around "="
    "proto=https",                   # no for=: the peer stays, and so does its scheme
    "",
])
def test_malformed_or_unusable_forwarded_keeps_the_peer(value: str) -> None:
    assert forwarded(fwd(value)) == (PEER, SERVER, "http")


def test_forwarded_from_an_untrusted_peer_is_ignored() -> None:
    assert forwarded(fwd("for=192.0.2.1;proto=https"), peer=("203.0.113.9", 1)) == (
        ("203.0.113.9", 1), SERVER, "http")
    assert forwarded(fwd("for=192.0.2.1"), peer=None) == (None, SERVER, "http")  # UNIX peer without '*'
    assert forwarded(fwd("for=192.0.2.1"), peer=None, allow=("*",))[0] == ("192.0.2.1", 0)


def test_x_forwarded_wins_over_forwarded() -> None:
    """Both families: X-Forwarded-* is believed and Forwarded ignored (see the README)."""
    values = xff("192.0.2.1") + fwd("for=198.51.100.9;proto=https;host=evil.example")
    assert forwarded(values) == (("192.0.2.1", 0), SERVER, "http")
    values = fwd("for=198.51.100.9") + xff(proto="https")
    assert forwarded(values) == (PEER, SERVER, "https")


def test_forwarded_quoted_pair_and_whitespace() -> None:
    parsed = parse_forwarded([b'for="\\[2001:db8::1\\]:80" ; proto=https ,  ,for=192.0.2.1'])
    assert parsed == [{"for": "[2001:db8::1]:80", "proto": "https"}, {"for": "192.0.2.1"}]


def test_the_semantic_scan_collects_forwarded_as_sent() -> None:
    """head.semantics() finds Forwarded in the raw block, keeping the case of its value."""
    fields = b'\r\nHost: x\r\nFORWARDED: for="_Hidden";Host=Example.COM\r\nX-Forwarded-For: A\r\n'
    found = semantics(b"HTTP/1.1", fields)[4]
    assert found == ((b"forwarded", b'for="_Hidden";Host=Example.COM'), (b"x-forwarded-for", b"A"))
    assert semantics(b"HTTP/1.1", b"\r\nHost: x\r\nX-Forwarded: no\r\nForwardedx: no\r\n")[4] == ()
