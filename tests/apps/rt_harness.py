"""Test harness for the worker runtime: a real ``serve()`` in a subprocess.

:class:`WorkerProc` binds a listening socket (TCP or UNIX), opens the control
pipe, starts ``tests.apps.rt_runner`` with both inherited, and reads the
pipe's messages with deadlines. Shared by the worker, lifespan and adapter
tests; every process is killed by PID in the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from server_core.control import Message, parse_messages
from tests.support import APPS, Proc, bound_socket, wait_until


class WorkerProc(Proc):
    """One ``serve()`` worker process under test, with its control pipe."""

    def __init__(self, tmp: Path, settings: dict[str, Any], *, unix: bool = False,
                 supervised: bool = True, env: dict[str, str] | None = None, name: str = "worker") -> None:
        settings = {"app_dir": str(APPS), "loop": "asyncio", **settings}
        self.scheme = "https" if settings.get("ssl_certfile") else "http"
        if unix:
            self.uds = str(tmp / f"{name}.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.uds)
            self.sock.listen(128)
            self.host, self.port = "", 0
        else:
            self.uds = ""
            self.sock = bound_socket()
            self.host, self.port = self.sock.getsockname()[:2]
        self.sock.set_inheritable(True)
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        self.pipe = read_end
        self.messages: list[Message] = []
        self._buffer = b""
        pipe_arg = str(write_end) if supervised else "-"
        argv = [sys.executable, "-m", "tests.apps.rt_runner", json.dumps(settings), str(self.sock.fileno()), pipe_arg]
        super().__init__(argv, tmp, env=env, pass_fds=(self.sock.fileno(), write_end), name=name)
        # Only the child keeps the write end, so the pipe reads EOF when it exits.
        os.close(write_end)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def poll(self) -> list[Message]:
        """Read whatever the worker wrote to the pipe; return every message so far."""
        while True:
            try:
                chunk = os.read(self.pipe, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            found, self._buffer = parse_messages(self._buffer + chunk)
            self.messages.extend(found)
        return self.messages

    def kinds(self) -> list[str]:
        """The kinds of every message so far, in order."""
        return [m.kind for m in self.poll()]

    def wait_message(self, kind: str, timeout: float = 20, *, count: int = 1) -> Message:
        """Wait until ``count`` messages of ``kind`` have arrived; return the last."""
        def found() -> Message | None:
            matching = [m for m in self.poll() if m.kind == kind]
            return matching[count - 1] if len(matching) >= count else None

        def dead() -> str | None:
            # The message may have been written just before the exit.
            return None if found() else self.dead()

        result: Message = wait_until(found, timeout, f"{count} {kind!r} message(s) from the worker", alive=dead)
        return result

    def kill(self) -> None:
        """Kill the worker, then close our ends of its pipe and socket."""
        super().kill()
        for closer in (lambda: os.close(self.pipe), self.sock.close):
            try:
                closer()
            except OSError:
                pass
