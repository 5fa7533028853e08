"""Driving h2load (nghttp2's HTTP/2 load generator): the command line and a parser of its report.

The HTTP/2 rows use ``h2load -t1 -c16 -m10``: one thread, 16 connections with up to 10
concurrent streams each (160 requests in flight), cleartext with prior knowledge (``h2c``,
what h2load does with an ``http://`` URL). Like wrk, it is C, one thread, pinned to its own core.

A run is a fixed number of requests (``-n``), not a duration: zttp 0.0.35 ends an HTTP/2
connection with "flood detected" (ENHANCE_YOUR_CALM) once it has carried 4096 streams, and
h2load does not reconnect, so a 5 s run of a fast server would stop early with its in-flight
requests failed. ``REQUESTS_PER_CONNECTION`` keeps every connection below that.
h2load prints no latency percentiles, so every request's duration goes to a ``--log-file``
(start time, status, duration in µs per line) and p50/p75/p90/p99 are computed from it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.wrk import pinned

CLIENTS = 16
STREAMS = 10
REQUESTS_PER_CONNECTION = 3700  # below corral's GOAWAY at 3712 streams (zttp ends a connection at 4096)

_FINISHED_RE = re.compile(r"finished in ([\d.]+)(us|ms|s),\s+([\d.]+) req/s")
_REQUESTS_RE = re.compile(r"requests:\s+(\d+) total,\s+(\d+) started,\s+(\d+) done,\s+(\d+) succeeded,\s+"
                          r"(\d+) failed,\s+(\d+) errored,\s+(\d+) timeout")
_STATUS_RE = re.compile(r"status codes:\s+(\d+) 2xx,\s+(\d+) 3xx,\s+(\d+) 4xx,\s+(\d+) 5xx")
_TRAFFIC_RE = re.compile(r"traffic:\s+[\d.]+[KMGT]?B \((\d+)\) total,\s+[\d.]+[KMGT]?B \((\d+)\) headers")
_PROTOCOL_RE = re.compile(r"Application protocol: (\S+)")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class H2loadError(RuntimeError):
    """h2load could not run, or its output could not be understood."""


def h2load_path() -> str | None:
    """The h2load executable (Debian package nghttp2-client), if installed."""
    return shutil.which("h2load")


def percentiles(log_text: str) -> dict[str, float]:
    """p50/p75/p90/p99 in milliseconds from h2load's ``--log-file`` (third column: µs)."""
    durations: list[int] = []
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].strip().isdigit():
            durations.append(int(parts[2]))
    if not durations:
        return {}
    durations.sort()
    last = len(durations) - 1
    return {f"p{p}": durations[min(last, round(p / 100 * last))] / 1e3 for p in (50, 75, 90, 99)}


def parse(output: str, log_text: str = "") -> dict[str, Any]:
    """Parse h2load's report into the figures a wrk run gives (see :class:`tests.bench.wrk.WrkResult`)."""
    finished = _FINISHED_RE.search(output)
    requests = _REQUESTS_RE.search(output)
    if finished is None or requests is None:
        raise H2loadError(f"no 'finished in' / 'requests:' lines in h2load output:\n{output[-2000:]}")
    duration_s = float(finished.group(1)) * _SECONDS[finished.group(2)]
    total, started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    status = _STATUS_RE.search(output)
    non_2xx = done - int(status.group(1)) - int(status.group(2)) if status else 0
    traffic = _TRAFFIC_RE.search(output)
    protocol = _PROTOCOL_RE.search(output)
    socket_errors = {"failed": failed, "errored": errored, "timeout": timeout}
    return {
        "requests": done,
        "duration_s": duration_s,
        "rps": float(finished.group(3)),
        "latency_ms": percentiles(log_text),
        "bytes_read": int(traffic.group(1)) if traffic else 0.0,
        "header_bytes": int(traffic.group(2)) if traffic else None,
        "non_2xx": max(0, non_2xx),
        "socket_errors": socket_errors,
        # h2load's "failed" counts non-2xx/3xx answers and "errored" ones (resets, timeouts) alike.
        "errors": failed,
        "started": started,
        "protocol": protocol.group(1) if protocol else None,
    }


def command(url: str, *, duration_s: float, clients: int = CLIENTS, streams: int = STREAMS,
            requests: int | None = None, log_file: Path | None = None, cpus: str | None = "1") -> list[str]:
    """The h2load command line: one thread, ``clients`` connections, ``streams`` streams each;
    ``requests`` in all (``-n``), or for ``duration_s`` (``-D``) when it is None."""
    path = h2load_path()
    if path is None:
        raise H2loadError("h2load is not installed (`make bench` installs nghttp2-client as root via "
                          "tests/install-system-tools.sh)")
    argv = [path, "-t1", f"-c{clients}", f"-m{streams}",
            f"-n{requests}" if requests else f"-D{max(1, round(duration_s))}"]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    argv.append(url)
    return pinned(argv, cpus)


def run(url: str, *, duration_s: float, clients: int = CLIENTS, streams: int = STREAMS,
        requests: int | None = None, cpus: str | None = "1") -> tuple[dict[str, Any], str]:
    """Run h2load to completion; return wrk-shaped figures and its raw report."""
    with tempfile.TemporaryDirectory(prefix="corral-h2load-") as tmp:
        log_file = Path(tmp) / "requests.log"
        argv = command(url, duration_s=duration_s, clients=clients, streams=streams, requests=requests,
                       log_file=log_file, cpus=cpus)
        deadline = duration_s + 60 if not requests else 300
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=deadline, check=False)
        except subprocess.TimeoutExpired as exc:
            raise H2loadError(f"h2load did not finish within {deadline:.0f}s") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise H2loadError(f"h2load exited with {done.returncode}:\n{output[-2000:]}")
        log_text = log_file.read_text() if log_file.exists() else ""
    figures = parse(output, log_text)
    if figures["protocol"] not in (None, "h2c", "h2"):
        raise H2loadError(f"h2load spoke {figures['protocol']}, not HTTP/2:\n{output[-1000:]}")
    # The raw report without the progress lines (the per-request log is not kept).
    report = "\n".join(ln for ln in output.splitlines() if not ln.startswith(("progress:", "spawning", "Warm-up",
                                                                              "Main benchmark", "Stopped")))
    return figures, report
