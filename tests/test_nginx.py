"""corral behind a real nginx running the shipped etc/nginx.conf.

The test copies etc/nginx.conf into tmp_path and substitutes only the paths and
the port (each substitution must match, so an edit of the shipped file that
breaks the test's assumptions fails loudly), then runs
``nginx -p TMP -c CONF -g 'daemon off;'`` in the foreground in front of
``corral --uds TMP/corral.sock --proxy-headers --forwarded-allow-ips '*'``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect as ws_connect

from tests.load import Load
from tests.support import (
    FACTOR,
    ROOT,
    Corral,
    Proc,
    free_port,
    port_answers,
    require_tool,
    substitute,
    wait_until,
)

SHIPPED = ROOT / "etc" / "nginx.conf"


def render_nginx_conf(tmp: Path, *, port: int, uds: Path, static_root: Path) -> Path:
    """etc/nginx.conf with its documented paths and port rewritten into ``tmp``."""
    (tmp / "logs").mkdir(exist_ok=True)
    (tmp / "temp").mkdir(exist_ok=True)
    substitutions = {
        "unix:/run/corral/corral.sock": f"unix:{uds}",
        "alias /srv/app/static/;": f"alias {static_root}/;",
        "listen 80;": f"listen 127.0.0.1:{port};",
        "pid /run/nginx.pid;": f"pid {tmp}/nginx.pid;",
        "/var/log/nginx/": f"{tmp}/logs/",
        "/var/lib/nginx/": f"{tmp}/temp/",
        # As root the workers would switch to www-data, which cannot enter
        # pytest's private tmp directory; unprivileged, nginx ignores "user".
        "user www-data;": "user root;" if os.geteuid() == 0 else "",
    }
    text = substitute(SHIPPED, substitutions)
    if not Path("/etc/nginx/mime.types").exists():
        (tmp / "mime.types").write_text("types { text/plain txt; text/css css; }\n")
        text = text.replace("include /etc/nginx/mime.types;", f"include {tmp}/mime.types;")
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return conf


@dataclass
class Stack:
    """nginx on ``url`` in front of corral on a UNIX socket."""

    nginx: Proc
    corral: Corral
    url: str
    port: int
    static_root: Path

    def get_json(self, path: str, **kw: object) -> dict:
        response = httpx.get(self.url + path, timeout=10, **kw)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def stack(tmp_path: Path, corral: Callable[..., Corral], procs: Callable[..., Proc]) -> Iterator[Stack]:
    nginx_bin = require_tool("nginx", "/usr/sbin/nginx")
    uds = tmp_path / "corral.sock"
    static_root = tmp_path / "static"
    static_root.mkdir()
    (static_root / "hello.txt").write_text("static hello from nginx\n")
    port = free_port()
    conf = render_nginx_conf(tmp_path, port=port, uds=uds, static_root=static_root)
    server = corral("int_echo:app", "--uds", str(uds), "--proxy-headers", "--forwarded-allow-ips", "*",
                    "--workers", "2", fd=False, wait=False)
    nginx = procs([nginx_bin, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "logs" / "error.log"),
                   "-g", "daemon off;"], name="nginx")

    def both_alive() -> str | None:
        return nginx.dead() or server.dead()

    wait_until(lambda: port_answers("127.0.0.1", port), 20, f"nginx listening on port {port}", alive=both_alive)
    url = f"http://127.0.0.1:{port}"

    def proxied() -> bool:
        try:
            return httpx.get(url + "/whoami", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(proxied, 30, "corral answering through nginx", alive=both_alive, interval=0.05)
    yield Stack(nginx, server, url, port, static_root)


def test_client_and_scheme_come_from_nginx(stack: Stack) -> None:
    """The app sees the real client and scheme; forwarding headers a client forges are overwritten."""
    report = stack.get_json("/whoami", headers={
        "X-Forwarded-For": "203.0.113.7",  # a client lying about its address
        "X-Forwarded-Proto": "https",      # and about the scheme
        "X-Forwarded-Port": "4443",
    })
    assert report["client"][0] == "127.0.0.1"
    assert report["scheme"] == "http"
    headers = dict(report["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(stack.port)
    assert headers["host"] == f"127.0.0.1:{stack.port}"
    # Upstream keep-alive: nginx sends an empty Connection header for plain requests.
    assert headers.get("connection", "") in ("", "keep-alive")


def test_without_trust_the_proxy_headers_are_ignored(tmp_path: Path, corral: Callable[..., Corral]) -> None:
    """Control experiment: the same UNIX socket without '*' does not believe the headers."""
    uds = tmp_path / "untrusted.sock"
    server = corral("int_echo:app", "--uds", str(uds), "--proxy-headers", fd=False, wait=False)

    def answers() -> httpx.Response | None:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(uds)), timeout=2) as client:
                return client.get("http://localhost/whoami", headers={"X-Forwarded-For": "203.0.113.7",
                                                                      "X-Forwarded-Proto": "https"})
        except httpx.HTTPError:
            return None

    response = wait_until(answers, 30, "corral answering on its UNIX socket", alive=server.dead)
    report = response.json()
    assert report["scheme"] == "http"
    assert report["client"] is None or report["client"][0] != "203.0.113.7"


def test_static_files_are_served_by_nginx(stack: Stack) -> None:
    response = httpx.get(stack.url + "/static/hello.txt", timeout=10)
    assert response.status_code == 200
    assert response.text == "static hello from nginx\n"
    assert response.headers["content-type"].startswith("text/plain")
    assert httpx.get(stack.url + "/static/missing.txt", timeout=10).status_code == 404
    # corral never saw them: a proxied request is logged, the static ones are not.
    stack.get_json("/marker-request")
    stack.corral.wait_log("/marker-request")
    assert "/static/hello.txt" not in stack.corral.output()


def test_websocket_through_nginx(stack: Stack) -> None:
    with ws_connect(f"ws://127.0.0.1:{stack.port}/ws", open_timeout=10, close_timeout=5) as ws:
        ws.send("hello through nginx")
        assert ws.recv(timeout=10) == "hello through nginx"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        big = "x" * 200_000
        ws.send(big)
        assert ws.recv(timeout=10) == big


def _worker_pids(master: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(master).children()}
    except psutil.NoSuchProcess:
        return set()


def test_hup_roll_behind_nginx_has_no_failed_request(stack: Stack) -> None:
    master = stack.corral.pid

    def two_workers() -> set[int] | None:
        pids = _worker_pids(master)
        return pids if len(pids) == 2 else None

    old = wait_until(two_workers, 20, "two corral workers", alive=stack.corral.dead)
    with Load(stack.url + "/pid", clients=4, duration=90) as load:
        load.wait_successes(50)
        os.kill(master, signal.SIGHUP)

        def rolled() -> bool:
            pids = _worker_pids(master)
            return len(pids) == 2 and not (pids & old)

        wait_until(rolled, 60, "both workers replaced after HUP", alive=stack.corral.dead, interval=0.05)
        mark = load.snapshot()
        load.wait_successes(50)
        served_after = {int(pid) for pid in load.pids_since(mark)}
    report = load.report
    assert report.failed == 0, report.summary()
    assert served_after and not served_after & old, report.summary()
    assert stack.corral.popen.poll() is None


def test_usr2_upgrade_behind_nginx_keeps_the_unix_socket(stack: Stack) -> None:
    """The in-place upgrade hands the UNIX socket over: same file, same master, no failed request."""
    master = stack.corral.pid
    uds = stack.corral.argv[stack.corral.argv.index("--uds") + 1]
    inode = os.stat(uds).st_ino

    def two_workers() -> set[int] | None:
        pids = _worker_pids(master)
        return pids if len(pids) == 2 else None

    old = wait_until(two_workers, 20, "two corral workers", alive=stack.corral.dead)
    with Load(stack.url + "/pid", clients=4, duration=90) as load:
        load.wait_successes(50)
        os.kill(master, signal.SIGUSR2)

        def upgraded() -> bool:
            pids = _worker_pids(master)
            return len(pids) == 2 and not (pids & old)

        def failed() -> str | None:
            output = stack.corral.output()
            for event in ("upgrade_rollback", "upgrade_unavailable"):
                if event in output:
                    return f"corral logged {event}:\n{output[-3000:]}"
            return stack.corral.dead()

        wait_until(upgraded, 90, "the upgraded master's workers replacing the old ones", alive=failed,
                   interval=0.05)
        mark = load.snapshot()
        load.wait_successes(50)
        served_after = {int(pid) for pid in load.pids_since(mark)}
    report = load.report
    assert report.failed == 0, report.summary()
    assert served_after and not served_after & old, report.summary()
    assert os.stat(uds).st_ino == inode  # the very socket nginx connects to, never re-created
    assert stack.corral.popen.poll() is None


def test_websocket_through_nginx_is_closed_1012_by_a_roll(stack: Stack) -> None:
    """A HUP roll closes an open WebSocket with 1012 (service restart) through nginx; a new one works."""
    from websockets.exceptions import ConnectionClosed

    master = stack.corral.pid

    def two_workers() -> set[int] | None:
        pids = _worker_pids(master)
        return pids if len(pids) == 2 else None

    old = wait_until(two_workers, 20, "two corral workers", alive=stack.corral.dead)
    with ws_connect(f"ws://127.0.0.1:{stack.port}/ws", open_timeout=10, close_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        os.kill(master, signal.SIGHUP)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=60 * FACTOR)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    # Until the roll is over, a new connection may land on an old worker that
    # retires next (and closes it with 1012 as well): reconnect after it.
    wait_until(lambda: (pids := _worker_pids(master)) and len(pids) == 2 and not pids & old, 60,
               "both workers replaced after HUP", alive=stack.corral.dead, interval=0.05)
    with ws_connect(f"ws://127.0.0.1:{stack.port}/ws", open_timeout=10, close_timeout=5) as ws:
        ws.send("after")
        assert ws.recv(timeout=10) == "after"
