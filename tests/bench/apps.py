"""The ASGI applications every server under test serves, one per scenario.

Each app is a plain ASGI 3 callable with no framework, so the figures measure the server and
not a router. Every app answers the lifespan scope properly (servers differ in how they treat
an app that ignores lifespan, and the benchmark must not depend on that). Response bodies are
built once at import time, except the JSON scenario, which serializes per request as a real
JSON API does (the same cost on every server).

Scenarios:

- ``hello``: ``Hello, world!`` as text/plain with a Content-Length (also the ``h2`` scenario's app).
- ``json_small``: a ~100-byte JSON object serialized per request.
- ``stream``: 64 KiB streamed in 16 chunks of 4 KiB (``more_body``; chunked encoding).
- ``echo``: reads the whole request body (1 KiB from the benchmark) and sends it back.
- ``ws``: a WebSocket echo (``ws_echo``; plain HTTP requests get the hello answer, which is
  how the benchmark sees that the server is up).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

# Startup and shutdown answered at once, so every server sees a well-behaved app.
from tests.apps.plain_lifespan import lifespan as _lifespan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO_BODY = b"Hello, world!"
STREAM_CHUNK_SIZE = 4096
STREAM_CHUNKS = 16
STREAM_CHUNK = b"x" * STREAM_CHUNK_SIZE
ECHO_BODY_SIZE = 1024

# ~100 bytes once serialized: a realistic small API answer.
JSON_PAYLOAD: dict[str, Any] = {
    "id": 12345,
    "name": "corral",
    "kind": "asgi-server",
    "tags": ["http", "websocket", "lifespan"],
    "ok": True,
    "score": 0.97,
}

_TEXT_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(HELLO_BODY)).encode()),
]


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Plain-text hello world with a Content-Length (the headline scenario)."""
    if scope["type"] == "http":
        # Fresh dicts per request: a server may legitimately mutate the messages it is sent.
        await send({"type": "http.response.start", "status": 200, "headers": _TEXT_HEADERS})
        await send({"type": "http.response.body", "body": HELLO_BODY})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def json_small(scope: Scope, receive: Receive, send: Send) -> None:
    """A small JSON document, serialized per request."""
    if scope["type"] == "http":
        body = json.dumps(JSON_PAYLOAD, separators=(",", ":")).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def stream(scope: Scope, receive: Receive, send: Send) -> None:
    """64 KiB in 16 body messages with ``more_body`` (no Content-Length: chunked on the wire)."""
    if scope["type"] == "http":
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        })
        for _ in range(STREAM_CHUNKS - 1):
            await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": False})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole request body and send it back with a Content-Length."""
    if scope["type"] == "http":
        parts: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(body)).encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


async def ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept every WebSocket and send each message back as it came (text or bytes)."""
    if scope["type"] == "websocket":
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
            elif kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            else:  # websocket.disconnect
                return
    elif scope["type"] == "http":
        await hello(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


APP_ATTRS: dict[str, str] = {
    "hello": "hello",
    "headers": "hello",
    "json": "json_small",
    "stream": "stream",
    "echo": "echo",
    "ws": "ws_echo",
    "h2": "hello",
}
"""Scenario name → attribute of this module that servers import (``tests.bench.apps:<attr>``)."""
