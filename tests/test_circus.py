"""corral as a circus watcher, running the shipped etc/circus.ini.

The test copies etc/circus.ini into tmp_path, substitutes only the paths and the
port (each substitution must match), and runs the real ``circusd CONF`` in the
foreground. circusd binds [socket:web] and hands it to corral with
``--fd $(circus.sockets.web)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.load import Load
from tests.support import (
    FACTOR,
    ROOT,
    Proc,
    corral_command,
    free_port,
    kill_supervised_tree,
    require_tool,
    serves_hello,
    substitute,
    wait_until,
    worker_pids,
)

SHIPPED = ROOT / "etc" / "circus.ini"
BIN = Path(sys.executable).parent



def render_circus_ini(tmp: Path, *, port: int) -> Path:
    """etc/circus.ini with its documented paths and port rewritten into ``tmp``."""
    (tmp / "run").mkdir(exist_ok=True)
    (tmp / "log").mkdir(exist_ok=True)
    substitutions = {
        "/srv/app/.venv/bin/corral": corral_command(),
        "working_dir = /srv/app": f"working_dir = {ROOT}",
        "port = 8000": f"port = {port}",
        "/run/circus/": f"{tmp}/run/",
        "/var/log/circus/": f"{tmp}/log/",
    }
    text = substitute(SHIPPED, substitutions)
    conf = tmp / "circus.ini"
    conf.write_text(text)
    return conf


@dataclass
class Circus:
    """circusd running corral (watcher ``web``) on ``url``."""

    circusd: Proc
    endpoint: str
    ctl_bin: str
    url: str
    logs: Path

    def ctl(self, *args: str) -> dict:
        """Run ``circusctl --json`` against this circusd and return its answer."""
        done = subprocess.run([self.ctl_bin, "--endpoint", self.endpoint, "--timeout", str(int(20 * FACTOR)),
                               "--json", *args], capture_output=True, text=True, timeout=40 * FACTOR)
        if done.returncode != 0:
            pytest.fail(f"circusctl {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return json.loads(done.stdout)

    def master_pid(self) -> int:
        answer = self.ctl("list", "web")
        pids = answer.get("pids") or []
        assert len(pids) == 1, answer
        return int(pids[0])

    def corral_log(self) -> str:
        path = self.logs / "web.err.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def circus(tmp_path: Path, procs: Callable[..., Proc]) -> Iterator[Circus]:
    circusd = require_tool("circusd", str(BIN / "circusd"))
    ctl_bin = require_tool("circusctl", str(BIN / "circusctl"))
    port = free_port()
    conf = render_circus_ini(tmp_path, port=port)
    proc = procs([circusd, str(conf)], name="circusd")
    try:
        running = Circus(proc, f"ipc://{tmp_path}/run/control.sock", ctl_bin, f"http://127.0.0.1:{port}",
                         tmp_path / "log")

        def alive() -> str | None:
            return proc.dead() or (f"corral failed under circusd:\n{running.corral_log()[-3000:]}"
                                   if "boot_failed" in running.corral_log() else None)

        wait_until(lambda: serves_hello(running.url), 30, "corral serving under circusd", alive=alive, interval=0.05)
        master = running.master_pid()
        wait_until(lambda: len(worker_pids(master)) == 2, 30, "two corral workers", alive=alive)
        yield running
    finally:
        kill_supervised_tree(proc)


def test_hup_roll_under_load_then_quit(circus: Circus) -> None:
    master = circus.master_pid()
    old = worker_pids(master)
    with Load(circus.url + "/", clients=4, duration=90) as load:
        load.wait_successes(50)
        os.kill(master, signal.SIGHUP)

        def rolled() -> bool:
            workers = worker_pids(master)
            return len(workers) == 2 and not workers & old

        wait_until(rolled, 60, "both workers replaced after HUP", alive=circus.circusd.dead, interval=0.05)
        load.wait_successes(50)
    report = load.report
    assert report.failed == 0, report.summary()
    assert circus.master_pid() == master  # circus did not notice anything: same process

    workers = worker_pids(master)
    assert circus.ctl("quit")["status"] == "ok"
    assert circus.circusd.wait_exit(60) == 0, circus.circusd.output()[-3000:]
    for pid in workers | {master}:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    log = circus.corral_log()
    assert "master_stopped" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_circusctl_signal_hup_rolls(circus: Circus) -> None:
    """The same roll through circus's own command: `circusctl signal web hup`."""
    master = circus.master_pid()
    old = worker_pids(master)
    assert circus.ctl("signal", "web", "hup")["status"] == "ok"
    wait_until(lambda: (w := worker_pids(master)) and len(w) == 2 and not w & old, 60,
               "both workers replaced after circusctl signal", alive=circus.circusd.dead, interval=0.05)
    assert serves_hello(circus.url)


def test_usr2_upgrade_keeps_the_pid_circus_watches(circus: Circus) -> None:
    """The in-place upgrade under circus: same master PID, new workers, no failed request."""
    master = circus.master_pid()
    old = worker_pids(master)
    with Load(circus.url + "/", clients=4, duration=90) as load:
        load.wait_successes(50)
        assert circus.ctl("signal", "web", "usr2")["status"] == "ok"

        def failed() -> str | None:
            log = circus.corral_log()
            for event in ("upgrade_rollback", "upgrade_unavailable", "upgrade_failed"):
                if event in log:
                    return f"corral logged {event}:\n{log[-3000:]}"
            return circus.circusd.dead()

        wait_until(lambda: (w := worker_pids(master)) and len(w) == 2 and not w & old, 90,
                   "the upgraded master's workers replacing the old ones", alive=failed, interval=0.05)
        load.wait_successes(50)
    report = load.report
    assert report.failed == 0, report.summary()
    assert circus.master_pid() == master
    assert serves_hello(circus.url)
