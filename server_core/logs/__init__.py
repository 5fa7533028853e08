"""Logging for the master and the workers: structlog over the standard library.

Every log line of a corral process — structlog events, plain ``logging`` calls
from the application and its libraries, the access log — goes through one
renderer installed on the standard library's handlers
(:class:`structlog.stdlib.ProcessorFormatter`):

* ``--log-format console``: readable lines, coloured when stderr is a terminal
  (and ``NO_COLOR`` is unset) or with ``--use-colors``, never with
  ``--no-use-colors``;
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
The access record is shaped like uvicorn's (``msg`` ``'%s - "%s %s HTTP/%s" %d'``,
``args`` client, method, path, HTTP version, status), so uvicorn's own
``LOGGING_CONFIG`` and its ``uvicorn.logging.AccessFormatter`` work unchanged;
a plain ``"%(message)s"`` also gets the size and duration (:class:`AccessRecord`).

``pid`` is the process that wrote the line, except when the event names a
``pid`` itself: the master's ``worker_spawned pid=…`` is about a worker, and
the event's own field wins (the logger, ``corral.master``, says who wrote it).

``--log-level trace`` enables :data:`TRACE` (5), registered with ``logging``
as ``TRACE``, for connection and protocol events; structlog loggers get a
``trace()`` method (:class:`BoundLogger`) and accept ``log(TRACE, …)``.

Lines never interleave: each record is written with a single ``write()`` of a
complete line (:class:`LineHandler`), and a line shorter than PIPE_BUF is
atomic on the pipe that the master and all workers share as stderr. Access
lines rendered by corral's own formatters skip the record and ``Logger.handle``
(the route is re-checked once per event-loop pass) and are written once per
loop pass, in groups of whole lines of at most PIPE_BUF bytes; they are
written before any other line of the handler, on ``flush()`` and on USR1.

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
    all_loggers,
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

# structlog goes through the standard library from the moment this package is
# imported, so a module-level ``structlog.get_logger(...)`` used before
# configure() (or in a process that never calls it) still ends up in logging.
configure_structlog()

# ---------------------------------------------------------------------------
# configure()

# What the last configure() of this process installed, so a second call (a
# forked worker re-configuring, a HUP, a test) replaces it instead of stacking.
_installed: list[tuple[logging.Logger, logging.Handler]] = []
# True once a --log-config file was applied in this process: going back to
# stderr must then take the file's handlers off our loggers and the root.
_file_applied = False


def configure(settings: ServerSettings, process: str = "worker") -> None:
    """Set up structlog and the standard library's logging for this process.

    ``process`` is ``"master"`` or ``"worker"``. Without ``--log-config`` one
    :class:`LineHandler` on stderr with the ``--log-format`` renderer is put on
    the root logger, so the application's own logging comes out the same way.
    With ``--log-config`` the file is applied instead (see the module doc).
    Raises ``ValueError`` naming the file (or the bad level/format) when the
    settings cannot be used; the logging that was in place then stays as it
    was, so a HUP with a broken file does not silence the master.
    Safe to call again: the previous setup of this module is replaced.
    """
    level = level_number(settings.log_level)
    # Validated before anything is touched.
    formatter = None if settings.log_config else make_formatter(settings)
    render.process_kind = process
    configure_structlog()
    if settings.log_config:
        _configure_from_file(settings.log_config, level)
    else:
        assert formatter is not None
        _configure_stderr(formatter, level)


def _configure_stderr(formatter: logging.Formatter, level: int) -> None:
    global _file_applied
    _uninstall()
    root = logging.getLogger()
    if _file_applied:
        for logger in (root, *(logging.getLogger(name) for name in (*OUR_LOGGERS, *ALIASES))):
            for old in list(logger.handlers):
                logger.removeHandler(old)
                old.close()
        _file_applied = False
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    if stream is None:  # no stderr at all (a detached process): nothing to write to
        handler: logging.Handler = logging.NullHandler()
    else:
        handler = LineHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    _installed.append((root, handler))
    # Libraries' DEBUG is the floor for the root: TRACE is corral's own level.
    root.setLevel(max(level, logging.DEBUG))
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = True
        logger.disabled = False


def _configure_from_file(path: str, level: int) -> None:
    global _file_applied
    snapshot = _snapshot()
    installed = list(_installed)
    _uninstall()
    try:
        configured = apply_log_config(path)
    except ValueError:
        _restore(snapshot)
        _installed[:] = installed
        raise
    _file_applied = True
    apply_aliases(configured)
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        # dictConfig's default disable_existing_loggers would silence ours.
        logger.disabled = False
        if not configured_by_file(name, configured):
            logger.setLevel(level)


_LoggerState = tuple[int, list[logging.Handler], bool, bool]


def _snapshot() -> dict[logging.Logger, _LoggerState]:
    return {logger: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
            for logger in all_loggers()}


def _restore(snapshot: dict[logging.Logger, _LoggerState]) -> None:
    """Put every logger back as it was before a file failed half-way through.

    The logging config code closes the old handlers before it builds the new
    ones; a closed stream or file handler still works once re-attached (a
    file handler reopens its file on the next record).
    """
    for logger in all_loggers():
        level, handlers, propagate, disabled = snapshot.get(logger, (logging.NOTSET, [], True, False))
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled


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
        else:
            # Not closed (it does not own stderr); access lines it kept for
            # this loop pass go out now, before the new handler's lines.
            handler.flush()

