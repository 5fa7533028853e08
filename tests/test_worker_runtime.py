"""The worker runtime: a real ``serve()`` in a subprocess, observed through its
control pipe, its sockets, its signals and its exit status."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps.rt_harness import WorkerProc
from tests.support import deadline, wait_until


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """Start ``serve()`` workers; each is killed by PID in the finalizer."""
    started: list[WorkerProc] = []

    def start(settings: dict[str, Any] | None = None, **kw: Any) -> WorkerProc:
        kw.setdefault("name", f"worker{len(started)}")
        proc = WorkerProc(tmp_path, {"app": "rt_app:app", **(settings or {})}, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    """The RT_MARKS directory of rt_app."""
    path = tmp_path / "marks"
    path.mkdir()
    return path


def get(url: str, **kw: Any) -> httpx.Response:
    """One request on a fresh connection."""
    return httpx.get(url, timeout=kw.pop("timeout", 20), **kw)


class Background:
    """A request running in a thread; ``result()`` joins it with a deadline."""

    def __init__(self, url: str) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            self.response = httpx.get(url, timeout=60)
        except BaseException as exc:  # recorded for the test to inspect
            self.error = exc

    def result(self, timeout: float = 30) -> httpx.Response | BaseException:
        self.thread.join(max(0.0, deadline(timeout) - time.monotonic()))
        assert not self.thread.is_alive(), "background request did not finish"
        outcome = self.response if self.response is not None else self.error
        assert outcome is not None
        return outcome


# -- boot ----------------------------------------------------------------------


def test_ready_only_after_lifespan_startup_then_heartbeats(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    proc = worker({"timeout_worker_healthcheck": 0.6},
                  env={"RT_GATE": str(gate), "RT_STARTED": str(started)})
    proc.wait_log("Waiting for application startup.")
    # Startup is held at the gate: the worker must not claim to be ready.
    assert "ready" not in proc.kinds()
    gate.touch()
    proc.wait_message("ready")
    assert started.exists(), "ready was sent before lifespan startup completed"
    assert proc.kinds()[0] == "ready"
    # Heartbeats every 0.1 s (0.6 / 6) from the loop: several arrive promptly.
    proc.wait_message("hb", timeout=10, count=5)
    assert get(proc.url + "/").text == "ok"


@pytest.mark.parametrize(("loop", "module"), [("asyncio", "asyncio.unix_events"), ("uvloop", "uvloop")])
def test_serves_on_the_chosen_loop(worker: Callable[..., WorkerProc], loop: str, module: str) -> None:
    proc = worker({"loop": loop})
    proc.wait_message("ready")
    assert get(proc.url + "/loop").text == module


def test_default_and_custom_headers(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"headers": [["X-Rt", "yes"]]})
    proc.wait_message("ready")
    response = get(proc.url + "/")
    assert response.headers["server"] == "corral"
    assert response.headers["x-rt"] == "yes"
    assert response.headers["date"].endswith(" GMT")
    bare = worker({"server_header": False, "date_header": False}, name="bare")
    bare.wait_message("ready")
    response = get(bare.url + "/")
    assert "server" not in response.headers
    assert "date" not in response.headers


@pytest.mark.parametrize(
    ("app", "expected", "traceback"),
    [
        ("rt_no_such_module:app", 'Could not import module "rt_no_such_module".', False),
        ("rt_app:missing", 'Attribute "missing" not found in module "rt_app".', False),
        ("rt_app", 'Import string "rt_app" must be in format "<module>:<attribute>".', False),
        ("rt_import_boom:app", 'Error importing module "rt_import_boom": RuntimeError: rt_import_boom refuses to load', True),
        ("rt_inner_missing:app", "No module named 'rt_no_such_dependency'", True),
    ],
)
def test_import_error_exits_3_naming_the_module(worker: Callable[..., WorkerProc], app: str, expected: str,
                                                traceback: bool) -> None:
    proc = worker({"app": app})
    message = proc.wait_message("fail")
    assert proc.wait_exit() == 3
    assert expected in message.arg
    output = proc.output()
    assert expected in output
    assert ("Traceback (most recent call last)" in output) is traceback
    assert "ready" not in proc.kinds()


def test_lifespan_startup_failure_exits_3_with_the_apps_message(worker: Callable[..., WorkerProc]) -> None:
    proc = worker(env={"RT_FAIL_STARTUP": "database unreachable at db:5432"})
    message = proc.wait_message("fail")
    assert proc.wait_exit() == 3
    assert "database unreachable at db:5432" in message.arg
    assert "database unreachable at db:5432" in proc.output()
    assert "ready" not in proc.kinds()


def test_missing_loop_package_is_a_boot_failure(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"loop": "no_such_loop"})
    message = proc.wait_message("fail")
    assert proc.wait_exit() == 3
    assert "no_such_loop" in message.arg


def test_missing_uvloop_is_named_and_auto_falls_back(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    # A uvloop that cannot be imported, first on the path.
    fake = tmp_path / "fake" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    env = {"PYTHONPATH": str(fake.parent)}
    proc = worker({"loop": "uvloop"}, env=env)
    message = proc.wait_message("fail")
    assert proc.wait_exit() == 3
    assert '"uvloop" package' in message.arg
    auto = worker({"loop": "auto"}, env=env, name="auto")
    auto.wait_message("ready")
    assert get(auto.url + "/loop").text == "asyncio.unix_events"


def test_term_during_startup_exits_without_serving(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    gate, stopped = tmp_path / "gate", tmp_path / "stopped"
    proc = worker(env={"RT_GATE": str(gate), "RT_STOPPED": str(stopped)})
    proc.wait_log("Waiting for application startup.")
    proc.signal(signal.SIGTERM)
    proc.wait_log("Shutting down (stopping)")
    gate.touch()
    assert proc.wait_exit() == 0
    assert "ready" not in proc.kinds()
    assert stopped.exists(), "a started app must still get its lifespan shutdown"


def test_access_log_only_when_enabled(worker: Callable[..., WorkerProc]) -> None:
    on = worker({"access_log": True})
    off = worker({"access_log": False}, name="quiet")
    for proc in (on, off):
        proc.wait_message("ready")
        assert get(proc.url + "/logged-path").status_code == 200
    on.wait_log('"GET /logged-path HTTP/1.1" 200')
    # The same request on the other worker was answered without a line.
    assert "/logged-path" not in off.output()


def test_trace_level_logs_asgi_messages(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"log_level": "trace"})
    proc.wait_message("ready")
    assert get(proc.url + "/").text == "ok"
    proc.wait_log("ASGI [2] Completed")
    output = proc.output()
    assert "ASGI [2] Started scope=" in output
    assert "'type': 'http.response.body', 'body': '<2 bytes>'" in output
    quiet = worker({"log_level": "info"}, name="quiet")
    quiet.wait_message("ready")
    assert get(quiet.url + "/").text == "ok"
    assert "ASGI [" not in quiet.output()


# -- signals -------------------------------------------------------------------


def test_term_lets_an_inflight_request_finish(worker: Callable[..., WorkerProc], marks: Path,
                                              tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    proc = worker(env={"RT_MARKS": str(marks), "RT_STOPPED": str(stopped)})
    proc.wait_message("ready")
    request = Background(proc.url + "/sleep?s=2&mark=inflight")
    wait_until((marks / "inflight").exists, 20, "the request to reach the app", alive=proc.dead)
    proc.signal(signal.SIGTERM)
    outcome = request.result()
    assert isinstance(outcome, httpx.Response), outcome
    assert outcome.status_code == 200 and outcome.text == "slept"
    assert proc.wait_exit() == 0
    assert stopped.exists(), "lifespan shutdown did not run"


def test_term_closes_idle_keepalive_at_once(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"timeout_keep_alive": 60})
    proc.wait_message("ready")
    with socket.create_connection((proc.host, proc.port), timeout=20) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        proc.signal(signal.SIGTERM)
        # Keep-alive timeout is 60 s: only the shutdown can close it this soon.
        assert conn.recv(1) == b""
    assert proc.wait_exit() == 0


def test_hup_retires_idle_keepalive_on_its_next_request(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"timeout_keep_alive": 60})
    proc.wait_message("ready")
    with socket.create_connection((proc.host, proc.port), timeout=20) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        proc.signal(signal.SIGHUP)
        proc.wait_log("Shutting down (retiring)")
        # Retiring keeps the idle connection: the next request is served,
        # with Connection: close, and only then is the connection closed.
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(conn)
        assert response.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in response.lower()
        assert read_until_eof(conn) == b""
    assert proc.wait_exit() == 0


def test_graceful_timeout_aborts_what_is_left(worker: Callable[..., WorkerProc], marks: Path,
                                              tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    proc = worker({"timeout_graceful_shutdown": 1.0}, env={"RT_MARKS": str(marks), "RT_STOPPED": str(stopped)})
    proc.wait_message("ready")
    request = Background(proc.url + "/sleep?s=120&mark=slow")
    wait_until((marks / "slow").exists, 20, "the request to reach the app", alive=proc.dead)
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(timeout=30) == 0
    assert isinstance(request.result(), httpx.TransportError)
    assert "still open after 1.0s" in proc.output()
    assert stopped.exists(), "lifespan shutdown runs after the forced close"


def test_term_after_hup_closes_idle_keepalive(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"timeout_keep_alive": 60})
    proc.wait_message("ready")
    with socket.create_connection((proc.host, proc.port), timeout=20) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn).startswith(b"HTTP/1.1 200")
        proc.signal(signal.SIGHUP)
        proc.wait_log("Shutting down (retiring)")
        assert proc.dead() is None  # retiring keeps the idle connection (60 s keep-alive)
        proc.signal(signal.SIGTERM)
        # The stop became a shutdown: the idle connection is closed now.
        assert conn.recv(1) == b""
    assert proc.wait_exit() == 0


def test_usr1_reopens_logs_and_keeps_serving(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"timeout_worker_healthcheck": 0.6})
    proc.wait_message("ready")
    proc.signal(signal.SIGUSR1)  # its default action would kill the process
    count = proc.kinds().count("hb")
    proc.wait_message("hb", count=count + 3)
    assert get(proc.url + "/").text == "ok"


def test_quit_exits_at_once(worker: Callable[..., WorkerProc], marks: Path, tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    proc = worker(env={"RT_MARKS": str(marks), "RT_STOPPED": str(stopped)})
    proc.wait_message("ready")
    request = Background(proc.url + "/sleep?s=60&mark=long")
    wait_until((marks / "long").exists, 20, "the request to reach the app", alive=proc.dead)
    started = time.monotonic()
    proc.signal(signal.SIGQUIT)
    assert proc.wait_exit(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert isinstance(request.result(), httpx.TransportError)
    assert not stopped.exists(), "QUIT must skip lifespan shutdown"


def test_int_is_ignored(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"timeout_worker_healthcheck": 0.6})
    proc.wait_message("ready")
    proc.signal(signal.SIGINT)
    # The loop keeps beating after INT, and the worker keeps answering.
    count = proc.kinds().count("hb")
    proc.wait_message("hb", count=count + 3)
    assert proc.dead() is None
    assert get(proc.url + "/").text == "ok"


def test_usr2_dumps_stacks_while_the_loop_is_blocked(worker: Callable[..., WorkerProc], marks: Path) -> None:
    proc = worker({"timeout_worker_healthcheck": 0.6}, env={"RT_MARKS": str(marks)})
    proc.wait_message("ready")
    request = Background(proc.url + "/block?until=release&mark=blocking")
    wait_until((marks / "blocking").exists, 20, "the loop to block", alive=proc.dead)
    beats = proc.kinds().count("hb")
    proc.signal(signal.SIGUSR2)
    proc.wait_log("rt_app.py")
    assert "in app" in proc.output()
    # The loop is still held at the gate: no heartbeat could be sent.
    assert proc.kinds().count("hb") == beats
    (marks / "release").touch()
    outcome = request.result()
    assert isinstance(outcome, httpx.Response) and outcome.text == "blocked"
    proc.wait_message("hb", count=beats + 3)
    assert proc.dead() is None


# -- request limit ---------------------------------------------------------------


def test_limit_max_requests_asks_for_recycle_once(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"limit_max_requests": 3})
    proc.wait_message("ready")
    for _ in range(3):
        assert get(proc.url + "/").status_code == 200
    message = proc.wait_message("recycle")
    assert message.arg == "max-requests"
    # It keeps serving until the master retires it, and asks only once.
    for _ in range(3):
        assert get(proc.url + "/").status_code == 200
    assert proc.kinds().count("recycle") == 1
    assert proc.dead() is None


def test_limit_max_requests_without_supervisor_stops(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"limit_max_requests": 2}, supervised=False)
    wait_until(lambda: _answers(proc.url), 20, "the worker to answer", alive=proc.dead)
    get(proc.url + "/")
    assert proc.wait_exit() == 0
    assert "Maximum request limit of 2 exceeded" in proc.output()


# -- listeners -------------------------------------------------------------------


def test_tls_with_trustme(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    import trustme as trustme
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    # An encrypted key exercises --ssl-keyfile-password.
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"s3cret")))
    proc = worker({"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile), "ssl_keyfile_password": "s3cret"})
    proc.wait_message("ready")
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    response = httpx.get(proc.url + "/scope", verify=client_ctx, timeout=20)
    assert json.loads(response.text)["scheme"] == "https"
    with pytest.raises(httpx.HTTPError):
        httpx.get(proc.url.replace("https:", "http:") + "/", timeout=5)


def _write_cert(ca: Any, tmp_path: Path, name: str, *hosts: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(*hosts)
    certfile, keyfile = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(certfile), append=index > 0)
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


def test_tls_client_certificates_required(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    import trustme as trustme
    ca = trustme.CA()
    certfile, keyfile = _write_cert(ca, tmp_path, "server", "127.0.0.1")
    client_cert, client_key = _write_cert(ca, tmp_path, "client", "client@example.org")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proc = worker({"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile), "ssl_ca_certs": str(ca_file),
                   "ssl_cert_reqs": int(ssl.CERT_REQUIRED), "ssl_ciphers": "ECDHE+AESGCM"})
    proc.wait_message("ready")
    anonymous = ssl.create_default_context(cafile=str(ca_file))
    with pytest.raises(httpx.HTTPError):
        httpx.get(proc.url + "/", verify=anonymous, timeout=10)
    known = ssl.create_default_context(cafile=str(ca_file))
    known.load_cert_chain(str(client_cert), str(client_key))
    assert httpx.get(proc.url + "/", verify=known, timeout=20).text == "ok"


def test_tls_option_errors_name_the_option(tmp_path: Path) -> None:
    from server_core.settings import ServerSettings
    from server_core.tls import TLSConfigError, make_ssl_context

    assert make_ssl_context(ServerSettings()) is None
    with pytest.raises(TLSConfigError, match="--ssl-certfile"):
        make_ssl_context(ServerSettings(ssl_certfile=str(tmp_path / "missing.pem")))
    with pytest.raises(TLSConfigError, match="--ssl-certfile is not"):
        make_ssl_context(ServerSettings(ssl_keyfile=str(tmp_path / "k.pem")))
    import trustme as trustme
    certfile, keyfile = _write_cert(trustme.CA(), tmp_path, "server", "localhost")
    good: dict[str, Any] = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    with pytest.raises(TLSConfigError, match="--ssl-ciphers"):
        make_ssl_context(ServerSettings(**good, ssl_ciphers="NO-SUCH-CIPHER"))
    with pytest.raises(TLSConfigError, match="--ssl-ca-certs"):
        make_ssl_context(ServerSettings(**good, ssl_ca_certs=str(tmp_path / "none.pem")))
    with pytest.raises(TLSConfigError, match="--ssl-cert-reqs"):
        make_ssl_context(ServerSettings(**good, ssl_cert_reqs=7))
    context = make_ssl_context(ServerSettings(**good, ssl_cert_reqs=int(ssl.CERT_OPTIONAL)))
    assert context is not None and context.verify_mode == ssl.CERT_OPTIONAL


def test_unix_socket_serves(worker: Callable[..., WorkerProc]) -> None:
    proc = worker(unix=True)
    proc.wait_message("ready")
    with httpx.Client(transport=httpx.HTTPTransport(uds=proc.uds), timeout=20) as client:
        response = client.get("http://corral/scope")
    assert response.status_code == 200
    assert json.loads(response.text)["state"] == {"greeting": "hello from lifespan"}


# -- helpers -----------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        return get(url + "/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def read_response(conn: socket.socket) -> bytes:
    """Read one response whose body length is given by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def read_until_eof(conn: socket.socket) -> bytes:
    """Everything until the peer closes (the socket has a timeout)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_http_date_is_the_imf_fixdate_in_english_whatever_the_locale() -> None:
    """The Date header's text: the same as email.utils.formatdate(usegmt=True) across a range of dates."""
    from email.utils import formatdate

    from server_core.worker import http_date

    assert http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 9110 §5.6.7's example
    for when in (0, 951782400, 1709164800.9, 1767225599, 4102444800, *range(1600000000, 1700000000, 2345678)):
        assert http_date(when) == formatdate(when, usegmt=True).encode(), when
