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
in the file to get corral's renderers (see ``etc/logging.*``).

``--log-level trace`` enables :data:`TRACE` (5), registered with ``logging``
as ``TRACE``, for connection and protocol events.

Lines never interleave: each record is written with a single ``write()`` of a
complete line (:class:`LineHandler`), and a line shorter than PIPE_BUF is
atomic on the pipe that the master and all workers share as stderr.

This module is imported by the master: no asyncio, no application imports.
"""

from __future__ import annotations

import json
import json.encoder
import logging
import logging.config
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import structlog
from structlog.stdlib import ProcessorFormatter

from server_core.settings import ServerSettings

__all__ = [
    "TRACE", "ALIASES", "configure", "reopen", "AccessLog", "LineHandler",
    "JSONFormatter", "ConsoleFormatter", "BoundLogger", "level_number",
]

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
_LEVEL_METHODS: Mapping[int, str] = {number: name for name, number in _LEVELS.items()}


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
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds; the seconds part is formatted once per second."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def iso(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            # Two threads may race here; both compute the same string.
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


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
    """structlog's stdlib logger with a ``trace()`` method and ``log(TRACE, …)``."""

    def trace(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at :data:`TRACE` (only when the logger's level lets it through)."""
        if not self._logger.isEnabledFor(TRACE):
            return None
        if args:
            kw["positional_args"] = args
        call_args, call_kw = self._process_event("trace", event, kw)
        return self._logger.log(TRACE, *call_args, **call_kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Log ``event`` at a numeric ``level`` (TRACE included)."""
        if level == TRACE:
            return self.trace(event, *args, **kw)
        return super().log(level, event, *args, **kw)


def _configure_structlog() -> None:
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
        # Not cached: a logger bound before configure() (a module-level
        # ``structlog.get_logger``) must still pick up this configuration.
        # Lifecycle events are rare; the access log does not use structlog.
        cache_logger_on_first_use=False,
    )


# ---------------------------------------------------------------------------
# Rendering: formatters for the standard library's handlers.


def _add_record_fields(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """timestamp, level, logger and pid, taken from the standard record."""
    record: logging.LogRecord = event_dict["_record"]
    event_dict.setdefault("timestamp", _clock.iso(record.created))
    event_dict.setdefault("level", record.levelname.lower())
    event_dict.setdefault("logger", record.name)
    event_dict.setdefault("pid", _pid)
    return event_dict


def _json_order(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Put the fixed keys first so lines read the same in a terminal and a log stack."""
    ordered = {key: event_dict.pop(key) for key in ("timestamp", "level", "logger", "pid", "event")
               if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _default_colors() -> bool:
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
        foreign_pre_chain = [structlog.contextvars.merge_contextvars, structlog.stdlib.ExtraAdder()]
        super().__init__(
            processors=[_add_record_fields, *pre, ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=foreign_pre_chain,
            fmt=fmt, datefmt=datefmt, style=style, validate=validate,  # type: ignore[arg-type]
        )
        self.renderer = renderer

    def format(self, record: logging.LogRecord) -> str:
        """Render a record; access-log records skip the generic chain (see :class:`AccessLog`)."""
        fields = record.__dict__.get("corral_access")
        if fields is not None:
            return self._format_access(record, fields)
        return super().format(record)

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
            f'"pid": {_pid}, "event": "request", "client": {q(fields["client"])}, '
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
        return template % {"ts": _clock.iso(record.created), "event": record.msg, "pid": _pid}

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


# ---------------------------------------------------------------------------
# configure()

# What the last configure() of this process installed, so a second call (a
# forked worker re-configuring, a test) replaces it instead of stacking.
_installed: list[tuple[logging.Logger, logging.Handler]] = []
_process = "worker"


def configure(settings: ServerSettings, process: str = "worker") -> None:
    """Set up structlog and the standard library's logging for this process.

    ``process`` is ``"master"`` or ``"worker"``. Without ``--log-config`` one
    :class:`LineHandler` on stderr with the ``--log-format`` renderer is put on
    the root logger, so the application's own logging comes out the same way.
    With ``--log-config`` the file is applied instead (see the module doc).
    Raises ``ValueError`` naming the file for a log config that cannot be used.
    Safe to call again: the previous setup of this module is replaced.
    """
    global _process
    _process = process
    level = level_number(settings.log_level)
    _configure_structlog()
    _uninstall()
    if settings.log_config:
        configured = _apply_log_config(settings.log_config)
        _apply_aliases(configured)
        for name in OUR_LOGGERS:
            logger = logging.getLogger(name)
            # dictConfig's default disable_existing_loggers would silence ours.
            logger.disabled = False
            if not _configured_by_file(name, configured):
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
    colors = _default_colors() if settings.use_colors is None else settings.use_colors
    return ConsoleFormatter(colors=colors)


def _uninstall() -> None:
    while _installed:
        logger, handler = _installed.pop()
        logger.removeHandler(handler)
        if not isinstance(handler, LineHandler):
            handler.close()
        # A LineHandler is not closed: closing would close nothing (it does
        # not own stderr) but flushing is harmless; just drop it.


def _apply_log_config(path: str) -> set[str]:
    """Apply a .json/.yaml/.yml (dictConfig) or other (fileConfig) file; the logger names it configures."""
    if not os.path.isfile(path):
        raise ValueError(f"--log-config {path}: no such file")
    lower = path.lower()
    try:
        if lower.endswith((".json", ".yaml", ".yml")):
            config = _load_dict_config(path)
            logging.config.dictConfig(config)
            return set(config.get("loggers", {}) or {})
        logging.config.fileConfig(path, disable_existing_loggers=False)
        return _ini_logger_names(path)
    except ValueError as exc:
        if str(exc).startswith("--log-config"):
            raise
        raise ValueError(f"--log-config {path}: {exc}") from exc
    except Exception as exc:  # KeyError, TypeError, ImportError… from the logging config code
        raise ValueError(f"--log-config {path}: {type(exc).__name__}: {exc}") from exc


def _load_dict_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        if path.lower().endswith(".json"):
            try:
                data = json.load(file)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--log-config {path}: invalid JSON: {exc}") from exc
        else:
            try:
                import yaml
            except ImportError:
                raise ValueError(
                    f"--log-config {path}: YAML needs PyYAML (pip install 'corral[standard]')"
                ) from None
            try:
                data = yaml.safe_load(file)
            except yaml.YAMLError as exc:
                raise ValueError(f"--log-config {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--log-config {path}: expected a mapping (logging's dictConfig schema)")
    return data


def _ini_logger_names(path: str) -> set[str]:
    import configparser

    parser = configparser.RawConfigParser()
    parser.read(path, encoding="utf-8")
    keys = [key.strip() for key in parser.get("loggers", "keys", fallback="").split(",") if key.strip()]
    names = set()
    for key in keys:
        if key != "root":
            names.add(parser.get(f"logger_{key}", "qualname", fallback=key))
    return names


def _apply_aliases(configured: set[str]) -> None:
    """Give ``corral.*`` the configuration the file gave the matching ``uvicorn.*`` logger."""
    for alias, ours in ALIASES.items():
        if alias in configured and ours not in configured:
            source = logging.getLogger(alias)
            target = logging.getLogger(ours)
            target.setLevel(source.level)
            target.handlers[:] = source.handlers
            target.propagate = source.propagate
            configured.add(ours)


def _configured_by_file(name: str, configured: set[str]) -> bool:
    """True when the file set ``name`` or one of its ``corral`` ancestors."""
    parts = name.split(".")
    return any(".".join(parts[:end]) in configured for end in range(1, len(parts) + 1))


# ---------------------------------------------------------------------------
# reopen() for USR1


def _all_handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [item for item in list(logging.Logger.manager.loggerDict.values())
                if isinstance(item, logging.Logger)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def reopen() -> None:
    """Reopen every log file of this process (USR1), for logrotate's move-then-signal.

    Each ``logging.FileHandler`` (and subclass: watched, rotating) attached
    to any logger gets a fresh stream at its original path. The swap happens
    under the handler's lock, so a record is written either to the old file
    (before the swap) or to the new one — never lost. Call it from the main
    loop, never from inside a signal handler.
    """
    failures: list[tuple[str, OSError]] = []
    reopened = 0
    for handler in _all_handlers():
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            old = handler.stream
            if old is None:  # delay=True and nothing written yet: opens on first use
                continue
            # Reopening must never truncate what logrotate just created.
            handler.mode = handler.mode.replace("w", "a")
            try:
                handler.stream = handler._open()
            except OSError as exc:
                failures.append((handler.baseFilename, exc))
                continue
            statstream = getattr(handler, "_statstream", None)  # WatchedFileHandler's dev/ino
            if statstream is not None:
                statstream()
            try:
                old.close()
            except OSError:
                pass
            reopened += 1
        finally:
            handler.release()
    log = logging.getLogger(ERROR_LOGGER)
    for filename, exc in failures:
        log.error("cannot reopen log file %s: %s; still writing to the old file", filename, exc)
    log.debug("reopened %d log file(s) in %s %d", reopened, _process, _pid)


# ---------------------------------------------------------------------------
# The access log


class AccessLog:
    """One line per request on ``corral.access`` at INFO.

    Fields: client (``ip:port``, ``-`` when unknown, the socket path for a
    UNIX peer), method, path (with ``?query``), http_version, status, size
    (response body bytes), duration_ms; the formatter adds pid. Console:
    ``127.0.0.1:51234 - "GET /x?y=1 HTTP/1.1" 200 12B 0.41ms``.

    This runs for every request, so it builds the standard record directly
    (no caller lookup, no structlog chain) and the formatters render it on a
    short path. The worker creates it only with ``--access-log``.
    """

    __slots__ = ("_logger", "_template")

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        # A complete record made once; each request copies it and sets the
        # few attributes that change. That keeps every standard attribute a
        # user's format string may name, without LogRecord.__init__'s cost.
        base = self._logger.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, "", None, None)
        self._template = dict(base.__dict__)

    def log(self, client: Any, method: str, raw_path: bytes, query_string: bytes, http_version: str,
            status: int, size: int, duration: float) -> None:
        """Log one finished request; ``duration`` is in seconds."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        path = raw_path.decode("latin-1")
        if query_string:
            path = f"{path}?{query_string.decode('latin-1')}"
        if not path.isprintable():
            # Control characters would break the one-line guarantee or drive
            # a terminal; show them escaped.
            path = path.encode("unicode_escape").decode("ascii")
        peer = _client_text(client)
        duration_ms = round(duration * 1000.0, 2)
        message = f'{peer} - "{method} {path} HTTP/{http_version}" {status} {size}B {duration_ms:.2f}ms'
        record = _new_record(logging.LogRecord)
        attrs = record.__dict__
        attrs.update(self._template)
        now = time.time()
        attrs["created"] = now
        attrs["msecs"] = (now - int(now)) * 1000.0
        attrs["relativeCreated"] = (now - _START_TIME) * 1000.0
        attrs["msg"] = message
        attrs["process"] = _pid
        attrs["thread"] = _get_ident()
        attrs["corral_access"] = {
            "client": peer, "method": method, "path": path, "http_version": http_version,
            "status": status, "size": size, "duration_ms": duration_ms,
        }
        logger.handle(record)


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
