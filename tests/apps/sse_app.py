"""A plain ASGI app shaped like a Starlette/FastAPI SSE endpoint, recording what its sends do.

Routes:
- ``/events``: ``text/event-stream``, one event every 50 ms until ``send()``
  raises; then one line ``raised <time.monotonic()> <exception class> <is OSError>``
  goes to the file named by ``$SSE_RECORD``, and the exception propagates (as
  from a StreamingResponse);
- ``/poll``: records ``waiting``, waits in ``receive()`` for ``http.disconnect``,
  records ``disconnect``, then answers: ``poll-raised <class> <is OSError>`` if
  ``send()`` raised (re-raised), else ``poll-sent``;
- anything else: ``hello`` (for the pipelining flood).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from plain_lifespan import lifespan


def _record(line: str) -> None:
    path = os.environ.get("SSE_RECORD")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/events":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        count = 0
        try:
            while True:
                await send({"type": "http.response.body", "body": b"data: %d\n\n" % count, "more_body": True})
                count += 1
                await asyncio.sleep(0.05)
        except BaseException as exc:
            _record(f"raised {time.monotonic()} {type(exc).__name__} {isinstance(exc, OSError)}")
            raise
    elif path == "/poll":
        _record("waiting")
        while (await receive())["type"] != "http.disconnect":
            pass
        _record("disconnect")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
            await send({"type": "http.response.body", "body": b"late"})
        except BaseException as exc:
            _record(f"poll-raised {type(exc).__name__} {isinstance(exc, OSError)}")
            raise
        _record("poll-sent")
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
