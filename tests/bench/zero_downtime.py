"""Failed requests and the longest gap while workers are replaced: corral vs uvicorn vs gunicorn.

Run with ``python -m tests.bench.zero_downtime`` (not collected by pytest).
Every server serves the same app (``tests/apps/master_app.py``, which answers
its worker PID) with two workers on a free port and gets the same load: 16
keep-alive clients (``tests/load.py``) that never retry. For each scenario
the load runs, the event is triggered, the script waits for the event to be
observably done (worker PIDs replaced, worker count changed) and for a few
hundred more successes, then reports what the clients saw:

    hup          SIGHUP to the master (a rolling restart where supported)
    hup-slow     the same with an app whose lifespan startup takes 2 seconds
    ttin-ttou    SIGTTIN, wait for a third worker, SIGTTOU, wait for two
    max-requests each worker replaced after 200 requests, for 8 seconds
    kill-9       SIGKILL of one worker, wait for its replacement

A scenario a server does not support is reported as such (its workers did not
change before the deadline).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.load import Load, LoadReport
from tests.support import APPS, ROOT, free_port

CLIENTS = 16
DEADLINE = 30.0  # seconds for an event to complete before the scenario is called unsupported
SETTLE_SUCCESSES = 300


@dataclass(frozen=True)
class Server:
    """How to start one server with two workers on ``port`` with an optional request limit."""

    name: str
    argv: Callable[[int, int | None], list[str]]


def _corral(port: int, limit: int | None) -> list[str]:
    extra = ["--limit-max-requests", str(limit)] if limit else []
    return [sys.executable, "-m", "daemon", "master_app:app", "--app-dir", str(APPS), "--workers", "2",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning", *extra]


def _uvicorn(port: int, limit: int | None) -> list[str]:
    extra = ["--limit-max-requests", str(limit)] if limit else []
    return [sys.executable, "-m", "uvicorn", "master_app:app", "--app-dir", str(APPS), "--workers", "2",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning", *extra]


def _gunicorn(worker_class: str) -> Callable[[int, int | None], list[str]]:
    def argv(port: int, limit: int | None) -> list[str]:
        extra = ["--max-requests", str(limit)] if limit else []
        return [sys.executable, "-m", "gunicorn", "--chdir", str(APPS), "-w", "2", "-k", worker_class,
                "-b", f"127.0.0.1:{port}", "--log-level", "warning", *extra, "master_app:app"]
    return argv


SERVERS = [
    Server("corral", _corral),
    Server("uvicorn", _uvicorn),
    Server("gunicorn-asgi", _gunicorn("asgi")),
    Server("gunicorn-uvicornworker", _gunicorn("uvicorn.workers.UvicornWorker")),
]


class Running:
    """A started server: its master process, log file and workers."""

    def __init__(self, server: Server, limit: int | None, logdir: Path, startup: float = 0) -> None:
        self.port = free_port()
        self.log = open(logdir / f"{server.name}.log", "ab")
        env = {**os.environ, "MASTER_APP_STARTUP": str(startup)}
        self.proc = subprocess.Popen(server.argv(self.port, limit), stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}/"

    def workers(self) -> set[int]:
        """Live worker PIDs (children of the master, minus multiprocessing helpers)."""
        pids = set()
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return pids
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE or "resource_tracker" in " ".join(child.cmdline()):
                    continue
            except psutil.Error:
                continue
            pids.add(child.pid)
        return pids

    def wait(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
        """Poll ``condition`` until true (True) or the deadline or the server's death (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            if condition():
                return True
            time.sleep(0.02)
        return False

    def ready(self) -> bool:
        """Answering HTTP with two workers."""
        import http.client

        def answers() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/")
                ok = conn.getresponse().status == 200
                conn.close()
                return ok
            except OSError:
                return False
        return self.wait(lambda: answers() and len(self.workers()) == 2, 60)

    def stop(self) -> None:
        """TERM the tree, then kill whatever is left."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def _hup(run: Running) -> bool:
    before = run.workers()
    run.proc.send_signal(signal.SIGHUP)
    return run.wait(lambda: not (before & run.workers()) and len(run.workers()) >= 2)


def _ttin_ttou(run: Running) -> bool:
    run.proc.send_signal(signal.SIGTTIN)
    if not run.wait(lambda: len(run.workers()) == 3):
        return False
    run.proc.send_signal(signal.SIGTTOU)
    return run.wait(lambda: len(run.workers()) == 2)


def _max_requests(run: Running) -> bool:
    before = run.workers()
    end = time.monotonic() + 8
    run.wait(lambda: time.monotonic() > end, 10)
    return not (before & run.workers())


def _kill9(run: Running) -> bool:
    before = run.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    return run.wait(lambda: victim not in run.workers() and len(run.workers()) == 2)


# name: (action, --limit-max-requests, seconds of lifespan startup)
SCENARIOS: dict[str, tuple[Callable[[Running], bool], int | None, float]] = {
    "hup": (_hup, None, 0),
    "hup-slow": (_hup, None, 2),
    "ttin-ttou": (_ttin_ttou, None, 0),
    "max-requests": (_max_requests, 200, 0),
    "kill-9": (_kill9, None, 0),
}


def measure(server: Server, scenario: str, logdir: Path) -> tuple[LoadReport | None, str]:
    """Run one scenario against one server; the load report and a note."""
    action, limit, startup = SCENARIOS[scenario]
    run = Running(server, limit, logdir, startup)
    try:
        if not run.ready():
            return None, "did not start"
        with Load(run.url, clients=CLIENTS, duration=DEADLINE + 30) as load:
            try:
                load.wait_successes(SETTLE_SUCCESSES)
                done = action(run)
                load.wait_successes(SETTLE_SUCCESSES, timeout=DEADLINE)
            except AssertionError:
                done = False
        return load.report, "" if done else "event not completed (unsupported or stuck)"
    finally:
        run.stop()


def _row(server: str, scenario: str, report: LoadReport | None, note: str) -> dict[str, object]:
    if report is None:
        return {"server": server, "scenario": scenario, "ok": None, "failed": None, "longest_gap_s": None,
                "note": note, "first_error": None}
    return {"server": server, "scenario": scenario, "ok": report.successes, "failed": report.failed,
            "longest_gap_s": round(report.longest_gap, 3), "note": note,
            "first_error": report.failures[0][2][:120] if report.failures else None}


def _markdown(rows: list[dict[str, object]]) -> str:
    lines = [f"{CLIENTS} keep-alive clients that never retry; two workers per server.", "",
             "| server | scenario | ok | failed | longest gap | note |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        gap = "-" if row["longest_gap_s"] is None else f"{row['longest_gap_s']:.3f} s"
        note = str(row["note"] or "")
        if row["first_error"]:
            note = (note + " " if note else "") + f"first error: {row['first_error']}"
        ok = "-" if row["ok"] is None else row["ok"]
        failed = "-" if row["failed"] is None else row["failed"]
        lines.append(f"| {row['server']} | {row['scenario']} | {ok} | {failed} | {gap} | {note} |")
    return "\n".join(lines)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Measure every server in every scenario; a markdown table on stdout, progress on stderr."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", default=",".join(s.name for s in SERVERS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true",
                        help="hup, ttin-ttou and kill-9 against corral, uvicorn and gunicorn-asgi only")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--logdir", default="/tmp/corral-bench-zero-downtime")
    args = parser.parse_args(argv)
    if args.quick:
        args.servers, args.scenarios = "corral,uvicorn,gunicorn-asgi", "hup,ttin-ttou,kill-9"
    # A runner stops us with SIGTERM: unwind so every server tree is stopped in its finally.
    signal.signal(signal.SIGTERM, _interrupt)
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.servers.split(","))
    rows: list[dict[str, object]] = []
    for server in (s for s in SERVERS if s.name in wanted):
        for scenario in args.scenarios.split(","):
            report, note = measure(server, scenario, logdir)
            rows.append(_row(server.name, scenario, report, note))
            row = rows[-1]
            print(f"{server.name:<24} {scenario:<13} ok={row['ok']} failed={row['failed']} "
                  f"gap={row['longest_gap_s']} {note}", file=sys.stderr, flush=True)
    print(_markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"clients": CLIENTS, "workers": 2, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
