"""HTTP/2 end to end: the corral CLI with ``--http zttp --http2``, real clients (curl, httpx).

Cleartext with prior knowledge and TLS with ALPN; a rolling restart (HUP)
under a load of HTTP/2 clients loses no request; the option is refused
without ``--http zttp``.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import FACTOR, Corral, require_tool, tls_files, wait_until, worker_pids

Start = Callable[..., Corral]

pytestmark = pytest.mark.timeout(120)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("curl")
    return subprocess.run([binary, "-sS", "--max-time", str(10 * FACTOR), *args], capture_output=True,
                          text=True, timeout=20 * FACTOR)


def test_curl_prior_knowledge_gets_http2_and_http1_still_works(corral: Start) -> None:
    server = corral("int_echo:app", "--http", "zttp", "--http2")
    done = curl("-i", "--http2-prior-knowledge", f"{server.url}/whoami")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/2 200"), done.stdout
    assert '"http_version": "2"' in done.stdout or '"http_version":"2"' in done.stdout
    plain = curl("-i", f"{server.url}/whoami")
    assert plain.stdout.startswith("HTTP/1.1 200"), plain.stdout
    server.wait_log("HTTP/2\" 200")


def test_http1_only_without_http2(corral: Start) -> None:
    """--http zttp alone is HTTP/1.1 on zttp: a prior-knowledge client is not served HTTP/2."""
    server = corral("int_echo:app", "--http", "zttp")
    done = curl("-i", "--http2-prior-knowledge", f"{server.url}/whoami")
    assert not done.stdout.startswith("HTTP/2"), done.stdout
    assert curl("-i", f"{server.url}/whoami").stdout.startswith("HTTP/1.1 200")


def test_tls_alpn_h2_and_http11_on_one_port(corral: Start, tmp_path: Path) -> None:
    certfile, keyfile, cafile = tls_files(tmp_path)
    server = corral("int_echo:app", "--http", "zttp", "--http2", "--ssl-certfile", str(certfile),
                    "--ssl-keyfile", str(keyfile), wait=False)
    url = f"https://127.0.0.1:{server.port}/whoami"
    wait_until(lambda: curl("--cacert", str(cafile), url).returncode == 0, 30, "corral answering over TLS",
               alive=server.dead, interval=0.1)
    done = curl("-i", "--http2", "--cacert", str(cafile), url)
    assert done.stdout.startswith("HTTP/2 200"), done.stdout + done.stderr
    assert '"scheme": "https"' in done.stdout or '"scheme":"https"' in done.stdout
    old = curl("-i", "--http1.1", "--cacert", str(cafile), url)
    assert old.stdout.startswith("HTTP/1.1 200"), old.stdout
    context = ssl.create_default_context(cafile=str(cafile))
    with httpx.Client(http2=True, verify=context) as client:
        response = client.get(url)
    assert response.http_version == "HTTP/2" and response.status_code == 200


@pytest.mark.parametrize("argv", [["--http2"], ["--http", "h11", "--http2"]])
def test_http2_without_zttp_is_refused(corral: Start, argv: list[str]) -> None:
    server = corral("int_echo:app", *argv, wait=False)
    assert server.wait_exit() == 2
    assert "HTTP/2 requires the `zttp` HTTP protocol" in server.output()


class H2Load:
    """``clients`` threads, each one HTTP/2 connection (httpx) sending GETs back to back; no retries."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.clients = clients
        self.successes = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> H2Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def _run(self) -> None:
        end = time.monotonic() + 60 * FACTOR
        with httpx.Client(http1=False, http2=True, timeout=10 * FACTOR) as client:  # prior knowledge
            while not self._stop.is_set() and time.monotonic() < end:
                try:
                    response = client.get(self.url)
                    ok = response.status_code == 200
                    error = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, error = False, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if ok:
                        self.successes += 1
                        self.versions.add(response.http_version)
                    else:
                        self.failures.append(error)


def test_hup_under_http2_load_fails_no_request(corral: Start) -> None:
    server = corral("master_app:app", "--http", "zttp", "--http2", "--workers", "2", "--no-access-log")
    server.wait_log("worker_ready", count=2)
    old = worker_pids(server.pid)
    with H2Load(f"{server.url}/", clients=8) as load:
        wait_until(lambda: load.successes > 200, 30, "the load to run", alive=server.dead)
        os.kill(server.pid, signal.SIGHUP)
        wait_until(lambda: not (old & worker_pids(server.pid)), 40, "the old workers to leave", alive=server.dead)
        before = load.successes
        wait_until(lambda: load.successes > before + 200, 30, "the new workers to serve", alive=server.dead)
    assert load.versions == {"HTTP/2"}
    assert load.failures == [], load.failures[:10]
