"""End-to-end HTTP through the real `corral` command line, on both parsers.

Every test starts the CLI as a subprocess (the `corral` fixture hands it a
pre-bound socket with --fd) and talks to it with a real client: httpx, curl,
or a raw socket where the bytes on the wire are the point. The second half
checks each error case for its message and exit status.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import APPS, FACTOR, Corral, bound_socket, require_tool, tls_files, wait_until

Start = Callable[..., Corral]


@pytest.fixture(params=["httptools", "h11"])
def serve(request: pytest.FixtureRequest, corral: Start) -> Start:
    """Start corral with `--http` set to each parser in turn."""

    def start(*args: str, **kw: Any) -> Corral:
        return corral(*args, "--http", request.param, **kw)

    return start


def get_json(server: Corral, path: str = "/whoami", **kw: Any) -> dict[str, Any]:
    response = httpx.get(server.url + path, timeout=10, **kw)
    assert response.status_code == 200, response.text
    return response.json()


# -- raw HTTP/1.1 on a socket, where the bytes matter ---------------------------------

def connect(server: Corral) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10 * FACTOR)
    return sock


class RawReader:
    """Reads HTTP/1.1 responses off a socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = self.file.readline()
            assert line, "connection closed inside a response head"
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            return status, headers, b""
        if head_only or status in (204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self._chunked()
        length = int(headers.get("content-length", "0"))
        return status, headers, self.file.read(length)

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self.file.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.file.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            body += self.file.read(size)
            self.file.readline()


# -- HTTP behaviour ----------------------------------------------------------------------

def test_keep_alive_reuses_one_connection(serve: Start) -> None:
    server = serve("int_echo:app")
    with httpx.Client(base_url=server.url, timeout=10) as client:
        ports = set()
        for _ in range(5):
            response = client.get("/whoami")
            assert response.status_code == 200
            assert response.headers.get("connection", "keep-alive").lower() != "close"
            ports.add(response.json()["client"][1])
    assert len(ports) == 1, f"requests came from {len(ports)} connections"


def test_default_server_and_date_headers(serve: Start) -> None:
    server = serve("int_echo:app")
    response = httpx.get(server.url + "/whoami", timeout=10)
    assert response.headers["server"] == "corral"
    assert response.headers["date"].endswith(" GMT")


def test_pipelined_requests_are_answered_in_order(serve: Start) -> None:
    server = serve("int_echo:app")
    with connect(server) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nsecond"
                     b"GET /third HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        reader = RawReader(sock)
        first, second, third = reader.response(), reader.response(), reader.response()
        assert sock.recv(1) == b""  # closed after the third, as asked
    assert json.loads(first[2])["path"] == "/first"
    assert second[2] == b"second"
    assert json.loads(third[2])["path"] == "/third"


def test_one_mebibyte_post_is_echoed_intact(serve: Start) -> None:
    server = serve("int_echo:app")
    payload = os.urandom(1 << 20)
    response = httpx.post(server.url + "/echo", content=payload, timeout=30)
    assert response.status_code == 200
    assert len(response.content) == len(payload)
    assert response.content == payload


def test_chunked_request_and_chunked_response(serve: Start) -> None:
    server = serve("int_echo:app")
    parts = [bytes([i]) * (10_000 + i) for i in range(8)]

    def body() -> Iterator[bytes]:
        yield from parts

    # A generator body has no length: httpx sends it chunked.
    response = httpx.post(server.url + "/echo?chunked=1", content=body(), timeout=30)
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert response.content == b"".join(parts)


def test_expect_100_continue_with_curl(serve: Start, tmp_path: Path) -> None:
    curl = require_tool("curl")
    server = serve("int_echo:app")
    big = tmp_path / "bigfile"
    big.write_bytes(os.urandom(300_000))
    out = tmp_path / "out"
    done = subprocess.run([curl, "-sS", "-v", "-H", "Expect: 100-continue", "--data-binary", f"@{big}",
                           "-o", str(out), "-w", "%{http_code}", server.url + "/echo"],
                          capture_output=True, text=True, timeout=30 * FACTOR)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200"
    assert "HTTP/1.1 100 Continue" in done.stderr, done.stderr
    assert out.read_bytes() == big.read_bytes()


def test_head_has_headers_and_no_body(serve: Start) -> None:
    server = serve("int_echo:app")
    with connect(server) as sock:
        sock.sendall(b"HEAD /whoami HTTP/1.1\r\nHost: t\r\n\r\nGET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        reader = RawReader(sock)
        status, headers, _ = reader.response(head_only=True)
        assert status == 200
        assert int(headers["content-length"]) > 0
        # No body bytes followed the HEAD answer: the next thing is the GET's answer.
        status, _, body = reader.response()
        assert status == 200 and body.isdigit()


def test_limit_concurrency_answers_503(serve: Start, tmp_path: Path) -> None:
    server = serve("int_echo:app", "--limit-concurrency", "1")
    for attempt in range(3):
        mark = tmp_path / f"in-flight-{attempt}"
        with connect(server) as slow:
            slow.sendall(f"GET /slow?seconds=2&mark={mark} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            # In flight once the app has it, unless it was refused itself because
            # the fixture's readiness probe had not been closed yet on the server.
            wait_until(lambda mark=mark, slow=slow: mark.exists() or _readable(slow), 10,
                       "the slow request in the app", alive=server.dead)
            if mark.exists():
                assert httpx.get(server.url + "/whoami", timeout=10).status_code == 503
            status, _, body = RawReader(slow).response()
        if mark.exists():
            break
    assert mark.exists(), "the slow request was refused three times"
    assert status == 200 and body == b"slept"
    assert httpx.get(server.url + "/whoami", timeout=10).status_code == 200


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_idle_keep_alive_connection_is_closed_after_the_timeout(serve: Start) -> None:
    server = serve("int_echo:app", "--timeout-keep-alive", "1")
    with connect(server) as sock:
        sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = RawReader(sock).response()
        assert status == 200 and headers.get("connection", "").lower() != "close"
        started = time.monotonic()
        sock.settimeout(10 * FACTOR)
        assert sock.recv(1) == b""  # EOF: the server closed the idle connection
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 8 * FACTOR, elapsed


def test_tls_with_a_throwaway_ca(serve: Start, tmp_path: Path) -> None:
    certfile, keyfile, cafile = tls_files(tmp_path)
    server = serve("int_echo:app", "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile), wait=False)
    context = ssl.create_default_context(cafile=str(cafile))
    url = f"https://127.0.0.1:{server.port}/whoami"

    def answers() -> httpx.Response | None:
        try:
            return httpx.get(url, verify=context, timeout=2)
        except httpx.HTTPError:
            return None

    response = wait_until(answers, 30, "corral answering over TLS", alive=server.dead, interval=0.05)
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port is not served
        httpx.get(f"http://127.0.0.1:{server.port}/whoami", timeout=5)


def test_proxy_headers_from_a_trusted_peer(serve: Start) -> None:
    server = serve("int_echo:app", "--forwarded-allow-ips", "127.0.0.1")
    report = get_json(server, headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.1",
                                       "X-Forwarded-Proto": "https"})
    assert report["client"][0] == "203.0.113.9"
    assert report["scheme"] == "https"


def test_proxy_headers_from_an_untrusted_peer_are_ignored(serve: Start) -> None:
    server = serve("int_echo:app", "--forwarded-allow-ips", "10.0.0.1")
    report = get_json(server, headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert report["client"][0] == "127.0.0.1"
    assert report["scheme"] == "http"


def test_asgi2_interface(serve: Start) -> None:
    server = serve("int_echo:asgi2_app", "--interface", "asgi2", "--lifespan", "off")
    assert get_json(server, "/two") == {"interface": "asgi2", "path": "/two"}


def test_wsgi_interface(serve: Start) -> None:
    server = serve("int_echo:wsgi_app", "--interface", "wsgi")
    response = httpx.post(server.url + "/wsgi/path", content=b"x" * 5000, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"interface": "wsgi", "path": "/wsgi/path", "method": "POST",
                               "body_length": 5000, "scheme": "http"}


def test_lifespan_state_reaches_requests(serve: Start) -> None:
    server = serve("int_echo:app")
    report = get_json(server)
    assert report["state"] == {"started_by": report["pid"]}


def test_root_path(serve: Start) -> None:
    server = serve("int_echo:app", "--root-path", "/api")
    report = get_json(server, "/whoami")
    assert report["root_path"] == "/api"
    assert report["path"] == "/api/whoami"  # ASGI: path includes root_path (as uvicorn)


def test_custom_header_and_no_server_or_date_header(serve: Start) -> None:
    server = serve("int_echo:app", "--header", "X-A:1", "--no-server-header", "--no-date-header")
    response = httpx.get(server.url + "/whoami", timeout=10)
    assert response.headers["x-a"] == "1"
    assert "server" not in response.headers
    assert "date" not in response.headers


def test_malformed_request_gets_400_and_the_server_keeps_serving(serve: Start) -> None:
    server = serve("int_echo:app")
    for bad in (b"GET / HTTP/1.1\r\nHost: t\r\nNo colon in this line\r\n\r\n",
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n"):
        with connect(server) as sock:
            sock.sendall(bad)
            status, headers, _ = RawReader(sock).response()
            assert status == 400, bad
            sock.settimeout(10 * FACTOR)
            while sock.recv(65536):  # the connection is closed after the 400
                pass
    assert get_json(server)["path"] == "/whoami"


def test_websocket_echo(serve: Start) -> None:
    from websockets.sync.client import connect as ws_connect

    server = serve("int_echo:app")
    with ws_connect(f"ws://{server.host}:{server.port}/ws", open_timeout=10) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"


# -- errors: message and exit status --------------------------------------------------------

def failed(corral: Start, *args: str, status: int, fd: bool = False, **kw: Any) -> str:
    """Start corral expecting it to exit with ``status``; its output."""
    proc = corral(*args, fd=fd, wait=False, **kw)
    code = proc.wait_exit(30)
    output = proc.output()
    assert code == status, f"exit status {code}, expected {status}; output:\n{output}"
    return output


def test_unknown_option_exits_2(corral: Start) -> None:
    output = failed(corral, "int_echo:app", "--no-such-option", status=2)
    assert "--no-such-option" in output
    assert "Traceback" not in output


def test_bad_value_from_the_environment_exits_2_naming_the_variable(corral: Start) -> None:
    output = failed(corral, "int_echo:app", status=2, env={"CORRAL_PORT": "abc"})
    assert "CORRAL_PORT" in output and "'abc'" in output
    assert "Traceback" not in output


def test_bad_config_key_exits_2_naming_file_and_key(corral: Start, tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('workers = 2\ntimeout_keep_alive = 5\nno_such_key = "x"\n')
    output = failed(corral, "int_echo:app", "--config", str(config), status=2)
    assert str(config) in output
    assert "no_such_key" in output
    assert "Traceback" not in output


def test_reload_with_workers_exits_2(corral: Start) -> None:
    output = failed(corral, "int_echo:app", "--reload", "--workers", "2", status=2)
    assert "--reload" in output and "--workers" in output


def test_missing_app_module_exits_3_naming_it(corral: Start) -> None:
    output = failed(corral, "int_no_such_module:app", status=3, fd=True)
    assert "int_no_such_module" in output


def test_app_raising_at_import_exits_3_with_the_exception(corral: Start) -> None:
    output = failed(corral, "int_import_error:app", status=3, fd=True)
    assert "cannot reach the settings service" in output
    assert "RuntimeError" in output


def test_lifespan_startup_failure_exits_3_with_the_message(corral: Start) -> None:
    output = failed(corral, "int_startup_fail:app", "--workers", "2", status=3, fd=True)
    assert "int_startup_fail: database is unreachable" in output


def test_port_in_use_exits_1_with_one_line(corral: Start) -> None:
    holder = bound_socket()
    try:
        port = holder.getsockname()[1]
        output = failed(corral, "int_echo:app", "--host", "127.0.0.1", "--port", str(port), status=1)
    finally:
        holder.close()
    lines = [line for line in output.splitlines() if str(port) in line and "in use" in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output


def test_term_finishes_the_request_in_flight_and_exits_0(serve: Start, tmp_path: Path) -> None:
    server = serve("int_echo:app", "--workers", "2")
    mark = tmp_path / "in-flight"
    result: dict[str, Any] = {}

    def slow() -> None:
        try:
            result["response"] = httpx.get(f"{server.url}/slow?seconds=1&mark={mark}", timeout=20)
        except httpx.HTTPError as exc:  # recorded, asserted below
            result["error"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    wait_until(mark.exists, 10, "the slow request in the app", alive=server.dead)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0, server.output()
    thread.join(30)
    assert "error" not in result, result
    assert result["response"].status_code == 200
    assert result["response"].text == "slept"


def test_console_script_imports_the_app_from_the_working_directory(procs: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    """`corral main:app` run from the project directory finds main.py, as `uvicorn main:app` does.

    The `corral` fixture runs `python -m daemon`, which puts the working
    directory on sys.path by itself; the installed console script does not,
    so --app-dir's default (the working directory) must.
    """
    script = Path(require_tool(str(Path(sys.executable).parent / "corral")))
    sock = bound_socket()
    try:
        proc = procs([str(script), "int_echo:app", "--fd", str(sock.fileno())], pass_fds=[sock.fileno()],
                     cwd=APPS, name="corral-script")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/whoami"

        def answers() -> httpx.Response | None:
            try:
                return httpx.get(url, timeout=2)
            except httpx.HTTPError:
                return None

        response = wait_until(answers, 30, "the console script serving int_echo:app", alive=proc.dead)
        assert response.status_code == 200
    finally:
        sock.close()
