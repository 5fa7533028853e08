"""The master loads the serving stack before it forks, so the workers share it; the app stays theirs.

The figures (PSS of the tree, USS per worker) are `make bench`'s memory rows; here the facts
behind them, on the real process tree: the master maps uvloop's and httptools' extension
modules before the first fork (each worker uses those pages instead of loading its own), and it
never imports the application unless ``--preload`` asks it to (so a HUP loads new app code).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import Corral, cannot_run, require_module, wait_until, worker_pids

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., Corral]


def mapped(pid: int, package: str) -> bool:
    """True when process ``pid`` has an extension module of ``package`` mapped."""
    marker = f"/{package}/"
    with open(f"/proc/{pid}/maps") as maps:
        return any(marker in line and ".so" in line for line in maps)


def importers(log: Path) -> set[int]:
    return {int(line) for line in log.read_text().split()} if log.exists() else set()


def test_master_loads_the_serving_stack_before_forking(corral: Start, tmp_path: Path) -> None:
    if not Path("/proc/self/maps").exists():
        cannot_run("/proc/PID/maps is missing (not Linux): the mapped modules cannot be read")
    require_module("uvloop")
    require_module("httptools")
    log = tmp_path / "imports.log"
    proc = corral("import_marker:app", "--workers", "2", "--loop", "uvloop", "--http", "httptools",
                  env={"IMPORT_MARKER_LOG": str(log)})
    proc.wait_log("worker_ready", count=2)
    assert httpx.get(proc.url + "/").text == "marked"
    for package in ("uvloop", "httptools"):
        assert mapped(proc.pid, package), f"the master has not loaded {package}"
    workers = worker_pids(proc.pid)
    assert len(workers) == 2
    # The application is the workers' own: imported by each of them, never by the master.
    wait_until(lambda: importers(log) >= workers, 10, "both workers importing the app")
    assert proc.pid not in importers(log)
    # A HUP rolls onto new workers, which import the application again (its new code).
    proc.signal(signal.SIGHUP)
    wait_until(lambda: len(worker_pids(proc.pid) - workers) == 2 and len(importers(log)) >= 4, 30,
               "two new workers importing the app", alive=proc.dead)
    assert proc.pid not in importers(log)


def test_preload_imports_the_app_in_the_master_only(corral: Start, tmp_path: Path) -> None:
    log = tmp_path / "imports.log"
    proc = corral("import_marker:app", "--workers", "2", "--preload", env={"IMPORT_MARKER_LOG": str(log)})
    proc.wait_log("worker_ready", count=2)
    assert httpx.get(proc.url + "/").text == "marked"
    assert importers(log) == {proc.pid}
    assert os.getpid() not in importers(log)
