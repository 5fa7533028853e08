"""The control channel from a worker to its master: a pipe of short lines.

A worker writes, the master reads. Each message is one line of ASCII, shorter
than PIPE_BUF so a write is atomic and never interleaves with another worker's:

    ready                   lifespan startup is done and the worker accepts
    hb                      heartbeat, sent from the worker's event loop
    recycle <reason>        the worker wants to be replaced (e.g. max-requests)
    fail <message>          the worker could not boot; it exits with status 3
    stats <json>            its counters (server_core.metrics), cumulative, with a heartbeat
                            and once more at the end of a graceful stop; at most PIPE_BUF
                            bytes so the write stays atomic, else dropped

The master never writes to a worker: it signals it (see ``WORKER_SIGNALS``).
This module imports neither asyncio nor the application, so the master may
import it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
from dataclasses import dataclass
from typing import Protocol

# What a signal from the master means to a worker.
WORKER_SIGNALS = {
    "shutdown": signal.SIGTERM,  # graceful, whole server stopping: idle keep-alive closed at once
    "retire": signal.SIGHUP,  # graceful, others keep serving: idle keep-alive kept until next request
    "quit": signal.SIGQUIT,  # stop at once
    "reopen": signal.SIGUSR1,  # reopen log files
    "stacks": signal.SIGUSR2,  # dump every thread's stack to stderr (faulthandler)
}

# Exit status of a worker (and of corral) whose application cannot start.
EXIT_APP_FAILED = 3
MAX_MESSAGE = 480  # below PIPE_BUF (512 on every POSIX system) with the newline


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a worker: a kind and an optional argument."""

    kind: str
    arg: str = ""


class WorkerControl(Protocol):
    """What the serving code tells whoever supervises it."""

    def ready(self) -> None: ...
    def heartbeat(self) -> None: ...
    def recycle(self, reason: str) -> None: ...
    def boot_failed(self, message: str) -> None: ...


class NullControl:
    """No supervisor listening (tests, embedding): every message is dropped."""

    def ready(self) -> None:
        pass

    def heartbeat(self) -> None:
        pass

    def recycle(self, reason: str) -> None:
        pass

    def boot_failed(self, message: str) -> None:
        pass

    def stats(self, snapshot: str) -> None:
        pass


class PipeControl:
    """The worker's end of the pipe to the master."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    def _send(self, kind: str, arg: str = "") -> None:
        line = f"{kind} {arg}" if arg else kind
        data = line.replace("\n", " ").encode("utf-8", "replace")[:MAX_MESSAGE] + b"\n"
        try:
            os.write(self.fd, data)
        except BlockingIOError:
            # The master is not reading (stuck or gone): a lost heartbeat is
            # exactly what it should notice, so drop rather than block the loop.
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise

    def ready(self) -> None:
        self._send("ready")

    def heartbeat(self) -> None:
        self._send("hb")

    def recycle(self, reason: str) -> None:
        self._send("recycle", reason)

    def boot_failed(self, message: str) -> None:
        self._send("fail", message)

    def stats(self, snapshot: str) -> None:
        """Send the counters (a line longer than PIPE_BUF would not be atomic: dropped)."""
        data = b"stats " + snapshot.encode("ascii", "replace") + b"\n"
        if len(data) > select.PIPE_BUF:
            return
        try:
            os.write(self.fd, data)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise


def parse_messages(buffer: bytes) -> tuple[list[Message], bytes]:
    """Split complete lines off ``buffer``; return the messages and the rest."""
    *lines, rest = buffer.split(b"\n")
    messages = []
    for raw in lines:
        text = raw.decode("utf-8", "replace")
        kind, _, arg = text.partition(" ")
        if kind:
            messages.append(Message(kind, arg))
    return messages, rest
