"""Figures that need no sustained load: time to first 200, and memory of a 4-worker tree.

**Startup** is measured from the ``Popen`` call to the first ``GET /`` answered 200 on the
server's port, polled every :data:`~tests.bench.servers.POLL_S` seconds (2 ms; a refused
connect costs some 50 µs, so the poll adds at most ~2 ms to a figure), with the server pinned
as in the load runs. It includes the interpreter start, the imports, the master's fork or spawn
of its workers and the app's lifespan start-up. With several workers, *first 200* is the first
answer on the port, whichever worker gave it — when a client is first served. Beside it,
``workers_spawned_s`` is when the tree first held all its worker processes (process count,
polled at the same interval; multiprocessing helpers such as uvicorn's resource tracker not
counted): a lower bound of "every worker ready", since a spawned worker may still be importing.

**Memory** is read after :data:`MEMORY_REQUESTS` requests (each on a new connection, from
:data:`MEMORY_CLIENTS` concurrent clients, so several workers take some) and
:data:`MEMORY_REST_S` seconds of rest: RSS (what top shows), PSS (shared pages split among the
processes sharing them: the fair share of a worker forked from a master; summed over the tree
it is the tree's real footprint) and USS (pages only that process holds: what one more worker
costs), from ``psutil``'s ``memory_full_info``. Every process of the tree is counted, each with
its role (master, worker, or a helper such as multiprocessing's resource tracker).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from tests.bench.measure import LoadSettings
from tests.bench.servers import POLL_S, ServerProcess, ServerSpec, ServerStartError, http_request

STARTUP_APP = "hello"
MEMORY_REQUESTS = 200
MEMORY_CLIENTS = 8
MEMORY_REST_S = 1.0
MIB = 1024 * 1024


def _stats(values: list[float]) -> dict[str, float | None]:
    return {"median_s": statistics.median(values) if values else None,
            "min_s": min(values) if values else None, "max_s": max(values) if values else None}


def startup(spec: ServerSpec, runs: int, workdir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Spawn ``spec`` ``runs`` times; report each time to first 200 (and, with several workers,
    to all worker processes spawned) and their medians."""
    times: list[float] = []
    spawned: list[float] = []
    error: str | None = None
    for _ in range(runs):
        server = ServerProcess(spec, STARTUP_APP, workdir / "logs", watch_workers=True)
        try:
            times.append(server.start(timeout=timeout, attempts=1))
            if server.workers_spawned_s is not None:
                spawned.append(server.workers_spawned_s)
        except ServerStartError as exc:
            error = str(exc)
            break
        finally:
            server.stop()
    return {
        "server": spec.key, "label": spec.label, "family": spec.family, "workers": spec.workers,
        "cpus": spec.cpus, "poll_s": POLL_S, "runs_s": times, "workers_spawned_runs_s": spawned,
        "error": error, "ok": bool(times) and error is None,
        **_stats(times),
        "workers_spawned_median_s": statistics.median(spawned) if spawned else None,
    }


def _expected_workers(spec: ServerSpec) -> int:
    """Worker processes the tree holds once up (uvicorn with one worker and the ceiling: none)."""
    if spec.family == "ceiling" or (spec.family == "uvicorn" and spec.workers == 1):
        return 0
    return spec.workers


def _requests(port: int, count: int, clients: int) -> int:
    """``count`` GETs, each on a new connection, from ``clients`` threads; the number that failed."""
    def one(_: int) -> bool:
        try:
            return http_request(port)[0] == 200
        except (OSError, ValueError):
            return False
    with ThreadPoolExecutor(clients) as pool:
        return sum(not ok for ok in pool.map(one, range(count)))


def summarize_memory(processes: list[dict[str, Any]]) -> dict[str, Any]:
    """Tree totals from per-process figures: total PSS/RSS/USS, the master's, the workers'
    median (with min–max) and the helpers' (bytes)."""
    def total(field: str, rows: list[dict[str, Any]]) -> int | None:
        values = [p[field] for p in rows if p.get(field) is not None]
        return sum(values) if values else None

    def med(field: str, rows: list[dict[str, Any]]) -> dict[str, float] | None:
        values = [p[field] for p in rows if p.get(field) is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    master = next((p for p in processes if p["role"] in ("master", "process")), None)
    workers = [p for p in processes if p["role"] == "worker"]
    helpers = [p for p in processes if p["role"] not in ("master", "process", "worker")]
    return {
        "processes": len(processes), "workers": len(workers),
        "helpers": [p["role"] for p in helpers],
        "total_pss": total("pss", processes), "total_rss": total("rss", processes),
        "total_uss": total("uss", processes),
        "master_pss": master and master["pss"], "master_uss": master and master["uss"],
        "master_rss": master and master["rss"],
        "worker_uss": med("uss", workers), "worker_pss": med("pss", workers), "worker_rss": med("rss", workers),
        "helpers_pss": total("pss", helpers),
    }


def memory(spec: ServerSpec, load: LoadSettings, workdir: Path, requests: int = MEMORY_REQUESTS,
           rest_s: float = MEMORY_REST_S) -> dict[str, Any]:
    """Serve hello with ``spec``, send it ``requests`` requests, rest, and read each process's memory."""
    base = {"server": spec.key, "label": spec.label, "family": spec.family, "workers": spec.workers,
            "requests": requests, "rest_s": rest_s}
    server = ServerProcess(spec, STARTUP_APP, workdir / "logs")
    try:
        server.start(timeout=load.start_timeout_s)
        server.wait_workers(_expected_workers(spec), timeout=load.start_timeout_s)
        before = _cpu_by_pid(server.processes())
        failed = _requests(server.port, requests, MEMORY_CLIENTS)
        after = _cpu_by_pid(server.processes())
        time.sleep(rest_s)
        server.check_alive()
        processes = server.memory()
    except ServerStartError as exc:
        return {**base, "ok": False, "error": str(exc), "processes": []}
    finally:
        server.stop()
    for proc in processes:
        # CPU the process spent while the requests ran: which workers served some.
        proc["cpu_ms_during_requests"] = round((after.get(proc["pid"], 0.0) - before.get(proc["pid"], 0.0)) * 1e3, 1)
    error = f"{failed} of {requests} requests failed" if failed else None
    return {**base, "ok": True, "error": error, "failed_requests": failed, "processes": processes,
            "summary": summarize_memory(processes)}


def _cpu_by_pid(procs: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
    return out
