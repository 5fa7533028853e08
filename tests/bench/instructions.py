"""Instructions per request of the HTTP hot path, counted by valgrind: an A/B figure without noise.

    python -m tests.bench.instructions [--scenario hello,headers,echo,json,h2] [--access-log]
                                       [--http httptools|h11|zttp] [--requests 20000]
                                       [--connections 8] [--timing]

The wrk benchmark measures the whole server, kernel included, and single runs move by a few
per cent with the machine; a change to the hot path worth 1 % disappears in that. This driver
runs corral's own ``HTTPProtocol`` in one process on uvloop, with a transport that only counts
writes, and feeds it the same request over ``--connections`` connections per event-loop pass
(as a busy worker sees several ready sockets at once). ``valgrind --tool=callgrind`` counts the
instructions of two runs, N and 2 N requests; their difference over N is the cost of one
request with start-up and warm-up cancelled out. The count is the same from one run to the next,
whatever else the machine does, so two commits compare exactly. It covers parsing, the scope,
the task, the app's messages, the response encoding and the access log; not the system calls
(the ceiling server shows those).

The ``h2`` scenario is hello over HTTP/2: an ``H2Protocol`` per connection (zttp underneath)
gets ``H2_STREAMS`` requests per connection and loop pass, as HEADERS frames built once by hand
(static-table HPACK, no per-request encoding cost in this process), much as ``h2load -m10`` sends
them; the client's windows are opened wide at the start, as h2load does.

``--timing`` skips valgrind and prints CPU µs per request from ``time.process_time`` (quick,
noisy). Needs valgrind (``apt-get install valgrind``) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.bench import apps, wrk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What wrk sends in the benchmark, the port aside (the POST as tests/bench/wrk.py's script makes it).
_GET = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
_POST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Length: %d\r\n"
         b"Content-Type: application/octet-stream\r\n\r\n" % apps.ECHO_BODY_SIZE + b"x" * apps.ECHO_BODY_SIZE)
_BROWSER_GET = _GET[:-2] + b"".join(b"%s: %s\r\n" % (name.encode(), value.encode())
                                   for name, value in wrk.BROWSER_FIELDS) + b"\r\n"
SCENARIOS: dict[str, tuple[Any, bytes]] = {
    "hello": (apps.hello, _GET),
    "headers": (apps.hello, _BROWSER_GET),
    "json": (apps.json_small, _GET),
    "echo": (apps.echo, _POST),
    "h2": (apps.hello, b""),  # HTTP/2: the frames are built by _h2_frames
}
_WARMUP = 2000
H2_STREAMS = 10  # concurrent requests per HTTP/2 connection and loop pass (h2load -m10)
H2_CONNECTION_PASSES = 300  # passes (of H2_STREAMS streams) before a connection is replaced

# The client's side of an HTTP/2 connection as h2load opens it: the preface, SETTINGS with a wide
# stream window, a WINDOW_UPDATE opening the connection window as wide, and the ACK of the
# server's SETTINGS.
_H2_WINDOW = 2**30 - 1
_H2_OPEN = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + struct.pack(">I", 6)[1:] + b"\x04\x00" + struct.pack(">I", 0) + struct.pack(">HI", 0x4, _H2_WINDOW)
            + struct.pack(">I", 4)[1:] + b"\x08\x00" + struct.pack(">I", 0) + struct.pack(">I", _H2_WINDOW - 65535)
            + b"\x00\x00\x00\x04\x01" + struct.pack(">I", 0))
# GET / with :authority as a literal (static table only), END_STREAM | END_HEADERS.
_H2_AUTHORITY = b"127.0.0.1:8000"
_H2_BLOCK = b"\x82\x86\x84\x01" + bytes([len(_H2_AUTHORITY)]) + _H2_AUTHORITY


def _h2_frames(first_stream: int, count: int) -> bytes:
    """``count`` HEADERS frames of GET / on client streams ``first_stream``, +2, +4…"""
    head = struct.pack(">I", len(_H2_BLOCK))[1:] + b"\x01\x05"
    return b"".join(head + struct.pack(">I", first_stream + 2 * i) + _H2_BLOCK for i in range(count))


class CountingTransport:
    """What HTTPProtocol uses of a transport; writes are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def drive(scenario: str, requests: int, connections: int, access_log: bool, http: str = "httptools",
                metrics: bool = False) -> float:
    """Serve ``requests`` requests in-process; return CPU µs per request (after a warm-up)."""
    from server_core.http.protocol import HTTPProtocol
    from server_core.logs import AccessLog
    from server_core.settings import ServerSettings
    from server_core.state import ServerState

    app, request = SCENARIOS[scenario]
    settings = ServerSettings(app="bench", ws="none", access_log=access_log, http=http)
    state = ServerState(settings=settings, app=app)
    state.default_headers = [(b"server", b"corral")]
    state.date_header = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
    if access_log:
        state.access_log = AccessLog(settings)
        state.timed = True
    if metrics:  # what --metrics-bind turns on in a worker
        state.record = state.metrics.record
        state.timed = True
    transports = [CountingTransport() for _ in range(connections)]
    if scenario == "h2":
        return await _drive_h2(state, transports, requests)
    protocols = []
    for transport in transports:
        protocol = HTTPProtocol(state)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocols.append(protocol)

    def feed() -> None:
        for protocol in protocols:
            protocol.data_received(request)

    async def serve(count: int) -> None:
        # Each pass feeds every connection from a loop callback, as the event loop calls a
        # protocol's data_received (outside any task: an eager start runs the app there).
        loop = asyncio.get_running_loop()
        for _ in range(count // connections):
            loop.call_soon(feed)
            await asyncio.sleep(0)  # one loop pass: the feed, and what it scheduled

    await serve(_WARMUP)
    started = time.process_time()
    await serve(requests)
    elapsed = time.process_time() - started
    await asyncio.sleep(0)
    answered = sum(transport.writes for transport in transports)
    expected = (_WARMUP // connections + requests // connections) * connections
    if answered != expected:
        raise SystemExit(f"{scenario}: {answered} responses written for {expected} requests")
    return elapsed / requests * 1e6


async def _drive_h2(state: Any, transports: list[CountingTransport], requests: int) -> float:
    """The HTTP/2 hello: ``H2_STREAMS`` new streams per connection and loop pass.

    A connection is replaced by a new one after ``H2_CONNECTION_PASSES`` passes (3000 streams),
    as h2load's clients move on after corral's GOAWAY (at 3712 streams, under zttp's 4096): so
    any request count works, and a run at N ≤ 10000 with 8 connections never replaces one.
    """
    from server_core.http.h2 import H2Protocol

    served = 0

    def connect() -> list[Any]:
        made = []
        for transport in transports:
            protocol = H2Protocol(state)
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(_H2_OPEN)
            made.append(protocol)
        return made

    protocols = connect()
    per_pass = H2_STREAMS * len(protocols)
    warmup_passes, passes = _WARMUP // per_pass, requests // per_pass
    # A connection's frames built before the clock starts (stream ids go up by 2 on a connection).
    frames = [_h2_frames(1 + 2 * H2_STREAMS * n, H2_STREAMS)
              for n in range(min(H2_CONNECTION_PASSES, warmup_passes + passes))]

    def feed(data: bytes) -> None:
        for protocol in protocols:
            protocol.data_received(data)

    async def serve(first: int, count: int) -> None:
        nonlocal protocols, served
        # Fed from a loop callback, outside any task, as the event loop calls data_received.
        loop = asyncio.get_running_loop()
        for n in range(first, first + count):
            if n and n % H2_CONNECTION_PASSES == 0:
                await asyncio.sleep(0)  # the last streams' tasks end
                served += sum(protocol.served for protocol in protocols)
                for protocol in protocols:
                    protocol.connection_lost(None)
                protocols = connect()
            loop.call_soon(feed, frames[n % H2_CONNECTION_PASSES])
            await asyncio.sleep(0)  # one loop pass: the feed, and what it scheduled

    await serve(0, warmup_passes)
    started = time.process_time()
    await serve(warmup_passes, passes)
    elapsed = time.process_time() - started
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    served += sum(protocol.served for protocol in protocols)
    expected = (warmup_passes + passes) * per_pass
    if served != expected or any(protocol.streams for protocol in protocols):
        raise SystemExit(f"h2: {served} streams answered for {expected} requests")
    return elapsed / (passes * per_pass) * 1e6


def _inner(args: argparse.Namespace) -> None:
    import uvloop

    from server_core import logs
    from server_core.settings import ServerSettings

    if args.access_log:  # the lines go where a worker's would, to stderr: here /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    logs.configure(ServerSettings(app="bench", access_log=args.access_log,
                                  log_level="info" if args.access_log else "warning"))
    for scenario in args.scenario.split(","):
        result = uvloop.run(drive(scenario, args.requests, args.connections, args.access_log, args.http,
                                  args.metrics))
        print(f"{scenario}: {result:.2f} CPU µs/request", file=sys.__stdout__, flush=True)


_COLLECTED = re.compile(r"Collected : (\d+)")


def count(scenario: str, requests: int, *, valgrind: str, connections: int = 8, http: str = "httptools",
          access_log: bool = False, metrics: bool = False, env: dict[str, str] | None = None) -> int:
    """Instructions callgrind counts for one run of ``requests`` requests (start-up included):
    the difference of two such runs, N and 2 N, over N is the figure per request."""
    with tempfile.NamedTemporaryFile("r", suffix=".valgrind") as log:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log.name}",
                   sys.executable, "-m", "tests.bench.instructions", "--inner", "--scenario", scenario,
                   "--requests", str(requests), "--connections", str(connections), "--http", http]
        if access_log:
            command.append("--access-log")
        if metrics:
            command.append("--metrics")
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False, timeout=1800, env=env)
        report = log.read()
    found = _COLLECTED.search(report)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}{report[-2000:]}")
    return int(found.group(1))


def _count(scenario: str, requests: int, args: argparse.Namespace, valgrind: str) -> int:
    return count(scenario, requests, valgrind=valgrind, connections=args.connections, http=args.http,
                 access_log=args.access_log, metrics=args.metrics)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="hello,echo,json",
                        help="comma-separated: hello, headers, echo, json, h2 (hello over HTTP/2)")
    parser.add_argument("--access-log", action="store_true", help="with the access log on")
    parser.add_argument("--metrics", action="store_true", help="with the request metrics on (--metrics-bind)")
    parser.add_argument("--http", choices=("httptools", "h11", "zttp"), default="httptools",
                        help="the HTTP/1.1 parser (default httptools; the h2 scenario is zttp's HTTP/2 either way)")
    parser.add_argument("--requests", type=int, default=20000, help="N (the second run serves 2 N)")
    parser.add_argument("--connections", type=int, default=8, help="connections fed per loop pass")
    parser.add_argument("--timing", action="store_true", help="CPU time in this process instead of valgrind")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.scenario.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.inner or args.timing:
        _inner(args)
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind), or use --timing")
    label = (" with the access log" if args.access_log else "") + (" with metrics" if args.metrics else "") \
        + (f" on {args.http}" if args.http != "httptools" else "")
    for scenario in args.scenario.split(","):
        first = _count(scenario, args.requests, args, valgrind)
        second = _count(scenario, 2 * args.requests, args, valgrind)
        print(f"{scenario}{label}: {(second - first) / args.requests:,.0f} instructions/request", flush=True)


if __name__ == "__main__":
    main()
