"""The PROXY protocol, versions 1 and 2: who connected to the load balancer.

Sans-I/O. A TCP load balancer (HAProxy ``send-proxy``/``send-proxy-v2``, AWS
NLB, nginx ``stream`` with ``proxy_protocol on``) opens each connection to us
with one header saying which client connection it stands for, then relays the
client's bytes. :class:`ProxyHeaderParser` takes the bytes as they arrive and
answers, for each ``feed``: ``None`` (the header is not complete yet), or the
parsed :class:`ProxyHeader` with the bytes that followed it, or raises
:class:`ProxyHeaderError` naming what is wrong. It never buffers more than one
header's worth of bytes: :data:`V1_MAX` for the text form, ``16 +`` :data:`V2_MAX_PAYLOAD`
for the binary one.

The format (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt):

- v1, one line of at most 107 bytes including CRLF::

      PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\\r\\n
      PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\\r\\n
      PROXY UNKNOWN[ anything]\\r\\n          (use the real connection's addresses)

- v2, a 16-byte binary prefix, then ``length`` bytes: the 12-byte signature
  ``\\r\\n\\r\\n\\0\\r\\nQUIT\\n``; a byte whose high nibble is the version (2) and
  low nibble the command (0 ``LOCAL``: a health check of the balancer itself,
  use the real addresses; 1 ``PROXY``); a byte whose high nibble is the address
  family (0 unspecified, 1 IPv4, 2 IPv6, 3 UNIX) and low nibble the transport
  (0 unspecified, 1 stream, 2 datagram); the length, big-endian. The addresses
  follow (IPv4: 4 + 4 + 2 + 2 bytes; IPv6: 16 + 16 + 2 + 2; UNIX: two
  108-byte paths), then optional TLVs (type, 2-byte length, value), which are
  checked to fit and otherwise skipped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included ("PROXY UNKNOWN ffff:...:ffff ... 65535 65535\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# The spec allows 65535 bytes after the fixed part. Real balancers send the
# addresses (at most 216 bytes, UNIX) and a few TLVs (ALPN, SNI, unique ID,
# SSL details, a cloud's endpoint ID): a few hundred bytes. 4 KiB leaves room
# for all of them while a trusted but broken peer cannot make us hold 64 KiB.
V2_MAX_PAYLOAD = 4096

# v2 command (low nibble of byte 13) and family byte (byte 14).
LOCAL = "LOCAL"
PROXY = "PROXY"
_V2_COMMANDS = {0x0: LOCAL, 0x1: PROXY}
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
# Bytes of the address block per family.
_ADDRESS_SIZE = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}
_UNIX_PATH = 108

# An endpoint: (host, port) for TCP, the socket path for UNIX (as a UNIX
# transport reports it), None when the header does not say (LOCAL, UNKNOWN).
Endpoint = tuple[str, int] | str | None


class ProxyHeaderError(ValueError):
    """A connection that does not start with a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header.

    ``command`` is ``"PROXY"`` (the addresses below stand for the client's
    connection) or ``"LOCAL"`` (v2 LOCAL, v1 UNKNOWN, or v2 with an
    unspecified family: the balancer speaks for itself, keep the real
    connection's addresses).
    """

    version: int
    command: str
    source: Endpoint = None
    destination: Endpoint = None

    @property
    def local(self) -> bool:
        """True when the real connection's addresses stay in place."""
        return self.command == LOCAL


class ProxyHeaderParser:
    """Feed bytes until one header is complete (or refused)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def started(self) -> bool:
        """True once some bytes of a header arrived."""
        return bool(self._buf)

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """Add bytes; the header and the bytes after it once complete, else None.

        Raises :class:`ProxyHeaderError` as soon as the bytes cannot be the
        start of a valid header, so garbage is refused on its first bytes.
        """
        buf = self._buf + data if self._buf else data
        if buf[:1] == b"P":
            result = _v1(buf)
        elif buf[:1] == b"\r":
            result = _v2(buf)
        else:
            raise ProxyHeaderError("no PROXY protocol signature")
        if result is None:
            self._buf = buf
        else:
            self._buf = b""
        return result


def parse(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    """One-shot :meth:`ProxyHeaderParser.feed` (bytes of a fresh connection)."""
    return ProxyHeaderParser().feed(data)


# -- v1 -------------------------------------------------------------------------


def _v1(buf: bytes) -> tuple[ProxyHeader, bytes] | None:
    if not buf.startswith(V1_PREFIX[: len(buf)]):
        raise ProxyHeaderError("no PROXY protocol signature")
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if b"\n" in buf[:V1_MAX]:
            raise ProxyHeaderError("v1 header with a bare LF")
        if len(buf) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return None
    return _v1_line(buf[len(V1_PREFIX):end]), buf[end + 2:]


def _v1_line(line: bytes) -> ProxyHeader:
    parts = line.split(b" ")
    family = parts[0]
    if family == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF".
        return ProxyHeader(1, LOCAL)
    if family not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"v1 header with unknown family {family[:8]!r}")
    if len(parts) != 5:
        raise ProxyHeaderError("v1 header without exactly two addresses and two ports")
    version = 4 if family == b"TCP4" else 6
    source = _v1_address(parts[1], version)
    destination = _v1_address(parts[2], version)
    return ProxyHeader(1, PROXY, (source, _v1_port(parts[3])), (destination, _v1_port(parts[4])))


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"v1 header with an invalid address {text[:40]!r}") from None
    if address.version != version:
        raise ProxyHeaderError(f"v1 header with an IPv{address.version} address for TCP{version}")
    return _text(address)


def _v1_port(text: bytes) -> int:
    # "decimal ... between 0 and 65535 inclusive"; no sign, no leading zero.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"v1 header with an invalid port {text[:8]!r}")
    return int(text)


# -- v2 -------------------------------------------------------------------------


def _v2(buf: bytes) -> tuple[ProxyHeader, bytes] | None:
    if not buf.startswith(V2_SIGNATURE[: len(buf)]):
        raise ProxyHeaderError("no PROXY protocol signature")
    if len(buf) < V2_FIXED:
        return None
    version, command_bits = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2 signature with version {version}")
    command = _V2_COMMANDS.get(command_bits)
    if command is None:
        raise ProxyHeaderError(f"v2 header with unknown command {command_bits}")
    family, transport = buf[13] >> 4, buf[13] & 0x0F
    length = int.from_bytes(buf[14:16], "big")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"v2 header of {length} bytes (at most {V2_MAX_PAYLOAD} accepted)")
    end = V2_FIXED + length
    if len(buf) < end:
        return None
    payload = buf[V2_FIXED:end]
    rest = buf[end:]
    if command == LOCAL:
        # "the receiver must accept this connection as valid and must use the
        # real connection endpoints and discard the protocol block including
        # the family".
        return ProxyHeader(2, LOCAL), rest
    if family == _AF_UNSPEC:
        return ProxyHeader(2, LOCAL), rest
    size = _ADDRESS_SIZE.get(family)
    if size is None:
        raise ProxyHeaderError(f"v2 header with unknown address family {family}")
    if transport != _STREAM:
        raise ProxyHeaderError(f"v2 header for transport {transport} on a stream connection")
    if length < size:
        raise ProxyHeaderError(f"v2 header of {length} bytes, too short for its {size}-byte addresses")
    _check_tlvs(payload, size)
    if family == _AF_INET:
        source = (str(ipaddress.IPv4Address(payload[0:4])), int.from_bytes(payload[8:10], "big"))
        destination = (str(ipaddress.IPv4Address(payload[4:8])), int.from_bytes(payload[10:12], "big"))
        return ProxyHeader(2, PROXY, source, destination), rest
    if family == _AF_INET6:
        source6 = (_text(ipaddress.IPv6Address(payload[0:16])), int.from_bytes(payload[32:34], "big"))
        destination6 = (_text(ipaddress.IPv6Address(payload[16:32])), int.from_bytes(payload[34:36], "big"))
        return ProxyHeader(2, PROXY, source6, destination6), rest
    return ProxyHeader(2, PROXY, _unix_path(payload[:_UNIX_PATH]), _unix_path(payload[_UNIX_PATH:size])), rest


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as text; an IPv4-mapped IPv6 address (a dual-stack balancer's IPv4 client) as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _check_tlvs(payload: bytes, offset: int) -> None:
    """Every TLV after the addresses must fit in the header; their values are not used."""
    end = len(payload)
    while offset < end:
        if end - offset < 3:
            raise ProxyHeaderError("v2 header with a truncated TLV")
        offset += 3 + int.from_bytes(payload[offset + 1:offset + 3], "big")
        if offset > end:
            raise ProxyHeaderError("v2 header with a TLV longer than the header")
