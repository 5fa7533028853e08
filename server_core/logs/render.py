"""What a log line looks like: levels, logger names, the structlog chain, formatters, the handler.

structlog's own chain is the same in every process and for every format: it
only filters by level and hands the event dict to the standard library. The
rendering (console or JSON) happens in the handlers' formatters, so a logger
bound before :func:`server_core.logs.configure` renders correctly after it.
"""

from __future__ import annotations

import json
import json.encoder
import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from structlog.stdlib import ProcessorFormatter

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

ERROR_LOGGER = "corral.error"
ACCESS_LOGGER = "corral.access"
MASTER_LOGGER = "corral.master"
OUR_LOGGERS = ("corral", ERROR_LOGGER, ACCESS_LOGGER, MASTER_LOGGER)
# uvicorn's logger names that a user's --log-config may configure → ours.
ALIASES: Mapping[str, str] = {
    "uvicorn": "corral",
    "uvicorn.error": ERROR_LOGGER,
    "uvicorn.access": ACCESS_LOGGER,
}

_LEVELS: Mapping[str, int] = {
    "critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING,
    "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE,
}
# structlog method names (the level of an event) → numeric levels.
_METHOD_LEVELS: Mapping[str, int] = {
    **_LEVELS, "fatal": logging.CRITICAL, "exception": logging.ERROR, "warn": logging.WARNING,
    "notset": logging.NOTSET,
}


def level_number(level: str | int) -> int:
    """The numeric level of ``--log-level`` (a name such as ``"trace"``, or a number)."""
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; choose from {', '.join(_LEVELS)}") from None


# The pid is read once per process (and refreshed in a forked child) rather
# than per record: it is on every line, including the access log.
current_pid = os.getpid()


def _refresh_pid() -> None:
    global current_pid
    current_pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)
# "master" or "worker", set by configure(); named in the reopen event.
process_kind = "worker"


def all_loggers() -> list[logging.Logger]:
    """The root logger and every logger created so far (placeholders skipped)."""
    loggers = [logging.getLogger()]
    loggers += [item for item in list(logging.Logger.manager.loggerDict.values())
                if isinstance(item, logging.Logger)]
    return loggers


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds; the seconds part is formatted once per second."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        # (second, "YYYY-MM-DDTHH:MM:SS") in ONE attribute: threads logging at
        # once read a consistent pair (a reassignment is atomic), never the
        # prefix of one second with the check of another.
        self._cached: tuple[int, str] = (-1, "")

    def iso(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        return f"{prefix}.{int((created - second) * 1000):03d}Z"


_clock = _Clock()
# JSON string literal with escapes, in C (what json.dumps uses with ensure_ascii).
_json_string = json.encoder.encode_basestring_ascii


# ---------------------------------------------------------------------------
# structlog side: the chain every bound logger runs before handing the event
# to the standard library. It is the same in every process and for every
# format, so loggers bound before a later configure() stay correct.


class _EventDict(dict):  # type: ignore[type-arg]
    """An event dict that prints as ``event key=value …``.

    It becomes ``record.msg`` of the standard record, so a plain
    ``logging.Formatter`` from a user's --log-config shows something readable
    instead of a dict repr; :class:`ProcessorFormatter` copies it back to a dict.
    """

    def __str__(self) -> str:
        event = self.get("event", "")
        rest = " ".join(f"{key}={value}" for key, value in self.items() if key != "event")
        return f"{event} {rest}" if rest else str(event)


def _drop_below_level(logger: logging.Logger, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Stop an event early when its logger's level filters it (knows ``trace``)."""
    if logger.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.NOTSET)):
        return event_dict
    raise structlog.DropEvent


def _as_printable_event(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    return _EventDict(event_dict)


class BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger with ``trace()``, ``log(TRACE, …)`` and cheap filtered calls.

    ``trace``, ``debug`` and ``info`` ask the standard logger's (cached) level
    check before anything else, so a filtered call on a hot path costs a
    method call and a dict lookup, not the processor chain.
    """

    def trace(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at :data:`TRACE` (only when the logger's level lets it through)."""
        if not self._logger.isEnabledFor(TRACE):
            return None
        if args:
            kw["positional_args"] = args
        call_args, call_kw = self._process_event("trace", event, kw)
        return self._logger.log(TRACE, *call_args, **call_kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at DEBUG."""
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return self._proxy_to_logger("debug", event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at INFO."""
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return self._proxy_to_logger("info", event, *args, **kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at a numeric ``level`` (TRACE included)."""
        if level == TRACE:
            return self.trace(event, *args, **kw)
        return super().log(level, event, *args, **kw)


def configure_structlog() -> None:
    """Route structlog through the standard library (idempotent; done when the package is imported).

    The chain and wrapper never change afterwards, so structlog may cache each
    logger on first use: a logger first used after ``server_core.logs`` was
    imported is right for the life of the process, whatever configure() does
    to the handlers later.
    """
    structlog.configure(
        processors=[
            _drop_below_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.PositionalArgumentsFormatter(),
            _as_printable_event,
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=BoundLogger,
        cache_logger_on_first_use=True,
    )


# ---------------------------------------------------------------------------
# Rendering: formatters for the standard library's handlers.


def _add_record_fields(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """timestamp, level, logger and pid, taken from the standard record."""
    record: logging.LogRecord = event_dict["_record"]
    event_dict.setdefault("timestamp", _clock.iso(record.created))
    event_dict.setdefault("level", record.levelname.lower())
    event_dict.setdefault("logger", record.name)
    event_dict.setdefault("pid", current_pid)
    return event_dict


def _json_order(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Put the fixed keys first so lines read the same in a terminal and a log stack."""
    ordered = {key: event_dict.pop(key) for key in ("timestamp", "level", "logger", "pid", "event")
               if key in event_dict}
    ordered.update(event_dict)
    return ordered


def default_colors() -> bool:
    """Colours by default only when stderr is a terminal and ``NO_COLOR`` is not set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class _CorralFormatter(ProcessorFormatter):
    """Base of corral's formatters: foreign records and the access log fast path.

    The constructor takes ``(fmt, datefmt, style)`` like ``logging.Formatter``
    so ``fileConfig`` can name the class in an .ini file.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True, *, renderer: Any, pre: list[Any], defaults: Any = None) -> None:
        foreign_pre_chain: list[Any] = [structlog.contextvars.merge_contextvars, structlog.stdlib.ExtraAdder()]
        super().__init__(
            processors=[_add_record_fields, *pre, ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=foreign_pre_chain,
            fmt=fmt, datefmt=datefmt, style=style, validate=validate,  # type: ignore[arg-type]
        )
        self.renderer = renderer
        # A user's format string (e.g. "%(asctime)s %(message)s") wraps the
        # rendered line; the usual "%(message)s" needs no second pass.
        self._plain = fmt in (None, "%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render a record; access-log records skip the generic chain (see :class:`AccessLog`)."""
        fields = record.__dict__.get("corral_access")
        if fields is None:
            return super().format(record)
        line = self._format_access(record, fields)
        if self._plain:
            return line
        wrapped = logging.makeLogRecord(record.__dict__)
        wrapped.msg, wrapped.args = line, ()
        return logging.Formatter.format(self, wrapped)

    def _format_access(self, record: logging.LogRecord, fields: dict[str, Any]) -> str:
        raise NotImplementedError


class JSONFormatter(_CorralFormatter):
    """One JSON object per line: timestamp, level, logger, pid, event, then the fields.

    Usable from a --log-config file: ``"()": "server_core.logs.JSONFormatter"``
    (dictConfig) or ``class=server_core.logs.JSONFormatter`` (.ini).
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True, *, defaults: Any = None) -> None:
        super().__init__(fmt, datefmt, style, validate,
                         renderer=structlog.processors.JSONRenderer(default=repr),
                         pre=[structlog.processors.format_exc_info, _json_order])

    def _format_access(self, record: logging.LogRecord, fields: dict[str, Any]) -> str:
        # The shape is fixed, so the line is assembled directly; strings go
        # through the json module's own C escaper, numbers are ints and a
        # float, so the output is exactly what json.dumps would give.
        q = _json_string
        return (
            f'{{"timestamp": "{_clock.iso(record.created)}", "level": "info", "logger": {q(record.name)}, '
            f'"pid": {current_pid}, "event": "request", "client": {q(fields["client"])}, '
            f'"method": {q(fields["method"])}, "path": {q(fields["path"])}, '
            f'"http_version": {q(fields["http_version"])}, "status": {int(fields["status"])}, '
            f'"size": {int(fields["size"])}, "duration_ms": {float(fields["duration_ms"])!r}}}'
        )


class ConsoleFormatter(_CorralFormatter):
    """Readable lines (structlog's console renderer); ``colors`` adds ANSI colours.

    Usable from a --log-config file: ``"()": "server_core.logs.ConsoleFormatter"``
    with an optional ``"colors": true`` (dictConfig) or
    ``class=server_core.logs.ConsoleFormatter`` (.ini, no colours).
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, style: str = "%",
                 validate: bool = True, *, defaults: Any = None, colors: bool = False) -> None:
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, pad_event_to=0,
        )
        super().__init__(fmt, datefmt, style, validate, renderer=renderer, pre=[])
        self.colors = colors
        self._access_templates: dict[str, str] = {}

    def _format_access(self, record: logging.LogRecord, fields: dict[str, Any]) -> str:
        # The access line already says everything: only the common prefix is
        # added, from a template the renderer itself produced (see __init__).
        template = self._access_templates.get(record.name)
        if template is None:
            template = self._access_templates[record.name] = self._access_template(record.name)
        event = (f'{fields["client"]} - "{fields["method"]} {fields["path"]} HTTP/{fields["http_version"]}" '
                 f'{fields["status"]} {fields["size"]}B {fields["duration_ms"]:.2f}ms')
        return template % {"ts": _clock.iso(record.created), "event": event, "pid": current_pid}

    def _access_template(self, logger_name: str) -> str:
        # Render placeholders once through the real renderer (colours and all)
        # and turn the result into a %-template: per request this is one
        # string formatting instead of the renderer's generic machinery.
        marks = {"ts": "\x00ts\x00", "event": "\x00event\x00", "pid": "\x00pid\x00"}
        text = self.renderer(None, "info", {"timestamp": marks["ts"], "level": "info", "logger": logger_name,
                                            "pid": marks["pid"], "event": marks["event"]})
        text = text.replace("%", "%%")
        for name, mark in marks.items():
            text = text.replace(mark, f"%({name})s")
        return str(text)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes each record as ONE ``write()`` of a whole line.

    stderr is shared by the master and every worker. Writing the message and
    the newline separately (or in pieces) would let another process's line
    land in between; a single write of a line shorter than PIPE_BUF is atomic
    on a pipe, and the flush right after keeps nothing half-written in a buffer.
    """

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and write it with its newline in one call, then flush."""
        try:
            line = self.format(record) + "\n"
            stream = self.stream
            stream.write(line)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

