"""corral as a supervisor [fcgi-program:corral] entry, running the shipped etc/supervisord.conf.

The test copies etc/supervisord.conf into tmp_path, substitutes only the paths
and the port (each substitution must match), and runs the real
``supervisord -n -c CONF`` in the foreground. supervisord binds the socket and
hands it to corral as fd 0.
"""

from __future__ import annotations

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

SHIPPED = ROOT / "etc" / "supervisord.conf"
BIN = Path(sys.executable).parent



def render_supervisor_conf(tmp: Path, *, port: int) -> Path:
    """etc/supervisord.conf with its documented paths and port rewritten into ``tmp``."""
    (tmp / "run").mkdir(exist_ok=True)
    (tmp / "log").mkdir(exist_ok=True)
    substitutions = {
        "/srv/app/.venv/bin/corral": corral_command(),
        "directory=/srv/app": f"directory={ROOT}",
        "tcp://127.0.0.1:8000": f"tcp://127.0.0.1:{port}",
        "/run/supervisor/": f"{tmp}/run/",
        "/var/log/supervisor": f"{tmp}/log",
    }
    text = substitute(SHIPPED, substitutions)
    conf = tmp / "supervisord.conf"
    conf.write_text(text)
    return conf


@dataclass
class Supervised:
    """supervisord running corral on ``url``."""

    supervisord: Proc
    conf: Path
    ctl_bin: str
    url: str
    log: Path

    def ctl(self, *args: str, check: bool = True) -> str:
        """Run supervisorctl against this supervisord and return its output."""
        done = subprocess.run([self.ctl_bin, "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=30 * FACTOR)
        if check and done.returncode != 0:
            pytest.fail(f"supervisorctl {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout.strip()

    def master_pid(self) -> int:
        return int(self.ctl("pid", "corral"))

    def state(self) -> str:
        fields = self.ctl("status", "corral", check=False).split()
        return fields[1] if len(fields) > 1 else ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def program_log(self) -> str:
        path = self.log.parent / "corral.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def supervised(tmp_path: Path, procs: Callable[..., Proc]) -> Iterator[Supervised]:
    supervisord = require_tool("supervisord", str(BIN / "supervisord"))
    ctl_bin = require_tool("supervisorctl", str(BIN / "supervisorctl"))
    port = free_port()
    conf = render_supervisor_conf(tmp_path, port=port)
    proc = procs([supervisord, "-n", "-c", str(conf)], name="supervisord")
    try:
        sup = Supervised(proc, conf, ctl_bin, f"http://127.0.0.1:{port}", tmp_path / "log" / "supervisord.log")

        def alive() -> str | None:
            dead = proc.dead()
            if dead is None and "exited: corral" in sup.log_text():
                dead = f"corral failed under supervisord:\n{sup.log_text()[-3000:]}\n{sup.program_log()[-3000:]}"
            return dead

        wait_until(lambda: serves_hello(sup.url), 30, "corral serving under supervisord", alive=alive, interval=0.05)
        wait_until(lambda: sup.state() == "RUNNING", 30, "supervisorctl status RUNNING", alive=alive)
        master = sup.master_pid()
        wait_until(lambda: len(worker_pids(master)) == 2, 30, "two corral workers", alive=alive)
        yield sup
    finally:
        kill_supervised_tree(proc)


def test_hup_roll_under_load_then_clean_stop(supervised: Supervised) -> None:
    master = supervised.master_pid()
    old = worker_pids(master)
    with Load(supervised.url + "/", clients=4, duration=90) as load:
        load.wait_successes(50)
        assert supervised.ctl("signal", "HUP", "corral") == "corral: signalled"

        def rolled() -> bool:
            workers = worker_pids(master)
            return len(workers) == 2 and not workers & old

        wait_until(rolled, 60, "both workers replaced after HUP", alive=supervised.supervisord.dead,
                   interval=0.05)
        load.wait_successes(50)
    report = load.report
    assert report.failed == 0, report.summary()
    assert supervised.master_pid() == master
    assert supervised.state() == "RUNNING"

    workers = worker_pids(master)
    assert supervised.ctl("stop", "corral") == "corral: stopped"
    wait_until(lambda: "stopped: corral (exit status 0)" in supervised.log_text(), 30,
               "'stopped: corral (exit status 0)' in the supervisord log", alive=supervised.supervisord.dead)
    assert supervised.state() == "STOPPED"
    for pid in workers | {master}:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


def test_usr2_upgrade_keeps_the_pid_supervisor_watches(supervised: Supervised) -> None:
    master = supervised.master_pid()
    old = worker_pids(master)
    with Load(supervised.url + "/", clients=4, duration=90) as load:
        load.wait_successes(50)
        assert supervised.ctl("signal", "USR2", "corral") == "corral: signalled"

        def upgraded() -> bool:
            workers = worker_pids(master)
            return len(workers) == 2 and not workers & old

        def failed() -> str | None:
            log = supervised.program_log()
            for event in ("upgrade_rollback", "upgrade_unavailable", "upgrade_failed"):
                if event in log:
                    return f"corral logged {event}:\n{log[-3000:]}"
            return supervised.supervisord.dead()

        wait_until(upgraded, 90, "the upgraded master's workers replacing the old ones", alive=failed,
                   interval=0.05)
        load.wait_successes(50)
    report = load.report
    assert report.failed == 0, report.summary()
    # Re-executed in place: supervisor still watches the same, running process.
    assert supervised.master_pid() == master
    assert supervised.state() == "RUNNING"
    assert "exited: corral" not in supervised.log_text()
    assert serves_hello(supervised.url)
