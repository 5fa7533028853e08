"""The HTTP/1.1 protocol in process: a real loop, real sockets, real clients.

Each test starts ``loop.create_server(lambda: HTTPProtocol(state), sock=...)``
on an event loop in a background thread and talks to it with raw sockets or
httpx from the test thread. Every case runs on httptools and on h11.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from server_core.http.protocol import HTTPProtocol
from server_core.settings import ServerSettings
from server_core.state import ServerState
from tests.apps import http_apps
from tests.support import FACTOR, deadline, wait_until


class Server:
    """An HTTPProtocol server on a loop thread; stopped by the fixture."""

    def __init__(self, app: Any, loop: str = "asyncio", **settings: Any) -> None:
        settings.setdefault("ws", "none")
        self.settings = ServerSettings(**settings)
        self.state = ServerState(settings=self.settings, app=app)
        self.state.default_headers = [(b"server", b"corral")]
        self.state.date_header = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
        if loop == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._start)

    async def _start(self) -> asyncio.AbstractServer:
        return await self.loop.create_server(lambda: HTTPProtocol(self.state), sock=self.sock)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a function or a coroutine function) on the loop; return its result."""
        async def runner() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(10 * FACTOR)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for conn in list(self.state.connections):
                conn.abort()
            for task in list(self.state.tasks):
                task.cancel()
            await asyncio.sleep(0)

        try:
            self.call(close)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.sock.close()


@pytest.fixture(params=["httptools-asyncio", "h11-asyncio", "zttp-asyncio", "httptools-uvloop"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    """Start a server; the three parsers on asyncio, and httptools on uvloop (the default stack)."""
    servers: list[Server] = []
    http, loop = request.param.split("-")

    def start(app: Any, **settings: Any) -> Server:
        server = Server(app, loop, http=http, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def unsent(sock: socket.socket) -> int:
    """Bytes written to ``sock`` that the peer has not yet acknowledged (Linux SIOCOUTQ)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


class Client:
    """A raw socket client that reads whole HTTP responses."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10 * FACTOR)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before {marker!r}; got {self.buf!r}")
        index = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:index], self.buf[index:]
        return out

    def read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            if not self._fill():
                raise ConnectionError("closed early")
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def response(self, head_request: bool = False) -> tuple[int, dict[bytes, bytes], bytes]:
        """Read one response: status, headers (lower-cased names), de-chunked body."""
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split()[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.lower()] = value.strip()
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if b"content-length" in headers:
            return status, headers, self.read_exact(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self.read_until(b"\r\n")
                    return status, headers, body
                body += self.read_exact(size)
                self.read_until(b"\r\n")
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self) -> bool:
        """True once the server closed the connection (all pending data drained)."""
        try:
            self.sock.settimeout(10 * FACTOR)
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients() -> Iterator[Callable[[int], Client]]:
    made: list[Client] = []

    def connect(port: int) -> Client:
        client = Client(port)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


GET = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"


def test_keep_alive_serves_several_requests_on_one_connection(serve, clients) -> None:
    server = serve(http_apps.scope_dump)
    client = clients(server.port)
    ports = []
    for path in (b"/a", b"/b", b"/c"):
        client.send(GET % path)
        status, headers, body = client.response()
        assert status == 200 and b"connection" not in headers
        scope = json.loads(body)
        assert scope["path"] == path.decode()
        ports.append(scope["client"][1])
    assert len(set(ports)) == 1
    assert server.state.total_requests == 3


def test_default_headers(serve, clients) -> None:
    server = serve(http_apps.echo, headers=(("x-extra", "1"),))
    server.state.default_headers = [(b"server", b"corral"), (b"x-extra", b"1")]
    client = clients(server.port)
    client.send(GET % b"/")
    _, headers, _ = client.response()
    assert headers[b"server"] == b"corral"
    assert headers[b"date"] == b"Thu, 01 Jan 2026 00:00:00 GMT"
    assert headers[b"x-extra"] == b"1"


def test_pipelined_requests_answered_in_order(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(b"POST /one HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /three HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n")
    answers = [client.response() for _ in range(3)]
    assert [headers[b"x-path"] for _, headers, _ in answers] == [b"/one", b"/two", b"/three"]
    assert [body for _, _, body in answers] == [b"abc", b"", b"xy"]


def test_one_mebibyte_post_echoed_intact(serve) -> None:
    server = serve(http_apps.echo)
    payload = bytes(range(256)) * 4096
    response = httpx.post(server.url + "/big", content=payload, timeout=30 * FACTOR)
    assert response.status_code == 200
    assert response.content == payload


def test_chunked_request_and_chunked_response(serve, clients) -> None:
    server = serve(http_apps.streamed_echo)
    client = clients(server.port)
    body = b"0123456789" * 350
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700]) for i in range(0, len(body), 700))
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    status, headers, received = client.response()
    assert headers[b"transfer-encoding"] == b"chunked" and b"content-length" not in headers
    assert received == body
    # httpx agrees on the framing, with a streamed (chunked) upload.
    response = httpx.post(server.url, content=iter([body[:1000], body[1000:]]), timeout=10 * FACTOR)
    assert response.content == body


@pytest.mark.parametrize("trailer", [b"Connection: close", b"Content-Length: 50", b"Transfer-Encoding: chunked"])
def test_framing_fields_in_trailers_are_dropped(serve, clients, trailer) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                + trailer + b"\r\n\r\n" + GET % b"/next")
    status, headers, body = client.response()
    assert (status, body) == (200, b"abc") and headers.get(b"connection") != b"close"
    status, headers, _ = client.response()
    assert status == 200 and headers[b"x-path"] == b"/next"


def test_single_message_response_gets_content_length(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    _, headers, body = client.response()
    assert headers[b"content-length"] == b"5" and body == b"hello"


def test_expect_100_continue(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert client.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(b"data")
    status, _, body = client.response()
    assert status == 200 and body == b"data"


def test_no_100_continue_when_app_answers_without_reading(serve, clients) -> None:
    server = serve(http_apps.no_read_reply)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    status, headers, _ = client.response()
    assert status == 413
    assert headers[b"connection"] == b"close"  # the unread body cannot be skipped
    assert client.closed()


def test_head_has_no_body_bytes(serve, clients) -> None:
    server = serve(http_apps.head_aware)
    client = clients(server.port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, _ = client.response(head_request=True)
    assert status == 200 and headers[b"content-length"] == b"10"
    # If HEAD had carried body bytes, they would be read as the next status line.
    status, _, body = client.response()
    assert status == 200 and body == b"0123456789"


def test_http10_client(serve, clients) -> None:
    server = serve(http_apps.streamed_echo)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.0\r\nContent-Length: 3000\r\n\r\n" + b"z" * 3000)
    status, headers, body = client.response()
    # No chunked encoding for HTTP/1.0: the body ends with the connection.
    assert b"transfer-encoding" not in headers and headers[b"connection"] == b"close"
    assert body == b"z" * 3000


def test_http10_keep_alive(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    for _ in range(2):
        client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = client.response()
        assert status == 200 and headers[b"connection"] == b"keep-alive"


def test_limit_concurrency_answers_503(serve, clients) -> None:
    controlled = http_apps.Controlled()
    # One request running fills a limit of 1 (a limit of 2 would serve both).
    server = serve(controlled.wait_release, limit_concurrency=1)
    first = clients(server.port)
    first.send(GET % b"/slow")
    wait_until(lambda: controlled.started == 1, 10, "the first request to start")
    second = clients(server.port)
    second.send(GET % b"/")
    status, _, body = second.response()
    assert status == 503 and body == b"Service Unavailable"
    server.call(lambda: controlled.release.set())
    assert first.response()[0] == 200


def test_limit_concurrency_counts_each_request_once(serve, clients) -> None:
    """--limit-concurrency N serves N concurrent requests: each is counted once, not twice.

    Refused when the open connections (the new one included) exceed N or N
    requests already run: with 4, four slow requests on four connections all
    run, a fifth connection is refused (and a sixth).
    """
    controlled = http_apps.Controlled()
    server = serve(controlled.wait_release, limit_concurrency=4)
    slow = []
    for index in range(4):
        client = clients(server.port)
        client.send(GET % b"/slow")
        slow.append(client)
        wait_until(lambda count=index + 1: controlled.started == count, 10, f"slow request {index + 1} to start")
    for _ in range(2):
        extra = clients(server.port)
        extra.send(GET % b"/")
        status, headers, _ = extra.response()
        assert status == 503 and headers[b"connection"] == b"close"
        assert extra.closed()
        extra.close()
        wait_until(lambda: len(server.state.connections) == 4, 10, "the refused connection to be forgotten")
    server.call(lambda: controlled.release.set())
    assert [client.response()[0] for client in slow] == [200, 200, 200, 200]
    assert controlled.started == 4


def test_task_cancelled_before_its_first_step_does_not_count(serve, clients) -> None:
    """A request task cancelled before it ran (so its own cleanup never ran) no longer fills the limit."""
    server = serve(http_apps.echo, limit_concurrency=1)

    class CancelFirst(set):
        def add(self, task: Any) -> None:
            super().add(task)
            if len(self) == 1 and not getattr(self, "cancelled", False):
                self.cancelled = True
                task.cancel()

    server.state.tasks = CancelFirst()
    first = clients(server.port)
    first.send(GET % b"/cancelled")
    wait_until(lambda: server.call(lambda: [task.done() for task in server.state.tasks]) == [True], 10,
               "the first request task to be cancelled")
    # As the worker does after cancelling at the graceful timeout: abort the connection.
    server.call(lambda: [conn.abort() for conn in list(server.state.connections)])
    wait_until(lambda: not server.state.connections, 10, "the first connection to be forgotten")
    second = clients(server.port)
    second.send(GET % b"/next")
    status, headers, _ = second.response()
    assert status == 200 and headers[b"x-path"] == b"/next"


def test_keep_alive_timeout_closes_idle_connection(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_keep_alive=0.5)
    client = clients(server.port)
    client.send(GET % b"/")
    assert client.response()[0] == 200
    started = time.monotonic()
    assert client.closed()
    assert time.monotonic() - started >= 0.4
    wait_until(lambda: not server.state.connections, 10, "the connection to be forgotten")


def test_silent_connection_closed_after_keep_alive_timeout(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_keep_alive=0.3)
    client = clients(server.port)
    assert client.closed()


def test_slowloris_cut_off_while_others_are_served(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_request_head=1.0, timeout_keep_alive=30)
    slow = clients(server.port)
    slow.send(b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    end = deadline(10)
    answered = 0
    while time.monotonic() < end:
        try:
            slow.send(b"X")  # one byte at a time, never finishing the head
        except OSError:
            break
        other = clients(server.port)
        other.send(GET % b"/fast")
        assert other.response()[0] == 200
        answered += 1
        ready, _, _ = select.select([slow.sock], [], [], 0.1)
        if ready:
            break
    status, headers, _ = slow.response()
    assert status == 408 and headers[b"connection"] == b"close"
    assert slow.closed()
    assert 0.9 <= time.monotonic() - started < 10 * FACTOR
    assert answered >= 3


def test_malformed_request_gets_400_and_server_keeps_serving(serve, clients) -> None:
    server = serve(http_apps.echo)
    bad = clients(server.port)
    bad.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    status, headers, _ = bad.response()
    assert status == 400 and headers[b"connection"] == b"close"
    assert bad.closed()
    good = clients(server.port)
    good.send(GET % b"/after")
    assert good.response()[1][b"x-path"] == b"/after"


def test_malformed_request_after_good_one_in_pipeline(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(GET % b"/ok" + b"GET / HTTP/1.1\r\nHost : t\r\n\r\n")
    assert client.response()[0] == 200
    assert client.response()[0] == 400
    assert client.closed()


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
])
def test_limit_statuses_on_the_wire(serve, clients, raw: bytes, status: int) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(raw)
    assert client.response()[0] == status


def test_truncated_chunked_body_at_half_close(serve, clients) -> None:
    controlled = http_apps.Controlled()
    server = serve(controlled.record_receive)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    client.sock.shutdown(socket.SHUT_WR)
    status, _, _ = client.response()
    assert status == 400
    wait_until(lambda: controlled.disconnected, 10, "the app to see http.disconnect")


def test_app_exception_gives_500_and_is_logged(serve, clients, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="corral.error")
    server = serve(http_apps.boom)
    client = clients(server.port)
    client.send(GET % b"/")
    status, headers, _ = client.response()
    assert status == 500 and headers[b"connection"] == b"close"
    wait_until(lambda: "boom from the app" in caplog.text, 10, "the traceback in the log")
    assert "Exception in ASGI application" in caplog.text


def test_app_exception_after_start_closes_connection(serve, clients, caplog) -> None:
    server = serve(http_apps.boom_after_start)
    client = clients(server.port)
    client.send(GET % b"/")
    head = client.read_until(b"\r\n\r\n")
    assert b"200 OK" in head and b"transfer-encoding: chunked" in head
    assert client.closed()
    assert not client.buf.endswith(b"0\r\n\r\n")  # never a clean end of body


def test_app_returning_without_response_gives_500(serve, clients) -> None:
    server = serve(http_apps.silent)
    client = clients(server.port)
    client.send(GET % b"/")
    assert client.response()[0] == 500


def test_retire_answers_next_request_with_connection_close(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(GET % b"/first")
    assert client.response()[0] == 200
    server.call(lambda: [conn.shutdown(True) for conn in list(server.state.connections)])
    # Retiring keeps the idle connection: the next request is served, with close.
    client.send(GET % b"/second")
    status, headers, _ = client.response()
    assert status == 200 and headers[b"connection"] == b"close"
    assert client.closed()


def test_shutdown_closes_idle_connection_at_once(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(GET % b"/")
    assert client.response()[0] == 200
    server.call(lambda: [conn.shutdown(False) for conn in list(server.state.connections)])
    started = time.monotonic()
    assert client.closed()
    assert time.monotonic() - started < 5 * FACTOR


def test_shutdown_serves_request_already_waiting_in_kernel(serve, clients) -> None:
    """Bytes the loop has not read yet when shutdown starts are still a request to serve."""
    server = serve(http_apps.echo, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(GET % b"/warmup")
    assert client.response()[0] == 200
    fds = server.call(lambda: [conn.transport.get_extra_info("socket").fileno()
                               for conn in server.state.connections])
    blocked, gate = threading.Event(), threading.Event()

    def block_then_shutdown() -> None:
        # Runs on the loop thread: the loop cannot read the new bytes meanwhile.
        blocked.set()
        assert gate.wait(10 * FACTOR)
        for conn in list(server.state.connections):
            conn.shutdown(False)

    server.loop.call_soon_threadsafe(block_then_shutdown)
    # Send only once the loop is held: sent earlier, uvloop may read the bytes
    # in the same iteration, before it runs the callback.
    assert blocked.wait(10 * FACTOR)
    client.send(GET % b"/waiting")
    wait_until(lambda: select.select(fds, [], [], 0)[0], 10, "the request bytes in the server's socket")
    gate.set()
    status, headers, _ = client.response()
    assert status == 200 and headers[b"x-path"] == b"/waiting"
    assert headers[b"connection"] == b"close"
    assert client.closed()


@pytest.mark.parametrize("retire", [True, False], ids=["retire", "shutdown"])
def test_stop_serves_pipelined_requests_already_received(serve, clients, retire) -> None:
    """Requests already received behind a slow one are served; only the last says close."""
    app = http_apps.SlowPath()
    server = serve(app, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(GET % b"/slow" + GET % b"/a" + GET % b"/b")
    wait_until(lambda: app.started == 1, 10, "the slow request to start")
    wait_until(lambda: server.call(lambda: [len(conn.queue) for conn in server.state.connections]) == [2],
               10, "the pipelined requests to be parsed")

    def stop() -> None:
        server.state.stopping, server.state.retiring = True, retire
        for conn in list(server.state.connections):
            conn.shutdown(retire)
        assert app.release is not None
        app.release.set()

    server.call(stop)
    answers = [client.response() for _ in range(3)]
    assert [(status, body) for status, _, body in answers] == [(200, b"/slow"), (200, b"/a"), (200, b"/b")]
    assert b"close" not in [headers.get(b"connection") for _, headers, _ in answers[:2]]
    assert answers[2][1][b"connection"] == b"close"
    assert client.closed()


def test_half_close_behind_a_slow_request_serves_the_pipelined_ones(serve, clients) -> None:
    app = http_apps.SlowPath()
    server = serve(app, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(GET % b"/slow" + GET % b"/a")
    client.sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: server.call(lambda: [conn.client_eof for conn in server.state.connections]) == [True],
               10, "the server to see the half-close")
    server.call(lambda: app.release.set())
    first, second = client.response(), client.response()
    assert (first[0], first[2], second[0], second[2]) == (200, b"/slow", 200, b"/a")
    assert first[1].get(b"connection") != b"close" and second[1][b"connection"] == b"close"
    assert client.closed()


def test_connection_accepted_during_shutdown_closes_at_once_unless_bytes_wait(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_keep_alive=60)

    def stop() -> None:
        server.state.stopping, server.state.retiring = True, False

    server.call(stop)
    silent = clients(server.port)
    started = time.monotonic()
    assert silent.closed()
    assert time.monotonic() - started < 5 * FACTOR
    # A connection whose request is already in the kernel when it is accepted is served.
    gate, blocked = threading.Event(), threading.Event()

    def block() -> None:  # on the loop thread: nothing is accepted meanwhile
        blocked.set()
        assert gate.wait(10 * FACTOR)

    server.loop.call_soon_threadsafe(block)
    assert blocked.wait(10 * FACTOR)
    waiting = clients(server.port)
    waiting.send(GET % b"/waiting")
    gate.set()
    status, headers, _ = waiting.response()
    assert status == 200 and headers[b"x-path"] == b"/waiting" and headers[b"connection"] == b"close"
    assert waiting.closed()


def test_shutdown_during_request_finishes_it_with_close(serve, clients) -> None:
    controlled = http_apps.Controlled()
    server = serve(controlled.wait_release)
    client = clients(server.port)
    client.send(GET % b"/")
    wait_until(lambda: controlled.started == 1, 10, "the request to start")
    server.call(lambda: [conn.shutdown(False) for conn in list(server.state.connections)])
    server.call(lambda: controlled.release.set())
    status, headers, _ = client.response()
    assert status == 200 and headers[b"connection"] == b"close"
    assert client.closed()


@pytest.mark.parametrize(("allow", "expect_client", "expect_scheme"), [
    (("127.0.0.1",), "203.0.113.7", "https"),
    (("10.1.2.3",), "127.0.0.1", "http"),
])
def test_proxy_headers_trusted_and_untrusted(serve, clients, allow, expect_client, expect_scheme) -> None:
    server = serve(http_apps.scope_dump, forwarded_allow_ips=allow)
    client = clients(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n"
                b"X-Forwarded-Proto: https\r\nX-Forwarded-Port: 8443\r\n\r\n")
    scope = json.loads(client.response()[2])
    assert scope["client"][0] == expect_client
    assert scope["scheme"] == expect_scheme
    assert (scope["server"][1] == 8443) is (expect_scheme == "https")


def test_proxy_headers_from_every_line_in_any_case(serve, clients) -> None:
    """Repeated X-Forwarded-For lines count together; the chosen hop is given as sent."""
    server = serve(http_apps.scope_dump, forwarded_allow_ips=("127.0.0.1", "10.0.0.0/8"))
    client = clients(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nx-forwarded-for: 2001:DB8::7\r\nAccept: */*\r\n"
                b"X-FORWARDED-FOR:  10.0.0.1 \r\nX-Forwarded-Proto: HTTPS\r\n\r\n")
    scope = json.loads(client.response()[2])
    assert scope["client"][0] == "2001:DB8::7"
    assert scope["scheme"] == "https"


@pytest.mark.parametrize(("proto", "expect_scheme"), [("wss", "https"), ("ws", "http")])
def test_forwarded_websocket_proto_gives_http_scheme(serve, clients, proto, expect_scheme) -> None:
    server = serve(http_apps.scope_dump, forwarded_allow_ips=("127.0.0.1",))
    client = clients(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: %s\r\n\r\n" % proto.encode())
    scope = json.loads(client.response()[2])
    assert scope["type"] == "http" and scope["scheme"] == expect_scheme


def test_proxy_headers_off(serve, clients) -> None:
    server = serve(http_apps.scope_dump, proxy_headers=False, forwarded_allow_ips=("*",))
    client = clients(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n")
    assert json.loads(client.response()[2])["client"][0] == "127.0.0.1"


def test_scope_contents(serve, clients) -> None:
    server = serve(http_apps.scope_dump, root_path="/mount")
    server.state.app_state["answer"] = 42
    client = clients(server.port)
    client.send(b"GET /a%20b?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Thing: v\r\n\r\n")
    scope = json.loads(client.response()[2])
    assert scope["type"] == "http" and scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1" and scope["method"] == "GET" and scope["scheme"] == "http"
    assert scope["root_path"] == "/mount"
    assert scope["path"] == "/mount/a b" and scope["raw_path"] == "/mount/a%20b"
    assert scope["query_string"] == "x=1&y=%20"
    assert ["x-thing", "v"] in scope["headers"]
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["state"] == {"answer": 42}


def test_slow_reader_pauses_the_app(serve, clients) -> None:
    """A client that does not read makes the app's send() wait (write flow control)."""
    controlled = http_apps.Controlled()
    server = serve(controlled.stream)
    client = clients(server.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.send(GET % b"/")

    def stuck() -> bool:
        paused = server.call(lambda: [c.write_paused for c in server.state.connections])
        return paused == [True] and controlled.in_send

    wait_until(stuck, 20, "the app to wait in send() behind a paused transport")
    sent_while_stuck = controlled.sent
    assert sent_while_stuck < 16 * 1024 * 1024  # far from the 32 MiB it wants to send
    status, _, body = client.response()
    assert status == 200 and len(body) == 512 * 65536
    wait_until(lambda: controlled.done, 10, "the app to finish")


def test_large_upload_to_slow_app_pauses_reading(serve, clients) -> None:
    """An app that does not read makes us stop reading the socket (read flow control)."""
    controlled = http_apps.Controlled()
    server = serve(controlled.wait_release)
    client = clients(server.port)
    client.sock.setblocking(False)
    client.sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n")
    sent = 0
    end = deadline(20)
    chunk = b"u" * 65536
    while time.monotonic() < end:
        _, writable, _ = select.select([], [client.sock], [], 0.5)
        if not writable:
            if server.call(lambda: [c.read_paused for c in server.state.connections]) == [True]:
                break
            continue
        try:
            sent += client.sock.send(chunk)
        except BlockingIOError:
            continue
    assert server.call(lambda: [c.read_paused for c in server.state.connections]) == [True]
    assert sent < 32 * 1024 * 1024
    buffered = server.call(lambda: [c.buffered for c in server.state.connections])[0]
    assert buffered <= 1024 * 1024


def test_upgrade_queued_behind_slow_request_pauses_reading(serve, clients) -> None:
    """Bytes after a pipelined WebSocket upgrade head are held, bounded, until the hand-off."""
    slow = http_apps.SlowPath()

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await slow(scope, receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    server = serve(app, ws="websockets")
    client = clients(server.port)
    client.send(GET % b"/slow" + b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    wait_until(lambda: slow.started == 1, 10, "the slow request to start")
    client.sock.setblocking(False)
    sent = 0
    end = deadline(20)
    chunk = b"\x00" * 65536
    while sent < 64 * 1024 * 1024 and time.monotonic() < end:
        _, writable, _ = select.select([], [client.sock], [], 0.5)
        if not writable:
            if server.call(lambda: [c.read_paused for c in server.state.connections]) == [True]:
                break
            continue
        try:
            sent += client.sock.send(chunk)
        except BlockingIOError:
            continue
    assert server.call(lambda: [c.read_paused for c in server.state.connections]) == [True]
    held = server.call(lambda: [len(c.parser.trailing_data) for c in server.state.connections])[0]
    assert held <= 1024 * 1024 and sent < 64 * 1024 * 1024
    client.sock.setblocking(True)
    server.call(lambda: slow.release.set())
    status, _, body = client.response()
    assert (status, body) == (200, b"/slow")
    # Then the hand-off: the handshake answer, and the held bytes reach the WebSocket side.
    assert client.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101")


def test_disconnect_seen_when_client_leaves_mid_request(serve, clients) -> None:
    controlled = http_apps.Controlled()
    server = serve(controlled.record_receive)
    client = clients(server.port)
    client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
    wait_until(lambda: controlled.messages, 10, "the first body piece")
    client.close()
    wait_until(lambda: controlled.disconnected, 10, "http.disconnect")
    assert controlled.messages[0] == {"type": "http.request", "body": b"0123456789", "more_body": True}
    wait_until(lambda: not server.state.connections, 10, "the connection to be forgotten")


def test_disconnect_seen_when_client_closes_after_its_request(serve, clients) -> None:
    """A client that sends a request and closes: the app's receive() gets http.disconnect at once."""
    controlled = http_apps.Controlled()
    server = serve(controlled.record_receive, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(GET % b"/poll")
    wait_until(lambda: controlled.messages, 10, "the request")
    client.close()
    wait_until(lambda: controlled.disconnected, 5, "http.disconnect after the client closed")
    assert controlled.messages == [{"type": "http.request", "body": b"", "more_body": False},
                                   {"type": "http.disconnect"}]
    wait_until(lambda: not server.state.connections, 5, "the connection to be closed")


@pytest.mark.parametrize("body", [b"", b"hello"])
def test_half_closed_client_waiting_app_sees_disconnect_and_send_raises(serve, clients, body) -> None:
    """shutdown(SHUT_WR) after the request: receive() says http.disconnect, and a send() after it raises.

    The server cannot tell a FIN from shutdown(SHUT_WR) from one from close(),
    and the application was told the client is gone: as ASGI 2.4 asks, its
    send() then raises an OSError (the server logs no traceback for it), and
    the connection is closed unanswered.
    """
    errors: list[BaseException] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        try:
            await http_apps.reply_after_disconnect(scope, receive, send)
        except BaseException as exc:
            errors.append(exc)
            raise

    server = serve(app, timeout_keep_alive=60)
    client = clients(server.port)
    client.send(b"POST /poll HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    client.sock.shutdown(socket.SHUT_WR)
    assert client.closed()
    assert client.buf == b""
    wait_until(lambda: errors, 5, "send() to raise")
    assert isinstance(errors[0], OSError)
    wait_until(lambda: not server.state.connections and not server.state.tasks, 5, "the connection to be closed")


def test_access_log_and_request_limit(serve, clients) -> None:
    records: list[tuple] = []
    limits: list[int] = []

    class Recorder:
        def log(self, *args: Any) -> None:
            records.append(args)

    server = serve(http_apps.echo, limit_max_requests=2)
    server.state.access_log = Recorder()
    server.state.timed = True
    server.state.on_request_limit = lambda: limits.append(server.state.total_requests)
    client = clients(server.port)
    for _ in range(3):
        client.send(b"POST /p?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        assert client.response()[0] == 200
    assert limits == [2]
    wait_until(lambda: len(records) == 3, 10, "three access log records")
    client_addr, method, raw_path, query, version, status, size, duration = records[0]
    assert (method, raw_path, query, version, status, size) == ("POST", b"/p", b"q=1", "1.1", 200, 2)
    assert client_addr[0] == "127.0.0.1" and duration >= 0


def test_upgrade_with_ws_none_is_plain_http(serve, clients) -> None:
    server = serve(http_apps.echo, ws="none")
    client = clients(server.port)
    client.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    status, headers, _ = client.response()
    assert status == 200 and headers[b"x-path"] == b"/ws"


def test_websocket_upgrade_hands_off(serve) -> None:
    from websockets.sync.client import connect

    async def app(scope: dict, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "echo " + message["text"]})
        await send({"type": "websocket.close"})

    server = serve(app, ws="websockets")
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10 * FACTOR) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10 * FACTOR) == "echo hi"


def test_half_closed_client_still_gets_its_responses(serve, clients) -> None:
    server = serve(http_apps.echo)
    client = clients(server.port)
    client.send(GET % b"/a" + b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    client.sock.shutdown(socket.SHUT_WR)
    assert client.response()[1][b"x-path"] == b"/a"
    status, _, body = client.response()
    # Whether the EOF is seen before or after this head is written is a race;
    # either way the server answers and then closes.
    assert (status, body) == (200, b"hi")
    assert client.closed()


def test_retire_keeps_silent_connection_until_keep_alive_timeout(serve, clients) -> None:
    server = serve(http_apps.echo, timeout_keep_alive=1.0)
    client = clients(server.port)
    wait_until(lambda: len(server.state.connections) == 1, 10, "the connection to be accepted")
    server.call(lambda: [conn.shutdown(True) for conn in list(server.state.connections)])
    # Still open: a request sent now is served (with close).
    client.send(GET % b"/late")
    status, headers, _ = client.response()
    assert status == 200 and headers[b"connection"] == b"close"
    assert client.closed()
    # A silent one is closed by the keep-alive deadline.
    silent = clients(server.port)
    wait_until(lambda: len(server.state.connections) == 1, 10, "the second connection")
    server.call(lambda: [conn.shutdown(True) for conn in list(server.state.connections)])
    started = time.monotonic()
    assert silent.closed()
    assert time.monotonic() - started < 10 * FACTOR


def test_reset_contextvars(serve, clients) -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("request_marker", default="unset")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen = var.get()
        var.set("set-by-" + scope["path"])
        body = seen.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    server = serve(app, reset_contextvars=True)
    server.call(lambda: var.set("from-the-server-loop"))
    client = clients(server.port)
    for _ in range(2):
        client.send(GET % b"/x")
        assert client.response()[2] == b"unset"


def test_tls_scope_scheme_is_https(serve, tmp_path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    server = serve(http_apps.scope_dump, proxy_headers=False)
    # Serve TLS on a second listener of the same loop and state.
    tls_sock = socket.socket()
    tls_sock.bind(("127.0.0.1", 0))
    tls_sock.listen(8)

    async def start_tls() -> asyncio.AbstractServer:
        return await server.loop.create_server(lambda: HTTPProtocol(server.state), sock=tls_sock, ssl=server_ctx)

    tls_server = server.call(start_tls)
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        port = tls_sock.getsockname()[1]
        response = httpx.get(f"https://127.0.0.1:{port}/secure", verify=client_ctx, timeout=10 * FACTOR)
        assert response.json()["scheme"] == "https"
    finally:
        server.call(tls_server.close)
        tls_sock.close()


@pytest.mark.parametrize("how", ["close_notify", "tcp_fin"])
def test_tls_client_half_close_is_a_clean_disconnect(serve, caplog, how) -> None:
    """TLS cannot keep writing after the client's EOF: the app sees http.disconnect, no asyncio warning."""
    import ssl

    import trustme

    caplog.set_level(logging.WARNING)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    controlled = http_apps.Controlled()
    server = serve(controlled.record_receive, timeout_keep_alive=60)
    tls_sock = socket.socket()
    tls_sock.bind(("127.0.0.1", 0))
    tls_sock.listen(8)

    async def start_tls() -> asyncio.AbstractServer:
        return await server.loop.create_server(lambda: HTTPProtocol(server.state), sock=tls_sock, ssl=server_ctx)

    tls_server = server.call(start_tls)
    try:
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        raw = socket.create_connection(tls_sock.getsockname(), timeout=10 * FACTOR)
        conn = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(GET % b"/poll")
        wait_until(lambda: controlled.messages, 10, "the request")
        if how == "close_notify":
            conn.unwrap()  # sends close_notify, reads the server's
        else:
            conn.shutdown(socket.SHUT_WR)  # a bare FIN, no close_notify
        wait_until(lambda: controlled.disconnected, 5, "http.disconnect after the TLS client's EOF")
        wait_until(lambda: not server.state.connections, 5, "the TLS connection to be closed")
        conn.close()
    finally:
        server.call(tls_server.close)
        tls_sock.close()
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()], caplog.text


def test_refused_upload_still_gets_its_answer(serve, clients) -> None:
    """An app answering before reading a big upload: the client still reads the answer, no reset."""
    server = serve(http_apps.no_read_reply)
    client = clients(server.port)
    total = 8 * 1024 * 1024
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    client.sock.setblocking(False)
    sent = 0
    chunk = b"u" * 65536
    end = deadline(20)
    answer = b""
    # Keep uploading, as a client that does not look at the answer early would;
    # the server reads and drops the rest after answering.
    while sent < total and time.monotonic() < end:
        readable, writable, _ = select.select([client.sock], [client.sock], [], 0.5)
        if readable:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                data = b""
            answer += data
        if writable:
            try:
                sent += client.sock.send(chunk[: total - sent])
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
    client.sock.setblocking(True)
    client.buf = answer
    status, headers, _ = client.response()
    assert status == 413 and headers[b"connection"] == b"close"
    assert client.closed()


async def _stream_then_wait(scope: dict, receive: Any, send: Any) -> None:
    """Sends a first piece, then waits far longer than any test: the piece must not wait with it."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first piece", "more_body": True})
    await asyncio.sleep(3600)


def test_streamed_piece_leaves_before_the_app_waits(serve, clients) -> None:
    """Pieces sent with more_body are written together at the end of the loop's pass, not held."""
    server = serve(_stream_then_wait)
    client = clients(server.port)
    client.send(GET % b"/")
    head = client.read_until(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert client.read_until(b"first piece\r\n") == b"b\r\nfirst piece\r\n"


async def _large_pieces(scope: dict, receive: Any, send: Any) -> None:
    big = bytes(range(256)) * 400  # 100 KiB: past the copy and flush thresholds
    headers = [(b"content-length", b"%d" % (3 * len(big)))] if scope["path"] == "/length" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": big, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": True})
    await send({"type": "http.response.body", "body": big, "more_body": True})
    await send({"type": "http.response.body", "body": big})


@pytest.mark.parametrize("path", [b"/length", b"/chunked"])
def test_large_streamed_pieces_arrive_intact(serve, clients, path: bytes) -> None:
    server = serve(_large_pieces)
    client = clients(server.port)
    for _ in range(2):  # and the connection is still usable after
        client.send(GET % path)
        status, headers, body = client.response()
        assert status == 200 and body == (bytes(range(256)) * 400) * 3
        assert (b"content-length" in headers) == (path == b"/length")


def _app_with_headers(headers: list) -> Any:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})
    return app


@pytest.mark.parametrize("headers", [
    [(b"bad name", b"v")], [(b"x-a", b"v\r\nx-injected: 1")], [(b"x-a", b"\x00")],
    [(b"content-length", b"x")], [(b"content-length", b"2")], [(b"content-length", b"0")],
])
def test_invalid_response_headers_give_500(serve, clients, headers: list) -> None:
    """Checked before anything is written (a wrong Content-Length too): a clean 500."""
    server = serve(_app_with_headers(headers))
    for _ in range(2):  # the same again: nothing about a bad header is remembered as good
        client = clients(server.port)
        client.send(GET % b"/")
        status, headers_seen, body = client.response()
        assert status == 500 and headers_seen[b"connection"] == b"close"
        assert b"injected" not in body


def test_application_header_names_keep_their_case_and_order(serve, clients) -> None:
    server = serve(_app_with_headers([(b"X-Upper", b"1"), (b"server", b"app"), (b"x-b", b"2")]))
    client = clients(server.port)
    client.send(GET % b"/")
    head = client.read_until(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[1:4] == [b"X-Upper: 1", b"server: app", b"x-b: 2"]
    assert head.count(b"server:") == 1 and b"date: " in head


# -- --timeout-request-body ----------------------------------------------------------------


class BodyWaiter:
    """Reads the body until http.disconnect; then tries to answer, recording what send() raised."""

    def __init__(self, start_first: bool = False) -> None:
        self.start_first = start_first  # stream a response head (and a piece) before reading
        self.messages: list[dict] = []
        self.send_error: BaseException | None = None
        self.done = False
        self.access: list[int] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                break
            if not message.get("more_body"):
                break
        try:
            if not self.start_first:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
        except BaseException as exc:
            self.send_error = exc
            raise
        finally:
            self.done = True


class AccessCapture:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    def log(self, client: Any, method: str, raw_path: bytes, query: bytes, version: str, status: int,
            size: int, duration: float) -> None:
        self.statuses.append(status)


def test_stalled_body_answered_408_and_closed(serve, clients) -> None:
    """Content-Length 1000, 10 bytes, then silence: 408 after the body timeout; the app sees http.disconnect."""
    app = BodyWaiter()
    server = serve(app, timeout_request_body=0.5, timeout_keep_alive=30)
    server.state.access_log = access = AccessCapture()
    server.state.timed = True
    client = clients(server.port)
    started = time.monotonic()
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    status, headers, _ = client.response()
    assert status == 408 and headers[b"connection"] == b"close"
    assert client.closed()
    assert 0.45 <= time.monotonic() - started < 5 * FACTOR
    wait_until(lambda: app.done, 5 * FACTOR, "the app to end")
    assert app.messages[0] == {"type": "http.request", "body": b"x" * 10, "more_body": True}
    assert app.messages[-1] == {"type": "http.disconnect"}
    assert isinstance(app.send_error, OSError)
    wait_until(lambda: access.statuses, 5 * FACTOR, "the access log line")
    assert access.statuses == [408]


def test_stalled_body_after_the_response_head_closes_the_connection(serve, clients) -> None:
    """The head already went out: no 408 is possible, the connection is closed."""
    app = BodyWaiter(start_first=True)
    server = serve(app, timeout_request_body=0.5, timeout_keep_alive=30)
    client = clients(server.port)
    client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
    head = client.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert client.closed()
    assert b"408" not in client.buf
    wait_until(lambda: app.done, 5 * FACTOR, "the app to end")
    assert app.messages[-1] == {"type": "http.disconnect"}


def test_body_timeout_counts_each_wait_in_receive_only(serve, clients) -> None:
    """The timeout is per wait in receive(), not for the whole body, nor while the app does something else.

    On one connection: an app busy for longer than the timeout before it reads
    a pending body is served; a body trickling in with gaps shorter than the
    timeout is served; then a body that stalls is answered 408.
    """
    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/busy":
            await asyncio.sleep(1.0)
        await http_apps.echo(scope, receive, send)

    server = serve(app, timeout_request_body=0.6, timeout_keep_alive=30)
    client = clients(server.port)
    client.send(b"POST /busy HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab")
    time.sleep(0.8)
    client.send(b"cd")
    assert client.response()[::2] == (200, b"abcd")
    client.send(b"POST /trickle HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
    for piece in (b"ab", b"cd", b"ef"):
        time.sleep(0.3)
        client.send(piece)
    assert client.response()[::2] == (200, b"abcdef")
    client.send(b"POST /stall HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nab")
    assert client.response()[0] == 408
    assert client.closed()


# -- --limit-request-head-size ----------------------------------------------------------------


def test_many_huge_unfinished_heads_cost_no_memory_and_get_431(serve) -> None:
    """200 connections each sending 775 KiB of a head that never ends (fields under the field limit).

    Each head is refused with 431 once it passes --limit-request-head-size
    (65536), on every parser, so the server never holds more than that per
    connection: its memory stays bounded (a parser that buffered the heads
    would hold 155 MB here).
    """
    import psutil

    server = serve(http_apps.echo, timeout_request_head=60, timeout_keep_alive=60)
    line = b"X-Filler: " + b"v" * 7990 + b"\r\n"
    piece = line * 2  # 16 KiB
    total = 775 * 1024
    me = psutil.Process()
    start_rss = me.memory_info().rss
    socks = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        sock.setblocking(False)
        socks.append(sock)
    sent = dict.fromkeys(socks, 0)
    answers = dict.fromkeys(socks, b"")
    reading, sending = set(socks), set(socks)
    end = deadline(60)
    peak = start_rss
    while reading and time.monotonic() < end:
        readable, writable, _ = select.select(list(reading), list(sending), [], 1.0)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            answers[sock] += data
            if not data or b"\r\n\r\n" in answers[sock]:
                reading.discard(sock)  # answered (or closed): stop sending
                sending.discard(sock)
        for sock in writable:
            if sock not in sending:
                continue
            try:
                sent[sock] += sock.send(piece)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                sending.discard(sock)
            if sent[sock] >= total:
                sending.discard(sock)  # all sent; the head never ends
        peak = max(peak, me.memory_info().rss)
    try:
        grown = max(peak, me.memory_info().rss) - start_rss
        statuses = [answers[sock][:12] for sock in socks]
        assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
        assert statuses == [b"HTTP/1.1 431"] * 200, {status for status in statuses}
    finally:
        for sock in socks:
            sock.close()


def test_websocket_upgrade_with_a_body_answered_400(serve, clients) -> None:
    """An upgrade request carrying a body is refused, not switched (its body would be read as frames)."""
    server = serve(http_apps.echo, ws="websockets")
    client = clients(server.port)
    client.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Content-Length: 7\r\n\r\n\x81\x05hello")
    status, headers, _ = client.response()
    assert status == 400 and headers[b"connection"] == b"close"
    assert client.closed()


def test_pipelined_flood_is_parsed_a_batch_at_a_time_and_all_answered(serve, clients) -> None:
    """2000 tiny pipelined requests in one go behind a slow one: few are parsed ahead, all are answered in order.

    One read used to become every request it held (thousands of streams and
    scopes, some 12 MB per 256 KiB read); now the parser holds the bytes and
    the connection parses a batch whenever the queue has room.
    """
    app = http_apps.SlowPath()
    server = serve(app, timeout_keep_alive=30)
    client = clients(server.port)
    client.send(GET % b"/slow" + b"".join(GET % b"/%d" % i for i in range(2000)))
    wait_until(lambda: app.started == 1, 10, "the slow request to start")
    # Every byte is in the server's hands once the client's socket has none left unacknowledged.
    wait_until(lambda: unsent(client.sock) == 0, 10, "the kernel to deliver every request byte")

    def queued() -> int:
        return max((len(conn.queue) for conn in server.state.connections), default=0)

    assert server.call(queued) <= 33
    server.call(lambda: app.release.set())  # type: ignore[union-attr]
    assert client.response()[2] == b"/slow"
    for i in range(2000):
        assert client.response()[2] == b"/%d" % i
