"""The ceiling: the cheapest HTTP/1.1 server possible on this stack, with no ASGI at all.

A uvloop event loop and one ``asyncio.Protocol`` that feeds bytes to httptools and answers
every complete request with the same prebuilt hello-world response, keeping the connection
alive unless the client asked otherwise. Nothing is allocated per request beyond what
httptools and the transport do themselves. Whatever an ASGI server costs above this is the
price of its own code (scope, messages, tasks, headers), which is what the benchmark
reports as "× ceiling".

Run as its own process: ``python -m tests.bench.ceiling --host 127.0.0.1 --port 8000``
(or ``--fd N`` for an inherited listening socket). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from typing import cast

import httptools
import uvloop

BODY = b"Hello, world!"
_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(BODY)
RESPONSE = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"connection: close\r\n\r\n" + BODY
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class CeilingProtocol(asyncio.Protocol):
    """One connection: parse with httptools, answer each request with :data:`RESPONSE`."""

    __slots__ = ("transport", "parser")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()  # no upgrades here
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(BAD_REQUEST)
            self._close()

    # httptools callback (by name): the request, body included, has been read.
    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.parser.should_keep_alive():
            transport.write(RESPONSE)
        else:
            transport.write(RESPONSE_CLOSE)
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def listening_socket(host: str, port: int, fd: int | None, backlog: int) -> socket.socket:
    """The socket to serve on: the inherited ``fd`` (family read from it) or a new bind."""
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve(sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(CeilingProtocol, sock=sock)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--host``, ``--port``, ``--fd``, ``--backlog``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fd", type=int, default=None, help="serve on this inherited listening socket")
    parser.add_argument("--backlog", type=int, default=2048)
    args = parser.parse_args(argv)
    sock = listening_socket(args.host, args.port, args.fd, args.backlog)
    uvloop.run(serve(sock))


if __name__ == "__main__":
    main()
