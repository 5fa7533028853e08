"""The PROXY protocol v1/v2 parser (server_core.proxy_protocol), bytes in, sans-I/O."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from server_core.proxy_protocol import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderParser,
    parse,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def v2(command: int = 0x1, family: int = 0x11, payload: bytes | None = None, *, version: int = 2,
       length: int | None = None) -> bytes:
    """A v2 header; by default PROXY over TCP/IPv4 from 192.0.2.1:4711 to 198.51.100.2:443."""
    if payload is None:
        payload = ipv4("192.0.2.1", "198.51.100.2", 4711, 443)
    size = len(payload) if length is None else length
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", size) + payload


def ipv4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport))


def ipv6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport))


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# -- v1 -------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    header, rest = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST)  # type: ignore[misc]
    assert header == ProxyHeader(1, "PROXY", ("192.0.2.1", 56324), ("198.51.100.2", 443))
    assert not header.local
    assert rest == REQUEST


def test_v1_tcp6() -> None:
    header, rest = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n")  # type: ignore[misc]
    assert header == ProxyHeader(1, "PROXY", ("2001:db8::1", 65535), ("2001:db8::2", 0))
    assert rest == b""


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n",
                                  b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"])
def test_v1_unknown_keeps_the_real_addresses(line: bytes) -> None:
    header, rest = parse(line + REQUEST)  # type: ignore[misc]
    assert header.local and header.source is None and header.destination is None
    assert rest == REQUEST


def test_v1_longest_line_is_accepted() -> None:
    line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(line) == 104 <= V1_MAX
    header, _ = parse(line)  # type: ignore[misc]
    assert header.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_split_across_reads_byte_by_byte() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST
    parser = ProxyHeaderParser()
    for index in range(len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n") - 1):
        assert parser.feed(data[index:index + 1]) is None
        assert parser.started
    header, rest = parser.feed(data[len(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n") - 1:])  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 56324)
    assert rest == REQUEST


@pytest.mark.parametrize(("data", "reason"), [
    (REQUEST, "signature"),                                         # plain HTTP: refused on its first byte
    (b"PUT / HTTP/1.1\r\n", "signature"),                           # starts like PROXY, is not
    (b"PROXY\r\n", "signature"),
    (b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n", "signature"),  # case matters
    (b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n", "unknown family"),
    (b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n", "unknown family"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n", "two addresses"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n", "two addresses"),
    (b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n", "two addresses"),  # two spaces
    (b"PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n", "IPv6 address for TCP4"),
    (b"PROXY TCP6 2001:db8::1 192.0.2.1 1 2\r\n", "IPv4 address for TCP6"),
    (b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 example.com 198.51.100.2 1 2\r\n", "invalid address"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 080 2\r\n", "invalid port"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", "bare LF"),
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\r\n", "invalid port"),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "longer than 107"),  # wrong length: no CRLF in 107 bytes
    (b"PROXY " + b"x" * 200, "longer than 107"),
])
def test_v1_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_v1_needs_more_until_the_line_ends() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PRO") is None
    assert parser.feed(b"XY TCP4 192.0.2.1") is None
    with pytest.raises(ProxyHeaderError):
        parser.feed(b"x" * V1_MAX)


# -- v2 -------------------------------------------------------------------------


def test_v2_proxy_tcp4_with_data_after() -> None:
    header, rest = parse(v2() + REQUEST)  # type: ignore[misc]
    assert header == ProxyHeader(2, "PROXY", ("192.0.2.1", 4711), ("198.51.100.2", 443))
    assert rest == REQUEST


def test_v2_proxy_tcp6() -> None:
    header, rest = parse(v2(family=0x21, payload=ipv6("2001:db8::1", "2001:db8::2", 1, 8443)))  # type: ignore[misc]
    assert header == ProxyHeader(2, "PROXY", ("2001:db8::1", 1), ("2001:db8::2", 8443))
    assert rest == b""


def test_ipv4_mapped_addresses_are_reported_as_ipv4() -> None:
    """A dual-stack balancer sends its IPv4 clients as ::ffff:a.b.c.d: the app sees a.b.c.d."""
    header, _ = parse(b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1 2\r\n")  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 1) and header.destination == ("2001:db8::2", 2)
    header, _ = parse(v2(family=0x21, payload=ipv6("::ffff:192.0.2.1", "::ffff:198.51.100.2", 1, 2)))  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 1) and header.destination == ("198.51.100.2", 2)


def test_v2_unix_stream() -> None:
    header, _ = parse(v2(family=0x31, payload=unix(b"/run/client.sock", b"/run/haproxy.sock")))  # type: ignore[misc]
    assert header == ProxyHeader(2, "PROXY", "/run/client.sock", "/run/haproxy.sock")


def test_v2_local_keeps_the_real_addresses_and_ignores_the_block() -> None:
    # A balancer's health check: LOCAL, whatever family and bytes follow.
    header, rest = parse(v2(command=0x0, family=0x00, payload=b"") + REQUEST)  # type: ignore[misc]
    assert header.local and header.source is None and rest == REQUEST
    header, rest = parse(v2(command=0x0, family=0x11) + REQUEST)  # type: ignore[misc]
    assert header.local and rest == REQUEST


def test_v2_proxy_with_unspecified_family_is_local() -> None:
    header, rest = parse(v2(family=0x00, payload=b"\x01\x02") + b"x")  # type: ignore[misc]
    assert header.local and rest == b"x"


def test_v2_tlvs_are_skipped() -> None:
    payload = (ipv4("192.0.2.1", "198.51.100.2", 4711, 443) + tlv(0x01, b"h2") + tlv(0x02, b"example.com")
               + tlv(0x05, b"unique-id") + tlv(0x20, b"\x01\x00\x00\x00\x00") + tlv(0x04, b""))
    header, rest = parse(v2(payload=payload) + REQUEST)  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 4711) and rest == REQUEST


def test_v2_split_across_reads() -> None:
    data = v2(family=0x21, payload=ipv6("2001:db8::1", "2001:db8::2", 1, 2) + tlv(0x04, b"\0" * 10)) + REQUEST
    for cut in (1, 5, 12, 13, 15, 16, 17, 40, len(data) - len(REQUEST) - 1):
        parser = ProxyHeaderParser()
        assert parser.feed(data[:cut]) is None, cut
        header, rest = parser.feed(data[cut:])  # type: ignore[misc]
        assert header.source == ("2001:db8::1", 1) and rest == REQUEST, cut


def test_v2_largest_accepted_payload_and_one_more() -> None:
    padding = V2_MAX_PAYLOAD - 12 - 3
    header, _ = parse(v2(payload=ipv4("192.0.2.1", "198.51.100.2", 1, 2) + tlv(0x04, b"\0" * padding)))  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 1)
    with pytest.raises(ProxyHeaderError, match="at most"):
        # Refused on the fixed part alone: nothing of the payload is waited for.
        parse(v2(payload=b"", length=V2_MAX_PAYLOAD + 1))


@pytest.mark.parametrize(("data", "reason"), [
    (b"\r\n\r\n\x00\r\nQUIX\n" + bytes([0x21, 0x11, 0, 12]) + bytes(12), "signature"),
    (b"\r\n\r\nGET / HTTP/1.1\r\n", "signature"),
    (v2(version=1), "version 1"),
    (v2(version=3), "version 3"),
    (v2(command=0x2), "unknown command"),
    (v2(command=0xF), "unknown command"),
    (v2(family=0x41), "unknown address family"),
    (v2(family=0xF1), "unknown address family"),
    (v2(family=0x12), "transport 2"),   # UDP over IPv4
    (v2(family=0x10), "transport 0"),
    (v2(family=0x21), "too short"),     # IPv6 family, IPv4-sized block: wrong length
    (v2(family=0x31), "too short"),
    (v2(payload=ipv4("192.0.2.1", "198.51.100.2", 1, 2)[:11]), "too short"),
    (v2(payload=ipv4("192.0.2.1", "198.51.100.2", 1, 2) + b"\x04\x00"), "truncated TLV"),
    (v2(payload=ipv4("192.0.2.1", "198.51.100.2", 1, 2) + b"\x04\x00\x05abc"), "TLV longer"),
])
def test_v2_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_v2_truncated_is_incomplete_not_an_error() -> None:
    """A header cut short is waited for (the gate's timeout ends it), never misread."""
    data = v2()
    for cut in range(1, len(data)):
        assert ProxyHeaderParser().feed(data[:cut]) is None, cut
    # A length that claims more than arrives: still waiting.
    assert ProxyHeaderParser().feed(v2(length=40)) is None


def test_a_parser_is_for_one_header() -> None:
    parser = ProxyHeaderParser()
    header, rest = parser.feed(v2() + v2())  # type: ignore[misc]
    assert header.source == ("192.0.2.1", 4711)
    assert rest == v2()  # a second header is data for the protocol behind (which refuses it)
    assert not parser.started
