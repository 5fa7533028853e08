"""The HTTP connections without a socket: bytes in, bytes out.

``HTTPProtocol`` (HTTP/1.1 on each parser) and ``H2Protocol`` run on a real
event loop over an in-memory transport that records what they write and
whether they paused reading; the application is a real ASGI app. These pin
the exchange between the connection and the wire-neutral ``HTTPStream``:
pipelining order, keep-alive, ``Expect: 100-continue``, HEAD, framing, the
answer to a 1xx start, a client that leaves, and flow control.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from server_core.http.protocol import HTTPProtocol
from server_core.settings import ServerSettings
from server_core.state import ServerState
from tests.apps import http_apps


class MemoryTransport(asyncio.Transport):
    """What the protocol writes, and whether it reads, kept in memory."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.out = bytearray()
        self.reading = True
        self.closed = False
        self.eof_written = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.9", 5000), "sockname": ("10.0.0.1", 80)}.get(name, default)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


Run = Callable[..., Any]


@pytest.fixture(params=["httptools", "h11", "zttp"])
def http1(request: pytest.FixtureRequest) -> Run:
    """Run ``scenario(protocol, transport)`` (a coroutine function) against a fresh connection."""

    def run(app: Any, scenario: Callable[[HTTPProtocol, MemoryTransport], Any], **settings: Any) -> Any:
        async def main() -> Any:
            state = ServerState(settings=ServerSettings(http=request.param, ws="none", **settings), app=app)
            state.default_headers = [(b"server", b"corral")]
            state.date_header = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
            protocol = HTTPProtocol(state)
            transport = MemoryTransport(protocol)
            protocol.connection_made(transport)
            try:
                return await asyncio.wait_for(scenario(protocol, transport), 10)
            finally:
                for task in list(state.tasks):
                    task.cancel()
                await asyncio.sleep(0)

        return asyncio.run(main())

    return run


async def until(condition: Callable[[], Any], what: str, seconds: float = 5.0) -> None:
    """Run the loop until ``condition()`` holds; fail naming ``what`` past the deadline."""
    end = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def settle(passes: int = 20) -> None:
    """Let the loop run the application's steps (no sockets: a few passes suffice)."""
    for _ in range(passes):
        await asyncio.sleep(0)


async def hello(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


def test_one_request_one_write(http1: Run) -> None:
    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> bytes:
        protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        return transport.take()

    out = http1(hello, scenario)
    assert out == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nserver: corral\r\n"
                   b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\ncontent-length: 8\r\n\r\nhello /a")


def test_pipelined_requests_answer_in_order_and_the_last_closes(http1: Run) -> None:
    async def slow_first(scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/1":
            await asyncio.sleep(0.05)
        await hello(scope, receive, send)

    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> tuple[bytes, bool]:
        protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                               b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await until(lambda: transport.closed, "the connection to close after /3")
        return transport.take(), transport.closed

    out, closed = http1(slow_first, scenario)
    assert [out.index(b"hello /%d" % n) for n in (1, 2, 3)] == sorted(out.index(b"hello /%d" % n) for n in (1, 2, 3))
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.rstrip().endswith(b"hello /3") and b"connection: close" in out
    assert closed


def test_expect_continue_is_sent_only_when_the_app_reads(http1: Run) -> None:
    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> list[bytes]:
        seen = []
        protocol.data_received(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        await settle()
        seen.append(transport.take())
        protocol.data_received(b"abc")
        await settle()
        seen.append(transport.take())
        return seen

    before, after = http1(http_apps.echo, scenario)
    assert before == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert after.startswith(b"HTTP/1.1 200 OK\r\n") and after.endswith(b"\r\n\r\nabc")

    async def refuse(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def unread(protocol: HTTPProtocol, transport: MemoryTransport) -> bytes:
        protocol.data_received(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        await settle()
        return transport.take()

    out = http1(refuse, unread)
    assert out.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out
    assert b"connection: close" in out  # the body was never read: no reuse


def test_head_and_chunked_framing(http1: Run) -> None:
    async def streaming(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})

    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> list[bytes]:
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        first = transport.take()
        protocol.data_received(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        return [first, transport.take()]

    chunked, head = http1(streaming, scenario)
    assert b"transfer-encoding: chunked\r\n" in chunked and chunked.endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    assert head.endswith(b"\r\n\r\n") and b"ab" not in head


def test_informational_start_is_answered_500_and_closes(http1: Run) -> None:
    async def switching(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 101, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> tuple[bytes, bool]:
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        return transport.take(), transport.closed

    out, closed = http1(switching, scenario)
    assert out.startswith(b"HTTP/1.1 500 ") and out.count(b"HTTP/1.1") == 1
    assert closed  # the pipelined /2 is not answered on a connection whose state is unknown


def test_connection_lost_is_disconnect_and_send_raises_oserror(http1: Run) -> None:
    seen: list[Any] = []

    async def listener(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        seen.append(await receive())
        seen.append(await receive())
        try:
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
        except OSError as exc:
            seen.append(exc)

    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> None:
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        protocol.connection_lost(None)
        await settle()

    http1(listener, scenario)
    assert seen[0] == {"type": "http.request", "body": b"", "more_body": False}
    assert seen[1] == {"type": "http.disconnect"}
    assert isinstance(seen[2], OSError)


def test_fin_while_a_response_streams_makes_the_next_send_raise(http1: Run) -> None:
    raised: list[BaseException] = []

    async def sse(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        try:
            for _ in range(1000):
                await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
                await asyncio.sleep(0)
        except OSError as exc:
            raised.append(exc)
            raise

    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> None:
        protocol.data_received(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await until(lambda: b"data: x" in transport.out, "the stream to start")
        protocol.eof_received()
        await until(lambda: raised, "send() to raise")

    http1(sse, scenario)
    assert raised and isinstance(raised[0], OSError)


def test_queued_requests_wait_while_the_client_does_not_read(http1: Run) -> None:
    async def scenario(protocol: HTTPProtocol, transport: MemoryTransport) -> tuple[int, bool, int]:
        protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await settle()
        protocol.pause_writing()  # the transport's buffer is full: the client does not read
        assert not transport.reading
        protocol.data_received(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n" * 5)
        await settle()
        answered_while_paused = transport.take().count(b"HTTP/1.1 200")
        protocol.resume_writing()
        await settle()
        return answered_while_paused, transport.reading, transport.take().count(b"HTTP/1.1 200")

    while_paused, reading, after = http1(hello, scenario)
    assert while_paused == 1  # only /1, answered before the pause
    assert reading and after == 5
