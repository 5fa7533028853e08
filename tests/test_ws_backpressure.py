"""A WebSocket client that floods pings and never reads the pongs cannot grow a worker's memory.

The flood clients are raw sockets with a tiny receive buffer: they send masked ping
frames (as a client must) as fast as the server takes them and never read.
The worker must stop reading while its write buffer is full, so the kernel's
buffers push back on the client; its RSS (psutil) must stay below its start
plus 64 MiB over a 10 s flood, on both engines.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable

import psutil
import pytest

from tests.support import FACTOR, Corral, flood, wait_until, worker_pids
from tests.test_ws_session import TIMEOUT, Server, raw_connect, serve  # noqa: F401 (serve: a fixture)

FLOOD_SECONDS = 10.0
BOUND = 64 * 1024 * 1024
CLIENTS = 4


def ping_frame(payload: bytes) -> bytes:
    """One masked ping frame (a client's frames are masked, RFC 6455 §5.3)."""
    assert len(payload) <= 125
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x89, 0x80 | len(payload)]) + mask + masked


def open_websocket(server: Corral, path: str = "/wait") -> socket.socket:
    """A raw WebSocket client socket past its 101, with a 4 KiB receive buffer it never drains."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10 * FACTOR)
    sock.connect((server.host, server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_ping_flood_whose_pongs_are_never_read_keeps_memory_bounded(
        corral: Callable[..., Corral], ws: str) -> None:
    server = corral("ws_echo:app", "--ws", ws, "--log-level", "warning", "--ws-ping-interval", "0")
    (pid,) = wait_until(lambda: worker_pids(server.pid), 10, "the worker", alive=server.dead)
    worker = psutil.Process(pid)
    clients = [open_websocket(server) for _ in range(CLIENTS)]
    burst = ping_frame(b"p" * 125) * 512
    try:
        start, peak, sent = flood(worker, clients, burst, FLOOD_SECONDS, BOUND, f"--ws {ws}")
        assert server.dead() is None
        print(f"--ws {ws}: RSS {start >> 20} -> peak {peak >> 20} MiB; {sent >> 20} MiB of pings sent")
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("ws", ["websockets", "wsproto"])
def test_peer_that_reads_nothing_is_dropped_at_ping_timeout(serve: Callable[..., Server], ws: str) -> None:  # noqa: F811
    """Reading paused because the peer reads nothing: the ping timeout aborts, no Close queued behind.

    In process (tests/test_ws_session.py's server): a graceful close would wait
    for the peer to read megabytes first, which it never will.
    """
    server = serve(ws=ws, ws_ping_interval=0.2, ws_ping_timeout=0.5)
    sock, head, _ = raw_connect(server, "/flood?n=400&size=65536")
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        wait_until(lambda: server.call(lambda: session._write_paused), TIMEOUT, "writing to pause")
        wait_until(lambda: not server.sessions(), TIMEOUT, "the session to be dropped")
        wait_until(lambda: not server.call(lambda: len(server.state.tasks)), TIMEOUT, "the app task to end")
        assert not server.logged(("flood-done",))
