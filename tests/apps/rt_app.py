"""The worker-runtime test app: lifespan hooks and a few routes.

Environment (set by the tests):
- ``RT_GATE``: lifespan startup waits until this file exists;
- ``RT_STARTED`` / ``RT_STOPPED``: files written when startup / shutdown run;
- ``RT_FAIL_STARTUP``: answer ``lifespan.startup.failed`` with this message.

- ``RT_MARKS``: a directory; a request with ``?mark=NAME`` creates ``NAME`` in
  it as soon as the app receives it (so a test knows a request is in flight).

Routes: ``/`` ok, ``/sleep?s=N`` awaits N seconds, ``/block?until=NAME`` blocks
the event loop until ``RT_MARKS/NAME`` exists (at most 60 s), ``/scope`` a
JSON view of the scope, ``/pid`` the pid, ``/loop`` the event loop's module.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Startup and shutdown with the hooks the tests ask for."""
    message = await receive()
    assert message["type"] == "lifespan.startup"
    gate = os.environ.get("RT_GATE")
    while gate and not Path(gate).exists():
        await asyncio.sleep(0.02)
    if os.environ.get("RT_FAIL_STARTUP"):
        await send({"type": "lifespan.startup.failed", "message": os.environ["RT_FAIL_STARTUP"]})
        return
    scope["state"]["greeting"] = "hello from lifespan"
    if os.environ.get("RT_STARTED"):
        Path(os.environ["RT_STARTED"]).write_text(str(time.time()))
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    if os.environ.get("RT_STOPPED"):
        Path(os.environ["RT_STOPPED"]).write_text(str(time.time()))
    await send({"type": "lifespan.shutdown.complete"})


async def respond(send: Any, body: bytes, content_type: bytes = b"text/plain") -> None:
    """Send a complete 200 response."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI 3 entry point."""
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    assert scope["type"] == "http"
    path = scope["path"]
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    marks = os.environ.get("RT_MARKS")
    if marks and "mark" in query:
        Path(marks, query["mark"]).touch()
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", "2")))
        await respond(send, b"slept")
    elif path == "/block":
        # Deliberately blocks the whole event loop (a stuck worker).
        release = Path(marks or ".", query.get("until", "release"))
        end = time.monotonic() + 60
        while not release.exists() and time.monotonic() < end:
            time.sleep(0.01)
        await respond(send, b"blocked")
    elif path == "/scope":
        view = {
            "scheme": scope["scheme"],
            "path": path,
            "root_path": scope.get("root_path", ""),
            "http_version": scope["http_version"],
            "asgi": scope["asgi"],
            "state": dict(scope.get("state", {})),
        }
        await respond(send, json.dumps(view).encode(), b"application/json")
    elif path == "/loop":
        await respond(send, type(asyncio.get_running_loop()).__module__.encode())
    elif path == "/pid":
        await respond(send, str(os.getpid()).encode())
    else:
        await respond(send, b"ok")
