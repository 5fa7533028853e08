"""A corral gunicorn worker configured by subclassing with CONFIG_KWARGS."""

from __future__ import annotations

from typing import Any

from server_core.workers import CorralH11Worker


class HeaderWorker(CorralH11Worker):
    """h11 + asyncio, no Server header, one extra default header."""

    CONFIG_KWARGS: dict[str, Any] = {
        **CorralH11Worker.CONFIG_KWARGS,
        "server_header": False,
        "headers": (("x-corral-worker", "custom"),),
    }
