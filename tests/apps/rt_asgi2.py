"""ASGI 2 test apps: a class and a function, both ``app(scope)(receive, send)``."""

from __future__ import annotations

import json
from typing import Any


async def _echo(scope: dict[str, Any], receive: Any, send: Any, kind: str) -> None:
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    payload = json.dumps({"kind": kind, "asgi": scope["asgi"], "path": scope["path"], "size": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class App:
    """Class-style ASGI 2: instantiated per scope; lifespan not supported."""

    def __init__(self, scope: dict[str, Any]) -> None:
        if scope["type"] != "http":
            raise ValueError("http only")
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await _echo(self.scope, receive, send, "class")


def function_app(scope: dict[str, Any]) -> Any:
    """Function-style ASGI 2: takes the scope alone, returns the coroutine function."""
    async def instance(receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await _echo(scope, receive, send, "function")
    return instance
