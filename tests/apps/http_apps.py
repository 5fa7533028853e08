"""Small ASGI apps for the in-process HTTP protocol tests (tests/test_http_protocol.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def echo(scope: dict, receive: Any, send: Any) -> None:
    """Echo the request body, with the path in a header."""
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-path", scope["path"].encode()), (b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": body})


async def streamed_echo(scope: dict, receive: Any, send: Any) -> None:
    """Echo the body in several messages without a length (chunked response)."""
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for start in range(0, len(body), 1000):
        await send({"type": "http.response.body", "body": body[start:start + 1000], "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def scope_dump(scope: dict, receive: Any, send: Any) -> None:
    """Answer the scope as JSON (bytes as latin-1 text)."""
    await read_body(receive)

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    body = json.dumps(plain(scope)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def boom(scope: dict, receive: Any, send: Any) -> None:
    raise ValueError("boom from the app")


async def boom_after_start(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise ValueError("boom after start")


async def silent(scope: dict, receive: Any, send: Any) -> None:
    """Returns without responding."""


async def head_aware(scope: dict, receive: Any, send: Any) -> None:
    body = b"0123456789"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"10")]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def no_read_reply(scope: dict, receive: Any, send: Any) -> None:
    """Answers without reading the body (e.g. refusing an upload)."""
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


class Controlled:
    """An app whose progress the test observes and steers (thread-safe via the loop)."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.started = 0
        self.sent = 0
        self.in_send = False
        self.done = False
        self.disconnected = False
        self.messages: list[dict] = []

    async def wait_release(self, scope: dict, receive: Any, send: Any) -> None:
        """Block until the test sets ``release``, then answer 200."""
        if self.release is None:
            self.release = asyncio.Event()
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def stream(self, scope: dict, receive: Any, send: Any) -> None:
        """Stream 32 MiB in 64 KiB pieces, recording progress."""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        piece = b"x" * 65536
        for _ in range(512):
            self.in_send = True
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            self.in_send = False
            self.sent += len(piece)
        await send({"type": "http.response.body", "body": b""})
        self.done = True

    async def record_receive(self, scope: dict, receive: Any, send: Any) -> None:
        """Read until the client goes away; record every message."""
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return


async def reply_after_disconnect(scope: dict, receive: Any, send: Any) -> None:
    """A long poll: wait for http.disconnect, then answer anyway (the send raises: the client is gone)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
    await send({"type": "http.response.body", "body": b"bye"})


class SlowPath:
    """``/slow`` waits until the test sets ``release``; any other path answers its path at once."""

    def __init__(self) -> None:
        self.release: asyncio.Event | None = None
        self.started = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            if self.release is None:
                self.release = asyncio.Event()
            self.started += 1
            await self.release.wait()
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
