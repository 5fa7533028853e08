"""WebSocket echo benchmark: round trips per second against any echo server.

    python tests/bench/ws_echo.py ws://127.0.0.1:8000/echo --clients 50 --duration 10

Each client connects, then sends a message and waits for its echo, over and
over, for ``--duration`` seconds; the result (one JSON object on stdout) counts
completed round trips and their latency. ``--processes`` spreads the clients
over several processes so the client side is not the bottleneck. Serve the
same app with corral and uvicorn to compare, e.g. ``tests/apps/ws_echo.py``:

    corral ws_echo:app --app-dir tests/apps --port 8000
    uvicorn ws_echo:app --app-dir tests/apps --port 8001

Not collected by pytest (tests/bench is excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any

from websockets.asyncio.client import connect


async def one_client(url: str, payload: str | bytes, stop_at: float, compression: str | None,
                     latencies: list[float]) -> tuple[int, int]:
    """Echo round trips until ``stop_at``; returns (round trips, errors)."""
    done = errors = 0
    try:
        async with connect(url, compression=compression, max_size=None, ping_interval=None,
                           open_timeout=30) as conn:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                await conn.send(payload)
                answer = await conn.recv()
                if answer != payload:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                done += 1
    except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop
        print(f"client error: {exc!r}", file=sys.stderr)
        errors += 1
    return done, errors


async def run_clients(url: str, clients: int, duration: float, size: int, binary: bool,
                      compression: str | None) -> dict[str, Any]:
    payload: str | bytes = b"x" * size if binary else "x" * size
    latencies: list[float] = []
    stop_at = time.monotonic() + duration
    started = time.monotonic()
    results = await asyncio.gather(*(one_client(url, payload, stop_at, compression, latencies)
                                     for _ in range(clients)))
    return {
        "messages": sum(r[0] for r in results),
        "errors": sum(r[1] for r in results),
        "elapsed": time.monotonic() - started,
        "latencies": latencies,
    }


def worker(args: argparse.Namespace, clients: int, queue: Any) -> None:
    """One client process: run its share of the clients and report."""
    if args.uvloop:
        import uvloop

        uvloop.install()
    compression = "deflate" if args.compression else None
    queue.put(asyncio.run(run_clients(args.url, clients, args.duration, args.size, args.binary, compression)))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(fraction * len(values)))]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the clients, print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="echo endpoint, e.g. ws://127.0.0.1:8000/echo")
    parser.add_argument("--clients", type=int, default=50, help="concurrent connections (default 50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--size", type=int, default=32, help="message size in bytes/characters (default 32)")
    parser.add_argument("--binary", action="store_true", help="send binary messages (default text)")
    parser.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--processes", type=int, default=1, help="client processes (default 1)")
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    args = parser.parse_args(argv)

    shares = [args.clients // args.processes + (1 if i < args.clients % args.processes else 0)
              for i in range(args.processes)]
    queue: Any = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(args, share, queue)) for share in shares if share]
    for proc in procs:
        proc.start()
    parts = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()

    latencies = [value for part in parts for value in part["latencies"]]
    messages = sum(part["messages"] for part in parts)
    elapsed = max(part["elapsed"] for part in parts)
    print(json.dumps({
        "url": args.url,
        "clients": args.clients,
        "processes": len(procs),
        "duration": args.duration,
        "size": args.size,
        "binary": args.binary,
        "compression": args.compression,
        "messages": messages,
        "errors": sum(part["errors"] for part in parts),
        "messages_per_second": round(messages / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "mean": round(statistics.fmean(latencies) * 1000, 3) if latencies else 0.0,
            "p50": round(percentile(latencies, 0.50) * 1000, 3),
            "p99": round(percentile(latencies, 0.99) * 1000, 3),
        },
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
