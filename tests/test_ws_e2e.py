"""WebSockets through the real `corral` command: master, worker, HTTP upgrade, both engines.

The server is started with the `corral` fixture (a fresh `--fd` socket, apps from
tests/apps); the clients are the `websockets` library's sync client and, where a
client must stop answering, a raw socket.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support import FACTOR, Corral, wait_until
from tests.test_ws_session import read_until_close

ENGINES = ["websockets", "wsproto", "websockets-sansio"]
TIMEOUT = 15 * FACTOR


def ws_connect(server: Corral, path: str = "/echo", *, scheme: str = "ws", **kw: Any) -> ClientConnection:
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", TIMEOUT)
    kw.setdefault("ping_interval", None)
    return connect(f"{scheme}://{server.host}:{server.port}{path}", **kw)


def close_frame(conn: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; return the code and reason of its Close frame."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            conn.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None, "closed without a Close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.mark.parametrize("ws", ENGINES)
def test_echo_through_cli(corral: Callable[..., Corral], ws: str) -> None:
    server = corral("ws_echo:app", "--ws", ws)
    with ws_connect(server, "/scope?subprotocol=chat", subprotocols=["chat"]) as conn:
        assert conn.subprotocol == "chat"
        # The default headers of every corral response are on the 101 too.
        assert conn.response.headers["server"] == "corral"
        assert len(conn.response.headers.get_all("date")) == 1
        scope = json.loads(conn.recv(timeout=TIMEOUT))
        assert scope["scheme"] == "ws" and scope["path"] == "/scope"
        conn.send("hello")
        assert conn.recv(timeout=TIMEOUT) == "hello"
        conn.send(b"\x00" * 100_000)
        assert conn.recv(timeout=TIMEOUT) == b"\x00" * 100_000
        conn.send("close:4100:bye")
        assert close_frame(conn) == (4100, "bye")


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_options_through_cli(corral: Callable[..., Corral], ws: str) -> None:
    server = corral("ws_echo:app", "--ws", ws, "--ws-max-size", "1000", "--ws-per-message-deflate", "false")
    with ws_connect(server) as conn:
        assert conn.response.headers.get("Sec-WebSocket-Extensions") is None
        conn.send("x" * 1001)
        assert close_frame(conn)[0] == 1009
    server.wait_log("ws-disconnect 1009")


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_denial_through_cli(corral: Callable[..., Corral], ws: str) -> None:
    server = corral("ws_echo:app", "--ws", ws)
    with pytest.raises(InvalidStatus) as info:
        ws_connect(server, "/deny")
    assert info.value.response.status_code == 403
    assert info.value.response.body == b"denied: go away"


def test_ws_none_through_cli(corral: Callable[..., Corral]) -> None:
    server = corral("ws_echo:app", "--ws", "none")
    with pytest.raises(InvalidStatus) as info:
        ws_connect(server)
    assert info.value.response.status_code == 200
    assert info.value.response.body == b"plain http /echo"


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_wss_through_cli(corral: Callable[..., Corral], tmp_path: Path, ws: str) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(key_file)
    cert.cert_chain_pems[0].write_to_path(cert_file)
    # The fixture's readiness probe speaks plain HTTP: poll with the wss client instead.
    server = corral("ws_echo:app", "--ws", ws, "--ssl-keyfile", str(key_file), "--ssl-certfile", str(cert_file),
                    wait=False)
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def opened() -> ClientConnection | None:
        try:
            return ws_connect(server, "/scope", scheme="wss", ssl=context, open_timeout=2)
        except OSError:
            return None
    conn = wait_until(opened, TIMEOUT, "a wss connection", alive=server.dead, interval=0.1)
    with conn:
        assert json.loads(conn.recv(timeout=TIMEOUT))["scheme"] == "wss"


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
@pytest.mark.parametrize("sig, code", [(signal.SIGHUP, 1012), (signal.SIGTERM, 1001)])
def test_open_websocket_closed_on_restart_and_stop(corral: Callable[..., Corral], ws: str,
                                                   sig: int, code: int) -> None:
    """HUP rolls the worker (1012, service restart); TERM stops (1001, going away) — promptly."""
    server = corral("ws_echo:app", "--ws", ws, "--timeout-graceful-shutdown", "60")
    with ws_connect(server, "/wait") as conn:
        conn.ping().wait(TIMEOUT)  # open and served
        server.signal(sig)
        assert close_frame(conn)[0] == code
    server.wait_log(f"ws-disconnect {code}")
    if sig == signal.SIGTERM:
        # An open WebSocket does not hold the stop for the 60 s graceful timeout.
        assert server.wait_exit(timeout=20) == 0


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_ping_options_through_cli(corral: Callable[..., Corral], ws: str) -> None:
    """--ws-ping-interval/--ws-ping-timeout reach the worker: a silent peer is closed 1011."""
    server = corral("ws_echo:app", "--ws", ws, "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.5")
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                     b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed during the handshake"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        opcodes, code = read_until_close(sock, rest)  # we never answer the pings
        assert 0x9 in opcodes and code == 1011
    server.wait_log("ws-disconnect 1011 keepalive ping timeout")
