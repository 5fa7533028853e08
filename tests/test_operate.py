"""Operating corral: corralctl on --control-socket, Prometheus metrics and health, --shutdown-delay.

Everything runs against a live corral started through the real CLI; corralctl
is the installed console script (or ``python -m daemon.ctl``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    APPS,
    FACTOR,
    Corral,
    cannot_run,
    deadline,
    free_port,
    require_tool,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.timeout(180)

Start = Callable[..., Corral]


def corralctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "corralctl"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "daemon.ctl"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout * FACTOR)


def ctl_json(sock: Path, *args: str) -> Any:
    done = corralctl("-s", str(sock), "--json", *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


def scrape(port: int, path: str = "/metrics") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text ``text`` (labels given must all match)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


def write_app(tmp_path: Path, name: str = "ops_app", extra: str = "") -> Path:
    module = tmp_path / f"{name}.py"
    module.write_text((APPS / "master_app.py").read_text() + extra)
    return module


def start_ops(corral: Start, tmp_path: Path, *args: str, workers: int = 2, app: str = "ops_app",
              **kw: Any) -> tuple[Corral, Path]:
    """corral on a copy of master_app (tests may break it) with a control socket; ready."""
    sock = tmp_path / "ctl.sock"
    if not (tmp_path / f"{app}.py").exists():
        write_app(tmp_path, app)
    proc = corral(f"{app}:app", "--workers", str(workers), "--control-socket", str(sock), "--app-dir",
                  str(tmp_path), *args, app_dir=False, wait=False, **kw)
    proc.wait_log("worker_ready", count=workers)
    return proc, sock


def ready_workers(sock: Path) -> list[dict[str, Any]]:
    return [w for w in ctl_json(sock, "workers")["workers"] if w["state"] == "ready"]


# -- corralctl ------------------------------------------------------------------------------


def test_status_workers_and_where_each_setting_came_from(corral: Start, tmp_path: Path) -> None:
    conf = tmp_path / "corral.toml"
    conf.write_text("timeout-keep-alive = 7\n")
    pidfile = tmp_path / "corral.pid"
    proc, sock = start_ops(corral, tmp_path, "--config", str(conf), "--pid", str(pidfile),
                           env={"CORRAL_LIMIT_CONCURRENCY": "500"})
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode) and mode & 0o777 == 0o600

    for _ in range(5):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    status = ctl_json(sock, "status")
    assert status["pid"] == proc.pid
    assert status["workers"] == {"ready": 2, "total": 2, "wanted": 2}
    assert status["generation"] == 1 and status["uptime"] > 0
    assert status["listeners"] == [proc.url]
    settings = status["settings"]
    assert settings["workers"] == {"value": 2, "source": "flag"}
    assert settings["limit-concurrency"] == {"value": 500, "source": "env:CORRAL_LIMIT_CONCURRENCY"}
    assert settings["timeout-keep-alive"] == {"value": 7, "source": f"file:{conf}"}
    assert settings["backlog"] == {"value": 2048, "source": "default"}

    # Requests reach the table with the next heartbeat.
    wait_until(lambda: sum(w["requests"] for w in ctl_json(sock, "workers")["workers"]) >= 5, 10,
               "the workers' request counts")
    rows = ctl_json(sock, "workers")["workers"]
    assert {row["pid"] for row in rows} == worker_pids(proc.pid)
    for row in rows:
        assert row["state"] == "ready" and row["generation"] == 1
        assert row["rss"] > 1_000_000 and row["cpu_percent"] is not None and row["age"] > 0
        assert row["heartbeat_age"] is not None and row["heartbeat_age"] < 5
        assert row["in_flight"] == 0 and row["connections"] >= 0

    # The tables for people, and the socket found from the PID file alone.
    table = corralctl("--pid", str(pidfile), "workers")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["PID", "GEN", "STATE", "AGE"]
    assert len(table.stdout.splitlines()) == 3
    text = corralctl("--pid", str(pidfile), "status")
    assert text.returncode == 0 and f"pid {proc.pid}" in text.stdout
    assert "file:" in text.stdout and "env:CORRAL_LIMIT_CONCURRENCY" in text.stdout


def test_reload_waits_for_the_roll_and_fails_on_a_broken_config(corral: Start, tmp_path: Path) -> None:
    conf = tmp_path / "corral.toml"
    conf.write_text("timeout-keep-alive = 5\n")
    proc, sock = start_ops(corral, tmp_path, "--config", str(conf), "--no-access-log")
    before = worker_pids(proc.pid)

    done = corralctl("-s", str(sock), "reload")
    assert done.returncode == 0, done.stderr
    assert "reload done (generation 2)" in done.stdout
    # It waited: when it returns, every worker is new and ready.
    rows = ready_workers(sock)
    assert len(rows) == 2 and {r["generation"] for r in rows} == {2}
    assert not {r["pid"] for r in rows} & before

    conf.write_text("timeout-keep-alive = 'soon'\n")
    serving = {r["pid"] for r in rows}
    from tests.load import Load

    with Load(proc.url, clients=4, duration=60) as load:
        load.wait_successes(20)
        done = corralctl("-s", str(sock), "reload")
        assert done.returncode == 1, done.stdout
        assert "reload refused" in done.stderr and "timeout-keep-alive" in done.stderr, done.stderr
        load.wait_successes(load.successes + 20)
    assert load.report.failed == 0, load.report.summary()
    assert worker_pids(proc.pid) == serving
    status = ctl_json(sock, "status")
    assert status["last_action"]["result"] == "refused" and status["generation"] == 2

    # A config that parses but whose app cannot start: the roll is rolled back.
    conf.write_text("timeout-keep-alive = 5\n")
    module = tmp_path / "ops_app.py"
    good = module.read_text()
    module.write_text(good + '\nraise RuntimeError("broken deploy")\n')
    done = corralctl("-s", str(sock), "--json", "reload")
    assert done.returncode == 1
    answer = json.loads(done.stdout)
    assert answer["action"]["result"] == "rolled-back" and "broken deploy" in answer["action"]["reason"]
    assert worker_pids(proc.pid) == serving
    assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    module.write_text(good)


def test_upgrade_waits_keeps_the_socket_and_reports_a_rollback(corral: Start, tmp_path: Path) -> None:
    port = free_port()
    proc, sock = start_ops(corral, tmp_path, "--no-access-log", "--metrics-bind", f"127.0.0.1:{port}")
    before = worker_pids(proc.pid)
    for _ in range(3):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    wait_until(lambda: sample(scrape(port).text, "corral_requests_started_total") == 3, 10, "3 requests")
    assert corralctl("-s", str(sock), "reload").returncode == 0  # the first workers' counts: the dead's totals
    done = corralctl("-s", str(sock), "upgrade")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "upgrade done" in done.stdout
    status = ctl_json(sock, "status")  # the same socket, answered by the new image
    assert status["pid"] == proc.pid and status["upgraded"]
    assert status["last_action"]["kind"] == "upgrade" and status["last_action"]["result"] == "done"
    assert len(ready_workers(sock)) == 2 and not worker_pids(proc.pid) & before
    # The metrics listener came along, and the counters went on from where they were.
    text = scrape(port).text
    assert sample(text, "corral_requests_started_total") == 3
    assert sample(text, "corral_worker_restarts_total", reason="hup") == 2
    assert sample(text, "corral_worker_restarts_total", reason="upgrade") == 2

    module = tmp_path / "ops_app.py"
    good = module.read_text()
    module.write_text(good + '\nraise RuntimeError("broken release")\n')
    serving = worker_pids(proc.pid)
    done = corralctl("-s", str(sock), "upgrade")
    assert done.returncode == 1, done.stdout
    assert "upgrade rolled-back" in done.stderr and "broken release" in done.stderr, done.stderr
    assert worker_pids(proc.pid) == serving
    module.write_text(good)
    assert httpx.get(proc.url + "/", timeout=5).status_code == 200


def test_scale_reopen_logs_and_stop(corral: Start, tmp_path: Path) -> None:
    proc, sock = start_ops(corral, tmp_path, workers=1)
    assert ctl_json(sock, "scale", "+2")["workers"] == {"before": 1, "wanted": 3}
    wait_until(lambda: len(ready_workers(sock)) == 3, 30, "three ready workers")
    assert ctl_json(sock, "scale", "-1")["workers"] == {"before": 3, "wanted": 2}
    wait_until(lambda: len(worker_pids(proc.pid)) == 2, 30, "two workers")
    assert ctl_json(sock, "scale", "1")["workers"]["wanted"] == 1
    wait_until(lambda: len(worker_pids(proc.pid)) == 1, 30, "one worker")
    refused = corralctl("-s", str(sock), "scale", "-1")
    assert refused.returncode == 1 and "at least one worker" in refused.stderr

    logs = proc.output().count("logs_reopened")
    done = corralctl("-s", str(sock), "reopen-logs")
    assert done.returncode == 0 and "logs reopened" in done.stdout
    proc.wait_log("logs_reopened", count=logs + 1)

    # A slow request in flight: stop waits for the graceful stop to finish.
    slow = threading.Thread(target=lambda: httpx.get(proc.url + "/sleep?3", timeout=10), daemon=True)
    slow.start()
    proc.wait_log("master_app: sleeping")
    wait_until(lambda: [w["in_flight"] for w in ctl_json(sock, "workers")["workers"]] == [1], 10,
               "the request in flight in the workers table")
    done = corralctl("-s", str(sock), "stop")
    assert done.returncode == 0, done.stderr
    assert proc.popen.poll() == 0
    assert not sock.exists()


def test_stop_quick(corral: Start, tmp_path: Path) -> None:
    proc, sock = start_ops(corral, tmp_path)
    done = corralctl("-s", str(sock), "stop", "--quick")
    assert done.returncode == 0, done.stderr
    assert proc.wait_exit(10) == 0
    assert "mode=quit" in proc.output()


def test_the_control_socket_cannot_block_the_master(corral: Start, tmp_path: Path) -> None:
    proc, sock = start_ops(corral, tmp_path, workers=1)
    silent = []
    for _ in range(5):  # connect and say nothing
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(sock))
        silent.append(client)
    partial = socket.socket(socket.AF_UNIX)
    partial.connect(str(sock))
    partial.sendall(b'{"cmd": "sta')  # half a request, never finished
    huge = socket.socket(socket.AF_UNIX)
    huge.connect(str(sock))
    try:
        huge.sendall(b"x" * 100_000)  # past the size bound: dropped
    except OSError:
        pass
    started = time.monotonic()
    assert ctl_json(sock, "status")["pid"] == proc.pid
    assert time.monotonic() - started < 2 * FACTOR
    # The silent ones are closed by their deadline.
    for client in silent:
        client.settimeout(15 * FACTOR)
        assert client.recv(100) == b""
        client.close()
    partial.close()
    huge.close()
    garbage = corralctl("-s", str(sock), "status")
    assert garbage.returncode == 0
    # Bad requests are answered, not fatal.
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(sock))
    client.sendall(b'{"cmd": "explode"}\n')
    client.settimeout(5)
    assert json.loads(client.recv(4096)) == {"ok": False, "error": "unknown command 'explode'"}
    client.close()


def test_corralctl_without_a_master_says_so(tmp_path: Path) -> None:
    done = corralctl("-s", str(tmp_path / "nothing.sock"), "status")
    assert done.returncode == 3 and "cannot connect" in done.stderr
    done = corralctl("status")
    assert done.returncode == 3 and "-s PATH" in done.stderr


# -- metrics and health -----------------------------------------------------------------------


def test_metrics_livez_readyz_and_the_backlog(corral: Start, tmp_path: Path) -> None:
    port = free_port()
    proc, sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}")
    assert scrape(port, "/livez").status_code == 200
    ready = scrape(port, "/readyz")
    assert ready.status_code == 200 and ready.text == "ready\n"
    assert scrape(port, "/nothing").status_code == 404
    page = scrape(port)
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = page.text
    assert sample(text, "corral_workers", state="ready") == 2
    assert sample(text, "corral_workers_wanted") == 2
    assert sample(text, "corral_worker_restarts_total", reason="crash") == 0
    pids = worker_pids(proc.pid)
    for pid in pids:
        assert (sample(text, "corral_worker_resident_memory_bytes", pid=str(pid)) or 0) > 1_000_000
        assert sample(text, "corral_worker_heartbeat_age_seconds", pid=str(pid)) is not None
    address = f"{proc.host}:{proc.port}"
    assert sample(text, "corral_listen_backlog", listener=f"fd://{proc.sock.fileno()}") == 0 or \
        sample(text, "corral_listen_backlog", listener=address) == 0, text

    # A crash is counted by reason, and the counter stays.
    os.kill(sorted(pids)[0], signal.SIGKILL)
    wait_until(lambda: sample(scrape(port).text, "corral_worker_restarts_total", reason="crash") == 1, 20,
               "the crash in the metrics")
    wait_until(lambda: sample(scrape(port).text, "corral_workers", state="ready") == 2, 30, "a replacement")


def test_listen_backlog_counts_connections_nobody_accepted(corral: Start, tmp_path: Path) -> None:
    """While the only worker's loop is blocked, new connections wait in the kernel's queue."""
    port = free_port()
    proc, _sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}",
                            "--timeout-worker-healthcheck", "60", workers=1)
    blocker = threading.Thread(target=lambda: httpx.get(proc.url + "/block?8", timeout=30), daemon=True)
    blocker.start()

    def blocked() -> bool:  # beats every second when its loop turns
        return (sample(scrape(port).text, "corral_worker_heartbeat_age_seconds") or 0) > 1.5
    wait_until(blocked, 10, "the worker's loop blocked")
    waiting = [socket.create_connection((proc.host, proc.port)) for _ in range(5)]
    try:
        text = scrape(port).text
        values = [v for v in re.findall(r"^corral_listen_backlog\{[^}]*\} (\S+)$", text, re.M)]
        assert values and float(values[0]) == 5, text
        assert (sample(text, "corral_listen_backlog_limit") or 0) >= 5
    finally:
        for conn in waiting:
            conn.close()
        blocker.join(20)


def test_unix_socket_backlog_through_sock_diag(tmp_path: Path) -> None:
    from daemon.metrics import listen_backlog

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "s.sock"))
    server.listen(17)
    clients = []
    try:
        for _ in range(3):
            client = socket.socket(socket.AF_UNIX)
            client.connect(str(tmp_path / "s.sock"))
            clients.append(client)
        assert listen_backlog(server) == (3, 17)
    finally:
        for client in clients:
            client.close()
        server.close()


def test_request_counters_stay_monotonic_across_a_hup(corral: Start, tmp_path: Path) -> None:
    port = free_port()
    proc, sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}", "--no-access-log")
    for _ in range(7):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    wait_until(lambda: sample(scrape(port).text, "corral_requests_started_total") == 7, 10,
               "7 requests in the metrics")
    assert corralctl("-s", str(sock), "reload").returncode == 0
    text = scrape(port).text
    assert sample(text, "corral_requests_started_total") == 7  # the retired workers' counts are kept
    assert sample(text, "corral_worker_restarts_total", reason="hup") == 2
    for _ in range(5):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    wait_until(lambda: sample(scrape(port).text, "corral_requests_started_total") == 12, 10,
               "12 requests in the metrics")


def test_requests_by_method_and_status_across_a_hup(corral: Start, tmp_path: Path) -> None:
    port = free_port()
    proc, sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}", "--no-access-log")
    for _ in range(6):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    for _ in range(3):
        assert httpx.post(proc.url + "/", content=b"x", timeout=5).status_code == 200
    assert corralctl("-s", str(sock), "reload").returncode == 0
    for _ in range(4):
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200

    def counted() -> bool:
        text = scrape(port).text
        return sample(text, "corral_requests_total", method="GET", status="2xx") == 10 and \
            sample(text, "corral_requests_total", method="POST", status="2xx") == 3
    wait_until(counted, 10, "10 GET and 3 POST in the metrics")
    text = scrape(port).text
    assert sample(text, "corral_request_duration_seconds_count") == 13
    assert (sample(text, "corral_response_body_bytes_total") or 0) > 13


def test_readyz_turns_503_at_the_first_moment_of_a_stop(corral: Start, tmp_path: Path) -> None:
    port = free_port()
    proc, _sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}")
    assert scrape(port, "/readyz").status_code == 200
    slow = threading.Thread(target=lambda: httpx.get(proc.url + "/sleep?3", timeout=10), daemon=True)
    slow.start()
    proc.wait_log("master_app: sleeping")
    proc.signal(signal.SIGTERM)
    proc.wait_log("mode=term")
    # The master is still draining (3 s request): /livez answers, /readyz says no.
    answer = scrape(port, "/readyz")
    assert answer.status_code == 503 and answer.text == "stopping\n"
    assert scrape(port, "/livez").status_code == 200
    assert proc.wait_exit(30) == 0


# -- --shutdown-delay ----------------------------------------------------------------------------


def test_shutdown_delay_keeps_serving_new_connections_after_term(corral: Start, tmp_path: Path) -> None:
    """The kubelet's TERM while the Service still routes here: new connections keep working for the delay."""
    port = free_port()
    delay = 4.0
    proc, _sock = start_ops(corral, tmp_path, "--metrics-bind", f"127.0.0.1:{port}", "--shutdown-delay",
                            str(delay), "--no-access-log")
    failures: list[str] = []
    successes = [0]
    term_at = [0.0]
    stop = threading.Event()

    def client() -> None:
        # A fresh connection for every request, as new traffic from a load balancer.
        while not stop.is_set():
            try:
                with socket.create_connection((proc.host, proc.port), timeout=5) as conn:
                    conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := conn.recv(4096):
                        data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    failures.append(f"{time.monotonic() - term_at[0]:.2f}s after TERM: {data[:40]!r}")
                else:
                    successes[0] += 1
            except OSError as exc:
                failures.append(f"{time.monotonic() - term_at[0]:.2f}s after TERM: {exc!r}")

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: successes[0] >= 50, 20, "traffic")
    term_at[0] = time.monotonic()
    proc.signal(signal.SIGTERM)
    # Not ready at once...
    wait_until(lambda: scrape(port, "/readyz").status_code == 503, 2, "/readyz 503 right after TERM")
    before = successes[0]
    # ...while everything still works for the delay (minus a margin for a slow machine: a request
    # begun before the end must be accepted by a worker before the workers stop accepting).
    end = term_at[0] + delay - 1.0
    while time.monotonic() < end:
        assert proc.popen.poll() is None
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not failures, failures[:5]
    assert successes[0] - before > 20, "too few requests during the delay"
    assert proc.wait_exit(30) == 0
    out = proc.output()
    assert "shutdown_delayed" in out and "shutdown_delay_over" in out
    stopped = out.index("shutdown_delay_over")
    assert "mode=term" in out[stopped:]
    elapsed = time.monotonic() - term_at[0]
    assert elapsed >= delay


def test_a_second_term_ends_the_delay(corral: Start, tmp_path: Path) -> None:
    proc, _sock = start_ops(corral, tmp_path, "--shutdown-delay", "60")
    proc.signal(signal.SIGTERM)
    proc.wait_log("shutdown_delayed")
    assert proc.popen.poll() is None
    end = deadline(0.5)
    while time.monotonic() < end:
        assert httpx.get(proc.url + "/", timeout=5).status_code == 200
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(20) == 0


# -- corral as PID 1 ---------------------------------------------------------------------------------


def test_as_pid_1_orphans_are_reaped_quietly_and_never_counted(procs: Callable[..., Any], tmp_path: Path) -> None:
    unshare = require_tool("unshare")
    if os.geteuid() != 0:
        cannot_run("unshare --pid needs root")
    port, metrics = free_port(), free_port()
    proc = procs([unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-m", "daemon", "orphan_app:app",
                  "--app-dir", str(APPS), "--workers", "2", "--port", str(port), "--log-level", "debug",
                  "--metrics-bind", f"127.0.0.1:{metrics}", "--no-access-log"],
                 env={"PYTHONUNBUFFERED": "1"})
    proc.wait_log("worker_ready", count=2)
    assert "master_started [corral.master] pid=1 " in proc.output() or "pid=1 " in proc.output()
    import psutil

    master = wait_until(lambda: psutil.Process(proc.pid).children(), 10, "the master inside the namespace")[0]
    workers = {child.pid for child in master.children()}
    assert len(workers) == 2

    for _ in range(4):
        response = httpx.get(f"http://127.0.0.1:{port}/spawn?5", timeout=10)
        assert response.status_code == 200
    proc.wait_log("orphan_reaped", count=20, timeout=20)

    def no_zombies() -> bool:
        children = master.children()
        return all(child.status() != psutil.STATUS_ZOMBIE for child in children) and \
            {child.pid for child in children} == workers
    wait_until(no_zombies, 10, "no zombie children of the master", alive=proc.dead)
    out = proc.output()
    assert out.count("status=3") >= 20  # the orphans' statuses, logged at debug...
    assert "worker_exited" not in out and "boot_failed" not in out and "worker_crashed" not in out
    text = scrape(metrics).text
    assert sample(text, "corral_workers", state="ready") == 2
    assert sum(float(v) for v in re.findall(r"^corral_worker_restarts_total\{[^}]*\} (\S+)$", text, re.M)) == 0
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200

    os.kill(master.pid, signal.SIGTERM)
    assert proc.wait_exit(30) == 0


def test_open_connections_and_websockets_in_the_metrics(corral: Start, tmp_path: Path) -> None:
    from websockets.sync.client import connect

    port = free_port()
    proc = corral("ws_echo:app", "--workers", "1", "--metrics-bind", f"127.0.0.1:{port}", wait=False)
    proc.wait_log("worker_ready")
    with connect(f"ws://{proc.host}:{proc.port}/echo") as first, \
            connect(f"ws://{proc.host}:{proc.port}/echo") as second:
        first.send("hello")
        assert first.recv(timeout=5) == "hello" and second is not None
        idle = socket.create_connection((proc.host, proc.port))  # an HTTP connection, no request yet

        def counted() -> bool:
            text = scrape(port).text
            return sample(text, "corral_websockets_open") == 2 and sample(text, "corral_connections_open") == 3
        wait_until(counted, 10, "2 WebSockets and 3 connections open in the metrics")
        idle.close()
    wait_until(lambda: sample(scrape(port).text, "corral_websockets_open") == 0, 10, "the WebSockets closed")
    text = scrape(port).text
    assert sample(text, "corral_websockets_total") == 2


def test_metrics_on_a_unix_socket(corral: Start, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    proc = corral("master_app:app", "--uds", str(tmp_path / "app.sock"), "--metrics-bind", f"unix:{path}",
                  fd=False, wait=False)
    proc.wait_log("worker_ready")
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, base_url="http://corral") as client:
        assert client.get("/readyz").status_code == 200
        text = client.get("/metrics").text
    # The app's UNIX listener has a backlog too (read through sock_diag).
    assert sample(text, "corral_listen_backlog", listener=f"unix:{tmp_path / 'app.sock'}") == 0, text
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(30) == 0
    assert not path.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics-bind", "fd://3"], "expected HOST:PORT or unix:PATH"),
    (["--metrics-bind", "localhost"], "expected HOST:PORT"),
    (["--control-socket", "/nonexistent/dir/ctl.sock"], "no such directory"),
    (["--shutdown-delay", "-1"], "must be at least 0"),
])
def test_bad_operating_options_exit_2_before_binding(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "daemon", "master_app:app", "--app-dir", str(APPS), *args],
                          capture_output=True, text=True, timeout=30 * FACTOR)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_control_socket_in_use_is_a_one_line_error(corral: Start, tmp_path: Path) -> None:
    _proc, sock = start_ops(corral, tmp_path, workers=1)
    second = corral("master_app:app", "--control-socket", str(sock), wait=False)
    assert second.wait_exit(30) == 1
    assert "address already in use" in second.output() and "Traceback" not in second.output()
    assert ctl_json(sock, "status")["workers"]["ready"] == 1  # the first one is untouched
