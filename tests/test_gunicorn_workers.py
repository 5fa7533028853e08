"""The gunicorn worker classes under the real ``gunicorn`` binary."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import ROOT, Proc, bound_socket, wait_until

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., tuple[Proc, str]]]:
    """Start gunicorn on an inherited socket (``--bind fd://N``); killed by PID after."""
    started: list[Proc] = []
    sockets: list[socket.socket] = []

    def start(worker_class: str, *args: str, app: str = "tests.apps.rt_app:app",
              env: dict[str, str] | None = None) -> tuple[Proc, str]:
        sock = bound_socket()
        sockets.append(sock)
        argv = [GUNICORN, "-k", worker_class, "--bind", f"fd://{sock.fileno()}",
                "--graceful-timeout", "20", "--no-control-socket", *args, app]
        proc = Proc(argv, tmp_path, env=env, pass_fds=(sock.fileno(),), cwd=ROOT, name=f"gunicorn{len(started)}")
        started.append(proc)
        host, port = sock.getsockname()[:2]
        return proc, f"http://{host}:{port}"

    yield start
    for proc in started:
        proc.kill()
    for sock in sockets:
        sock.close()


def answers(url: str) -> bool:
    """True when ``url`` answers 200."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def worker_pids(proc: Proc) -> set[int]:
    """PIDs of gunicorn's live workers (its children)."""
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return set()
    return {child.pid for child in children if child.status() != psutil.STATUS_ZOMBIE}


def generation(proc: Proc, size: int, old: set[int] = frozenset()) -> set[int] | None:  # type: ignore[assignment]
    """The worker PIDs when there are exactly ``size`` of them and none is in ``old``."""
    pids = worker_pids(proc)
    return pids if len(pids) == size and not pids & old else None


class Load:
    """Requests on fresh connections in a loop, counting failures, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                response = httpx.get(self.url, timeout=10)
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {response.status_code}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.mark.parametrize("worker_class", ["server_core.workers.CorralWorker", "server_core.workers.CorralH11Worker"])
def test_serves_rolls_on_hup_and_stops_on_term(gunicorn: Callable[..., tuple[Proc, str]], worker_class: str) -> None:
    proc, url = gunicorn(worker_class, "--workers", "2")
    wait_until(lambda: answers(url + "/"), 30, "gunicorn answering", alive=proc.dead)
    old = wait_until(lambda: generation(proc, 2), 30, "two workers", alive=proc.dead)
    expected_loop = b"uvloop" if worker_class.endswith("CorralWorker") else b"asyncio.unix_events"
    assert httpx.get(url + "/loop", timeout=10).content == expected_loop
    load = Load(url + "/")
    proc.signal(signal.SIGHUP)
    # gunicorn's roll: new workers start, the old ones get TERM and drain.
    wait_until(lambda: generation(proc, 2, old), 60, "a new generation of workers", alive=proc.dead)
    wait_until(lambda: load.ok > 20, 30, "requests after the roll", alive=proc.dead)
    load.finish()
    assert load.failures == [], load.failures[:5]
    assert "Shutting down (stopping)" in proc.output()
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(60) == 0


def test_config_kwargs_subclass_takes_effect(gunicorn: Callable[..., tuple[Proc, str]]) -> None:
    proc, url = gunicorn("tests.apps.rt_gunicorn.HeaderWorker")
    wait_until(lambda: answers(url + "/"), 30, "gunicorn answering", alive=proc.dead)
    response = httpx.get(url + "/loop", timeout=10)
    assert response.headers["x-corral-worker"] == "custom"
    assert "server" not in response.headers
    assert response.content == b"asyncio.unix_events"
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(60) == 0


def test_max_requests_recycles_the_worker(gunicorn: Callable[..., tuple[Proc, str]]) -> None:
    proc, url = gunicorn("server_core.workers.CorralH11Worker", "--max-requests", "3")
    wait_until(lambda: answers(url + "/"), 30, "gunicorn answering", alive=proc.dead)
    first = wait_until(lambda: generation(proc, 1), 30, "a worker", alive=proc.dead)
    for _ in range(3):
        answers(url + "/")
    wait_until(lambda: generation(proc, 1, first), 60, "a replacement worker", alive=proc.dead)
    wait_until(lambda: answers(url + "/"), 30, "the replacement answering", alive=proc.dead)
    assert "Autorestarting worker" in proc.output()


def test_lifespan_failure_halts_gunicorn_with_status_3(gunicorn: Callable[..., tuple[Proc, str]]) -> None:
    proc, _ = gunicorn("server_core.workers.CorralH11Worker",
                       env={"RT_FAIL_STARTUP": "no database for gunicorn"})
    assert proc.wait_exit(60) == 3
    assert "no database for gunicorn" in proc.output()


def test_settings_come_from_gunicorns_config(tmp_path: Path) -> None:
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from server_core.workers import UNLIMITED, CorralH11Worker, CorralWorker
    from tests.apps.rt_gunicorn import HeaderWorker

    cfg = Config()
    for name, value in [("keepalive", 7), ("graceful_timeout", 12), ("limit_request_line", 0),
                        ("limit_request_fields", 50), ("forwarded_allow_ips", "10.0.0.1,10.0.0.2"),
                        ("max_requests", 100), ("timeout", 18), ("backlog", 512),
                        ("certfile", str(tmp_path / "c.pem")), ("keyfile", str(tmp_path / "k.pem")),
                        ("ca_certs", str(tmp_path / "ca.pem")), ("cert_reqs", 2), ("ciphers", "ECDHE+AESGCM")]:
        cfg.set(name, value)
    log = Logger(cfg)

    def settings(cls: type[CorralWorker]) -> Any:
        return cls(0, 1, [], None, 9, cfg, log).server_settings()

    fast = settings(CorralWorker)
    assert (fast.loop, fast.http) == ("uvloop", "httptools")
    assert fast.timeout_keep_alive == 7 and fast.timeout_graceful_shutdown == 12
    assert fast.limit_request_line == UNLIMITED and fast.limit_request_fields == 50
    assert fast.limit_request_head_size == UNLIMITED  # a gunicorn limit turned off is not capped by corral's
    assert fast.forwarded_allow_ips == ("10.0.0.1", "10.0.0.2")
    assert fast.limit_max_requests == 100  # jitter 0
    assert fast.timeout_worker_healthcheck == 18 and fast.heartbeat_interval == 1.0
    assert fast.backlog == 512
    assert fast.ssl_certfile == str(tmp_path / "c.pem") and fast.ssl_keyfile == str(tmp_path / "k.pem")
    assert fast.ssl_ca_certs == str(tmp_path / "ca.pem") and fast.ssl_cert_reqs == 2
    assert fast.ssl_ciphers == "ECDHE+AESGCM"
    assert fast.access_log is False  # gunicorn logs access only with --access-logfile
    pure = settings(CorralH11Worker)
    assert (pure.loop, pure.http) == ("asyncio", "h11")
    custom = settings(HeaderWorker)
    assert custom.server_header is False and custom.headers == (("x-corral-worker", "custom"),)
    assert custom.timeout_keep_alive == 7


def test_usr1_keeps_workers_and_quit_is_quick(gunicorn: Callable[..., tuple[Proc, str]], tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    proc, url = gunicorn("server_core.workers.CorralH11Worker", env={"RT_MARKS": str(marks)})
    wait_until(lambda: answers(url + "/"), 30, "gunicorn answering", alive=proc.dead)
    workers = wait_until(lambda: generation(proc, 1), 30, "a worker", alive=proc.dead)
    # USR1 (reopen logs) goes on to the workers; its default action would kill them.
    proc.signal(signal.SIGUSR1)
    proc.wait_log("reopening log files (USR1)")
    assert answers(url + "/")
    assert worker_pids(proc) == workers
    # QUIT with a 60 s request in flight: gunicorn's graceful timeout is 20 s,
    # so exiting well before it shows the worker quit at once.
    hanging = threading.Thread(target=lambda: answers(url + "/sleep?s=60&mark=long"), daemon=True)
    hanging.start()
    wait_until((marks / "long").exists, 20, "the long request to reach the app", alive=proc.dead)
    started = time.monotonic()
    proc.signal(signal.SIGQUIT)
    assert proc.wait_exit(60) == 0
    assert time.monotonic() - started < 10
