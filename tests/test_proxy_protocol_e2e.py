"""``--proxy-protocol`` against a running corral, over raw sockets (TCP and UNIX listeners).

Every malformed header shape closes its connection without one byte of
response, and the same worker goes on serving the next good connection, whose
client is the one the header names. The head timeout is exercised in-process
on the real gate with a short ``timeout_request_head`` (the option's default
is 10 s), and so is TLS after the header at every cut of the bytes.

Every blocking socket here waits at most ``TIMEOUT`` for the server: a server
that stalls fails the test at once, naming what it waited for, instead of
hanging it until pytest-timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server_core.proxy_gate import gated
from server_core.proxy_protocol import V2_SIGNATURE
from server_core.settings import ServerSettings
from server_core.state import ServerState
from tests.support import FACTOR, Corral, require_module, wait_until, worker_pids

TIMEOUT = 5 * FACTOR  # the longest any socket of this file waits for the server
REQUEST = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
V1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n"


def v2(command: int = 0x1, family: int = 0x11, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = (ipaddress.IPv4Address("203.0.113.8").packed + ipaddress.IPv4Address("198.51.100.1").packed
                   + struct.pack("!HH", 4712, 443))
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


V2_IPV6 = V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", 36) + ipaddress.IPv6Address("2001:db8::7").packed \
    + ipaddress.IPv6Address("2001:db8::1").packed + struct.pack("!HH", 4713, 8443)
V2_UNIX = V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + b"/run/client.sock".ljust(108, b"\0") \
    + b"/run/lb.sock".ljust(108, b"\0")

# Each shape the gate must refuse, with nothing answered.
MALFORMED = {
    "no header": REQUEST,
    "v1 bad signature": b"PROXZ TCP4 203.0.113.7 198.51.100.1 4711 443\r\n" + REQUEST,
    "v1 wrong length": b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n" + REQUEST,
    "v1 unknown family": b"PROXY TCP9 203.0.113.7 198.51.100.1 4711 443\r\n" + REQUEST,
    "v1 bad address": b"PROXY TCP4 garbage 198.51.100.1 4711 443\r\n" + REQUEST,
    "v2 bad signature": b"\r\n\r\n\x00\r\nQUIZ\n" + v2()[12:] + REQUEST,
    "v2 wrong length": V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", 12) + v2()[16:] + REQUEST,
    "v2 unknown family": v2(family=0x51) + REQUEST,
    "v2 unknown command": v2(command=0x7) + REQUEST,
    "v2 UDP": v2(family=0x12) + REQUEST,
    "v2 oversized": V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 64,
    "header after data": REQUEST + V1,
    "two headers": V1 + V1 + REQUEST,  # the second one reaches HTTP, which answers 400
}


def receive(sock: socket.socket, what: str) -> bytes:
    """One ``recv()``; a server silent for ``TIMEOUT`` fails the test, naming ``what`` it was waiting for."""
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise AssertionError(f"nothing from the server within {TIMEOUT:g}s while waiting for {what}") from None


def talk(connect: Callable[[], socket.socket], *pieces: bytes, pause: float = 0.0, eof: bool = False) -> bytes:
    """Send ``pieces`` (``pause`` seconds apart); everything received until the server closes."""
    sock = connect()
    received = b""
    try:
        try:
            for index, piece in enumerate(pieces):
                if index and pause:
                    time.sleep(pause)
                sock.sendall(piece)
            if eof:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: the refusal itself
        while True:
            try:
                chunk = receive(sock, "the answer or the close")
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    return received


def report(data: bytes) -> dict:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    return json.loads(body)


def tcp(server: Corral, source: str | None = None) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT,
                                        source_address=(source, 0) if source else None)
        return sock
    return connect


def unix(path: Path) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        return sock
    return connect


CLOSE = b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def good(connect: Callable[[], socket.socket], header: bytes = V1) -> dict:
    return report(talk(connect, header + CLOSE))


def start(corral: Callable[..., Corral], *args: str, **kw: object) -> Corral:
    server = corral("int_echo:app", "--proxy-protocol", "--workers", "1", *args, wait=False, **kw)
    server.wait_log("worker_ready")
    return server


def test_tcp_listener(corral: Callable[..., Corral]) -> None:
    server = start(corral)
    connect = tcp(server)
    worker = wait_until(lambda: worker_pids(server.pid), 10, "the worker", alive=server.dead)

    first = good(connect)
    assert first["client"] == ["203.0.113.7", 4711] and first["server"] == ["198.51.100.1", 443]
    v2_report = good(connect, v2())
    assert v2_report["client"] == ["203.0.113.8", 4712] and v2_report["server"] == ["198.51.100.1", 443]
    v6 = good(connect, V2_IPV6)
    assert v6["client"] == ["2001:db8::7", 4713] and v6["server"] == ["2001:db8::1", 8443]
    # LOCAL (a balancer's health check) and v1 UNKNOWN: the real connection's addresses.
    for header in (v2(command=0x0, family=0x00, payload=b""), b"PROXY UNKNOWN\r\n"):
        local = good(connect, header)
        assert local["client"][0] == "127.0.0.1" and local["server"] == ["127.0.0.1", server.port]

    for name, data in MALFORMED.items():
        got = talk(connect, data)
        if name == "two headers":
            assert got.startswith(b"HTTP/1.1 400 "), got[:200]  # the header was fine; its data is not HTTP
        else:
            assert got == b"", f"{name}: answered {got[:200]!r}"
        assert good(connect)["client"] == ["203.0.113.7", 4711], f"no good connection after {name}"

    # Truncated: the client gives up (half-closes) in the middle of a header.
    for data in (V1[:20], v2()[:10], v2()[:20]):
        assert talk(connect, data, eof=True) == b""
    # Split across reads: every piece alone is incomplete.
    split = talk(connect, V1[:3], V1[3:30], V1[30:] + CLOSE[:10], CLOSE[10:], pause=0.05)
    assert report(split)["client"] == ["203.0.113.7", 4711]
    split = talk(connect, V2_IPV6[:13], V2_IPV6[13:17], V2_IPV6[17:] + CLOSE, pause=0.05)
    assert report(split)["client"] == ["2001:db8::7", 4713]
    # Keep-alive: every request of the connection has the header's client.
    both = talk(connect, V1 + REQUEST + CLOSE)
    assert both.count(b'"client": ["203.0.113.7", 4711]') == 2, both

    # A peer outside --forwarded-allow-ips (127.0.0.1, ::1 by default): closed before reading.
    untrusted = tcp(server, source="127.0.0.2")
    assert talk(untrusted, V1 + CLOSE) == b""
    assert talk(untrusted, CLOSE) == b""

    assert worker_pids(server.pid) == worker, "the worker was replaced"
    output = server.output()
    assert "Traceback" not in output, output[-3000:]
    assert output.count("further refusals are logged at debug level") == 1


def test_tcp_listener_with_the_peer_trusted_by_network(corral: Callable[..., Corral]) -> None:
    server = start(corral, "--forwarded-allow-ips", "127.0.0.0/30")
    assert good(tcp(server, source="127.0.0.2"))["client"] == ["203.0.113.7", 4711]
    assert talk(tcp(server, source="127.0.0.9"), V1 + CLOSE) == b""


def test_unix_listener_needs_star(tmp_path: Path, corral: Callable[..., Corral]) -> None:
    """A UNIX-socket peer has no address: only '*' trusts it, as for proxy headers."""
    path = tmp_path / "untrusted.sock"
    server = start(corral, "--uds", str(path), fd=False)
    connect = unix(path)
    assert talk(connect, V1 + CLOSE) == b""
    assert talk(connect, v2() + CLOSE) == b""
    assert server.dead() is None


def test_unix_listener_with_star(tmp_path: Path, corral: Callable[..., Corral]) -> None:
    path = tmp_path / "trusted.sock"
    server = start(corral, "--uds", str(path), "--forwarded-allow-ips", "*", fd=False)
    connect = unix(path)
    worker = wait_until(lambda: worker_pids(server.pid), 10, "the worker", alive=server.dead)
    assert good(connect)["client"] == ["203.0.113.7", 4711]
    assert good(connect, V2_IPV6)["client"] == ["2001:db8::7", 4713]
    # A UNIX-family header: the client has no address, as on a UNIX socket.
    assert good(connect, V2_UNIX)["client"] is None
    # LOCAL: the real peer, a UNIX socket.
    assert good(connect, v2(command=0x0, family=0x00, payload=b""))["client"] is None
    for name, data in MALFORMED.items():
        if name != "two headers":
            assert talk(connect, data) == b"", name
        assert good(connect)["client"] == ["203.0.113.7", 4711], f"no good connection after {name}"
    assert worker_pids(server.pid) == worker


def test_without_the_option_a_header_is_not_http(corral: Callable[..., Corral]) -> None:
    """The default path: no gate, and a PROXY header is an invalid request line."""
    server = corral("int_echo:app", "--workers", "1")
    assert talk(tcp(server), V1 + CLOSE).startswith(b"HTTP/1.1 400 ")
    assert report(talk(tcp(server), CLOSE))["client"][0] == "127.0.0.1"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_starts_after_the_header(tmp_path: Path, corral: Callable[..., Corral], loop: str) -> None:
    """With --ssl-certfile the header comes first, in clear, then the TLS handshake (HAProxy in TCP mode)."""
    trustme = require_module("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = start(corral, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), "--loop", loop)
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def over_tls(header: bytes, *, split: bool = False) -> dict:
        raw = tcp(server)()
        try:
            if split:  # the header and the ClientHello in one write: the gate hands the rest to TLS
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                raw.sendall(header + outgoing.read())
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        raw.sendall(outgoing.read())
                        data = receive(raw, "the server's handshake")
                        assert data, "the server closed the connection during the handshake"
                        incoming.write(data)
                # The client's Finished and the request in one write: TLS hands the
                # request to HTTP in the read that completes the handshake.
                tls.write(CLOSE)
                raw.sendall(outgoing.read())
                return report(tls_answer(tls, incoming, raw))
            raw.sendall(header)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(CLOSE)
                answer = b""
                while chunk := receive(sock, "the response"):
                    answer += chunk
                return report(answer)
        finally:
            raw.close()

    found = over_tls(V1)
    assert found["client"] == ["203.0.113.7", 4711] and found["scheme"] == "https"
    assert over_tls(V2_IPV6, split=True)["client"] == ["2001:db8::7", 4713]
    assert over_tls(v2(command=0x0, family=0x00, payload=b""))["client"][0] == "127.0.0.1"
    # No header: the ClientHello is refused as a header, unanswered. (Not a
    # timeout: a server that said nothing and kept the connection open fails.)
    raw = tcp(server)()
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        raw.close()


def decrypted(tls: ssl.SSLObject) -> tuple[bytes, bool]:
    """What ``tls`` has decrypted so far, and True once the server's TLS has ended (a close_notify,
    or the connection's end).

    After a close_notify ``SSLObject.read()`` returns ``b""`` on every call
    instead of raising: a loop that only stops on an exception spins forever
    there (what hung this test until pytest-timeout once).
    """
    got = b""
    while True:
        try:
            chunk = tls.read(65536)
        except ssl.SSLWantReadError:
            return got, False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return got, True
        if not chunk:
            return got, True  # the close_notify
        got += chunk


def tls_answer(tls: ssl.SSLObject, incoming: ssl.MemoryBIO, raw: socket.socket) -> bytes:
    """Everything ``tls`` reads until the server's close_notify (or the connection's end)."""
    answer = b""
    while True:
        got, ended = decrypted(tls)
        answer += got
        if ended:
            return answer
        data = receive(raw, "the response")
        if not data:
            return answer  # closed without a close_notify
        incoming.write(data)


# -- the head timeout, in-process on the real gate -----------------------------------


def test_a_header_that_does_not_arrive_in_time_is_dropped() -> None:
    async def scenario() -> tuple[bytes, float, bytes, int]:
        state = ServerState(settings=ServerSettings(app=None, proxy_protocol=True, timeout_request_head=0.3),
                            app=None)
        made: list[asyncio.Protocol] = []

        class Answer(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
                made.append(self)
                peer = transport.get_extra_info("peername")
                transport.write(f"peer {peer[0]} {peer[1]}".encode())  # type: ignore[attr-defined]
                transport.close()

        server = await asyncio.get_running_loop().create_server(gated(state, Answer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(V1[:10])
            began = time.monotonic()
            slow = await asyncio.wait_for(reader.read(), TIMEOUT)
            waited = time.monotonic() - began
            writer.close()
            tracked = len(state.connections) + len(made)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(V1)
            fast = await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
            return slow, waited, fast, tracked
        finally:
            server.close()

    slow, waited, fast, counts = asyncio.run(scenario())
    assert slow == b"" and 0.25 <= waited < 3 * FACTOR, waited
    assert fast == b"peer 203.0.113.7 4711"
    assert counts == 0  # the refused gate left state.connections; no protocol was made for it


def test_a_full_stop_closes_gates_that_received_nothing() -> None:
    async def scenario() -> tuple[bytes, int]:
        state = ServerState(settings=ServerSettings(app=None, proxy_protocol=True), app=None)
        server = await asyncio.get_running_loop().create_server(gated(state, asyncio.Protocol), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            end = loop.time() + TIMEOUT
            while not state.connections and loop.time() < end:
                await asyncio.sleep(0.001)  # until the server side has its connection_made
            waiting = len(state.connections)
            for conn in list(state.connections):
                conn.shutdown(False)
            got = await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
            return got, waiting
        finally:
            server.close()

    got, waiting = asyncio.run(scenario())
    assert waiting == 1 and got == b""


# Every cut of the header and the ClientHello into reads: the gate hands over to
# TLS in the middle of any of them, and no byte reaches the wrong protocol or is lost.
SPLITS: dict[str, Callable[[bytes, bytes], list[bytes]]] = {
    "one read": lambda header, hello: [header + hello],
    "the header alone": lambda header, hello: [header, hello],
    "the header cut, its end with the hello's first byte": lambda header, hello: [
        header[:7], header[7:] + hello[:1], hello[1:]],
    "the hello in 64-byte reads": lambda header, hello: [header] + [hello[i:i + 64] for i in range(0, len(hello), 64)],
}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_after_the_header_at_every_cut_of_the_reads(loop: str, split: str) -> None:
    """In-process, on the real gate: each piece is its own read (the client waits between them)."""
    trustme = require_module("trustme")
    ca = trustme.CA()
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    class Answer(asyncio.Protocol):
        """Answers the first line with the peer it sees, then closes."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            self.transport, self.got = transport, b""

        def data_received(self, data: bytes) -> None:
            self.got += data
            if self.got.endswith(b"\n"):
                host, port = self.transport.get_extra_info("peername")[:2]
                self.transport.write(self.got.strip() + f" from {host} {port}".encode())  # type: ignore[attr-defined]
                self.transport.close()

    async def scenario() -> bytes:
        state = ServerState(settings=ServerSettings(app=None, proxy_protocol=True), app=None)
        server = await asyncio.get_running_loop().create_server(gated(state, Answer, server_tls), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def from_server(what: str) -> bytes:
            try:
                return await asyncio.wait_for(reader.read(65536), TIMEOUT)
            except asyncio.TimeoutError:
                raise AssertionError(f"nothing from the server within {TIMEOUT:g}s while waiting for {what}") from None

        try:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = client_tls.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            for piece in SPLITS[split](V2_IPV6, outgoing.read()):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.01)  # the gate reads it before the next piece is sent
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    data = await from_server("the handshake")
                    assert data, "the server closed the connection during the handshake"
                    incoming.write(data)
            tls.write(b"ping\n")
            writer.write(outgoing.read())  # the client's Finished and the data in one read
            answer = b""
            while True:
                got, ended = decrypted(tls)
                answer += got
                if ended:
                    return answer
                data = await from_server("the answer")
                if not data:
                    return answer
                incoming.write(data)
        finally:
            writer.close()
            server.close()

    if loop == "uvloop":
        uvloop = require_module("uvloop")
        event_loop = uvloop.new_event_loop()
    else:
        event_loop = asyncio.new_event_loop()
    try:
        answer = event_loop.run_until_complete(scenario())
    finally:
        event_loop.close()
    assert answer == b"ping from 2001:db8::7 4713"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_loops_hand_over(corral: Callable[..., Corral], loop: str) -> None:
    server = start(corral, "--loop", loop)
    assert good(tcp(server), V2_IPV6)["client"] == ["2001:db8::7", 4713]
    assert talk(tcp(server), MALFORMED["v2 unknown family"]) == b""


def test_a_websocket_behind_the_header_has_the_headers_client(corral: Callable[..., Corral]) -> None:
    """The WebSocket hand-off takes the same transport: its access-log line names the header's client."""
    server = start(corral)
    sock = tcp(server)()
    try:
        sock.sendall(V2_IPV6 + b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = receive(sock, "the 101 answer")
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        # A masked text frame "hi"; the echo comes back unmasked.
        sock.sendall(b"\x81\x82" + b"\x01\x02\x03\x04" + bytes(c ^ k for c, k in zip(b"hi", b"\x01\x02", strict=True)))
        echo = answer.partition(b"\r\n\r\n")[2]
        while len(echo) < 4:
            chunk = receive(sock, "the echoed frame")
            assert chunk, f"closed before the echo: {echo!r}"
            echo += chunk
        assert echo[:4] == b"\x81\x02hi"
    finally:
        sock.close()
    server.wait_log('[2001:db8::7]:4713 - "GET /ws HTTP/1.1" 101')


@pytest.mark.parametrize("http", ["h11", "zttp"])
def test_every_http1_parser_sits_behind_the_gate(corral: Callable[..., Corral], http: str) -> None:
    require_module(http)
    server = start(corral, "--http", http)
    assert good(tcp(server), V2_IPV6)["client"] == ["2001:db8::7", 4713]
    assert talk(tcp(server), MALFORMED["v1 bad signature"]) == b""
    assert good(tcp(server))["client"] == ["203.0.113.7", 4711]


def test_http2_prior_knowledge_behind_the_gate(corral: Callable[..., Corral]) -> None:
    """HTTP/2 (zttp, cleartext prior knowledge) starts after the header and sees its client."""
    require_module("zttp")
    h2 = require_module("h2.connection")
    events = require_module("h2.events")
    server = start(corral, "--http", "zttp", "--http2")
    sock = tcp(server)()
    try:
        conn = h2.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", "/whoami"), (":scheme", "http"),
                              (":authority", "x")], end_stream=True)
        sock.sendall(V1 + conn.data_to_send())
        body, ended = b"", False
        while not ended:
            data = receive(sock, "the HTTP/2 response")
            assert data, "closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    found = json.loads(body)
    assert found["client"] == ["203.0.113.7", 4711] and found["http_version"] == "2"


def test_gunicorn_worker_reads_the_header(tmp_path: Path) -> None:
    """gunicorn -k CorralWorker --proxy-protocol --proxy-allow-from: gunicorn's two settings carry over."""
    import sys

    from tests.support import ROOT, Proc, bound_socket

    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    sock = bound_socket()
    proc = Proc([gunicorn, "-k", "server_core.workers.CorralWorker", "--bind", f"fd://{sock.fileno()}",
                 "--no-control-socket", "--proxy-protocol", "--proxy-allow-from", "127.0.0.1",
                 "tests.apps.int_echo:app"], tmp_path, pass_fds=(sock.fileno(),), cwd=ROOT, name="gunicorn")
    try:
        host, port = sock.getsockname()[:2]

        def connect() -> socket.socket:
            return socket.create_connection((host, port), timeout=TIMEOUT)

        def served() -> dict | None:
            try:
                return report(talk(connect, V2_IPV6 + CLOSE))
            except (OSError, AssertionError):
                return None

        assert wait_until(served, 30, "gunicorn serving", alive=proc.dead)["client"] == ["2001:db8::7", 4713]
        assert talk(connect, CLOSE) == b""
        assert talk(lambda: socket.create_connection((host, port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)),
                    V1 + CLOSE) == b""
    finally:
        proc.kill()
        sock.close()
