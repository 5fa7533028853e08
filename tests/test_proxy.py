"""Proxy-header trust rules (server_core.proxy), sans-I/O."""

from __future__ import annotations

import pytest

from server_core.proxy import ProxyTrust


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
