"""A PEP 3333 test app for ``--interface wsgi``.

Routes: ``/environ`` (JSON of the CGI/WSGI keys), ``/upload`` (reads
``wsgi.input`` in 64 KiB pieces, answers size and sha256), ``/lines`` (counts
lines with ``readline``), ``/first-line`` (answers after one line), ``/stream?gate=NAME`` (yields one chunk, waits for
``RT_MARKS/NAME``, yields another), ``/big?mb=N`` (N MiB in 64 KiB chunks),
``/write`` (the legacy ``write`` callable), ``/late-error`` (replaces its
response with ``start_response(..., exc_info)``), ``/boom`` (raises).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

StartResponse = Callable[..., Callable[[bytes], None]]
KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
        "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "wsgi.url_scheme", "HTTP_X_MULTI",
        "HTTP_COOKIE", "HTTP_HOST", "HTTP_X_SPOOF")


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    path = environ["PATH_INFO"]
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    if path == "/environ":
        view = {key: environ.get(key) for key in KEYS}
        view["wsgi.input_terminated"] = environ.get("wsgi.input_terminated")
        return _json(start_response, view)
    if path == "/upload":
        digest, size, reads = hashlib.sha256(), 0, 0
        while chunk := environ["wsgi.input"].read(65536):
            digest.update(chunk)
            size += len(chunk)
            reads += 1
        return _json(start_response, {"size": size, "sha256": digest.hexdigest(), "reads": reads})
    if path == "/lines":
        lines = list(iter(environ["wsgi.input"].readline, b""))
        return _json(start_response, {"lines": len(lines), "first": lines[0].decode() if lines else ""})
    if path == "/first-line":
        # Answers after reading one line: the rest of the body may never come.
        line = environ["wsgi.input"].readline()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(line)))])
        return [line]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _gated(Path(os.environ["RT_MARKS"], query["gate"]))
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (b"x" * 65536 for _ in range(int(query.get("mb", "1")) * 16))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/late-error":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced by exc_info"]
    if path == "/boom":
        raise RuntimeError("wsgi app failed")
    return _json(start_response, {"path": path})


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _gated(gate: Path) -> Iterator[bytes]:
    yield b"first\n"
    end = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < end:
        time.sleep(0.01)
    yield b"second\n"
