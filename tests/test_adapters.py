"""ASGI 2 and WSGI applications: interface detection, the WSGI environ, and
both served for real with bodies streamed both ways."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_core.adapters import build_environ
from server_core.importer import detect_interface
from tests.apps import rt_asgi2
from tests.apps.rt_harness import WorkerProc
from tests.support import wait_until

# -- interface detection ----------------------------------------------------------


async def asgi3_function(scope: Any, receive: Any, send: Any) -> None:
    pass


class ASGI3Instance:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pass


def sync_asgi3_wrapper(scope: Any, receive: Any, send: Any) -> Any:
    return asgi3_function(scope, receive, send)


@pytest.mark.parametrize(("app", "expected"), [
    (asgi3_function, "asgi3"),
    (ASGI3Instance(), "asgi3"),
    # uvicorn calls a non-async function ASGI 2; taking three arguments, it is 3.
    (sync_asgi3_wrapper, "asgi3"),
    (rt_asgi2.App, "asgi2"),
    (rt_asgi2.function_app, "asgi2"),
])
def test_detect_interface(app: Any, expected: str) -> None:
    assert detect_interface(app) == expected


# -- the environ --------------------------------------------------------------------


def test_build_environ_follows_pep_3333() -> None:
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "https",
        "root_path": "/mount", "path": "/mount/caf\u00e9", "query_string": b"a=1&b=%20",
        "server": ("10.0.0.1", 8443), "client": ("192.0.2.7", 5555),
        "headers": [(b"host", b"example.org"), (b"content-type", b"text/plain"), (b"content-length", b"3"),
                    (b"x-multi", b"a"), (b"x-multi", b"b"), (b"cookie", b"k=1"), (b"cookie", b"j=2"),
                    (b"x_forwarded_for", b"6.6.6.6")],
    }
    environ = build_environ(scope, body=None)
    assert environ["SCRIPT_NAME"] == "/mount"
    # PEP 3333 native strings: the UTF-8 bytes of the path, read as latin-1.
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9"
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["CONTENT_TYPE"] == "text/plain" and environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_X_MULTI"] == "a,b"
    assert environ["HTTP_COOKIE"] == "k=1; j=2"
    assert "HTTP_X_FORWARDED_FOR" not in environ  # the underscore spelling is dropped
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("10.0.0.1", "8443")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "5555")
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.version"] == (1, 0)


def test_build_environ_keeps_non_utf8_path_bytes() -> None:
    """PATH_INFO is the undecoded request bytes as latin-1, so %FF arrives as \xff, not U+FFFD."""
    scope = {"method": "GET", "root_path": "/m", "path": "/m/a\ufffd", "raw_path": b"/m/a%FF%20b", "headers": []}
    environ = build_environ(scope, body=None)
    assert environ["SCRIPT_NAME"] == "/m"
    assert environ["PATH_INFO"] == "/a\xff b"


def test_build_environ_root_path_is_not_a_prefix_match() -> None:
    scope = {"method": "GET", "root_path": "/app", "path": "/application", "headers": []}
    environ = build_environ(scope, body=None)
    assert environ["PATH_INFO"] == "/application"


# -- served for real -------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """Start ``serve()`` workers; each is killed by PID in the finalizer."""
    started: list[WorkerProc] = []
    marks = tmp_path / "marks"
    marks.mkdir()

    def start(settings: dict[str, Any]) -> WorkerProc:
        proc = WorkerProc(tmp_path, settings, name=f"worker{len(started)}", env={"RT_MARKS": str(marks)})
        proc.marks = marks  # type: ignore[attr-defined]
        started.append(proc)
        proc.wait_message("ready")
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.mark.parametrize(("app", "interface", "kind"), [
    ("rt_asgi2:App", "auto", "class"),
    ("rt_asgi2:function_app", "asgi2", "function"),
])
def test_asgi2_apps_are_served(worker: Callable[..., WorkerProc], app: str, interface: str, kind: str) -> None:
    proc = worker({"app": app, "interface": interface})
    response = httpx.post(proc.url + "/echo", content=b"z" * 100_000, timeout=20)
    view = json.loads(response.text)
    assert view["kind"] == kind
    assert view["asgi"]["version"] == "2.0"
    assert view["size"] == 100_000


@pytest.fixture
def wsgi(worker: Callable[..., WorkerProc]) -> WorkerProc:
    return worker({"app": "rt_wsgi:app", "interface": "wsgi", "root_path": "/mount"})


def test_wsgi_environ_over_the_wire(wsgi: WorkerProc) -> None:
    headers = [("x-multi", "a"), ("x-multi", "b"), ("x_spoof", "evil"), ("content-type", "text/csv")]
    response = httpx.post(wsgi.url + "/environ?q=1", content=b"abc", headers=headers, timeout=20)
    view = json.loads(response.text)
    assert view["REQUEST_METHOD"] == "POST"
    assert view["SCRIPT_NAME"] == "/mount"
    assert view["PATH_INFO"] == "/environ"
    assert view["QUERY_STRING"] == "q=1"
    assert view["CONTENT_TYPE"] == "text/csv" and view["CONTENT_LENGTH"] == "3"
    assert view["HTTP_X_MULTI"] == "a,b"
    assert view["HTTP_X_SPOOF"] is None
    assert view["SERVER_PORT"] == str(wsgi.port)
    assert view["REMOTE_ADDR"] == "127.0.0.1"
    assert view["wsgi.url_scheme"] == "http"
    assert view["wsgi.input_terminated"] is True


def test_wsgi_upload_is_streamed_in_pieces(wsgi: WorkerProc) -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for _ in range(128):  # 8 MiB, chunked transfer encoding
            digest.update(piece)
            yield piece

    response = httpx.post(wsgi.url + "/upload", content=body(), timeout=60)
    view = json.loads(response.text)
    assert view["size"] == 128 * len(piece)
    assert view["sha256"] == digest.hexdigest()
    assert view["reads"] >= 128


def test_wsgi_app_answers_before_the_whole_body_arrives(wsgi: WorkerProc) -> None:
    # Content-Length promises 10 MB; only the first line is ever sent. A
    # reader that waited for the whole body would never answer.
    with socket.create_connection((wsgi.host, wsgi.port), timeout=20) as conn:
        conn.sendall(b"POST /first-line HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\nhello line\nmore")
        data = b""
        while b"hello line" not in data:
            chunk = conn.recv(65536)
            assert chunk, f"closed before answering: {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")


def test_wsgi_readline(wsgi: WorkerProc) -> None:
    response = httpx.post(wsgi.url + "/lines", content=b"one\ntwo\nthree", timeout=20)
    assert json.loads(response.text) == {"lines": 3, "first": "one\n"}


def test_wsgi_response_is_streamed_not_buffered(wsgi: WorkerProc) -> None:
    marks: Path = wsgi.marks  # type: ignore[attr-defined]
    with httpx.stream("GET", wsgi.url + "/stream?gate=go", timeout=20) as response:
        chunks = response.iter_raw()
        # The app is holding its second chunk until the gate opens, so the
        # first can only arrive if it was sent on its own.
        first = next(chunks)
        assert first == b"first\n"
        (marks / "go").touch()
        assert b"".join(chunks) == b"second\n"


def test_wsgi_large_response(wsgi: WorkerProc) -> None:
    response = httpx.get(wsgi.url + "/big?mb=16", timeout=60)
    assert len(response.content) == 16 * 1024 * 1024


def test_wsgi_write_callable_and_exc_info(wsgi: WorkerProc) -> None:
    assert httpx.get(wsgi.url + "/write", timeout=20).text == "written and returned"
    late = httpx.get(wsgi.url + "/late-error", timeout=20)
    assert late.status_code == 503
    assert late.text == "replaced by exc_info"


def test_wsgi_exception_is_a_500_and_the_worker_lives(wsgi: WorkerProc) -> None:
    assert httpx.get(wsgi.url + "/boom", timeout=20).status_code == 500
    assert "wsgi app failed" in wsgi.output()
    wait_until(lambda: httpx.get(wsgi.url + "/ok", timeout=20).status_code == 200, 20, "the next request",
               alive=wsgi.dead)
