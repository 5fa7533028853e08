"""Logging for the master and the workers: structlog over the standard library.

Every log line of a corral process — structlog events, plain ``logging`` calls
from the application and its libraries, the access log — goes through one
renderer installed on the standard library's handlers
(:class:`structlog.stdlib.ProcessorFormatter`):

* ``--log-format console``: readable lines, coloured when stderr is a terminal
  or with ``--use-colors`` (never with ``--no-use-colors``);
* ``--log-format json``: one JSON object per line with ``timestamp`` (ISO 8601,
  UTC), ``level``, ``logger``, ``event``, ``pid`` and the event's own fields;
  an exception becomes an ``exception`` string field.

Logger names
    ``corral.error``   server lifecycle and errors inside a worker
    ``corral.access``  the access log, one line per request
    ``corral.master``  the master's lifecycle events (spawned, ready, draining…)

uvicorn users already configure ``uvicorn``, ``uvicorn.error`` and
``uvicorn.access`` in their ``--log-config`` files. Those names are honoured as
aliases: when a file configures ``uvicorn.error`` (level, handlers, propagate)
and not ``corral.error``, the same configuration is applied to
``corral.error``; likewise ``uvicorn.access`` → ``corral.access`` and
``uvicorn`` → ``corral`` (the parent of all of ours, ``corral.master``
included). A file that names the ``corral.*`` loggers directly wins.

With ``--log-config`` the file owns the handlers; corral only fills in the
level of its own loggers when the file leaves them unset, and keeps them
enabled even when the file says ``disable_existing_loggers``. structlog events
still travel as standard records, so they reach the file's handlers; a plain
``logging.Formatter`` there prints them as ``event key=value …``, and the
formatters :class:`JSONFormatter` and :class:`ConsoleFormatter` can be named
in the file to get corral's renderers (see ``etc/logging.*``);
``--log-format`` and ``--use-colors`` do not apply to a file's handlers.

``pid`` is the process that wrote the line, except when the event names a
``pid`` itself: the master's ``worker_spawned pid=…`` is about a worker, and
the event's own field wins (the logger, ``corral.master``, says who wrote it).

``--log-level trace`` enables :data:`TRACE` (5), registered with ``logging``
as ``TRACE``, for connection and protocol events; structlog loggers get a
``trace()`` method (:class:`BoundLogger`) and accept ``log(TRACE, …)``.

Lines never interleave: each record is written with a single ``write()`` of a
complete line (:class:`LineHandler`), and a line shorter than PIPE_BUF is
atomic on the pipe that the master and all workers share as stderr.

This module is imported by the master: no asyncio, no application imports.
"""

from __future__ import annotations

import logging
import sys

from server_core.logs import render
from server_core.logs.access import AccessLog
from server_core.logs.fileconfig import apply_aliases, apply_log_config, configured_by_file
from server_core.logs.render import (
    ACCESS_LOGGER,
    ALIASES,
    ERROR_LOGGER,
    MASTER_LOGGER,
    OUR_LOGGERS,
    TRACE,
    BoundLogger,
    ConsoleFormatter,
    JSONFormatter,
    LineHandler,
    configure_structlog,
    default_colors,
    level_number,
)
from server_core.logs.reopen import reopen
from server_core.settings import ServerSettings

__all__ = [
    "TRACE", "ALIASES", "ERROR_LOGGER", "ACCESS_LOGGER", "MASTER_LOGGER", "configure", "reopen",
    "AccessLog", "LineHandler", "JSONFormatter", "ConsoleFormatter", "BoundLogger", "level_number",
    "make_formatter",
]

# ---------------------------------------------------------------------------
# configure()

# What the last configure() of this process installed, so a second call (a
# forked worker re-configuring, a test) replaces it instead of stacking.
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def configure(settings: ServerSettings, process: str = "worker") -> None:
    """Set up structlog and the standard library's logging for this process.

    ``process`` is ``"master"`` or ``"worker"``. Without ``--log-config`` one
    :class:`LineHandler` on stderr with the ``--log-format`` renderer is put on
    the root logger, so the application's own logging comes out the same way.
    With ``--log-config`` the file is applied instead (see the module doc).
    Raises ``ValueError`` naming the file for a log config that cannot be used.
    Safe to call again: the previous setup of this module is replaced.
    """
    render.process_kind = process
    level = level_number(settings.log_level)
    configure_structlog()
    _uninstall()
    if settings.log_config:
        configured = apply_log_config(settings.log_config)
        apply_aliases(configured)
        for name in OUR_LOGGERS:
            logger = logging.getLogger(name)
            # dictConfig's default disable_existing_loggers would silence ours.
            logger.disabled = False
            if not configured_by_file(name, configured):
                logger.setLevel(level)
        return
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is None:  # no stderr at all (a detached process): nothing to write to
        handler: logging.Handler = logging.NullHandler()
    else:
        handler = LineHandler(stream)
    handler.setFormatter(make_formatter(settings))
    root = logging.getLogger()
    root.addHandler(handler)
    _installed.append((root, handler))
    # Libraries' DEBUG is the floor for the root: TRACE is corral's own level.
    root.setLevel(max(level, logging.DEBUG))
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = True
        logger.disabled = False


def make_formatter(settings: ServerSettings) -> logging.Formatter:
    """The formatter for ``settings.log_format`` and ``settings.use_colors``."""
    if settings.log_format == "json":
        return JSONFormatter()
    if settings.log_format != "console":
        raise ValueError(f"unknown log format {settings.log_format!r}; choose console or json")
    colors = default_colors() if settings.use_colors is None else settings.use_colors
    return ConsoleFormatter(colors=colors)


def _uninstall() -> None:
    while _installed:
        logger, handler = _installed.pop()
        logger.removeHandler(handler)
        if not isinstance(handler, LineHandler):
            handler.close()
        # A LineHandler is not closed: closing would close nothing (it does
        # not own stderr) but flushing is harmless; just drop it.

