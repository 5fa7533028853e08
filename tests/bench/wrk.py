"""Driving wrk: the command line, the POST body script, and a tolerant parser of its report.

wrk is the load generator because it is cheap per request (C, one thread) and reports a
latency distribution with ``--latency``. It is pinned to its own core with ``taskset`` so the
server under test has the other one to itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.apps import ECHO_BODY_SIZE

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # → milliseconds
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

_REQUESTS_RE = re.compile(r"(\d+)\s+requests\s+in\s+([\d.]+)(us|ms|s|m|h),\s+([\d.]+)([KMGT]?B)\s+read")
_PERCENTILE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_RE = re.compile(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)")

POST_SCRIPT = f"""-- written by tests/bench/wrk.py: every request is a POST with a {ECHO_BODY_SIZE}-byte body
wrk.method = "POST"
wrk.body = string.rep("x", {ECHO_BODY_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""

# The fields a desktop Chrome sends with a same-origin fetch() besides Host: real traffic
# carries a head of about 600 bytes, where wrk alone sends one field. Every field costs a
# server some parsing, so this scenario shows that cost beside the bare hello.
BROWSER_FIELDS: tuple[tuple[str, str], ...] = (
    ("Connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'),
    ("sec-ch-ua-mobile", "?0"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/124.0.0.0 Safari/537.36"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("Accept", "application/json, text/plain, */*"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "cors"),
    ("Sec-Fetch-Dest", "empty"),
    ("Referer", "https://example.com/items"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Cookie", "session=0123456789abcdef0123456789abcdef; theme=dark"),
)


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


BROWSER_SCRIPT = "-- written by tests/bench/wrk.py: every request carries a browser's header fields\n" + "".join(
    f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}\n" for name, value in BROWSER_FIELDS)
SCRIPTS = {"post": POST_SCRIPT, "browser": BROWSER_SCRIPT}
"""wrk Lua scripts by name (a scenario's ``script``)."""


class WrkError(RuntimeError):
    """wrk could not run, or its output could not be understood."""


@dataclass
class WrkResult:
    """One wrk run, as parsed from its report."""

    requests: int
    duration_s: float
    rps: float
    latency_ms: dict[str, float]  # "p50", "p75", "p90", "p99"
    bytes_read: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        """Failed requests: non-2xx/3xx answers plus connect/read/write/timeout errors."""
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse(output: str) -> WrkResult:
    """Parse wrk's report (with ``--latency``); raise :class:`WrkError` if it has no totals."""
    totals = _REQUESTS_RE.search(output)
    if totals is None:
        raise WrkError(f"no 'N requests in T' line in wrk output:\n{output[-2000:]}")
    requests = int(totals.group(1))
    duration_s = _ms(totals.group(2), totals.group(3)) / 1e3
    bytes_read = float(totals.group(4)) * _SIZE_UNITS[totals.group(5)]
    rps_match = _RPS_RE.search(output)
    rps = float(rps_match.group(1)) if rps_match else (requests / duration_s if duration_s else 0.0)
    latency: dict[str, float] = {}
    for match in _PERCENTILE_RE.finditer(output):
        key = f"p{float(match.group(1)):g}"
        latency[key] = _ms(match.group(2), match.group(3))
    non_2xx_match = _NON_2XX_RE.search(output)
    errors_match = _SOCKET_ERRORS_RE.search(output)
    socket_errors: dict[str, int] = {}
    if errors_match:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, errors_match.groups()), strict=True))
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=rps,
        latency_ms=latency,
        bytes_read=bytes_read,
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        socket_errors=socket_errors,
    )


def wrk_path() -> str:
    """The wrk executable, or :class:`WrkError` naming what to install."""
    found = shutil.which("wrk")
    if not found:
        raise WrkError("wrk is not installed (`make bench` installs it as root via tests/install-system-tools.sh)")
    return found


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    """``argv`` under ``taskset -c cpus`` when both a CPU list and taskset are available."""
    taskset = shutil.which("taskset")
    if cpus is None or taskset is None:
        return argv
    return [taskset, "-c", cpus, *argv]


def command(url: str, *, connections: int, duration_s: float, script: Path | None = None,
            cpus: str | None = "1", timeout_s: float = 5.0) -> list[str]:
    """The wrk command line: one thread, ``connections`` keep-alive connections, latency report."""
    argv = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--latency",
            f"--timeout={max(1, round(timeout_s))}s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    return pinned(argv, cpus)


def run(url: str, *, connections: int, duration_s: float, script: Path | None = None,
        cpus: str | None = "1") -> tuple[WrkResult, str]:
    """Run wrk to completion and return the parsed result and its raw output."""
    argv = command(url, connections=connections, duration_s=duration_s, script=script, cpus=cpus)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration_s + 60:.0f}s") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}:\n{output[-2000:]}")
    return parse(output), output
