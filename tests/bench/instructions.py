"""Instructions per request of the HTTP hot path, counted by valgrind: an A/B figure without noise.

    python -m tests.bench.instructions [--scenario hello,headers,echo,json] [--access-log]
                                       [--requests 20000] [--connections 8] [--timing]

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

``--timing`` skips valgrind and prints CPU µs per request from ``time.process_time`` (quick,
noisy). Needs valgrind (``apt-get install valgrind``) otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
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
}
_WARMUP = 2000


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


async def drive(scenario: str, requests: int, connections: int, access_log: bool) -> float:
    """Serve ``requests`` requests in-process; return CPU µs per request (after a warm-up)."""
    from server_core.http.protocol import HTTPProtocol
    from server_core.logs import AccessLog
    from server_core.settings import ServerSettings
    from server_core.state import ServerState

    app, request = SCENARIOS[scenario]
    settings = ServerSettings(app="bench", ws="none", access_log=access_log)
    state = ServerState(settings=settings, app=app)
    state.default_headers = [(b"server", b"corral")]
    state.date_header = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
    if access_log:
        state.access_log = AccessLog(settings)
    transports = [CountingTransport() for _ in range(connections)]
    protocols = []
    for transport in transports:
        protocol = HTTPProtocol(state)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocols.append(protocol)

    async def serve(count: int) -> None:
        for _ in range(count // connections):
            for protocol in protocols:
                protocol.data_received(request)
            await asyncio.sleep(0)  # one loop pass: the request tasks run

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
        result = uvloop.run(drive(scenario, args.requests, args.connections, args.access_log))
        print(f"{scenario}: {result:.2f} CPU µs/request", file=sys.__stdout__, flush=True)


_COLLECTED = re.compile(r"Collected : (\d+)")


def _count(scenario: str, requests: int, args: argparse.Namespace, valgrind: str) -> int:
    with tempfile.NamedTemporaryFile("r", suffix=".valgrind") as log:
        command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log.name}",
                   sys.executable, "-m", "tests.bench.instructions", "--inner", "--scenario", scenario,
                   "--requests", str(requests), "--connections", str(args.connections)]
        if args.access_log:
            command.append("--access-log")
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False, timeout=1800)
        report = log.read()
    found = _COLLECTED.search(report)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed ({done.returncode}):\n{done.stderr[-2000:]}{report[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="hello,echo,json", help="comma-separated: hello, headers, echo, json")
    parser.add_argument("--access-log", action="store_true", help="with the access log on")
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
    label = " with the access log" if args.access_log else ""
    for scenario in args.scenario.split(","):
        first = _count(scenario, args.requests, args, valgrind)
        second = _count(scenario, 2 * args.requests, args, valgrind)
        print(f"{scenario}{label}: {(second - first) / args.requests:,.0f} instructions/request", flush=True)


if __name__ == "__main__":
    main()
