"""One measured load run: start a server, warm it up, run the load (wrk, h2load or the WebSocket
client), read the tree's CPU counters.

The CPU window brackets the wrk process only (counters read just before wrk starts and just
after it exits), so server start-up, the warm-up run and shutdown are not billed to the
requests. Each run returns a flat dict of raw figures; a server that fails to start, dies or
answers with errors produces a dict with ``ok: False`` and the reason instead of an exception,
so one broken configuration never stops the suite. Before the warm-up, one request of the
scenario is sent and its answer checked (:func:`check_answer`): a wrong body is reported in the
row's ``error`` beside its figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import h2load, wrk, ws_load
from tests.bench.apps import (
    APP_ATTRS,
    ECHO_BODY_SIZE,
    HELLO_BODY,
    JSON_PAYLOAD,
    STREAM_CHUNK_SIZE,
    STREAM_CHUNKS,
)
from tests.bench.servers import HOST, ServerProcess, ServerSpec, ServerStartError, http_request


@dataclass(frozen=True)
class Scenario:
    """A workload: which app serves it and how wrk drives it."""

    name: str
    title: str
    script: str | None = None  # wrk script (wrk.SCRIPTS): "post" (1 KiB body), "browser" (13 more fields)
    kind: str = "http"  # "http": wrk drives it; "h2": h2load (HTTP/2); "ws": the WebSocket echo client

    @property
    def app_attr(self) -> str:
        return APP_ATTRS[self.name]


SCENARIOS: dict[str, Scenario] = {
    "hello": Scenario("hello", "hello world (13 B text)"),
    "json": Scenario("json", "small JSON (~100 B)"),
    "stream": Scenario("stream", "64 KiB in 16 chunks"),
    "echo": Scenario("echo", "1 KiB POST echo", script="post"),
    "headers": Scenario("headers", "hello with a browser's 14 header fields", script="browser"),
    "ws": Scenario("ws", "WebSocket echo (32 B text)", kind="ws"),
    "h2": Scenario("h2", f"hello world over HTTP/2 (h2load -c{h2load.CLIENTS} -m{h2load.STREAMS})", kind="h2"),
}


@dataclass(frozen=True)
class LoadSettings:
    """How hard and how long wrk pushes, and on which core."""

    duration_s: float = 5.0
    warmup_s: float = 1.0
    connections: int = 64
    wrk_cpus: str | None = "1"
    h2_clients: int = h2load.CLIENTS  # h2load connections (-c) ...
    h2_streams: int = h2load.STREAMS  # ... and concurrent streams on each (-m)
    # Requests per h2 run (-n; 0: -D duration_s). The default keeps every connection under zttp's
    # 4096 streams (see tests/bench/h2load.py); hypercorn, ~20 times slower, gets a quarter.
    h2_requests: int = h2load.CLIENTS * h2load.REQUESTS_PER_CONNECTION
    start_timeout_s: float = 30.0


def wrk_script(scenario: Scenario, workdir: Path) -> Path | None:
    """Write the scenario's wrk Lua script (if it has one) and return its path."""
    if scenario.script is None:
        return None
    path = workdir / f"{scenario.script}.lua"
    path.write_text(wrk.SCRIPTS[scenario.script])
    return path


def check_answer(scenario: Scenario, port: int) -> str | None:
    """One request as the scenario's load sends it, its answer checked (status, body, framing):
    ``None`` when right, else what was wrong. wrk counts statuses only; this catches a server
    that answers 200 with a wrong or truncated body. HTTP/1.1 scenarios only."""
    if scenario.kind != "http":
        return None
    method, body = "GET", b""
    headers: tuple[tuple[str, str], ...] = ()
    if scenario.script == "post":
        method, body = "POST", b"x" * ECHO_BODY_SIZE
        headers = (("Content-Type", "application/octet-stream"),)
    elif scenario.script == "browser":
        headers = wrk.BROWSER_FIELDS
    try:
        status, fields, got = http_request(port, method, body=body, headers=headers)
    except (OSError, ValueError) as exc:
        return f"check request failed: {exc}"
    if status != 200:
        return f"check request answered {status}"
    if scenario.name in ("hello", "headers"):
        expected = HELLO_BODY
    elif scenario.name == "json":
        try:
            right = json.loads(got) == JSON_PAYLOAD
        except ValueError:
            right = False
        return None if right else f"wrong JSON body: {got[:80]!r}"
    elif scenario.name == "echo":
        expected = body
    elif scenario.name == "stream":
        if "chunked" not in fields.get("transfer-encoding", "").lower():
            return "stream answer not chunked (transfer-encoding: " + fields.get("transfer-encoding", "none") + ")"
        expected = b"x" * (STREAM_CHUNK_SIZE * STREAM_CHUNKS)
    else:
        return None
    if got != expected:
        return f"wrong body: {len(got)} bytes, expected {len(expected)} ({got[:40]!r})"
    return None


def _drive(server: ServerProcess, scenario: Scenario, load: LoadSettings, duration_s: float,
           script: Path | None, warmup: bool = False) -> tuple[dict[str, Any], str]:
    """One load run against ``server``: wrk for HTTP, the echo client for WebSockets."""
    if scenario.kind == "ws":
        return ws_load.run(f"ws://{HOST}:{server.port}/echo", duration_s=duration_s, cpus=load.wrk_cpus)
    if scenario.kind == "h2":
        requests = load.h2_requests
        if requests and (warmup or server.spec.family == "hypercorn"):
            requests = max(load.h2_clients, requests // 4)
        return h2load.run(server.url, duration_s=duration_s, clients=load.h2_clients, streams=load.h2_streams,
                          requests=requests or None, cpus=load.wrk_cpus)
    result, raw = wrk.run(server.url, connections=load.connections, duration_s=duration_s, script=script,
                          cpus=load.wrk_cpus)
    return result.as_dict(), raw


def measure(spec: ServerSpec, scenario: Scenario, load: LoadSettings, workdir: Path,
            rep: int) -> dict[str, Any]:
    """Serve ``scenario`` with ``spec``, run the load once, and return every figure of the run."""
    row: dict[str, Any] = {
        "scenario": scenario.name, "server": spec.key, "label": spec.label, "family": spec.family,
        "http": spec.http, "h2": spec.h2, "ws": spec.ws, "workers": spec.workers, "access_log": spec.access_log,
        "server_cpus": spec.cpus, "reference": spec.reference().key, "rep": rep, "ok": False, "error": None,
    }
    script = wrk_script(scenario, workdir)
    server = ServerProcess(spec, scenario.app_attr, workdir / "logs")
    try:
        row["startup_s"] = server.start(timeout=load.start_timeout_s)
        if spec.workers > 1:
            server.wait_workers(spec.workers, timeout=load.start_timeout_s)
        row["check_error"] = check_answer(scenario, server.port)
        if load.warmup_s > 0:
            _drive(server, scenario, load, load.warmup_s, script, warmup=True)
        server.check_alive()
        row["processes"] = len(server.processes())
        cpu_before = server.cpu_seconds()
        wall_before = time.perf_counter()
        figures, raw = _drive(server, scenario, load, load.duration_s, script)
        wall = time.perf_counter() - wall_before
        cpu = server.cpu_seconds() - cpu_before
        server.check_alive()
    except (ServerStartError, wrk.WrkError, ws_load.WsLoadError, h2load.H2loadError) as exc:
        row["error"] = str(exc)
        return row
    finally:
        server.stop()
    row.update(figures)
    requests = figures["requests"]
    row["wall_s"] = wall
    row["cpu_s"] = cpu
    row["cpu_us_per_req"] = cpu / requests * 1e6 if requests else None
    row["cpu_util"] = cpu / wall if wall else None
    row["p50_ms"] = figures["latency_ms"].get("p50")
    row["p99_ms"] = figures["latency_ms"].get("p99")
    row["load_output"] = raw
    if requests == 0:
        row["error"] = "no request completed"
    elif row["check_error"]:
        # A wrong answer is an error however cheap it was: the figures are kept and flagged.
        row["ok"] = True
        row["error"] = "wrong answer: " + row["check_error"] + (
            f"; {figures['errors']} failed requests" if figures["errors"] else "")
    elif figures["errors"]:
        # Errors are reported, and the figures kept: a server that fails requests cheaply is
        # not faster, so the table shows the error count beside its numbers.
        row["ok"] = True
        row["error"] = (f"{figures['errors']} failed requests ({figures['non_2xx']} non-2xx, "
                        f"sockets {figures['socket_errors']})")
    else:
        row["ok"] = True
    return row
