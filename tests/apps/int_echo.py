"""The app the integration tests serve: it reports what it sees and echoes what it gets.

HTTP routes (any method):
- ``/echo``: the request body back; ``?chunked=1`` answers in several chunks
  without a Content-Length;
- ``/slow?seconds=S&mark=FILE``: creates FILE once the request is in the app,
  then answers after S seconds (for in-flight requests);
- ``/pid``: the worker's pid alone (what ``tests.load.Load`` counts);
- anything else: a JSON report of the scope (client, scheme, server,
  root_path, path, lifespan state, headers) and the worker's pid.

A WebSocket connection is accepted and every message is echoed back.
Lifespan startup puts ``{"started_by": pid}`` into the state that requests see.
``asgi2_app`` and ``wsgi_app`` report the same JSON through the other interfaces.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs


def _report(scope: dict[str, Any]) -> bytes:
    client = scope.get("client")
    server = scope.get("server")
    report = {
        "pid": os.getpid(),
        "type": scope["type"],
        "method": scope.get("method"),
        "path": scope.get("path"),
        "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
        "query_string": scope.get("query_string", b"").decode("latin-1"),
        "root_path": scope.get("root_path", ""),
        "http_version": scope.get("http_version"),
        "scheme": scope.get("scheme"),
        "client": list(client) if client else None,
        "server": list(server) if server else None,
        "state": dict(scope.get("state") or {}),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope.get("headers", [])],
    }
    return json.dumps(report).encode()


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _lifespan(receive: Any, send: Any, state: dict[str, Any] | None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if state is not None:
                state["started_by"] = os.getpid()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(receive: Any, send: Any) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI 3 entry point."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope.get("state"))
        return
    if scope["type"] == "websocket":
        await _websocket(receive, send)
        return
    query = parse_qs(scope.get("query_string", b"").decode())
    path = scope["path"]
    body = await _read_body(receive)
    if path.endswith("/pid"):
        body = str(os.getpid()).encode()
    elif path.endswith("/slow"):
        if "mark" in query:  # tells the test the request is in the app now
            with open(query["mark"][0], "w") as marker:
                marker.write(str(os.getpid()))
        await asyncio.sleep(float(query.get("seconds", ["1"])[0]))
        body = b"slept"
    elif not path.endswith("/echo"):
        body = _report(scope)
    if path.endswith("/echo") and query.get("chunked"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        step = max(1, len(body) // 4)
        for start in range(0, len(body), step):
            await send({"type": "http.response.body", "body": body[start:start + step], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class asgi2_app:  # noqa: N801 - ASGI 2 apps are classes instantiated per scope
    """The same report through the ASGI 2 (double-callable) interface."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        if self.scope["type"] != "http":
            if self.scope["type"] == "lifespan":
                await _lifespan(receive, send, None)
            return
        await _read_body(receive)
        body = json.dumps({"interface": "asgi2", "path": self.scope["path"]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The WSGI interface: reports the method, path and request body length."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    data = environ["wsgi.input"].read(length) if length else b""
    body = json.dumps({"interface": "wsgi", "path": environ["PATH_INFO"], "method": environ["REQUEST_METHOD"],
                       "body_length": len(data), "scheme": environ["wsgi.url_scheme"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
