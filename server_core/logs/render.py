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
from collections import deque
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import structlog
from structlog.stdlib import ProcessorFormatter

if TYPE_CHECKING:
    import asyncio

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

    __slots__ = ("_cached", "_last")

    def __init__(self) -> None:
        # (second, "YYYY-MM-DDTHH:MM:SS") in ONE attribute: threads logging at
        # once read a consistent pair (a reassignment is atomic), never the
        # prefix of one second with the check of another.
        self._cached: tuple[int, str] = (-1, "")
        # (millisecond, whole timestamp): under load many lines share one.
        self._last: tuple[int, str] = (-1, "")

    def iso(self, created: float) -> str:
        millis = int(created * 1000)
        last_millis, text = self._last
        if millis == last_millis:
            return text
        second, millis_part = divmod(millis, 1000)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cached = (second, prefix)
        text = f"{prefix}.{millis_part:03d}Z"
        self._last = (millis, text)
        return text


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
        return self.access_line(record.name, record.created, fields["client"], fields["method"], fields["path"],
                                fields["http_version"], fields["status"], fields["size"], fields["duration_ms"])

    def access_line(self, name: str, created: float, client: str, method: str, path: str, http_version: str,
                    status: int, size: int, duration_ms: float) -> str:
        """The rendered access line (no newline) from its fields; see :class:`AccessLog`.

        ``duration_ms`` may carry more digits than shown: it is rounded to
        hundredths here (the record's ``corral_access`` holds it rounded).
        """
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

    def access_line(self, name: str, created: float, client: str, method: str, path: str, http_version: str,
                    status: int, size: int, duration_ms: float) -> str:
        """The access line as one JSON object."""
        # The shape is fixed, so the line is assembled directly; strings go
        # through the json module's own C escaper, numbers are ints and a
        # float, so the output is exactly what json.dumps would give.
        q = _json_string
        return (
            f'{{"timestamp": "{_clock.iso(created)}", "level": "info", "logger": {q(name)}, '
            f'"pid": {current_pid}, "event": "request", "client": {q(client)}, '
            f'"method": {q(method)}, "path": {q(path)}, '
            f'"http_version": {q(http_version)}, "status": {int(status)}, '
            f'"size": {int(size)}, "duration_ms": {round(duration_ms, 2)!r}}}'
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
        self._access_parts: dict[str, tuple[int, str, str, str]] = {}

    def access_line(self, name: str, created: float, client: str, method: str, path: str, http_version: str,
                    status: int, size: int, duration_ms: float) -> str:
        """The access line with the common console prefix and suffix."""
        # The access line already says everything: only the common prefix is
        # added, from a template the renderer itself produced (see __init__).
        parts = self._access_parts.get(name)
        if parts is None or parts[0] != current_pid:
            parts = self._access_parts[name] = self._split_template(name)
        _, before_ts, before_event, after_event = parts
        millis, timestamp = _clock._last  # _Clock.iso's cache, read inline (one line per request)
        if millis != int(created * 1000):
            timestamp = _clock.iso(created)
        return (f'{before_ts}{timestamp}{before_event}{client} - "{method} {path} HTTP/{http_version}" '
                f'{status} {size}B {duration_ms:.2f}ms{after_event}')

    def _split_template(self, logger_name: str) -> tuple[int, str, str, str]:
        # (pid, text before the timestamp, between it and the event, after
        # the event with the pid filled in): one f-string per line.
        template = self._access_template(logger_name)
        head, _, rest = template.partition("%(ts)s")
        middle, _, tail = rest.partition("%(event)s")
        # structlog's console renderer puts the timestamp first, then the
        # level, the event, and the fields (logger, pid) after it.
        return current_pid, head.replace("%%", "%"), middle.replace("%%", "%"), tail % {"pid": current_pid}

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


# Lines written together in one write() stay below this many bytes: a write
# of at most PIPE_BUF bytes to a pipe is atomic (POSIX; 4096 on Linux), so
# lines from the processes sharing stderr never interleave mid-line.
PIPE_BUF = 4096


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (asyncio imported on first use, not by the master)."""
    global _running_loop
    import asyncio

    # The C accessor asyncio itself uses; from now on called directly.
    _running_loop = asyncio._get_running_loop
    return _running_loop()


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes whole lines, never a part of one, in a single ``write()``.

    stderr is shared by the master and every worker. Writing the message and
    the newline separately (or in pieces) would let another process's line
    land in between; a single write of a line shorter than PIPE_BUF is atomic
    on a pipe, and the flush right after keeps nothing half-written in a buffer.

    :meth:`emit` (every record through ``logging``) writes at once.
    :meth:`write_line` is the access log's batched path: called on a thread
    whose event loop is running, it keeps the line and writes everything
    kept in that loop pass with one ``write()`` per PIPE_BUF-sized group of
    whole lines, from a callback scheduled with ``call_soon`` — one system
    call per loop pass instead of one per request. Kept lines are written
    before any other line of this handler (order is kept), on
    :meth:`flush` (``logging.shutdown``, USR1's :func:`reopen`), when a
    group is full, and from the scheduled callback, which also runs when the
    loop is run once more after its main task (``asyncio.run`` and corral's
    worker do). Without a running loop the line is written at once.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        # Lines kept for this loop pass. A deque: append and popleft are
        # atomic, so the loop thread keeps a line without taking the lock,
        # and whoever writes (under the lock) takes whole lines off the left.
        self._pending: deque[str] = deque()
        # The loop on which a write of _pending is scheduled (None: none is).
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and write it with its newline in one call, then flush."""
        try:
            line = self.format(record) + "\n"
            stream = self.stream
            if self._pending:  # kept access lines go first (called under the handler's lock)
                self._write_pending()
            stream.write(line)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Write ``line`` (no newline) now or, on a running loop, with the rest of this loop pass.

        While a write is scheduled, a line is only appended to ``_pending``
        (the access log does that itself, inline): it goes out with the
        pass's write, whichever thread it came from.
        """
        if self._scheduled_on is not None:
            self._pending.append(line)
            return
        loop = _running_loop()
        if loop is not None:
            self._pending.append(line)
            self._scheduled_on = loop
            loop.call_soon(self._write_scheduled)
            return
        self.acquire()
        try:
            if self._pending:
                self._write_pending()
            self.stream.write(line + "\n")
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": line}))
        finally:
            self.release()

    def _write_scheduled(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            if self._pending:
                self._write_pending()
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "(access log lines kept for a loop pass)"}))
        finally:
            self.release()

    def _write_pending(self) -> None:
        """Write the kept lines (under the lock), one ``write()`` per group of whole lines up to PIPE_BUF bytes."""
        pending = self._pending
        take = pending.popleft
        # Only the lines there now: another thread may append meanwhile (kept for the next write).
        lines = [take() for _ in range(len(pending))]
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        write, flush = self.stream.write, self.stream.flush
        if text.isascii():  # characters are bytes: cut at the last newline within PIPE_BUF
            start, end = 0, len(text)
            while end - start > PIPE_BUF:
                cut = text.rfind("\n", start, start + PIPE_BUF) + 1
                if cut <= start:  # one line longer than PIPE_BUF: alone (no write of it can be atomic)
                    cut = text.index("\n", start) + 1
                write(text[start:cut])
                flush()
                start = cut
            write(text[start:] if start else text)
            flush()
            return
        group: list[str] = []
        size = 0
        for line in lines:
            line += "\n"
            length = len(line.encode("utf-8", "surrogateescape"))
            if group and size + length > PIPE_BUF:
                write("".join(group))
                flush()
                group, size = [], 0
            group.append(line)
            size += length
        write("".join(group))
        flush()

    def flush(self) -> None:
        """Write any kept lines, then flush the stream."""
        self.acquire()
        try:
            if self._pending:
                self._write_pending()
            super().flush()
        finally:
            self.release()


AccessRoute = tuple[tuple[LineHandler, Any], ...]


def access_route(logger: logging.Logger, level: int = logging.INFO) -> AccessRoute | None:
    """The handlers a record of ``logger`` at ``level`` reaches, when all can take the access fast path.

    That is: no filters on the way, and every handler that would emit it is
    a :class:`LineHandler` whose formatter is one of corral's with the plain
    ``"%(message)s"`` format. Then the access line can be rendered and
    handed to the handlers directly, as ``Logger.handle`` would, without
    the record. Returns ``((handler, formatter.access_line), …)`` or None.
    """
    if logger.disabled:
        return None
    found: list[tuple[LineHandler, Any]] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if level < handler.level:
                continue
            formatter = handler.formatter
            if (type(handler) is not LineHandler or handler.filters or not isinstance(formatter, _CorralFormatter)
                    or not formatter._plain or type(formatter).format is not _CorralFormatter.format):
                return None
            found.append((handler, formatter.access_line))
        if not current.propagate:
            break
        current = current.parent
    return tuple(found) if found else None  # no handler at all: logging's lastResort decides
