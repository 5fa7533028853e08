"""USR1: reopen every log file of this process (logrotate's move, then signal)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import structlog

from server_core.logs import render
from server_core.logs.render import ERROR_LOGGER, LineHandler, all_loggers


def _all_handlers() -> Iterator[logging.Handler]:
    seen: set[int] = set()
    for logger in all_loggers():
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
        if isinstance(handler, LineHandler):
            handler.flush()  # access lines kept for this loop pass go out now, in order
            continue
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
    log = structlog.get_logger(ERROR_LOGGER)
    for filename, error in failures:
        log.error("log_reopen_failed", file=filename, error=str(error), note="still writing to the old file")
    log.debug("logs_reopened", files=reopened, process=render.process_kind)

