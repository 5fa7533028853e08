"""The access log: one line per request, built on a short path (it runs for every request)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from server_core.logs import render
from server_core.logs.render import ACCESS_LOGGER
from server_core.settings import ServerSettings


class AccessLog:
    """One line per request on ``corral.access`` at INFO.

    Fields: client (``ip:port``, ``-`` when unknown, the socket path for a
    UNIX peer), method, path (with ``?query``), http_version, status, size
    (response body bytes), duration_ms; the formatter adds pid. Console:
    ``127.0.0.1:51234 - "GET /x?y=1 HTTP/1.1" 200 12B 0.41ms``.

    The record is shaped like uvicorn's, so a user's ``--log-config`` that
    names ``uvicorn.logging.AccessFormatter`` (it unpacks five arguments)
    works: ``msg`` is :data:`ACCESS_FORMAT` and ``args`` is ``(client,
    method, path, http_version, status)``. corral's formatters read the
    richer ``record.corral_access`` dict (size and duration too), and
    ``getMessage()`` — what a plain ``"%(message)s"`` prints — adds
    ``12B 0.41ms`` to uvicorn's line (see :class:`AccessRecord`).

    This runs for every request, so it builds the standard record directly
    (no caller lookup, no structlog chain) and the formatters render it on a
    short path. The worker creates it only with ``--access-log``.
    """

    __slots__ = ("_logger", "_template", "_route")

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        # A complete record made once; each request copies it and sets the
        # few attributes that change. That keeps every standard attribute a
        # user's format string may name, without LogRecord.__init__'s cost.
        base = self._logger.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, "", (), None)
        self._template = dict(base.__dict__)
        # The handlers, when the fast path applies (see render.access_route);
        # re-checked on the first line of every event-loop pass.
        self._route: render.AccessRoute | None = None

    def log(self, client: Any, method: str, raw_path: bytes, query_string: bytes, http_version: str,
            status: int, size: int, duration: float) -> None:
        """Log one finished request; ``duration`` is in seconds."""
        logger = self._logger
        route = self._route
        # A route is trusted while its first handler has lines of this loop
        # pass waiting (so the checks run once per pass, not per request);
        # otherwise the level and the route are worked out again, which
        # follows any change a --log-config, the app or a test made to the
        # loggers meanwhile.
        if route is None or route[0][0]._scheduled_on is None:
            if not logger.isEnabledFor(logging.INFO):
                return
            route = self._route = render.access_route(logger)
        path = raw_path.decode("latin-1")
        if query_string:
            path = f"{path}?{query_string.decode('latin-1')}"
        if not path.isprintable():
            # Control characters would break the one-line guarantee or drive
            # a terminal; show them escaped.
            path = path.encode("unicode_escape").decode("ascii")
        if client.__class__ is tuple and ":" not in client[0]:  # the usual IPv4 peer, inline
            peer = f"{client[0]}:{client[1]}"
        else:
            peer = _client_text(client)
        if route is not None:
            # Our handlers and formatters only: the line goes straight to
            # them, skipping the record and Logger.handle's machinery.
            now = time.time()
            name = logger.name
            for handler, access_line in route:
                line = access_line(name, now, peer, method, path, http_version, status, size, duration * 1000.0)
                if handler._scheduled_on is not None:  # LineHandler.write_line's first step, inline
                    handler._pending.append(line)
                else:
                    handler.write_line(line)
            return
        duration_ms = round(duration * 1000.0, 2)
        record = _new_record(AccessRecord)
        attrs = record.__dict__
        attrs.update(self._template)
        now = time.time()
        attrs["created"] = now
        attrs["msecs"] = (now - int(now)) * 1000.0
        attrs["relativeCreated"] = (now - _START_TIME) * 1000.0
        attrs["msg"] = ACCESS_FORMAT
        attrs["args"] = (peer, method, path, http_version, status)
        attrs["process"] = render.current_pid
        attrs["thread"] = _get_ident()
        attrs["corral_access"] = {
            "client": peer, "method": method, "path": path, "http_version": http_version,
            "status": status, "size": size, "duration_ms": duration_ms,
        }
        logger.handle(record)


# uvicorn's access message: uvicorn.logging.AccessFormatter unpacks the
# five arguments, and so may any formatter written for uvicorn.
ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d'


class AccessRecord(logging.LogRecord):
    """An access-log record: uvicorn's ``msg``/``args`` plus ``corral_access`` (every field).

    ``getMessage()`` is uvicorn's line followed by the size and duration,
    ``127.0.0.1:51234 - "GET /x HTTP/1.1" 200 12B 0.41ms``, so a plain
    ``"%(message)s"`` formatter loses nothing. When a filter replaced
    ``msg`` (e.g. with the formatted message, to redact it) the record
    behaves like any other.
    """

    corral_access: dict[str, Any]

    def getMessage(self) -> str:
        """uvicorn's access line, then ``<size>B <duration>ms``."""
        message = super().getMessage()
        if self.msg is ACCESS_FORMAT:
            fields = self.corral_access
            message = f"{message} {fields['size']}B {fields['duration_ms']:.2f}ms"
        return message


_new_record = object.__new__
_get_ident = threading.get_ident
# logging's own start time, for relativeCreated (private, stable since Python 2).
_START_TIME: float = getattr(logging, "_startTime", time.time())


def _client_text(client: Any) -> str:
    if not client:
        return "-"
    if isinstance(client, (tuple, list)):
        host, port = client[0], client[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(client)  # a UNIX socket peer: its path (often empty → "-" above)
