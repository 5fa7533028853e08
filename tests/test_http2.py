"""HTTP/2 on zttp (``--http zttp --http2``), in process: a real loop, real sockets, a real client.

The client is the ``h2`` library over a plain socket, so each test controls
the frames: streams, resets, windows, floods. The end-to-end tests with curl,
httpx and the corral CLI (TLS ALPN, HUP with h2 clients) are in
``tests/test_http2_e2e.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import psutil
import pytest

from server_core.http.h2 import MAX_STREAMS, strip_connect_protocol
from tests.apps import http_apps
from tests.support import FACTOR, wait_until
from tests.test_http_protocol import Server

TIMEOUT = 10 * FACTOR


class H2Client:
    """A raw HTTP/2 client: the h2 state machine over a blocking socket."""

    def __init__(self, port: int, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                         header_encoding=None))
        self.conn.initiate_connection()
        self.flush()
        self.responses: dict[int, dict[str, Any]] = {}
        self.events: list[Any] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, method: str = "GET", body: bytes | None = None,
                headers: list[tuple[str, str]] = (), end: bool = True) -> int:  # type: ignore[assignment]
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "t"), *headers]
        self.conn.send_headers(stream_id, fields, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.flush()
        self.responses[stream_id] = {"headers": None, "body": b"", "ended": False, "reset": None}
        return stream_id

    def pump(self) -> bool:
        """Read once and process the events; False once the server closed."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self.events.append(event)
            stream = self.responses.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                stream["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived) and stream is not None:
                stream["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                stream["ended"] = True
            elif isinstance(event, h2.events.StreamReset) and stream is not None:
                stream["reset"] = event.error_code
        self.flush()
        return True

    def response(self, stream_id: int) -> dict[str, Any]:
        end = time.monotonic() + TIMEOUT
        stream = self.responses[stream_id]
        while not (stream["ended"] or stream["reset"] is not None):
            assert time.monotonic() < end, f"no response on stream {stream_id}"
            if not self.pump():
                raise ConnectionError(f"closed before the response on stream {stream_id}")
        return stream

    def wait_closed(self) -> list[Any]:
        end = time.monotonic() + TIMEOUT
        while self.pump():
            assert time.monotonic() < end, "the server did not close"
        return self.events

    def goaway(self) -> h2.events.ConnectionTerminated | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(app: Any, **settings: Any) -> Server:
        server = Server(app, "asyncio", http="zttp", http2=True, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client() -> Iterator[Callable[..., H2Client]]:
    made: list[H2Client] = []

    def connect(port: int, **kw: Any) -> H2Client:
        made.append(H2Client(port, **kw))
        return made[-1]

    yield connect
    for one in made:
        one.close()


class Recorder:
    """An app whose behaviour each test picks by path, recording what it saw."""

    def __init__(self) -> None:
        self.started = 0
        self.running = 0
        self.most_running = 0
        self.messages: list[dict[str, Any]] = []
        self.disconnected = 0
        self.errors: list[BaseException] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.started += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.serve(scope, receive, send)
        except OSError as exc:
            self.errors.append(exc)
            raise
        finally:
            self.running -= 1

    async def serve(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/first-receive":
            # A request without a body: the first receive() answers at once.
            message = await asyncio.wait_for(receive(), 2)
            self.messages.append(message)
            await respond(send, 200, repr(message).encode())
        elif path == "/wait-disconnect":
            message = await receive()
            while message["type"] != "http.disconnect":
                message = await receive()
            self.disconnected += 1
        elif path == "/slow":
            await asyncio.sleep(float(scope["query_string"] or b"0.5"))
            await respond(send, 200, b"slow done")
        elif path == "/stream":
            count = int(scope["query_string"] or b"10")
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for index in range(count):
                await send({"type": "http.response.body", "body": b"%d\n" % index, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            size = int(scope["query_string"] or b"1000000")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            piece = b"x" * 65536
            sent = 0
            while sent < size:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                sent += len(piece)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/informational":
            await send({"type": "http.response.start", "status": 101, "headers": []})
        else:
            await http_apps.echo(scope, receive, send)


async def respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def ignore_stream_limit(one: H2Client) -> None:
    """Make the client ignore the server's announced stream limit, as an attacker would."""
    import collections

    wait_until(lambda: one.pump() and any(isinstance(e, h2.events.RemoteSettingsChanged) for e in one.events),
               TIMEOUT, "the server's SETTINGS")
    one.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([10_000])


def rss(server: Server) -> int:
    return psutil.Process().memory_info().rss


# -- the ASGI view ------------------------------------------------------------------------------


def test_request_and_scope_over_prior_knowledge(serve, client) -> None:
    server = serve(http_apps.scope_dump)
    one = client(server.port)
    stream = one.response(one.request("/a%20b?x=1", headers=[("cookie", "a=1"), ("cookie", "b=2")]))
    assert stream["headers"][b":status"] == b"200"
    assert stream["headers"][b"server"] == b"corral"
    import json

    scope = json.loads(stream["body"])
    assert scope["http_version"] == "2"
    assert scope["path"] == "/a b" and scope["raw_path"] == "/a%20b" and scope["query_string"] == "x=1"
    headers = dict(scope["headers"])
    assert headers["host"] == "t"  # from :authority
    assert headers["cookie"] == "a=1; b=2"  # RFC 9113 §8.2.3: one field for HTTP/1.1-minded apps
    assert scope["client"][0] == "127.0.0.1"


def test_http1_still_served_on_the_same_listener(serve) -> None:
    server = serve(http_apps.echo)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        data = b""
        while not data.endswith(b"hi"):
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_preface_split_across_reads_is_still_http2(serve) -> None:
    server = serve(http_apps.echo)
    one = H2Client.__new__(H2Client)
    one.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    one.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    one.conn.initiate_connection()
    data = one.conn.data_to_send()
    for index in range(0, 30):  # the preface one byte at a time, then the rest
        one.sock.sendall(data[index:index + 1])
        time.sleep(0.001)
    one.sock.sendall(data[30:])
    one.responses, one.events, one.closed = {}, [], False
    try:
        stream = one.response(one.request("/e", "POST", b"split"))
        assert stream["body"] == b"split"
    finally:
        one.close()


def test_request_without_body_answers_first_receive_at_once(serve, client) -> None:
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    stream = one.response(one.request("/first-receive"))
    assert stream["headers"][b":status"] == b"200"
    assert app.messages == [{"type": "http.request", "body": b"", "more_body": False}]


def test_body_streams_in_both_directions(serve, client) -> None:
    server = serve(http_apps.streamed_echo)
    one = client(server.port)
    stream_id = one.request("/s", "POST", b"a" * 5000, end=False)
    one.conn.send_data(stream_id, b"b" * 5000, end_stream=True)
    one.flush()
    stream = one.response(stream_id)
    assert stream["body"] == b"a" * 5000 + b"b" * 5000
    assert b"transfer-encoding" not in stream["headers"]


def test_many_streams_on_one_connection(serve, client) -> None:
    server = serve(http_apps.echo)
    one = client(server.port)
    ids = [one.request(f"/{n}", "POST", b"%d" % n) for n in range(50)]
    for n, stream_id in enumerate(ids):
        stream = one.response(stream_id)
        assert stream["body"] == b"%d" % n
        assert stream["headers"][b"x-path"] == f"/{n}".encode()


def test_stream_reset_reaches_the_app_as_disconnect(serve, client) -> None:
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    stream_id = one.request("/wait-disconnect")
    wait_until(lambda: app.started == 1, TIMEOUT, "the app to start")
    one.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    one.flush()
    wait_until(lambda: app.disconnected == 1, TIMEOUT, "http.disconnect in the app")
    # The connection goes on.
    assert one.response(one.request("/e", "POST", b"after"))["body"] == b"after"


def test_send_after_reset_raises_oserror(serve, client) -> None:
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    stream_id = one.request("/stream?100000")
    wait_until(lambda: one.pump() and one.responses[stream_id]["body"], TIMEOUT, "the stream to start")
    one.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    one.flush()
    wait_until(lambda: app.errors, TIMEOUT, "send() to raise")
    assert isinstance(app.errors[0], OSError)


def test_informational_status_as_final_answers_500(serve, client) -> None:
    server = serve(Recorder())
    one = client(server.port)
    stream = one.response(one.request("/informational"))
    assert stream["headers"][b":status"] == b"500"


def test_connection_specific_headers_from_the_app_are_dropped(serve, client) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"Connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = serve(app)
    one = client(server.port)
    stream = one.response(one.request("/"))
    assert stream["headers"][b"x-a"] == b"1"
    assert b"connection" not in stream["headers"] and b"transfer-encoding" not in stream["headers"]


def test_access_log_says_http2(serve, client, caplog) -> None:
    from server_core.logs import AccessLog

    server = serve(http_apps.echo)
    lines: list[str] = []

    class Capture:
        def log(self, client: Any, method: str, raw_path: bytes, query: bytes, version: str, status: int,
                size: int, duration: float) -> None:
            lines.append(f"{method} {raw_path.decode()} HTTP/{version} {status}")

    assert AccessLog is not None
    server.state.access_log = Capture()
    server.state.timed = True
    one = client(server.port)
    one.response(one.request("/logged", "POST", b"x"))
    assert lines == ["POST /logged HTTP/2 200"]


def test_extended_connect_is_not_announced() -> None:
    import zttp

    conn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
    conn.initiate_connection()
    preface = strip_connect_protocol(conn.data_to_send())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.receive_data(preface)
    assert client.remote_settings.enable_connect_protocol == 0
    assert client.remote_settings.max_concurrent_streams == MAX_STREAMS


# -- limits and floods --------------------------------------------------------------------------


def test_header_list_over_the_limits_is_431(serve, client) -> None:
    server = serve(http_apps.echo, limit_request_fields=10)
    one = client(server.port)
    stream = one.response(one.request("/", headers=[(f"x-{n}", "v") for n in range(20)]))
    assert stream["headers"][b":status"] == b"431"
    stream = one.response(one.request("/", headers=[("x-big", "v" * 9000)]))
    assert stream["headers"][b":status"] == b"431"
    assert one.response(one.request("/", "POST", b"ok"))["body"] == b"ok"



def test_header_list_over_the_head_size_limit_is_431(serve, client) -> None:
    """--limit-request-head-size holds on the decoded HTTP/2 list as on an HTTP/1.1 head."""
    server = serve(http_apps.echo, limit_request_head_size=2000)
    one = client(server.port)
    stream = one.response(one.request("/", headers=[(f"x-{n}", "v" * 90) for n in range(30)]))
    assert stream["headers"][b":status"] == b"431"
    assert one.response(one.request("/", "POST", b"ok", headers=[("x-a", "v" * 90)]))["body"] == b"ok"


def test_concurrent_streams_are_capped(serve, client) -> None:
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    ignore_stream_limit(one)
    ids = [one.request("/slow?1.5") for _ in range(MAX_STREAMS + 40)]
    wait_until(lambda: one.pump() and sum(1 for s in one.responses.values() if s["reset"] is not None) >= 40,
               TIMEOUT, "refused streams")
    assert app.most_running <= MAX_STREAMS
    refused = [sid for sid in ids if one.responses[sid]["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM]
    assert len(refused) == 40


def test_rapid_reset_flood_runs_bounded_work_and_is_cut_off(serve, client) -> None:
    """CVE-2023-44487: HEADERS + RST_STREAM in a loop must not start unbounded app work."""
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    ignore_stream_limit(one)
    sent = 0
    try:
        for _ in range(5000):
            stream_id = one.conn.get_next_available_stream_id()
            one.conn.send_headers(stream_id, [(":method", "GET"), (":path", "/slow?5"), (":scheme", "http"),
                                              (":authority", "t")])
            one.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            sent += 1
            if sent % 50 == 0:
                one.flush()
    except (BrokenPipeError, ConnectionResetError, h2.exceptions.ProtocolError):
        pass
    events = one.wait_closed()
    goaway = [event for event in events if isinstance(event, h2.events.ConnectionTerminated)]
    assert goaway and goaway[-1].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert app.started <= 2 * MAX_STREAMS + 64, app.started
    # The worker serves the next client.
    other = client(server.port)
    assert other.response(other.request("/", "POST", b"next"))["body"] == b"next"


def test_continuation_flood_is_refused(serve, client) -> None:
    server = serve(http_apps.echo)
    start = rss(server)
    one = client(server.port)
    # HEADERS without END_HEADERS, then CONTINUATION frames forever (raw frames).
    block = b"\x82\x84\x86\x41\x01t"  # :method GET, :path /, :scheme http, :authority t
    frames = [b"\x00\x00\x06\x01\x01\x00\x00\x00\x01" + block]  # HEADERS, END_STREAM, no END_HEADERS
    filler = b"\x40\x03x-a\x03bbb"  # a literal field
    continuation = len(filler).to_bytes(3, "big") + b"\x09\x00\x00\x00\x00\x01" + filler
    try:
        one.sock.sendall(b"".join(frames))
        for _ in range(20000):
            one.sock.sendall(continuation * 50)
    except (BrokenPipeError, ConnectionResetError):
        pass
    one.wait_closed()
    assert rss(server) < start + 64 * 1024 * 1024
    other = client(server.port)
    assert other.response(other.request("/", "POST", b"next"))["body"] == b"next"


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_control_frame_flood_without_reading_stays_bounded(serve, client, frame: str) -> None:
    server = serve(http_apps.echo)
    start = rss(server)
    one = client(server.port, rcvbuf=4096)
    if frame == "ping":
        raw = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
    else:
        raw = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"
    one.sock.setblocking(False)
    deadline = time.monotonic() + 3
    sent = 0
    while time.monotonic() < deadline:
        try:
            sent += one.sock.send(raw * 1000)
        except BlockingIOError:
            time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            break
    grown = rss(server) - start
    assert grown < 64 * 1024 * 1024, (grown, sent)


def test_client_that_never_reads_a_big_response_stays_bounded(serve, client) -> None:
    app = Recorder()
    server = serve(app)
    start = rss(server)
    one = client(server.port, rcvbuf=4096)
    one.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    one.conn.increment_flow_control_window(2**31 - 1 - 65535)
    one.request("/big?500000000")
    # Nothing is read from here on.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        assert rss(server) < start + 64 * 1024 * 1024
        time.sleep(0.2)
    assert app.running == 1  # the app waits in send(), it is not buffering


def test_request_body_not_read_by_the_app_is_bounded(serve, client) -> None:
    async def never_reads(scope: dict, receive: Any, send: Any) -> None:
        await asyncio.sleep(30)

    server = serve(never_reads)
    start = rss(server)
    one = client(server.port)
    one.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    stream_id = one.request("/", "POST", b"", end=False)
    one.sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        window = min(one.conn.local_flow_control_window(stream_id), 16384)
        if window > 0:
            one.conn.send_data(stream_id, b"z" * window)
            try:
                data = one.conn.data_to_send()
                one.sock.sendall(data)
                sent += window
            except BlockingIOError:
                time.sleep(0.01)
        else:
            try:
                incoming = one.sock.recv(65536)
                if incoming:
                    one.conn.receive_data(incoming)
            except BlockingIOError:
                time.sleep(0.01)
    assert sent < 4 * 1024 * 1024, sent  # the windows closed: zttp credits only what was read
    assert rss(server) < start + 64 * 1024 * 1024


# -- stopping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("retire", [True, False])
def test_shutdown_sends_goaway_and_finishes_streams_in_flight(serve, client, retire: bool) -> None:
    app = Recorder()
    server = serve(app)
    one = client(server.port)
    stream_id = one.request("/slow?0.5")
    wait_until(lambda: app.started == 1, TIMEOUT, "the request to start")
    server.call(lambda: [conn.shutdown(retire) for conn in list(server.state.connections)])
    # The h2 library refuses every frame after a GOAWAY (real clients do
    # not), so the rest of the connection is read as raw frames.
    frames = read_frames_until_closed(one)
    goaways = [frame for frame in frames if isinstance(frame, hyperframe.frame.GoAwayFrame)]
    assert goaways and goaways[0].error_code == 0 and goaways[0].last_stream_id == stream_id
    data = b"".join(frame.data for frame in frames
                    if isinstance(frame, hyperframe.frame.DataFrame) and frame.stream_id == stream_id)
    assert data == b"slow done"
    assert any("END_STREAM" in frame.flags for frame in frames if frame.stream_id == stream_id)
    # The answer goes out before the GOAWAY: the h2 library (httpx) fails any
    # stream whose frames come after one.
    ends = [index for index, frame in enumerate(frames) if frame.stream_id == stream_id and "END_STREAM" in frame.flags]
    assert ends[0] < frames.index(goaways[0])


def read_frames_until_closed(one: H2Client) -> list[Any]:
    """Every frame the server sends until it closes the connection."""
    raw = b""
    end = time.monotonic() + TIMEOUT
    while True:
        assert time.monotonic() < end, "the server did not close"
        try:
            data = one.sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        raw += data
    frames = []
    while len(raw) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:9 + length]))
        frames.append(frame)
        raw = raw[9 + length:]
    return frames


def test_large_response_flows_as_the_client_opens_its_window(serve, client) -> None:
    server = serve(Recorder())
    one = client(server.port)
    stream = one.response(one.request("/big?3000000"))
    assert len(stream["body"]) == 3014656  # 46 pieces of 64 KiB: more than any initial window


def test_large_upload_flows_through_the_windows(serve, client) -> None:
    server = serve(http_apps.echo)
    one = client(server.port)
    body = bytes(range(256)) * 4096  # 1 MiB, 16 times the initial window
    stream_id = one.request("/up", "POST", b"", end=False)
    sent = 0
    while sent < len(body):
        window = min(one.conn.local_flow_control_window(stream_id), one.conn.max_outbound_frame_size)
        if window <= 0:
            one.pump()
            continue
        one.conn.send_data(stream_id, body[sent:sent + window])
        sent += window
        one.flush()
    one.conn.end_stream(stream_id)
    one.flush()
    assert one.response(stream_id)["body"] == body


def test_content_length_that_the_body_contradicts_is_not_a_clean_answer(serve, client) -> None:
    async def liar(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"abc"})

    server = serve(liar)
    one = client(server.port)
    stream = one.response(one.request("/"))
    assert stream["headers"][b":status"] == b"500"  # checked before anything left: a clean 500
    assert one.response(one.request("/"))["headers"][b":status"] == b"500"  # the connection goes on


def test_stalled_body_gets_408_on_its_stream_and_the_connection_goes_on(serve, client) -> None:
    """--timeout-request-body on HTTP/2: the stalled stream is answered 408 (and reset), the others go on."""
    app = Recorder()
    server = serve(app, timeout_request_body=0.5)
    one = client(server.port)
    started = time.monotonic()
    stream_id = one.request("/wait-disconnect", "POST", b"x" * 10, headers=[("content-length", "1000")], end=False)
    stream = one.response(stream_id)
    assert stream["headers"][b":status"] == b"408"
    assert 0.45 <= time.monotonic() - started < 5 * FACTOR
    wait_until(lambda: app.disconnected == 1, TIMEOUT, "http.disconnect in the app")
    # The connection goes on.
    assert one.response(one.request("/e", "POST", b"after"))["body"] == b"after"


def test_stalled_body_after_the_response_head_resets_the_stream(serve, client) -> None:
    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        seen.append("disconnect")

    seen: list[str] = []
    server = serve(app, timeout_request_body=0.5)
    one = client(server.port)
    stream_id = one.request("/", "POST", b"x" * 10, headers=[("content-length", "1000")], end=False)
    stream = one.response(stream_id)
    assert stream["headers"][b":status"] == b"200" and stream["body"] == b"early"
    assert stream["reset"] == h2.errors.ErrorCodes.CANCEL
    wait_until(lambda: seen, TIMEOUT, "http.disconnect in the app")
    assert not one.closed


def test_a_long_lived_connection_is_sent_away_before_zttps_stream_limit(serve, client) -> None:
    """zttp 0.0.35 kills a connection at its 4097th stream: corral says GOAWAY first, losing nothing."""
    from server_core.http.h2 import MAX_CONNECTION_STREAMS

    server = serve(http_apps.echo)
    one = client(server.port)
    while one.conn.highest_outbound_stream_id is None or \
            one.conn.highest_outbound_stream_id < 2 * MAX_CONNECTION_STREAMS - 20:
        for stream_id in [one.request("/", "POST", b"n") for _ in range(8)]:
            assert one.response(stream_id)["body"] == b"n"
    assert one.goaway() is None
    # The last few, and some beyond the limit: the rest is read as raw
    # frames (the h2 library refuses every frame after a GOAWAY).
    last = []
    for _ in range(20):  # one write: the server may close as soon as it has answered the last one it takes
        stream_id = one.conn.get_next_available_stream_id()
        one.conn.send_headers(stream_id, [(":method", "POST"), (":path", "/"), (":scheme", "http"),
                                          (":authority", "t")])
        one.conn.send_data(stream_id, b"n", end_stream=True)
        last.append(stream_id)
    one.flush()
    frames = read_frames_until_closed(one)
    goaways = [frame for frame in frames if isinstance(frame, hyperframe.frame.GoAwayFrame)]
    assert goaways and goaways[0].error_code == 0
    limit = goaways[0].last_stream_id
    # Sent at the first moment without a stream in flight, before zttp's hard limit.
    assert 2 * MAX_CONNECTION_STREAMS - 1 <= limit <= 2 * (MAX_CONNECTION_STREAMS + MAX_STREAMS) - 1
    answered = {frame.stream_id for frame in frames if isinstance(frame, hyperframe.frame.DataFrame)}
    assert answered == {sid for sid in last if sid <= limit}
    # Streams above the GOAWAY's last id were not processed (RFC 9113 §6.8):
    # the client retries them on a new connection.
    assert not {frame.stream_id for frame in frames if frame.stream_id > limit and
                isinstance(frame, (hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame))}
    other = client(server.port)
    assert other.response(other.request("/", "POST", b"again"))["body"] == b"again"


def test_a_connection_accepted_while_retiring_is_served_before_its_goaway(serve, client) -> None:
    """As on HTTP/1.1: a client that connects while the worker retires gets its request answered,
    and the GOAWAY after it (never one that crosses its request: the h2 library fails that)."""
    server = serve(http_apps.echo)
    server.call(lambda: (setattr(server.state, "stopping", True), setattr(server.state, "retiring", True)))
    one = client(server.port)
    stream_id = one.request("/", "POST", b"late")
    frames = read_frames_until_closed(one)
    data = b"".join(frame.data for frame in frames if isinstance(frame, hyperframe.frame.DataFrame))
    assert data == b"late"
    goaways = [frame for frame in frames if isinstance(frame, hyperframe.frame.GoAwayFrame)]
    assert goaways and goaways[0].last_stream_id == stream_id
    ends = [index for index, frame in enumerate(frames) if frame.stream_id == stream_id and "END_STREAM" in frame.flags]
    assert ends[0] < frames.index(goaways[0])
