"""corral behind a real HAProxy running the shipped etc/haproxy.cfg, with the PROXY protocol.

The test copies etc/haproxy.cfg into tmp_path and substitutes only the public
address, corral's address and, for v1, ``send-proxy-v2`` by ``send-proxy``
(each substitution must match, so an edit of the shipped file that breaks the
test's assumptions fails loudly), then runs ``haproxy -db -f CONF`` in the
foreground in front of ``corral --proxy-protocol`` on a socket handed down with
``--fd`` (trusting HAProxy through the default ``--forwarded-allow-ips``,
127.0.0.1). Every test runs once with each version of the header.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.load import Load
from tests.support import (
    ROOT,
    Corral,
    Proc,
    free_port,
    port_answers,
    require_tool,
    substitute,
    wait_until,
    worker_pids,
)

SHIPPED = ROOT / "etc" / "haproxy.cfg"
# A client address that is neither HAProxy's nor corral's: loopback answers all of 127/8.
CLIENT_HOST = "127.0.0.2"


def render_haproxy_cfg(tmp: Path, *, port: int, corral_port: int, version: int) -> Path:
    """etc/haproxy.cfg listening on ``port`` in front of corral on ``corral_port``."""
    substitutions = {
        "bind :80": f"bind 127.0.0.1:{port}",
        "127.0.0.1:8000": f"127.0.0.1:{corral_port}",
    }
    if version == 1:
        substitutions["send-proxy-v2"] = "send-proxy"
    conf = tmp / f"haproxy-v{version}.cfg"
    conf.write_text(substitute(SHIPPED, substitutions))
    return conf


@dataclass
class Stack:
    """HAProxy on ``port`` in front of corral."""

    haproxy: Proc
    corral: Corral
    port: int
    version: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(params=[1, 2], ids=["send-proxy", "send-proxy-v2"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, corral: Callable[..., Corral],
          procs: Callable[..., Proc]) -> Iterator[Stack]:
    haproxy_bin = require_tool("haproxy", "/usr/sbin/haproxy")
    version = request.param
    server = corral("int_echo:app", "--proxy-protocol", "--workers", "2", wait=False)
    port = free_port()
    conf = render_haproxy_cfg(tmp_path, port=port, corral_port=server.port, version=version)
    haproxy = procs([haproxy_bin, "-db", "-f", str(conf)], name="haproxy")

    def both_alive() -> str | None:
        return haproxy.dead() or server.dead()

    wait_until(lambda: port_answers("127.0.0.1", port), 20, f"haproxy listening on port {port}", alive=both_alive)

    def proxied() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/whoami", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(proxied, 30, "corral answering through haproxy", alive=both_alive, interval=0.05)
    yield Stack(haproxy, server, port, version)


def exchange(sock: socket.socket, path: str) -> dict:
    """One keep-alive GET on ``sock``; the JSON report of int_echo."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return json.loads(body)


def test_the_app_sees_the_client_behind_haproxy(stack: Stack) -> None:
    """scope client is the client's address and port, server the address it connected to."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10,
                                  source_address=(CLIENT_HOST, 0)) as sock:
        here = sock.getsockname()
        first = exchange(sock, "/whoami")
        second = exchange(sock, "/again")  # the same connection: the same client
    assert first["client"] == [CLIENT_HOST, here[1]], first
    assert first["server"] == ["127.0.0.1", stack.port], first
    assert second["client"] == first["client"] and second["server"] == first["server"]
    stack.corral.wait_log(f'{CLIENT_HOST}:{here[1]} - "GET /again HTTP/1.1" 200')


def test_health_checks_come_with_a_local_header(stack: Stack) -> None:
    """HAProxy's checks (LOCAL in v2, UNKNOWN in v1) are served with the real peer, never refused."""
    stack.corral.wait_log('"GET /healthz HTTP/1.1" 200', timeout=10)
    output = stack.corral.output()
    checks = [line for line in output.splitlines() if '"GET /healthz HTTP/1.1" 200' in line]
    assert checks and all(" 127.0.0.1:" in line for line in checks), checks
    assert "PROXY protocol: closed" not in output


def test_hup_roll_behind_haproxy_has_no_failed_request(stack: Stack) -> None:
    master = stack.corral.pid

    def two_workers() -> set[int] | None:
        pids = worker_pids(master)
        return pids if len(pids) == 2 else None

    old = wait_until(two_workers, 20, "two corral workers", alive=stack.corral.dead)
    with Load(stack.url + "/pid", clients=8, duration=60) as load:
        load.wait_successes(100)
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: len(pids := worker_pids(master)) == 2 and not (pids & old), 40,
                   "both workers replaced after HUP", alive=stack.corral.dead, interval=0.05)
        mark = load.snapshot()
        load.wait_successes(100)
        served_after = {int(pid) for pid in load.pids_since(mark)}
    report = load.report
    assert report.failed == 0, report.summary()
    assert served_after and not served_after & old, report.summary()
    # No connection through HAProxy was refused for want of a PROXY header.
    assert "PROXY protocol: closed" not in stack.corral.output()
