"""A bounded background load of keep-alive HTTP clients, counting every failure.

Used by the master tests, the integration tests and the zero-downtime
benchmark::

    with Load(server.url, clients=16, duration=20) as load:
        load.wait_successes(200)
        os.kill(master_pid, signal.SIGHUP)
        ...
    report = load.report
    assert report.failed == 0, report.summary()

Each client is a thread with one persistent ``http.client`` connection that
sends GET requests back to back, as a real keep-alive client does. It never
retries a failed request: a reset, a timeout or a non-2xx status is recorded
(with the error) and the client reconnects for its next request. A response
with ``Connection: close`` is not a failure: the client reconnects, as every
HTTP client does. The load stops after ``duration`` seconds at most, or when
the ``with`` block ends, whichever comes first.

The apps used with it answer their worker PID as the body, so the report
also says which workers served.
"""

from __future__ import annotations

import collections
import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.support import FACTOR


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a UNIX socket (the Host header stays ``localhost``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


@dataclass
class LoadReport:
    """What the clients saw."""

    successes: int = 0
    # (seconds since start, client number, error text) for every failed request.
    failures: list[tuple[float, int, str]] = field(default_factory=list)
    longest_gap: float = 0.0  # seconds without any successful response, across all clients
    pids: collections.Counter[str] = field(default_factory=collections.Counter)
    duration: float = 0.0
    clients: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def failures_per_client(self) -> collections.Counter[int]:
        """How many requests each client lost."""
        return collections.Counter(client for _, client, _ in self.failures)

    def summary(self) -> str:
        """A few lines for an assertion message."""
        lines = [f"{self.successes} ok, {self.failed} failed, longest gap {self.longest_gap:.3f}s, "
                 f"{self.clients} clients, {self.duration:.1f}s, workers seen: {dict(self.pids)}"]
        for when, client, error in self.failures[:20]:
            lines.append(f"  t={when:.3f}s client {client}: {error}")
        if self.failed > 20:
            lines.append(f"  ... and {self.failed - 20} more")
        return "\n".join(lines)


class Load:
    """``clients`` keep-alive clients GETting ``url`` for at most ``duration`` seconds."""

    def __init__(self, url: str, *, clients: int = 16, duration: float = 30.0, timeout: float = 10.0,
                 unix_socket: str | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.unix_socket = unix_socket
        self.clients = clients
        self.duration = duration * FACTOR
        self.timeout = timeout * FACTOR
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._report = LoadReport(clients=clients)
        self._start = 0.0
        self._end: float | None = None
        self._last_success = 0.0

    # -- control ---------------------------------------------------------------

    def start(self) -> Load:
        """Start every client thread."""
        self._start = self._last_success = time.monotonic()
        for number in range(self.clients):
            thread = threading.Thread(target=self._client, args=(number,), name=f"load-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadReport:
        """Stop the clients, wait for them, and return the final report."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        with self._lock:
            if self._end is None:
                self._end = time.monotonic()
                self._close_gap(self._end)
                self._report.duration = self._end - self._start
        return self._report

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def report(self) -> LoadReport:
        """The report so far (final once stopped)."""
        return self._report

    @property
    def successes(self) -> int:
        with self._lock:
            return self._report.successes

    @property
    def running(self) -> bool:
        """True until the duration is over or stop() was called."""
        return not self._stop.is_set() and time.monotonic() - self._start < self.duration

    def wait_successes(self, count: int, timeout: float = 20.0) -> None:
        """Block until ``count`` more requests succeeded (proof the server serves now)."""
        target = self.successes + count
        end = time.monotonic() + timeout * FACTOR
        while self.successes < target:
            if time.monotonic() > end:
                raise AssertionError(f"load: fewer than {count} successes within {timeout * FACTOR:.0f}s; "
                                     + self._report.summary())
            time.sleep(0.01)

    def pids_since(self, mark: collections.Counter[str]) -> set[str]:
        """Worker PIDs that served since ``mark`` (a copy of ``report.pids`` taken earlier)."""
        with self._lock:
            return {pid for pid, n in self._report.pids.items() if n > mark.get(pid, 0)}

    def snapshot(self) -> collections.Counter[str]:
        """A copy of the per-PID counts, for :meth:`pids_since`."""
        with self._lock:
            return collections.Counter(self._report.pids)

    # -- the clients -------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self.unix_socket:
            return UnixHTTPConnection(self.unix_socket, self.timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _close_gap(self, now: float) -> None:
        gap = now - self._last_success
        if gap > self._report.longest_gap:
            self._report.longest_gap = gap
        self._last_success = now

    def _client(self, number: int) -> None:
        conn = self._connection()
        try:
            while self.running:
                try:
                    conn.request("GET", self.path)
                    response = conn.getresponse()
                    body = response.read()
                    if response.will_close:
                        conn.close()  # "Connection: close": the next request reconnects
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
                except Exception as exc:  # every failure is data, not a crash of the load
                    now = time.monotonic()
                    conn.close()
                    with self._lock:
                        if self._end is None:
                            self._report.failures.append(
                                (now - self._start, number, f"{type(exc).__name__}: {exc}"))
                    # Do not spin while the server is down; a failure already counted.
                    self._stop.wait(0.05)
                    continue
                now = time.monotonic()
                with self._lock:
                    if self._end is None:
                        self._report.successes += 1
                        self._report.pids[body.decode(errors="replace")[:20]] += 1
                        self._close_gap(now)
        finally:
            conn.close()
