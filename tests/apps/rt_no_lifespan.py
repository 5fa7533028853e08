"""A test app without lifespan support: it raises on any scope but HTTP."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Serve HTTP; reject everything else the way many small apps do."""
    if scope["type"] != "http":
        raise ValueError(f"rt_no_lifespan only speaks http, not {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
