"""--timeout-tls-handshake: a connection that never finishes its TLS handshake is dropped after S seconds.

Through the real `corral` command with a trustme certificate; the client is
a raw TCP socket that connects and sends nothing (or half a ClientHello), and
the test polls for the server's EOF against a deadline.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support import FACTOR, Corral, wait_until

SLACK = 4.0


def tls_server(corral: Callable[..., Corral], tmp_path: Path, *args: str) -> tuple[Corral, ssl.SSLContext]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    server = corral("guard_app:app", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), *args,
                    wait=False)
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def answers() -> bool:
        try:
            return httpx.get(f"https://127.0.0.1:{server.port}/", verify=context, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 30, "corral answering over TLS", alive=server.dead, interval=0.1)
    return server, context


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails after ``limit``."""
    start = time.monotonic()
    sock.settimeout(0.1)

    def closed() -> bool:
        try:
            return sock.recv(65536) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    wait_until(closed, limit, "the server to drop the silent TLS connection", interval=0)
    return time.monotonic() - start


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("first", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["nothing", "half-a-client-hello"])
def test_a_handshake_not_done_in_time_is_dropped(corral: Callable[..., Corral], tmp_path: Path,
                                                 first: bytes, loop: str) -> None:
    server, _ = tls_server(corral, tmp_path, "--timeout-tls-handshake", "1", "--loop", loop)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(first)
        took = seconds_until_closed(sock, 1 + SLACK)
    assert 0.5 <= took <= 1 + SLACK * FACTOR, took
    assert server.dead() is None


def test_the_handshake_timeout_does_not_limit_an_established_connection(corral: Callable[..., Corral],
                                                                        tmp_path: Path) -> None:
    server, context = tls_server(corral, tmp_path, "--timeout-tls-handshake", "1")
    with httpx.Client(verify=context, timeout=10) as client:
        url = f"https://127.0.0.1:{server.port}/"
        first = client.get(url)
        time.sleep(2)  # past the handshake timeout, within the keep-alive timeout (5 s)
        second = client.get(url)
    assert first.status_code == second.status_code == 200
    assert first.extensions["network_stream"] is second.extensions["network_stream"], "one connection"
