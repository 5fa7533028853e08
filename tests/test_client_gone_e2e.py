"""Greedy and departed clients against the real ``corral`` CLI (issue 12, items 1 and 3).

- A client that pipelines ``GET /`` as fast as it can and never reads the
  answers, with a small receive buffer: the worker stops starting requests and
  stops reading while its write buffer is full, so the kernel's buffers push
  back on the client, and it parses pipelined requests a batch at a time, so
  the worker's RSS stays below its start plus 64 MiB, with eight such connections.
- An SSE stream whose client closes its socket: the app's next ``send()``
  raises an OSError within a second, without a traceback in the log, and the
  access log line says 499 (the response was cut short).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.support import FACTOR, Corral, flood, wait_until, worker_pids

FLOOD_SECONDS = 10.0
BOUND = 64 * 1024 * 1024
# Each connection used to cost some 12 MiB (one read's worth of parsed
# requests): eight of them passed the bound.
FLOOD_CONNECTIONS = 8


@pytest.mark.parametrize("http", ["httptools", "h11", "zttp"])
def test_pipelining_flood_whose_answers_are_never_read_keeps_memory_bounded(
        corral: Callable[..., Corral], http: str) -> None:
    server = corral("sse_app:app", "--http", http, "--log-level", "warning", "--no-access-log")
    (pid,) = wait_until(lambda: worker_pids(server.pid), 10, "the worker", alive=server.dead)
    worker = psutil.Process(pid)
    clients = []
    for _ in range(FLOOD_CONNECTIONS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.setblocking(False)
        clients.append(sock)
    burst = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 1024
    try:
        start, peak, sent = flood(worker, clients, burst, FLOOD_SECONDS, BOUND, f"--http {http}")
        assert server.dead() is None
        print(f"--http {http}: RSS {start >> 20} -> peak {peak >> 20} MiB; {sent >> 20} MiB of requests sent")
    finally:
        for client in clients:
            client.close()


def _records(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("http", ["httptools", "h11", "zttp"])
def test_sse_client_that_leaves_makes_send_raise_within_a_second(
        corral: Callable[..., Corral], tmp_path: Path, http: str) -> None:
    record = tmp_path / "sse.txt"
    server = corral("sse_app:app", "--http", http, "--log-level", "debug", env={"SSE_RECORD": str(record)})
    sock = socket.create_connection((server.host, server.port), timeout=10 * FACTOR)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
    received = b""
    while received.count(b"data: ") < 3:
        chunk = sock.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    sock.close()
    left = time.monotonic()
    lines = wait_until(lambda: _records(record), 5, "send() to raise in the app", alive=server.dead)
    _, at, kind, is_oserror = lines[0].split()
    assert is_oserror == "True", lines
    assert float(at) - left < 1.0, f"send() raised {float(at) - left:.2f}s after the client left"
    wait_until(lambda: '"GET /events HTTP/1.1" 499' in server.output(), 5, "the access log line with 499",
               alive=server.dead)
    output = server.output()
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output[-3000:]
    assert '"GET /events HTTP/1.1" 200' not in output


@pytest.mark.parametrize("http", ["httptools", "h11", "zttp"])
def test_app_that_saw_disconnect_then_sends_gets_an_oserror(
        corral: Callable[..., Corral], tmp_path: Path, http: str) -> None:
    record = tmp_path / "poll.txt"
    server = corral("sse_app:app", "--http", http, env={"SSE_RECORD": str(record)})
    sock = socket.create_connection((server.host, server.port), timeout=10 * FACTOR)
    sock.sendall(b"GET /poll HTTP/1.1\r\nHost: t\r\n\r\n")
    # The client leaves once the app waits in receive(): the app is told, then tries to answer.
    wait_until(lambda: _records(record) == ["waiting"], 5, "the app waiting in receive()", alive=server.dead)
    sock.close()
    wait_until(lambda: len(_records(record)) >= 3, 5, "the app told and answering", alive=server.dead)
    lines = _records(record)[1:]
    assert lines[:1] == ["disconnect"], lines
    assert lines[1:] == ["poll-raised ClientDisconnected True"], lines
    wait_until(lambda: '"GET /poll HTTP/1.1" 499' in server.output(), 5, "the access log line with 499",
               alive=server.dead)
    output = server.output()
    assert "Traceback" not in output, output[-3000:]
