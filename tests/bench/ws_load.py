"""Driving the WebSocket echo client (``tests/bench/ws_echo.py``) as the load of the ``ws`` scenario.

The client is its own module, written to run against any echo server; here it is started as
``python -m tests.bench.ws_echo URL --clients N --duration S --uvloop`` pinned to the load
generator's core, and its one JSON line is turned into the same figures a wrk run gives
(messages count as requests), so the server's CPU µs per message lands in the same table.
The Python client is usually the bottleneck, which limits messages/s, not the meaning of the
server's CPU per message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.bench.wrk import pinned

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLIENT_MODULE = "tests.bench.ws_echo"
CLIENTS = 50
MESSAGE_SIZE = 32


class WsLoadError(RuntimeError):
    """The client could not run or printed no result."""


def available() -> bool:
    """True when the echo client module exists in this tree."""
    return (HERE / "ws_echo.py").exists()


def run(url: str, *, duration_s: float, clients: int = CLIENTS, cpus: str | None = "1") -> tuple[dict[str, Any], str]:
    """Run the echo client for ``duration_s``; return wrk-shaped figures and its raw output."""
    argv = pinned([sys.executable, "-m", CLIENT_MODULE, url, "--clients", str(clients),
                   "--duration", f"{duration_s:g}", "--size", str(MESSAGE_SIZE), "--uvloop"], cpus)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 90, cwd=ROOT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise WsLoadError(f"ws_echo client did not finish within {duration_s + 90:.0f}s") from exc
    raw = done.stdout + done.stderr
    line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("{")), None)
    if done.returncode != 0 or line is None:
        raise WsLoadError(f"ws_echo client exited with {done.returncode}:\n{raw[-2000:]}")
    try:
        data = json.loads(line)
        latency = data.get("latency_ms", {})
        figures: dict[str, Any] = {
            "requests": int(data["messages"]),
            "duration_s": float(data.get("duration", duration_s)),
            "rps": float(data["messages_per_second"]),
            "latency_ms": {k: float(v) for k, v in latency.items() if k in ("p50", "p99", "mean")},
            "errors": int(data.get("errors", 0)),
            "non_2xx": 0,
            "socket_errors": {},
            "ws_client": data,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise WsLoadError(f"unreadable ws_echo result {line[:300]!r}: {exc}") from exc
    return figures, raw
