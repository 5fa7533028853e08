"""USR2 end to end against the real CLI: the master re-executes in place (same PID), new code
is served with zero failed requests, and every failure of the new generation rolls back.

These wait for observable things only: the answers (`/version`, the worker PIDs), the
master's children, the PID file, the notify datagrams, the log events named in
``daemon.upgrade`` (``upgrade_rollback`` …).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from daemon import upgrade
from tests.apps.sd_harness import NotifySocket
from tests.load import Load
from tests.support import APPS, FACTOR, bound_socket, free_port, require_tool, wait_until

BOOT = "10"  # --timeout-worker-boot for these tests (the hang test uses less)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A private copy of tests/apps/sd_app.py as upg_app.py, for the test to rewrite."""
    directory = tmp_path / "src"
    directory.mkdir()
    shutil.copy(APPS / "sd_app.py", directory / "upg_app.py")
    return directory


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="corral-up-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_version(src: Path, version: str, *, hang: bool = False, fail: bool = False,
                  broken: bool = False) -> None:
    """Rewrite the app's VERSION (and HANG, FAIL); ``broken`` appends a syntax error."""
    path = src / "upg_app.py"
    text = (APPS / "sd_app.py").read_text()
    text = text.replace('VERSION = "1"', f'VERSION = "{version}"').replace("HANG = False", f"HANG = {hang}")
    text = text.replace("FAIL = False", f"FAIL = {fail}")
    if broken:
        text += "\n\ndef broken(:\n"
    path.write_text(text)
    # The workers import from source; make sure no stale bytecode of the same mtime wins.
    shutil.rmtree(src / "__pycache__", ignore_errors=True)


def get(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (the workers of a master)."""
    try:
        return {c.pid for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE}
    except psutil.NoSuchProcess:
        return set()


def start(corral, src: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    return corral("upg_app:app", "--app-dir", str(src), "--workers", "2", "--pid", str(tmp_path / "corral.pid"),
                  "--timeout-worker-boot", BOOT, *extra, app_dir=False, env=env)


def test_usr2_under_load_serves_new_code_with_zero_failures(corral, src: Path, tmp_path: Path) -> None:
    server = start(corral, src, tmp_path)
    master = server.pid
    pidfile = tmp_path / "corral.pid"
    # Both workers have imported the app (ready) before the test rewrites it.
    server.wait_log("worker_ready", count=2)
    old_workers = children(master)
    assert pidfile.read_text().strip() == str(master)
    write_version(src, "2")
    with Load(server.url, clients=8, duration=120) as load:
        load.wait_successes(200)
        os.kill(master, signal.SIGUSR2)
        wait_until(lambda: get(server.url + "/version") == "2" and not (children(master) & old_workers)
                   and len(children(master)) == 2, 60, "the new generation serving alone", alive=server.dead)
        load.wait_successes(200)
    report = load.report
    assert report.failed == 0, report.summary()
    # Same master process, still the parent of the new workers; the PID file still names it.
    assert server.popen.poll() is None
    assert get(server.url + "/parent") == str(master)
    assert pidfile.read_text().strip() == str(master)
    assert "upgrade_rollback" not in server.output()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(60) == 0
    assert not pidfile.exists()


def test_usr2_rollback_when_the_new_code_fails_to_import(corral, src: Path, tmp_path: Path) -> None:
    server = start(corral, src, tmp_path)
    master = server.pid
    # Both workers have imported the app (ready) before the test rewrites it.
    server.wait_log("worker_ready", count=2)
    old_workers = children(master)
    write_version(src, "2", broken=True)
    with Load(server.url, clients=4, duration=120) as load:
        load.wait_successes(100)
        os.kill(master, signal.SIGUSR2)
        server.wait_log(upgrade.EVENT_ROLLBACK, timeout=60)
        load.wait_successes(100)
    assert load.report.failed == 0, load.report.summary()
    assert "SyntaxError" in server.output()
    assert get(server.url + "/version") == "1"
    assert children(master) == old_workers  # the running generation was never touched
    # A failed upgrade does not block the next one.
    write_version(src, "3")
    os.kill(master, signal.SIGUSR2)
    wait_until(lambda: get(server.url + "/version") == "3" and not (children(master) & old_workers),
               60, "the fixed code served after a second USR2", alive=server.dead)
    assert server.popen.poll() is None and (tmp_path / "corral.pid").read_text().strip() == str(master)


def test_usr2_rollback_when_the_new_startup_hangs(corral, src: Path, tmp_path: Path) -> None:
    server = corral("upg_app:app", "--app-dir", str(src), "--workers", "2", "--pid", str(tmp_path / "corral.pid"),
                    "--timeout-worker-boot", "3", app_dir=False)
    master = server.pid
    # Both workers have imported the app (ready) before the test rewrites it.
    server.wait_log("worker_ready", count=2)
    old_workers = children(master)
    write_version(src, "2", hang=True)  # imports fine (the preflight passes); lifespan never completes
    with Load(server.url, clients=4, duration=120) as load:
        load.wait_successes(100)
        os.kill(master, signal.SIGUSR2)
        server.wait_log(upgrade.EVENT_ROLLBACK, timeout=60)
        load.wait_successes(100)
    assert load.report.failed == 0, load.report.summary()
    assert get(server.url + "/version") == "1"
    wait_until(lambda: children(master) == old_workers, 20, "the hanging new workers killed", alive=server.dead)
    assert server.popen.poll() is None
    assert (tmp_path / "corral.pid").read_text().strip() == str(master)


def test_usr2_rollback_when_the_new_generation_dies(corral, src: Path, tmp_path: Path) -> None:
    """The check imports fine, but the new workers' lifespan startup fails: they die, the old ones serve."""
    server = start(corral, src, tmp_path)
    master = server.pid
    server.wait_log("worker_ready", count=2)
    old_workers = children(master)
    write_version(src, "2", fail=True)
    with Load(server.url, clients=4, duration=120) as load:
        load.wait_successes(100)
        os.kill(master, signal.SIGUSR2)
        server.wait_log(upgrade.EVENT_ROLLBACK, timeout=60)
        load.wait_successes(100)
    assert load.report.failed == 0, load.report.summary()
    assert "FAIL is set" in server.output()
    assert "stage=new-generation" in server.output()  # past the check: the new workers themselves failed
    assert get(server.url + "/version") == "1"
    assert children(master) == old_workers
    assert server.popen.poll() is None


def test_a_second_usr2_while_one_is_in_flight_is_ignored(corral, src: Path, tmp_path: Path) -> None:
    server = corral("upg_app:app", "--app-dir", str(src), "--workers", "1", "--timeout-worker-boot", "5",
                    app_dir=False)
    master = server.pid
    server.wait_log("worker_ready")
    write_version(src, "2", hang=True)  # keeps the upgrade in flight until the boot deadline
    os.kill(master, signal.SIGUSR2)
    # Two signals sent back to back merge into one pending signal, so the
    # second is sent once the first upgrade is observably in flight: the new
    # image is rolling onto workers that hang in their startup.
    server.wait_log(upgrade.EVENT_ADOPTED, timeout=30)
    server.wait_log("roll_started", timeout=30)
    os.kill(master, signal.SIGUSR2)
    server.wait_log(upgrade.EVENT_IGNORED, timeout=30)
    server.wait_log(upgrade.EVENT_ROLLBACK, timeout=60)
    assert get(server.url + "/version") == "1"
    assert server.popen.poll() is None


def _supervisord_conf(tmp_path: Path, src: Path, port: int) -> Path:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [supervisord]
        nodaemon=true
        logfile={tmp_path}/supervisord.log
        pidfile={tmp_path}/supervisord.pid
        childlogdir={tmp_path}

        [unix_http_server]
        file={tmp_path}/supervisor.sock

        [supervisorctl]
        serverurl=unix://{tmp_path}/supervisor.sock

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [program:corral]
        command={sys.executable} -m daemon upg_app:app --app-dir {src} --host 127.0.0.1 --port {port}
            --workers 2 --timeout-worker-boot {BOOT}
        directory={src}
        stopsignal=TERM
        stopwaitsecs=60
        startsecs=1
        autorestart=unexpected
        redirect_stderr=true
        stdout_logfile={tmp_path}/corral.log
    """))
    return conf


def test_usr2_under_supervisord_keeps_the_same_child(procs, src: Path, tmp_path: Path) -> None:
    bindir = str(Path(sys.executable).parent)
    supervisord = require_tool("supervisord", os.path.join(bindir, "supervisord"))
    supervisorctl = require_tool("supervisorctl", os.path.join(bindir, "supervisorctl"))
    port = free_port()
    conf = _supervisord_conf(tmp_path, src, port)
    sv = procs([supervisord, "-c", str(conf)], name="supervisord")
    url = f"http://127.0.0.1:{port}"

    def ctl(*args: str) -> str:
        done = subprocess.run([supervisorctl, "-c", str(conf), *args], capture_output=True, text=True,
                              timeout=30 * FACTOR)
        return done.stdout.strip()

    wait_until(lambda: get(url + "/version") == "1", 30, "corral under supervisord", alive=sv.dead)
    master = int(ctl("pid", "corral"))
    wait_until(lambda: (tmp_path / "corral.log").read_text().count("worker_ready") >= 2, 20, "two ready workers",
               alive=sv.dead)
    # supervisord calls the program RUNNING once it has lived startsecs (1 s): corral may serve
    # sooner, and the whole upgrade below can fit in that second.
    wait_until(lambda: "RUNNING" in ctl("status", "corral"), 20, "supervisord calling corral RUNNING",
               alive=sv.dead)
    old_workers = children(master)
    write_version(src, "2")
    with Load(url, clients=4, duration=120) as load:
        load.wait_successes(100)
        ctl("signal", "USR2", "corral")
        wait_until(lambda: get(url + "/version") == "2" and not (children(master) & old_workers),
                   60, "the new code under supervisord", alive=sv.dead)
        load.wait_successes(100)
    assert load.report.failed == 0, load.report.summary()
    assert int(ctl("pid", "corral")) == master
    assert "RUNNING" in ctl("status", "corral")
    log = (tmp_path / "supervisord.log").read_text()
    assert "exited: corral" not in log, log
    ctl("stop", "corral")
    wait_until(lambda: "STOPPED" in ctl("status", "corral"), 60, "corral stopped by supervisorctl", alive=sv.dead)
    wait_until(lambda: "stopped: corral (exit status 0)" in (tmp_path / "supervisord.log").read_text(),
               10, "a clean exit reported by supervisord")


def test_usr2_under_systemd_sends_mainpid_and_ready(procs, src: Path, tmp_path: Path, short_tmp: Path) -> None:
    sock = bound_socket()
    port = sock.getsockname()[1]
    notify = NotifySocket(str(short_tmp / "notify"))
    argv = [sys.executable, str(APPS / "sd_harness.py"), "activate", "web", str(sock.fileno()), "--",
            sys.executable, "-m", "daemon", "upg_app:app", "--app-dir", str(src), "--workers", "2",
            "--timeout-worker-boot", BOOT]
    proc = procs(argv, name="sd-corral", pass_fds=[sock.fileno()],
                 env={"NOTIFY_SOCKET": notify.env_value, "CORRAL_LOG_LEVEL": "info"})
    sock.close()
    url = f"http://127.0.0.1:{port}"
    try:
        first, _ = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        master = proc.pid  # the harness exec()s corral: same PID, as systemd's fork+exec
        assert get(url + "/version") == "1"
        write_version(src, "2")
        os.kill(master, signal.SIGUSR2)
        index, message = notify.wait_for(lambda m: "MAINPID" in m, 60 * FACTOR, start=first + 1, alive=proc.dead)
        assert message["MAINPID"] == str(master)
        notify.wait_for(lambda m: m.get("READY") == "1", 60 * FACTOR, start=first + 1, alive=proc.dead)
        wait_until(lambda: get(url + "/version") == "2", 30, "the new code via the adopted socket", alive=proc.dead)
        # The socket systemd passed went through the upgrade: a HUP still rolls on it.
        os.kill(master, signal.SIGHUP)
        index, _ = notify.wait_for(lambda m: m.get("RELOADING") == "1", 30 * FACTOR, start=index + 1,
                                   alive=proc.dead)
        notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, start=index + 1, alive=proc.dead)
        os.kill(master, signal.SIGTERM)
        notify.wait_for(lambda m: m.get("STOPPING") == "1", 30 * FACTOR, start=index + 1)
        assert proc.wait_exit(60) == 0
        assert not any(str(port) in line for line in proc.output().splitlines() if "cannot bind" in line)
    finally:
        notify.close()


def test_usr2_with_an_app_that_starts_a_non_daemon_thread_at_import(corral, src: Path, tmp_path: Path) -> None:
    """The check process ends with os._exit: an app's non-daemon thread (an SDK flusher) cannot hold it
    open until the deadline and roll the upgrade back."""
    server = start(corral, src, tmp_path)
    master = server.pid
    server.wait_log("worker_ready", count=2)
    write_version(src, "2")
    path = src / "upg_app.py"
    path.write_text("import threading as _t, time as _tm\n_t.Thread(target=_tm.sleep, args=(3600,)).start()\n"
                    + path.read_text())
    os.kill(master, signal.SIGUSR2)
    wait_until(lambda: upgrade.EVENT_DONE in server.output() or upgrade.EVENT_ROLLBACK in server.output(),
               60, "the upgrade to end", alive=server.dead)
    assert upgrade.EVENT_ROLLBACK not in server.output(), server.output()[-3000:]
    assert get(server.url + "/version") == "2"


def test_a_term_during_the_usr2_check_is_not_lost(corral, src: Path, tmp_path: Path) -> None:
    """TERM arriving while the check ends (here: sent by the check itself after closing its output) is
    honoured: the master stops with status 0 instead of re-executing and serving on."""
    server = start(corral, src, tmp_path)
    master = server.pid
    server.wait_log("worker_ready", count=2)
    write_version(src, "2")
    path = src / "upg_app.py"
    path.write_text(textwrap.dedent("""\
        import os as _os, signal as _signal, sys as _sys, time as _time
        if "--check" in _sys.argv:
            _null = _os.open(_os.devnull, _os.O_WRONLY)
            _os.dup2(_null, 1)
            _os.dup2(_null, 2)
            _time.sleep(0.3)
            _os.kill(_os.getppid(), _signal.SIGTERM)
            _time.sleep(0.2)
    """) + path.read_text())
    os.kill(master, signal.SIGUSR2)
    assert server.wait_exit(60) == 0, server.output()[-3000:]
    assert upgrade.EVENT_DONE not in server.output()
    wait_until(lambda: not children(master), 10, "no worker left")


def test_a_hup_during_the_upgrade_roll_waits_for_it(procs, src: Path, tmp_path: Path, short_tmp: Path) -> None:
    """A HUP while the USR2 new generation boots does not end the upgrade early: READY=1 (and
    upgrade_done) only once the new workers are ready; the reload follows, deferred."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    notify = NotifySocket(str(short_tmp / "notify"))
    slow = tmp_path / "slow"
    argv = [sys.executable, "-m", "daemon", "upg_app:app", "--app-dir", str(src), "--workers", "2",
            "--timeout-worker-boot", "30", "--fd", str(sock.fileno())]
    proc = procs(argv, name="hup-in-upgrade", pass_fds=[sock.fileno()],
                 env={"NOTIFY_SOCKET": notify.env_value, "CORRAL_LOG_LEVEL": "info"})
    sock.close()
    url = f"http://127.0.0.1:{port}"
    try:
        first, _ = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        write_version(src, "2")
        path = src / "upg_app.py"
        # The new generation's startup takes a while (long enough for a HUP to land in its roll).
        path.write_text(path.read_text().replace(
            "            await send({\"type\": \"lifespan.startup.complete\"})",
            f"            while __import__('os').path.exists({str(slow)!r}):\n"
            "                await asyncio.sleep(0.05)\n"
            "            await send({\"type\": \"lifespan.startup.complete\"})"))
        slow.touch()
        os.kill(proc.pid, signal.SIGUSR2)
        wait_until(lambda: "reason=upgrade" in proc.output() and "worker_spawned" in
                   proc.output().split("roll_started")[-1], 30, "the upgrade roll booting", alive=proc.dead)
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload_deferred" in proc.output(), 10, "the HUP deferred", alive=proc.dead)
        late = len(notify.poll())
        assert not any(m.get("READY") == "1" for m in notify.messages[first + 1:]), notify.messages
        assert upgrade.EVENT_DONE not in proc.output()
        slow.unlink()  # now the new generation may become ready
        index, _ = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, start=late, alive=proc.dead)
        assert upgrade.EVENT_DONE in proc.output()
        # The deferred reload then runs: RELOADING=1, then READY=1 again, v2 served throughout.
        index, _ = notify.wait_for(lambda m: m.get("RELOADING") == "1", 30 * FACTOR, start=index + 1,
                                   alive=proc.dead)
        notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, start=index + 1, alive=proc.dead)
        assert get(url + "/version") == "2"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait_exit(60) == 0
    finally:
        notify.close()
