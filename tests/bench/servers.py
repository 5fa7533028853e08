"""The servers under test: how each is started, waited for, measured and stopped.

Every server runs as its own process tree (corral: a master and its workers; uvicorn with
``--workers 1``: one process; granian, gunicorn and hypercorn: a master and a worker; the
ceiling: one process), started under ``taskset -c 0`` so the tree shares one core while wrk has the other.
The CPU time of the whole tree is read from the kernel's per-process counters (psutil) before
and after a load run; divided by the requests wrk completed, that is the server's CPU cost per
request — the figure that stays put when other work shares the machine, because time the
server spends waiting for a CPU is not counted.

Each start picks a free port, polls it every :data:`POLL_S` seconds with a real HTTP request
until it answers 200 (with a deadline, failing early if the process exits), and every process of the tree is killed in
:meth:`ServerProcess.stop`, which callers reach through ``with``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from tests.bench.wrk import pinned

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
APP_MODULE = "tests.bench.apps"
POLL_S = 0.002
"""Seconds between two readiness polls of a starting server (a refused connect costs ~50 µs)."""
HELPERS = {
    "multiprocessing.resource_tracker": "resource tracker",
    "multiprocessing.semaphore_tracker": "semaphore tracker",
    "multiprocessing.forkserver": "forkserver",
}
"""cmdline fragment → role of a process of a server tree that is neither master nor worker
(uvicorn ``--workers N`` starts its workers with multiprocessing's spawn, which starts a
resource tracker beside them)."""


class ServerStartError(RuntimeError):
    """A server exited or did not answer 200 before its deadline; carries its log tail."""


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration: which implementation, parser, worker count and logging."""

    family: str  # "corral", "uvicorn", "granian", "gunicorn" (its own asgi worker), "hypercorn" or "ceiling"
    http: str = "httptools"  # "httptools", "h11" or "zttp" ("-" for servers with their own parser)
    workers: int = 1
    access_log: bool = False
    cpus: str | None = "0"  # taskset CPU list for the whole tree; None: not pinned
    ws: str | None = None  # --ws implementation (None: the server's default)
    h2: bool = False  # HTTP/2 (cleartext, prior knowledge): corral/uvicorn --http zttp --http2, granian --http 2

    def _parts(self, log: str, workers: str) -> list[str]:
        parts = [self.family]
        if self.http in ("h11", "zttp"):
            parts.append(self.http)
        if self.h2:
            parts.append("h2")
        if self.ws:
            parts.append(self.ws)
        if self.access_log:
            parts.append(log)
        if self.workers != 1:
            parts.append(workers.format(self.workers))
        return parts

    @property
    def key(self) -> str:
        """A stable identifier: ``corral``, ``uvicorn-h11``, ``corral-zttp-h2``, ``corral-log``, ``corral-2w``…"""
        return "-".join(self._parts("log", "{}w"))

    @property
    def label(self) -> str:
        """What the report prints: ``corral``, ``corral h11``, ``uvicorn access log``, ``corral 2 workers``."""
        return " ".join(self._parts("access log", "{} workers"))

    def reference(self) -> ServerSpec:
        """The uvicorn configuration this one is compared with (same parser, ws, workers, logging);
        every HTTP/2 row is compared with uvicorn ``--http zttp --http2``."""
        if self.h2:
            return ServerSpec("uvicorn", http="zttp", workers=self.workers, access_log=self.access_log,
                              cpus=self.cpus, h2=True)
        http = self.http if self.http in ("httptools", "h11", "zttp") else "httptools"
        return ServerSpec("uvicorn", http=http, workers=self.workers, access_log=self.access_log,
                          cpus=self.cpus, ws=self.ws)

    def ready(self, port: int, timeout: float) -> bool:
        """True when the server answers ``GET /`` with 200 (over HTTP/2 for an HTTP/2 row: granian
        ``--http 2`` speaks nothing else)."""
        return answers_200_h2(port, timeout=timeout) if self.h2 else answers_200(port, timeout=timeout)

    def argv(self, app_attr: str, port: int) -> list[str]:
        """The command line serving ``tests.bench.apps:<app_attr>`` on ``HOST:port``."""
        app_ref = f"{APP_MODULE}:{app_attr}"
        if self.family == "ceiling":
            argv = [sys.executable, "-m", "tests.bench.ceiling", "--host", HOST, "--port", str(port)]
        elif self.family in ("corral", "uvicorn"):
            module = "daemon" if self.family == "corral" else "uvicorn"
            argv = [
                sys.executable, "-m", module, app_ref,
                "--host", HOST, "--port", str(port),
                "--workers", str(self.workers),
                "--http", self.http,
                *(["--http2"] if self.h2 else []),
                # The access log is written at info level: with it on, info must be let through.
                "--log-level", "info" if self.access_log else "warning",
                "--access-log" if self.access_log else "--no-access-log",
                *(["--ws", self.ws] if self.ws else []),
            ]
        elif self.family == "granian":
            argv = [
                granian_path() or "granian", "--interface", "asgi", "--http", "2" if self.h2 else "1", "--no-ws",
                "--loop", "uvloop", "--host", HOST, "--port", str(port),
                "--workers", str(self.workers),
                "--log-level", "info" if self.access_log else "warning",
                "--access-log" if self.access_log else "--no-access-log",
                app_ref,
            ]
        elif self.family == "gunicorn":
            # gunicorn's own ASGI worker (``-k asgi``), the process manager corral also replaces.
            argv = [
                sys.executable, "-m", "gunicorn", "-k", "asgi", "-w", str(self.workers),
                "-b", f"{HOST}:{port}", "--log-level", "info" if self.access_log else "warning",
                *(["--access-logfile", "-"] if self.access_log else []),
                app_ref,
            ]
        elif self.family == "hypercorn":
            # hypercorn (h11 + h2, pure Python) answers HTTP/1.1 and h2c prior knowledge on one port.
            argv = [
                sys.executable, "-m", "hypercorn", "-k", "uvloop", "-w", str(self.workers),
                "-b", f"{HOST}:{port}", "--log-level", "info" if self.access_log else "warning",
                *(["--access-logfile", "-"] if self.access_log else []),
                app_ref,
            ]
        else:
            raise ValueError(f"unknown server family {self.family!r}")
        return pinned(argv, self.cpus)


def granian_path() -> str | None:
    """granian's executable beside this interpreter (or on PATH), if installed."""
    beside = Path(sys.executable).parent / "granian"
    if beside.exists():
        return str(beside)
    return shutil.which("granian")


def hypercorn_installed() -> bool:
    """True when hypercorn can be imported by this interpreter."""
    return importlib.util.find_spec("hypercorn") is not None


def zttp_installed() -> bool:
    """True when zttp (corral's and uvicorn's ``--http zttp`` and ``--http2``) is installed."""
    return importlib.util.find_spec("zttp") is not None


def gunicorn_has_asgi() -> bool:
    """True when the installed gunicorn ships its own ASGI worker (``-k asgi``)."""
    try:
        from gunicorn.workers import SUPPORTED_WORKERS
    except ImportError:
        return False
    return "asgi" in SUPPORTED_WORKERS


def free_port() -> int:
    """A TCP port on HOST that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers_200(port: int, path: str = "/", timeout: float = 1.0) -> bool:
    """True when a GET on ``HOST:port`` comes back with status 200 (raw socket, no client library)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


def answers_200_h2(port: int, path: str = "/", timeout: float = 1.0) -> bool:
    """True when an HTTP/2 GET (cleartext, prior knowledge; the ``h2`` package of the test extra)
    on ``HOST:port`` comes back with status 200."""
    try:
        import h2.config
        import h2.connection
        import h2.events
        import h2.exceptions
    except ImportError:  # no h2 package: the HTTP/1.1 probe (every server but granian --http 2 answers it)
        return answers_200(port, path, timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", f"{HOST}:{port}".encode()),
                          (b":path", path.encode())], end_stream=True)
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(65536)
                if not data:
                    return False
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        return dict(event.headers).get(b":status") == b"200"
                    if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        return False
                pending = conn.data_to_send()
                if pending:
                    sock.sendall(pending)
    except (OSError, h2.exceptions.ProtocolError):
        return False


def role_of(proc: psutil.Process, root_pid: int | None, tree_size: int) -> str:
    """``master`` (the root of a tree of several), ``process`` (a tree of one), a helper's name
    (:data:`HELPERS`) or ``worker``."""
    if proc.pid == root_pid:
        return "master" if tree_size > 1 else "process"
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return "worker"
    return next((role for fragment, role in HELPERS.items() if fragment in cmdline), "worker")


def http_request(port: int, method: str = "GET", path: str = "/", body: bytes = b"",
                 headers: tuple[tuple[str, str], ...] = (), timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection (``Connection: close``): status, header fields
    (names lower-cased, ``transfer-encoding`` kept) and the body, de-chunked when chunked."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close",
             *(f"{name}: {value}" for name, value in headers if name.lower() != "connection")]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    data = b""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while chunk := sock.recv(65536):
            data += chunk
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"incomplete response head ({len(data)} bytes)")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    found = {name.strip().lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    if "chunked" in found.get("transfer-encoding", "").lower():
        out = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                raise ValueError("truncated chunked body")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            if len(rest) < size + 2 or rest[size:size + 2] != b"\r\n":
                raise ValueError("malformed chunk")
            out, rest = out + rest[:size], rest[size + 2:]
        return status, found, out
    if "content-length" in found:
        length = int(found["content-length"])
        if len(rest) != length:
            raise ValueError(f"body of {len(rest)} bytes, content-length {length}")
    return status, found, rest


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(root: psutil.Process) -> float:
    """User + system CPU seconds of ``root`` and every live descendant, plus reaped children."""
    total = 0.0
    for proc in _tree(root):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class ServerProcess:
    """A running server tree: start with a deadline, measure CPU and memory, stop for sure."""

    def __init__(self, spec: ServerSpec, app_attr: str, logdir: Path, watch_workers: bool = False) -> None:
        self.spec = spec
        # With watch_workers, start() also times when the tree first holds spec.workers workers.
        self.watch_workers = watch_workers and spec.workers > 1
        self.workers_spawned_s: float | None = None
        self.app_attr = app_attr
        self.logdir = logdir
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.proc: psutil.Process | None = None
        self.log_path = logdir / f"{spec.key}-{app_attr}.log"
        self.startup_s: float | None = None
        self._seen: dict[int, psutil.Process] = {}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self, timeout: float = 30.0, attempts: int = 2) -> float:
        """Start the server and wait for its first 200; return seconds from spawn to that 200."""
        last_error: ServerStartError | None = None
        for _ in range(attempts):
            try:
                return self._start_once(timeout)
            except ServerStartError as exc:
                last_error = exc
                self.stop()
                # A port taken between free_port() and the bind is the one failure worth a retry.
                if "address already in use" not in str(exc).lower():
                    break
        assert last_error is not None
        raise last_error

    def _start_once(self, timeout: float) -> float:
        self.port = free_port()
        argv = self.spec.argv(self.app_attr, self.port)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.pop("WEB_CONCURRENCY", None)
        for name in list(env):
            if name.startswith(("CORRAL_", "UVICORN_", "GRANIAN_")):
                del env[name]  # the command line alone decides
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            spawned = time.perf_counter()
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          cwd=ROOT, env=env, start_new_session=True)
        self.proc = psutil.Process(self.popen.pid)
        self.workers_spawned_s = None
        end = spawned + timeout
        while True:
            if self.popen.poll() is not None:
                raise self.failure(f"exited with {self.popen.returncode}")
            self._watch(spawned)
            if self.spec.ready(self.port, timeout=0.5):
                first_200 = self.startup_s = time.perf_counter() - spawned
                self._remember()
                break
            if time.perf_counter() > end:
                raise self.failure(f"did not answer 200 within {timeout:.0f}s")
            time.sleep(POLL_S)
        while self.watch_workers and self.workers_spawned_s is None and time.perf_counter() < end:
            self.check_alive()
            self._watch(spawned)
            time.sleep(POLL_S)
        return first_200

    def _watch(self, spawned: float) -> None:
        """With watch_workers, note the first time the tree holds spec.workers worker processes."""
        if self.watch_workers and self.workers_spawned_s is None and len(self.workers()) >= self.spec.workers:
            self.workers_spawned_s = time.perf_counter() - spawned

    def workers(self) -> list[psutil.Process]:
        """The live worker processes: the tree but its root and multiprocessing helpers."""
        tree = self.processes()
        return [p for p in tree if role_of(p, self.popen_pid, len(tree)) == "worker"]

    def wait_workers(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the tree holds at least ``count`` worker processes (helpers not counted)."""
        self._wait_for(lambda: len(self.workers()), count, "workers", timeout, interval=0.01)

    def wait_processes(self, count: int, timeout: float = 30.0) -> None:
        """Wait until the tree has at least ``count`` processes (a master and its workers)."""
        self._wait_for(lambda: len(self.processes()), count, "processes", timeout, interval=0.05)

    def _wait_for(self, counted: Callable[[], int], count: int, what: str, timeout: float, *,
                  interval: float) -> None:
        """Poll ``counted()`` until it reaches ``count``; :class:`ServerStartError` if the root dies or
        ``timeout`` passes first."""
        end = time.monotonic() + timeout
        while (found := counted()) < count:
            self.check_alive()
            if time.monotonic() > end:
                raise ServerStartError(f"{self.spec.label}: {found} {what} after {timeout:.0f}s, expected {count}")
            time.sleep(interval)

    def check_alive(self) -> None:
        """Raise :class:`ServerStartError` if the root process has exited."""
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            raise self.failure(f"exited with {code}")

    def processes(self) -> list[psutil.Process]:
        """The live process tree, root first (remembered so stop() can reach every one)."""
        return self._remember()

    def _remember(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        tree = _tree(self.proc)
        for proc in tree:
            self._seen.setdefault(proc.pid, proc)
        return tree

    def cpu_seconds(self) -> float:
        """CPU seconds consumed so far by the whole tree."""
        if self.proc is None:
            return 0.0
        self._remember()
        return tree_cpu_seconds(self.proc)

    def memory(self) -> list[dict[str, Any]]:
        """RSS, PSS and USS (bytes) of every process of the tree, each with its role (:func:`role_of`)."""
        rows: list[dict[str, Any]] = []
        tree = self.processes()
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                info = proc.memory_full_info()
                role = role_of(proc, self.popen_pid, len(tree))
                rows.append({"pid": proc.pid, "role": role, "rss": info.rss,
                             "pss": getattr(info, "pss", None), "uss": getattr(info, "uss", None),
                             "cmdline": " ".join(proc.cmdline()[:6])})
        return rows

    @property
    def popen_pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def failure(self, what: str) -> ServerStartError:
        """A start error: ``what`` and the log's last line on the first line, then the log tail."""
        tail = self.log_tail()
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith("$ ")]
        last = lines[-1] if lines else "no output"
        return ServerStartError(f"{self.spec.label} {what}: {last}\n{tail}")

    def log_tail(self, size: int = 3000) -> str:
        """The end of the server's combined stdout/stderr."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-size:].decode(errors="replace")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the root, wait up to ``grace`` seconds, then SIGKILL whatever of the tree is left."""
        self._remember()
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        for proc in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        self._seen.clear()
        self.popen = None
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
