"""The operating system as the worker pool uses it: fork, kill, waitpid, the clock, memory.

:class:`daemon.pool.Pool` does nothing to a process or a clock except
through a :class:`System`, so a test can hand it another one and watch the
pool decide — spawn, retire, retry, give up, roll back — without a single
process (``tests/test_pool.py``). The real one below is a thin layer over
``daemon.spawn`` (the fork and the control pipe), ``os.waitpid``,
``time.monotonic`` and psutil; the process tests cover it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from socket import socket
from typing import Any

from daemon.spawn import reap, send_signal, spawn_worker
from server_core.settings import ServerSettings


class System:
    """The real operating system (what a test replaces)."""

    def spawn(self, settings: ServerSettings, sockets: Sequence[socket], *, close_fds: Iterable[int],
              app: Any, env: Mapping[str, str] | None) -> tuple[int, int]:
        """Fork a worker; ``(pid, read end of its control pipe)``; ``OSError`` when fork or pipe fails."""
        return spawn_worker(settings, sockets, close_fds=close_fds, app=app, env=env)

    def kill(self, pid: int, sig: int) -> bool:
        """Signal ``pid``; False when it is already gone (its exit is reaped separately)."""
        return send_signal(pid, sig)

    def reap(self, pid: int) -> int | None:
        """Its exit code if it exited (negative: killed by that signal), else None (``waitpid(pid, WNOHANG)``)."""
        return reap(pid)

    def monotonic(self) -> float:
        """The clock every deadline of the pool is measured on."""
        return time.monotonic()

    def rss(self, pid: int) -> int | None:
        """Resident memory of ``pid`` in bytes; None when it cannot be read (it just exited, say)."""
        import psutil

        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None
