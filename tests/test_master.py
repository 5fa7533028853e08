"""The master's signals, health checks, boot failures and listeners, through the real CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.load import Load
from tests.support import APPS, FACTOR, Corral, wait_until, worker_pids

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., Corral]


def start(corral: Start, *args: str, workers: int = 2, **kw: Any) -> Corral:
    """corral serving master_app with ``workers`` ready workers."""
    proc = corral("master_app:app", "--workers", str(workers), *args, **kw)
    proc.wait_log("worker_ready", count=workers)
    return proc


class Request(threading.Thread):
    """One GET in the background; ``result`` is the response or the exception."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        super().__init__(daemon=True)
        self.url, self.timeout = url, timeout * FACTOR
        self.result: Any = None
        self.start()

    def run(self) -> None:
        try:
            self.result = httpx.get(self.url, timeout=self.timeout)
        except Exception as exc:
            self.result = exc


# -- stopping -------------------------------------------------------------------

def test_term_lets_an_in_flight_request_complete(corral: Start) -> None:
    proc = start(corral)
    request = Request(proc.url + "/sleep?2")
    proc.wait_log("master_app: sleeping")
    began = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    request.join(10)
    assert isinstance(request.result, httpx.Response), request.result
    assert request.result.status_code == 200
    assert time.monotonic() - began < 10 * FACTOR
    assert not worker_pids(proc.pid)


def test_quit_exits_at_once(corral: Start) -> None:
    proc = start(corral)
    Request(proc.url + "/sleep?60")
    proc.wait_log("master_app: sleeping")
    began = time.monotonic()
    proc.signal(signal.SIGQUIT)
    assert proc.wait_exit(10) == 0
    assert time.monotonic() - began < 5 * FACTOR, "QUIT does not wait for the 60 s request"


def test_int_is_graceful_and_a_second_int_is_quit(corral: Start) -> None:
    proc = start(corral)
    Request(proc.url + "/sleep?60")
    proc.wait_log("master_app: sleeping")
    proc.signal(signal.SIGINT)
    proc.wait_log("mode=term")
    assert proc.popen.poll() is None, "the first INT waits for the in-flight request"
    proc.signal(signal.SIGINT)
    assert proc.wait_exit(10) == 0
    assert "mode=quit" in proc.output()


def test_workers_stop_when_the_master_is_killed(corral: Start) -> None:
    import psutil

    proc = start(corral)
    workers = [psutil.Process(pid) for pid in worker_pids(proc.pid)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait_exit(10)

    def all_gone() -> bool:
        return not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)

    wait_until(all_gone, 15, "the orphaned workers to stop")


def test_pid_file_is_written_and_removed(corral: Start, tmp_path: Path) -> None:
    pid_path = tmp_path / "run" / "corral.pid"
    pid_path.parent.mkdir()
    proc = start(corral, "--pid", str(pid_path), workers=1)
    assert pid_path.read_text() == f"{proc.pid}\n"
    assert [p.name for p in pid_path.parent.iterdir()] == ["corral.pid"], "no temporary file left behind"
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    assert not pid_path.exists()


# -- who imports the app --------------------------------------------------------------

def imported_in(proc: Corral) -> set[int]:
    """PIDs that printed "master_app: imported in PID"."""
    marker = "master_app: imported in "
    return {int(line.split(marker, 1)[1].split()[0]) for line in proc.output().splitlines() if marker in line}


def test_the_master_never_imports_the_app(corral: Start) -> None:
    proc = start(corral)
    assert proc.pid not in imported_in(proc)
    assert worker_pids(proc.pid) <= imported_in(proc)


def test_preload_imports_once_in_the_master(corral: Start) -> None:
    proc = start(corral, "--preload")
    assert imported_in(proc) == {proc.pid}, "forked workers share the master's import"
    assert httpx.get(proc.url).text in {str(pid) for pid in worker_pids(proc.pid)}


# -- health ---------------------------------------------------------------------------

def test_a_blocked_worker_is_killed_with_its_stack_logged_and_replaced(corral: Start) -> None:
    healthcheck = 3
    proc = start(corral, "--timeout-worker-healthcheck", str(healthcheck))
    before = worker_pids(proc.pid)
    blocked = Request(proc.url + "/block?60", timeout=30)
    began = time.monotonic()
    proc.wait_log("heartbeat_timeout", timeout=healthcheck + 10)
    proc.wait_log("worker_ready", count=3, timeout=20)
    wait_until(lambda: len(before - worker_pids(proc.pid)) == 1, 20, "the blocked worker to be gone",
               alive=proc.dead)
    elapsed = time.monotonic() - began
    # Silent for the timeout, one more beat period of slack, a second of stack
    # dumping, and the machine's own slowness.
    assert elapsed < (healthcheck + 5) * FACTOR
    output = proc.output()
    # faulthandler's dump of the stuck worker names the blocking line of the app.
    assert "Current thread" in output or "Thread 0x" in output, output[-3000:]
    assert "master_app.py" in output.split("heartbeat_timeout", 1)[1]
    blocked.join(30)
    assert len(worker_pids(proc.pid)) == 2
    assert httpx.get(proc.url).status_code == 200


def test_ctrl_z_then_fg_is_not_a_stuck_worker(corral: Start) -> None:
    proc = start(corral, "--timeout-worker-healthcheck", "2")
    before = worker_pids(proc.pid)
    os.killpg(proc.pid, signal.SIGSTOP)  # what Ctrl-Z does to the whole process group
    time.sleep(3.5)  # the scenario itself: stopped for longer than the health-check timeout
    os.killpg(proc.pid, signal.SIGCONT)
    proc.wait_log("master_was_stopped")
    assert httpx.get(proc.url).status_code == 200
    assert worker_pids(proc.pid) == before
    assert "heartbeat_timeout" not in proc.output()


def test_a_worker_not_ready_in_time_stops_the_first_start(corral: Start) -> None:
    proc = corral("master_app:app", "--timeout-worker-boot", "1", wait=False,
                  env={"MASTER_APP_STARTUP": "30"})
    began = time.monotonic()
    assert proc.wait_exit(20) == 3
    assert time.monotonic() - began < 10 * FACTOR
    assert "did not become ready within 1s" in proc.output()


def test_an_app_that_fails_at_import_exits_3_with_the_error(corral: Start) -> None:
    proc = corral("master_broken:app", "--workers", "2", wait=False)
    began = time.monotonic()
    assert proc.wait_exit(20) == 3
    assert time.monotonic() - began < 10 * FACTOR
    output = proc.output()
    assert "master_broken deliberately fails at import" in output
    assert output.count("worker_spawned") == 2, "no respawn loop"


def test_preload_import_error_exits_3_before_forking(corral: Start) -> None:
    proc = corral("master_broken:app", "--preload", wait=False)
    assert proc.wait_exit(20) == 3
    assert "master_broken deliberately fails at import" in proc.output()
    assert "worker_spawned" not in proc.output()


def test_a_failing_replacement_is_retried_with_backoff(corral: Start, tmp_path: Path) -> None:
    code = (APPS / "master_app.py").read_text()
    module = tmp_path / "master_flaky.py"
    module.write_text(code)
    proc = corral("master_flaky:app", "--workers", "2", "--no-access-log", "--app-dir", str(tmp_path),
                  app_dir=False)
    proc.wait_log("worker_ready", count=2)
    victim, survivor = sorted(worker_pids(proc.pid))
    with Load(proc.url, clients=16, duration=60) as load:
        load.wait_successes(100)
        module.write_text(code + '\nraise RuntimeError("flaky deploy")\n')
        os.kill(victim, signal.SIGKILL)
        proc.wait_log("action=retry", count=3, timeout=30)
        assert survivor in worker_pids(proc.pid)
        module.write_text(code + "\n# fixed\n")
        proc.wait_log("worker_ready", count=3, timeout=30)
        load.wait_successes(100)
    report = load.report
    assert max(report.failures_per_client().values(), default=0) <= 1, report.summary()
    assert proc.popen.poll() is None
    assert "retry_in=0.5" in proc.output() and "retry_in=1.0" in proc.output()


# -- other signals -----------------------------------------------------------------------

def test_winch_stops_workers_and_ttin_brings_them_back(corral: Start) -> None:
    proc = start(corral)
    proc.signal(signal.SIGWINCH)
    wait_until(lambda: not worker_pids(proc.pid), 20, "every worker to stop", alive=proc.dead)
    assert proc.popen.poll() is None, "the master stays"
    proc.signal(signal.SIGTTOU)  # already at zero: nothing to retire, nothing to start
    proc.wait_log("worker_exited", count=2)
    proc.signal(signal.SIGTTIN)
    proc.wait_log("worker_ready", count=3)
    assert httpx.get(proc.url).status_code == 200
    # The spawn follows the TTIN in the same turn of the loop: one worker, not two.
    assert proc.output().count("worker_spawned") == 3
    assert len(worker_pids(proc.pid)) == 1


def test_usr1_reopens_logs_everywhere(corral: Start) -> None:
    proc = start(corral, workers=1)
    proc.signal(signal.SIGUSR1)
    proc.wait_log("logs_reopened")
    assert httpx.get(proc.url).status_code == 200


# -- listeners ---------------------------------------------------------------------------

def test_fd_listener_serves_and_survives_the_master(corral: Start) -> None:
    proc = start(corral, workers=1)
    assert f"listening on http://127.0.0.1:{proc.port}" in proc.output()
    assert httpx.get(proc.url).status_code == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    # Our socket was inherited: close()d by corral, never shutdown(2).
    assert proc.sock is not None
    with socket.create_connection((proc.host, proc.port), timeout=2):
        pass


def test_unix_socket_serves_and_is_removed(corral: Start, tmp_path: Path) -> None:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="corral-")) / "app.sock"
    proc = corral("master_app:app", "--uds", str(path), fd=False, wait=False)
    transport = httpx.HTTPTransport(uds=str(path))

    def answers() -> bool:
        try:
            with httpx.Client(transport=transport, base_url="http://corral") as client:
                return client.get("/").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, 20, "corral on a UNIX socket", alive=proc.dead)
    assert f"listening on unix:{path}" in proc.output()
    assert (path.stat().st_mode & 0o777) == 0o666
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    assert not path.exists()
    path.parent.rmdir()


def test_several_listeners_at_once(corral: Start) -> None:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="corral-")) / "extra.sock"
    proc = corral("master_app:app", "--workers", "1", "--bind", f"unix:{path}", "--uds-mode", "0o600")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://corral") as client:
        via_unix = client.get("/").text
    assert httpx.get(proc.url).text == via_unix, "one worker serves both listeners"
    assert (path.stat().st_mode & 0o777) == 0o600
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    assert not path.exists()
    path.parent.rmdir()


def test_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "daemon", "master_app:app", "--app-dir", str(APPS),
             "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=30 * FACTOR,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == f"corral: cannot bind 127.0.0.1:{port}: address already in use"


# -- generations -------------------------------------------------------------------

COUNTED_APP = '''
import fcntl

VERSION = "{version}"
FAIL_AT = {fail_at}  # the startup (counted across workers) that fails; 0: none


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with open({counter!r}, "a+") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    handle.write("x")
                    handle.flush()
                    handle.seek(0)
                    count = len(handle.read())
                if count == FAIL_AT:
                    await send({{"type": "lifespan.startup.failed", "message": "startup number " + str(count)}})
                    return
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["type"] != "http":
        return
    body = VERSION.encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})
'''


def test_after_an_aborted_roll_the_next_hup_replaces_its_survivors(corral: Start, tmp_path: Path) -> None:
    """A roll whose 2nd new worker fails is aborted, leaving one new worker; the next HUP's floor is above
    it (generations never repeat), so after roll_done only the newest code answers."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()

    def deploy(version: str, fail_at: int) -> None:
        counter = tmp_path / f"starts-{version}"
        (src / "counted.py").write_text(COUNTED_APP.format(version=version, fail_at=fail_at, counter=str(counter)))
        shutil.rmtree(src / "__pycache__", ignore_errors=True)

    deploy("1", 0)
    proc = corral("counted:app", "--workers", "2", "--app-dir", str(src), app_dir=False)
    proc.wait_log("worker_ready", count=2)
    deploy("2", 2)  # the roll's first new worker boots, its second fails
    proc.signal(signal.SIGHUP)
    proc.wait_log("roll_aborted", timeout=30)
    wait_until(lambda: len(worker_pids(proc.pid)) == 2, 30, "two workers after the abort", alive=proc.dead)
    before = worker_pids(proc.pid)
    # One new worker of the aborted roll became ready and survives it.
    assert any("worker_ready" in line and "generation=2 " in line for line in proc.output().splitlines())
    deploy("3", 0)
    proc.signal(signal.SIGHUP)
    proc.wait_log("roll_done", timeout=30)
    wait_until(lambda: not (worker_pids(proc.pid) & before), 30 + 30, "every worker from before the HUP gone",
               alive=proc.dead)
    assert {httpx.get(proc.url, timeout=5).text for _ in range(40)} == {"3"}


ENV_APP = '''
import json
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({k: v for k, v in os.environ.items() if k.startswith(("EF_", "CORRAL_WORKERS"))}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def test_env_file_is_reread_on_hup_under_the_real_environment(corral: Start, tmp_path: Path) -> None:
    """--env-file reaches the app, is re-read at every HUP (changed and removed lines follow), stays
    under the real environment, and its CORRAL_* lines never set options (no 3 workers)."""
    (tmp_path / "env_app.py").write_text(ENV_APP)
    env_file = tmp_path / "app.env"
    env_file.write_text("EF_A=one\nEF_B=b\nEF_REAL=from-file\nCORRAL_WORKERS=3\n")
    proc = corral("env_app:app", "--app-dir", str(tmp_path), "--env-file", str(env_file), "--lifespan", "off",
                  app_dir=False, env={"EF_REAL": "real"})
    proc.wait_log("worker_ready")
    seen = httpx.get(proc.url, timeout=5).json()
    assert seen == {"EF_A": "one", "EF_B": "b", "EF_REAL": "real", "CORRAL_WORKERS": "3"}, seen
    assert len(worker_pids(proc.pid)) == 1
    first = worker_pids(proc.pid)
    env_file.write_text("EF_A=two\nEF_REAL=from-file\nCORRAL_WORKERS=3\n")
    proc.signal(signal.SIGHUP)
    proc.wait_log("roll_done")
    wait_until(lambda: len(worker_pids(proc.pid) - first) == 1 and not (worker_pids(proc.pid) & first), 30,
               "the one new worker alone", alive=proc.dead)
    seen = httpx.get(proc.url, timeout=5).json()
    assert seen == {"EF_A": "two", "EF_REAL": "real", "CORRAL_WORKERS": "3"}, seen
    assert "workers=3" not in proc.output()
    assert len(worker_pids(proc.pid)) == 1


SLOW_SHUTDOWN_APP = '''
import asyncio
import sys


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await asyncio.sleep(5.5)  # within --timeout-graceful-shutdown 6
                print("slow_app: lifespan shutdown done", file=sys.stderr, flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        if scope["path"] == "/slow":
            print("slow_app: request in flight", file=sys.stderr, flush=True)
            await asyncio.sleep(60)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
'''


def test_term_leaves_room_for_the_drain_and_then_lifespan_shutdown(corral: Start, tmp_path: Path) -> None:
    """A worker may use --timeout-graceful-shutdown for the drain and again for lifespan shutdown: the
    master's SIGKILL comes only after both (here 6 s + 5.5 s, past the old 6 + 5 s deadline)."""
    (tmp_path / "slow_app.py").write_text(SLOW_SHUTDOWN_APP)
    proc = corral("slow_app:app", "--app-dir", str(tmp_path), "--timeout-graceful-shutdown", "6",
                  app_dir=False)
    proc.wait_log("worker_ready")
    request = Request(proc.url + "/slow", timeout=60)
    proc.wait_log("slow_app: request in flight")
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(40) == 0
    request.join(5)
    output = proc.output()
    assert "slow_app: lifespan shutdown done" in output, output[-3000:]
    assert "worker_killed" not in output


def test_winch_is_ignored_in_the_foreground_of_a_terminal_even_with_stdin_redirected(tmp_path: Path) -> None:
    """`corral app < /dev/null` in a terminal: a window resize (WINCH to the foreground group) must not stop
    the workers; only a master off the terminal's foreground honours WINCH."""
    import pty

    from tests.support import bound_socket

    master_fd, slave_fd = pty.openpty()
    slave_name = os.ttyname(slave_fd)
    sock = bound_socket()

    def take_terminal() -> None:  # after setsid: the pty becomes our controlling terminal
        os.close(os.open(slave_name, os.O_RDWR))

    out = open(tmp_path / "tty-corral.err", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "master_app:app", "--app-dir", str(APPS), "--workers", "2",
         "--fd", str(sock.fileno())],
        stdin=subprocess.DEVNULL, stdout=out, stderr=out, pass_fds=[sock.fileno()], start_new_session=True,
        preexec_fn=take_terminal, env={**os.environ, "PYTHONUNBUFFERED": "1", "CORRAL_LOG_LEVEL": "debug"})
    try:
        def text() -> str:
            return (tmp_path / "tty-corral.err").read_text(errors="replace")

        wait_until(lambda: text().count("worker_ready") >= 2, 30, "two workers ready",
                   alive=lambda: None if proc.poll() is None else text())
        workers = worker_pids(proc.pid)
        proc.send_signal(signal.SIGWINCH)
        wait_until(lambda: "winch_ignored" in text() or "reason=winch" in text(), 10, "the WINCH handled")
        assert "winch_ignored" in text(), text()[-3000:]
        assert worker_pids(proc.pid) == workers
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pid in worker_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        out.close()
        sock.close()
        os.close(master_fd)
        os.close(slave_fd)
