"""Playing systemd in tests: a notify socket to listen on, and socket activation by hand.

As a module: :class:`NotifySocket` binds an AF_UNIX datagram socket (a path,
or an abstract name) and collects what a process sends to ``NOTIFY_SOCKET``.

As a script: ``python sd_harness.py activate NAMES FD [FD...] -- COMMAND...``
moves the given inherited descriptors to 3, 4, … and sets ``LISTEN_PID`` (its
own PID, which ``exec`` keeps), ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` (NAMES
colon-separated, or ``-`` for none), then executes COMMAND — what systemd does
between ``fork`` and ``exec``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable


class NotifySocket:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: str | None = None, *, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind(b"\0" + abstract.encode())
            self.env_value = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(path)
            self.env_value = path
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        self.raw: list[bytes] = []

    def poll(self) -> list[dict[str, str]]:
        """Read every datagram waiting; return all messages so far (each a dict of fields)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.raw.append(data)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float, *, start: int = 0,
                 alive: Callable[[], str | None] | None = None) -> tuple[int, dict[str, str]]:
        """The first message from index ``start`` on matching ``predicate``: ``(index, message)``."""
        end = time.monotonic() + timeout
        while True:
            messages = self.poll()
            for index in range(start, len(messages)):
                if predicate(messages[index]):
                    return index, messages[index]
            if alive is not None:
                dead = alive()
                if dead:
                    raise AssertionError(f"process died while waiting for a notify message: {dead}")
            if time.monotonic() > end:
                raise AssertionError(f"no matching notify message within {timeout:.1f}s; got {messages}")
            time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


def activate(argv: list[str]) -> None:
    """Set up descriptors 3… and the LISTEN_* variables, then exec the command after ``--``."""
    split = argv.index("--")
    names, fds, command = argv[0], [int(fd) for fd in argv[1:split]], argv[split + 1:]
    # First out of the way (a source may already sit on 3 or 4), then into place.
    high = [os.dup(fd) for fd in fds]
    moved = [os.dup2(fd, 100 + index) for index, fd in enumerate(high)]
    for fd in high:
        os.close(fd)
    targets = range(3, 3 + len(fds))
    for index, fd in enumerate(moved):
        os.dup2(fd, targets[index], inheritable=True)
        os.close(fd)
    for fd in fds:
        if fd not in targets:
            os.close(fd)  # the program gets each socket once, at its place
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    if names != "-":
        os.environ["LISTEN_FDNAMES"] = names
    os.execv(command[0], command)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "activate":
        activate(sys.argv[2:])
    print("usage: sd_harness.py activate NAMES FD... -- COMMAND...", file=sys.stderr)
    sys.exit(2)
