"""An app that records which processes import it: each appends its PID to $IMPORT_MARKER_LOG."""

from __future__ import annotations

import os
from typing import Any

from plain_lifespan import lifespan

with open(os.environ["IMPORT_MARKER_LOG"], "a") as _log:
    _log.write(f"{os.getpid()}\n")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"marked"})
