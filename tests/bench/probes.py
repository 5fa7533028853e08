"""Figures that need no sustained load: time to first 200, and idle memory per process.

Startup is measured from the ``Popen`` call to the first GET answered 200 on the server's port
(polled every 5 ms), with the server pinned to its core as in the load runs, so it includes the
interpreter start, the imports, the master's fork of a worker and the app's lifespan start-up.

Memory is read after a one-second burst of keep-alive load and a second of rest: RSS (what top
shows), PSS (shared pages split among the processes sharing them: the fair share of a worker
forked from a master) and USS (pages only that process holds), from ``memory_full_info``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tests.bench import wrk
from tests.bench.measure import LoadSettings
from tests.bench.servers import ServerProcess, ServerSpec, ServerStartError

STARTUP_APP = "hello"


def startup(spec: ServerSpec, runs: int, workdir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Spawn ``spec`` ``runs`` times; report each time to first 200 and their median."""
    times: list[float] = []
    error: str | None = None
    for _ in range(runs):
        server = ServerProcess(spec, STARTUP_APP, workdir / "logs")
        try:
            times.append(server.start(timeout=timeout, attempts=1))
        except ServerStartError as exc:
            error = str(exc)
            break
        finally:
            server.stop()
    return {
        "server": spec.key, "label": spec.label, "family": spec.family, "runs_s": times, "error": error,
        "ok": bool(times) and error is None,
        "median_s": statistics.median(times) if times else None,
        "min_s": min(times) if times else None, "max_s": max(times) if times else None,
    }


def memory(spec: ServerSpec, load: LoadSettings, workdir: Path) -> dict[str, Any]:
    """Serve hello with ``spec``, load it briefly, rest, and read each process's memory."""
    server = ServerProcess(spec, STARTUP_APP, workdir / "logs")
    try:
        server.start(timeout=load.start_timeout_s)
        server.wait_processes(spec.workers + (1 if spec.family == "corral" or spec.workers > 1 else 0),
                              timeout=load.start_timeout_s)
        wrk.run(server.url, connections=4, duration_s=1, cpus=load.wrk_cpus)
        time.sleep(1.0)
        server.check_alive()
        processes = server.memory()
    except (ServerStartError, wrk.WrkError) as exc:
        return {"server": spec.key, "label": spec.label, "family": spec.family, "workers": spec.workers,
                "ok": False, "error": str(exc), "processes": []}
    finally:
        server.stop()
    return {"server": spec.key, "label": spec.label, "family": spec.family, "workers": spec.workers,
            "ok": True, "error": None, "processes": processes}
