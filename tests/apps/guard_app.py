"""Test app for the master's guards (tests/test_master_guards.py).

Paths:
    /            body "<pid>"
    /loop        body "<module>.<class>" of the running event loop
    /exit?7      the worker exits at once with that status (os._exit), no answer
    /leak?20     from now on the worker keeps 20 MiB more every second, topped up every 20 ms
                 (touching every page, so it counts in the RSS); answers at once
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from plain_lifespan import lifespan

_leaked: list[bytes] = []
_leaking: list[asyncio.Task[None]] = []


async def _leak(mib_per_second: float) -> None:
    loop = asyncio.get_running_loop()
    start, kept = loop.time(), 0
    while True:
        # Top up to the rate times the time elapsed, whatever the loop's delays.
        due = int((loop.time() - start) * mib_per_second * 1024 * 1024)
        if due > kept:
            _leaked.append(b"x" * (due - kept))
            kept = due
        await asyncio.sleep(0.02)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path, arg = scope["path"], scope["query_string"].decode()
    if path == "/exit":
        os._exit(int(arg or "1"))
    if path == "/leak" and not _leaking:
        _leaking.append(asyncio.get_running_loop().create_task(_leak(float(arg or "20"))))
    body = str(os.getpid()).encode()
    if path == "/loop":
        loop = asyncio.get_running_loop()
        body = f"{type(loop).__module__}.{type(loop).__name__}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
