"""The ASGI WebSocket session end to end, in process, over both engines.

A real server (corral's HTTP protocol, which hands upgrades to the WebSocket
session, on a real socket, in a thread with its own event loop) serves ``tests/apps/ws_echo.py``; real clients talk to it: the
``websockets`` library's sync client, and raw sockets where a client must
misbehave (ignore pings, send broken frames, a broken handshake). Every wait
polls a condition against a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from server_core.http.protocol import HTTPProtocol
from server_core.settings import ServerSettings
from server_core.state import ServerState
from server_core.websocket.session import WebSocketSession
from tests.apps import ws_echo
from tests.support import FACTOR, bound_socket, wait_until

ENGINES = ["websockets", "wsproto"]
TIMEOUT = 10 * FACTOR


class Server:
    """A WebSocket server in a thread: its own loop, a real listening socket."""

    def __init__(self, *, ws: str, tls: trustme.CA | None = None, loop: str = "asyncio", **settings: Any) -> None:
        self.settings = ServerSettings(app=ws_echo.app, ws=ws, **settings)
        self.log: list[Any] = []
        self.gate = threading.Event()
        self.state = ServerState(settings=self.settings, app=ws_echo.app,
                                 app_state={"log": self.log, "gate": self.gate},
                                 default_headers=[(b"server", b"corral")])
        self.errors: list[dict[str, Any]] = []
        if loop == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        ssl_context = None
        if tls is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert("127.0.0.1").configure_cert(ssl_context)
        state = self.state
        self.server = self.call(lambda: self.loop.create_server(lambda: HTTPProtocol(state), sock=self.sock,
                                                                ssl=ssl_context))
        self.scheme = "wss" if tls else "ws"

    def url(self, path: str = "/echo") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the loop thread (awaiting it if it returns an awaitable)."""
        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(TIMEOUT)

    def sessions(self) -> list[WebSocketSession]:
        return self.call(lambda: [c for c in self.state.connections if isinstance(c, WebSocketSession)])

    def logged(self, item: Any) -> bool:
        return item in list(self.log)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for conn in list(self.state.connections):
                conn.abort()
            for task in list(self.state.tasks):
                task.cancel()
            await asyncio.sleep(0)
        try:
            self.call(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()
            self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(**kw: Any) -> Server:
        server = Server(**kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    for server in servers:
        unexpected = [e for e in server.errors if "exception" not in e or not isinstance(e["exception"], ConnectionError)]
        assert not unexpected, unexpected


def client(server: Server, path: str = "/echo", **kw: Any) -> ClientConnection:
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", TIMEOUT)
    kw.setdefault("ping_interval", None)
    if server.scheme == "wss":
        ctx = ssl.create_default_context()
        kw["ca"].configure_trust(ctx)
        kw["ssl"] = ctx
        del kw["ca"]
    return connect(server.url(path), **kw)


def closed_code(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; return the Close frame it sent."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=TIMEOUT)
    received = info.value.rcvd
    assert received is not None, "the server closed without a Close frame"
    return received.code, received.reason


# -- raw-socket client, for clients that misbehave ---------------------------------


def raw_connect(server: Server, path: str = "/wait", *, key: bytes | None = None,
                extra: bytes = b"", first: bytes = b"") -> tuple[socket.socket, bytes, bytes]:
    """Send a handshake by hand; return the socket, the response head and what followed."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    key = key if key is not None else base64.b64encode(os.urandom(16))
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
                 + extra + b"\r\n" + first)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return sock, head, rest


def raw_frame(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    assert len(payload) < 126
    key = os.urandom(4)
    if not mask:
        return bytes([0x80 | opcode, len(payload)]) + payload
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_until_close(sock: socket.socket, data: bytes = b"") -> tuple[list[int], int | None]:
    """Read server frames until a Close (and EOF); return the opcodes seen and the close code."""
    opcodes: list[int] = []
    while True:
        while len(data) >= 2:
            length = data[1] & 0x7F
            offset = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(data[2:offset], "big")
            if len(data) < offset + length:
                break
            opcode, payload, data = data[0] & 0x0F, data[offset:offset + length], data[offset + length:]
            opcodes.append(opcode)
            if opcode == 0x8:
                return opcodes, struct.unpack("!H", payload[:2])[0] if payload else None
        chunk = sock.recv(65536)
        if not chunk:
            return opcodes, None
        data += chunk


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ws", ENGINES)
def test_echo_text_and_binary(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server) as conn:
        conn.send("hello ✓")
        assert conn.recv(timeout=TIMEOUT) == "hello ✓"
        conn.send(b"\x00\xffbinary")
        assert conn.recv(timeout=TIMEOUT) == b"\x00\xffbinary"
    wait_until(lambda: server.logged(("disconnect", 1000, "")), TIMEOUT, "the app's disconnect 1000")
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
def test_one_mib_messages(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    big_text = "ü" * (512 * 1024)  # 1 MiB of UTF-8
    big_bytes = os.urandom(1024 * 1024)
    with client(server, max_size=None) as conn:
        conn.send(big_text)
        assert conn.recv(timeout=TIMEOUT) == big_text
        conn.send(big_bytes)
        assert conn.recv(timeout=TIMEOUT) == big_bytes


@pytest.mark.parametrize("ws", ENGINES)
def test_client_close_code_reaches_app(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server) as conn:
        conn.close(4000, "client says bye")
    wait_until(lambda: server.logged(("disconnect", 4000, "client says bye")), TIMEOUT, "disconnect 4000")


@pytest.mark.parametrize("ws", ENGINES)
def test_app_close_code_reaches_client(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server) as conn:
        conn.send("close:4001:app says bye")
        assert closed_code(conn) == (4001, "app says bye")
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
def test_subprotocol_negotiation(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server, "/scope?subprotocol=superchat", subprotocols=["chat", "superchat"]) as conn:
        assert conn.subprotocol == "superchat"
        scope = json.loads(conn.recv(timeout=TIMEOUT))
        assert scope["subprotocols"] == ["chat", "superchat"]
    with client(server, "/echo") as conn:
        assert conn.subprotocol is None


@pytest.mark.parametrize("ws", ENGINES)
def test_scope(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws, root_path="/api")
    with client(server, "/scope?x=1%202") as conn:
        scope = json.loads(conn.recv(timeout=TIMEOUT))
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["root_path"] == "/api" and scope["path"] == "/api/scope"
    assert scope["raw_path"] == "/api/scope" and scope["query_string"] == "x=1%202"
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["client"][0] == "127.0.0.1" and scope["server"] == ["127.0.0.1", server.port]
    assert ["upgrade", "websocket"] in scope["headers"]
    assert scope["state_keys"] == ["gate", "log"]


@pytest.mark.parametrize("ws", ENGINES)
def test_accept_headers(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server, "/headers") as conn:
        assert conn.response.headers["x-extra"] == "1"
        assert conn.response.headers["server"] == "corral"


@pytest.mark.parametrize("ws", ENGINES)
@pytest.mark.parametrize("path", ["/deny", "/deny-length"])
def test_denial_response(serve: Callable[..., Server], ws: str, path: str) -> None:
    server = serve(ws=ws)
    with pytest.raises(InvalidStatus) as info:
        client(server, path)
    response = info.value.response
    assert response.status_code == 403
    assert response.headers["x-denied"] == "yes"
    assert response.body == b"denied: go away"
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
@pytest.mark.parametrize("path, status", [("/reject", 403), ("/crash", 500)])
def test_refused_before_accept(serve: Callable[..., Server], ws: str, path: str, status: int) -> None:
    server = serve(ws=ws)
    with pytest.raises(InvalidStatus) as info:
        client(server, path)
    assert info.value.response.status_code == status
    with client(server) as conn:  # the server is fine
        conn.send("still here")
        assert conn.recv(timeout=TIMEOUT) == "still here"


@pytest.mark.parametrize("ws", ENGINES)
def test_app_exception_after_accept_closes_1011(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    with client(server) as conn:
        conn.send("raise")
        assert closed_code(conn)[0] == 1011


@pytest.mark.parametrize("ws", ENGINES)
def test_invalid_handshake_gets_400(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    sock, head, _ = raw_connect(server, key=b"bm90IDE2IGJ5dGVz")  # "not 16 bytes"
    with sock:
        assert head.startswith(b"HTTP/1.1 400 ")
        sock.settimeout(TIMEOUT)
        while sock.recv(65536):
            pass  # the server closes the connection
    with client(server) as conn:
        conn.send("alive")
        assert conn.recv(timeout=TIMEOUT) == "alive"


@pytest.mark.parametrize("ws", ENGINES)
def test_ping_timeout_closes_1011(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws, ws_ping_interval=0.2, ws_ping_timeout=0.5)
    sock, head, rest = raw_connect(server)
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        # Never answer: the server pings, waits, then gives up with 1011.
        opcodes, code = read_until_close(sock, rest)
        assert 0x9 in opcodes and code == 1011
        assert sock.recv(65536) == b""  # and closes TCP without waiting for us
    wait_until(lambda: server.logged(("disconnect", 1011, "keepalive ping timeout")), TIMEOUT,
               "the app's disconnect 1011")
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
def test_answered_pings_keep_connection(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws, ws_ping_interval=0.1, ws_ping_timeout=0.3)
    with client(server) as conn:
        # The client library answers pings: five answered pings span more
        # than the timeout, and the connection is still open.
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        wait_until(lambda: server.call(lambda: session._keepalive.pongs) >= 5, TIMEOUT, "five pongs")
        conn.send("still open")
        assert conn.recv(timeout=TIMEOUT) == "still open"


@pytest.mark.parametrize("ws", ENGINES)
def test_max_size_closes_1009(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws, ws_max_size=1000)
    with client(server) as conn:
        conn.send("x" * 1000)
        assert conn.recv(timeout=TIMEOUT) == "x" * 1000
        conn.send("x" * 1001)
        assert closed_code(conn)[0] == 1009
    wait_until(lambda: any(item[:2] == ("disconnect", 1009) for item in server.log), TIMEOUT,
               "the app's disconnect 1009")


@pytest.mark.parametrize("ws", ENGINES)
@pytest.mark.parametrize("frame, code", [
    (raw_frame(0x1, b"unmasked", mask=False), 1002),
    (raw_frame(0x1, b"bad \xff utf-8"), 1007),
    (raw_frame(0x3, b"bad opcode"), 1002),
])
def test_invalid_frames_close_and_tell_app(serve: Callable[..., Server], ws: str, frame: bytes, code: int) -> None:
    server = serve(ws=ws)
    sock, head, rest = raw_connect(server)
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(frame)
        assert read_until_close(sock, rest)[1] == code
    wait_until(lambda: any(item[:2] == ("disconnect", code) for item in server.log), TIMEOUT,
               f"the app's disconnect {code}")


@pytest.mark.parametrize("ws", ENGINES)
@pytest.mark.parametrize("enabled", [True, False])
def test_per_message_deflate(serve: Callable[..., Server], ws: str, enabled: bool) -> None:
    server = serve(ws=ws, ws_per_message_deflate=enabled)
    with client(server) as conn:  # the client offers permessage-deflate by default
        negotiated = conn.response.headers.get("Sec-WebSocket-Extensions")
        if enabled:
            assert negotiated is not None and negotiated.startswith("permessage-deflate")
        else:
            assert negotiated is None
        text = "compressible " * 5000
        conn.send(text)
        assert conn.recv(timeout=TIMEOUT) == text
    with client(server, compression=None) as conn:
        assert conn.response.headers.get("Sec-WebSocket-Extensions") is None
        conn.send("plain")
        assert conn.recv(timeout=TIMEOUT) == "plain"


@pytest.mark.parametrize("ws", ENGINES)
def test_tls_wss(serve: Callable[..., Server], ws: str) -> None:
    ca = trustme.CA()
    server = serve(ws=ws, tls=ca)
    with client(server, "/scope", ca=ca) as conn:
        assert json.loads(conn.recv(timeout=TIMEOUT))["scheme"] == "wss"
        conn.send("over tls")
        assert conn.recv(timeout=TIMEOUT) == "over tls"


@pytest.mark.parametrize("ws", ENGINES)
@pytest.mark.parametrize("retire, code", [(True, 1012), (False, 1001)])
def test_shutdown_closes_open_websockets(serve: Callable[..., Server], ws: str, retire: bool, code: int) -> None:
    server = serve(ws=ws)
    with client(server, "/wait") as conn:
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        wait_until(lambda: server.logged(("accepted", "/wait")), TIMEOUT, "the accept")
        server.call(lambda: session.shutdown(retire))
        assert closed_code(conn)[0] == code
    reason = "service restart" if retire else "going away"
    wait_until(lambda: server.logged(("disconnect", code, reason)), TIMEOUT, f"the app's disconnect {code}")
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
def test_shutdown_before_accept_answers_503(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    result: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def connect_in_thread() -> None:
        try:
            client(server, "/gate-accept")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.set_result(exc)
        else:
            result.set_result(None)
    threading.Thread(target=connect_in_thread, daemon=True).start()
    session = wait_until(server.sessions, TIMEOUT, "the session")[0]
    server.call(lambda: session.shutdown(True))
    exc = result.result(TIMEOUT)
    assert isinstance(exc, InvalidStatus) and exc.response.status_code == 503
    server.gate.set()  # the app goes on to accept: it gets a disconnect, not a hang
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")


@pytest.mark.parametrize("ws", ENGINES)
def test_max_queue_pauses_reading(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws, ws_max_queue=4)
    count = 64
    message = b"q" * 16384
    with client(server, "/gate") as conn:
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        sender = threading.Thread(target=lambda: [conn.send(message) for _ in range(count)], daemon=True)
        sender.start()
        # The app does not read: the queue fills, reading pauses, the queue stays bounded.
        wait_until(lambda: server.call(lambda: session._read_paused), TIMEOUT, "reading to pause")
        queued = server.call(lambda: len(session._queue))
        assert 4 <= queued < count
        server.gate.set()
        for _ in range(count):
            assert conn.recv(timeout=TIMEOUT) == message
        sender.join(TIMEOUT)
        assert server.call(lambda: (session._read_paused, len(session._queue))) == (False, 0)


@pytest.mark.parametrize("ws", ENGINES)
def test_send_waits_for_slow_reader(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    count, size = 400, 65536  # 25 MiB: far more than socket buffers hold
    # A raw socket that does not read (the websockets client reads eagerly).
    sock, head, rest = raw_connect(server, f"/flood?n={count}&size={size}")
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        # The app's sends must wait for the transport to drain.
        wait_until(lambda: server.call(lambda: not session._write_ready.is_set()), TIMEOUT, "writing to pause")
        buffered = server.call(lambda: session._transport.get_write_buffer_size())
        assert buffered < 4 * 1024 * 1024
        assert not server.logged(("flood-done",))
        # Now read it all: every message arrives, then "done".
        frames = read_frames(sock, rest, until=b"done")
        assert frames[:-1] == [(0x2, size)] * count and frames[-1] == (0x1, 4)
    wait_until(lambda: server.logged(("flood-done",)), TIMEOUT, "the app to finish sending")


def read_frames(sock: socket.socket, data: bytes, *, until: bytes) -> list[tuple[int, int]]:
    """Read server frames (opcode, length) until a text frame equal to ``until``."""
    frames: list[tuple[int, int]] = []
    while True:
        while len(data) >= 2:
            length = data[1] & 0x7F
            offset = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(data[2:offset], "big")
            if len(data) < offset + length:
                break
            opcode, payload, data = data[0] & 0x0F, data[offset:offset + length], data[offset + length:]
            frames.append((opcode, length))
            if opcode == 0x1 and payload == until:
                return frames
        chunk = sock.recv(1 << 20)
        assert chunk, "the server closed early"
        data += chunk


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_loops(serve: Callable[..., Server], loop: str) -> None:
    server = serve(ws="websockets", loop=loop, ws_max_queue=2)
    with client(server) as conn:
        for i in range(50):
            conn.send(f"message {i}")
        for i in range(50):
            assert conn.recv(timeout=TIMEOUT) == f"message {i}"


def test_ws_none_answers_upgrade_as_http(serve: Callable[..., Server]) -> None:
    server = serve(ws="none")
    sock, head, rest = raw_connect(server, "/echo")
    with sock:
        assert head.startswith(b"HTTP/1.1 200 ")
        while len(rest) < len(b"plain http /echo"):
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        assert rest == b"plain http /echo"
    with pytest.raises(InvalidStatus) as info:
        client(server)
    assert info.value.response.status_code == 200


@pytest.mark.parametrize("ws", ENGINES)
def test_frames_sent_with_the_handshake_are_kept(serve: Callable[..., Server], ws: str) -> None:
    """A client that sends its first frame in the same packet as the upgrade is not lost."""
    server = serve(ws=ws)
    sock, head, rest = raw_connect(server, "/echo", extra=b"", first=raw_frame(0x1, b"early bird"))
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        frames = read_frames(sock, rest, until=b"early bird")
        assert frames == [(0x1, len(b"early bird"))]


@pytest.mark.parametrize("ws", ENGINES)
def test_client_gone_before_accept(serve: Callable[..., Server], ws: str) -> None:
    server = serve(ws=ws)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(b"GET /gate-accept HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    wait_until(server.sessions, TIMEOUT, "the session")
    sock.close()
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")
    server.gate.set()  # the app's late accept fails quietly; its task ends
    wait_until(lambda: not server.call(lambda: len(server.state.tasks)), TIMEOUT, "the app task to end")


@pytest.mark.parametrize("ws", ENGINES)
def test_silent_peer_does_not_hold_shutdown(serve: Callable[..., Server], ws: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that never answers our Close is cut off after the close timeout."""
    from server_core.websocket import session as session_module

    monkeypatch.setattr(session_module, "CLOSE_TIMEOUT", 0.5)
    server = serve(ws=ws)
    sock, head, rest = raw_connect(server, "/wait")
    with sock:
        assert head.startswith(b"HTTP/1.1 101 ")
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        server.call(lambda: session.shutdown(False))
        assert read_until_close(sock, rest)[1] == 1001
        # We never answer the Close: the server closes TCP on its own.
        assert sock.recv(65536) == b""
    wait_until(lambda: not server.sessions(), TIMEOUT, "the session to unregister")
    wait_until(lambda: server.logged(("disconnect", 1001, "going away")), TIMEOUT, "the app's disconnect 1001")


@pytest.mark.parametrize("ws", ENGINES)
def test_no_ping_timeout_while_app_lags(serve: Callable[..., Server], ws: str) -> None:
    """Reading paused for --ws-max-queue hides the peer's pongs: that is not the peer's fault."""
    server = serve(ws=ws, ws_max_queue=2, ws_ping_interval=0.1, ws_ping_timeout=0.3)
    message = b"m" * 65536
    with client(server, "/gate") as conn:
        session = wait_until(server.sessions, TIMEOUT, "the session")[0]
        sender = threading.Thread(target=lambda: [conn.send(message) for _ in range(64)], daemon=True)
        sender.start()
        wait_until(lambda: server.call(lambda: session._read_paused), TIMEOUT, "reading to pause")
        start = server.call(lambda: session._keepalive.pings)
        # Many timeouts' worth of pings while paused, and the session stays open.
        wait_until(lambda: server.call(lambda: session._keepalive.pings) >= start + 8, TIMEOUT, "pings")
        assert server.call(lambda: session._phase) == "open"
        server.gate.set()
        for _ in range(64):
            assert conn.recv(timeout=TIMEOUT) == message
        sender.join(TIMEOUT)
