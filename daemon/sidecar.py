"""Small request/response servers inside the master's selector loop (control socket, metrics).

The master has one thread and one wait (``daemon.arbiter``). A listener here
is a :class:`~daemon.arbiter.Watched` source: it accepts without blocking and
each accepted connection becomes a watched source of its own, read without
blocking into a bounded buffer, answered by a handler that only looks at the
master's memory, written without blocking, and closed. Every connection has a
deadline, so a client that connects and says nothing (or never reads) costs
one descriptor for a few seconds, never a stuck master; past ``max_clients``
open connections, new ones are closed at once.

The listening sockets survive the USR2 re-exec: they are inheritable and
their descriptor is named in an environment variable that only the exec
sees (forked workers drop it, and close the descriptor with the master's
other descriptors).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("corral.master")

CONTROL_FD_VAR = "CORRAL_CONTROL_FD"
METRICS_FD_VAR = "CORRAL_METRICS_FD"
_EXEC_VARS = (CONTROL_FD_VAR, METRICS_FD_VAR)
# How far in the future a listener's "deadline" is (it has none; the arbiter
# stops watching a source whose deadline is None).
FOREVER = 3600.0
ACCEPTS_PER_WAKEUP = 16


def _drop_exec_vars() -> None:
    for name in _EXEC_VARS:
        os.environ.pop(name, None)


# A forked worker (and the app's own children) must not see them.
os.register_at_fork(after_in_child=_drop_exec_vars)


class SidecarError(Exception):
    """A sidecar listener cannot be opened; ``str(e)`` is the one line for the user."""


def keep_across_exec(var: str, sock: socket.socket) -> None:
    """Let ``sock`` survive the USR2 re-exec under ``$var`` (see :func:`take_inherited`)."""
    sock.set_inheritable(True)
    os.environ[var] = str(sock.fileno())


def take_inherited(var: str, check: Callable[[socket.socket], bool]) -> socket.socket | None:
    """The listening socket a previous image left under ``$var``, if it passes ``check``."""
    text = os.environ.pop(var, None)
    if not text or not text.isdigit():
        return None
    fd = int(text)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and check(sock):
            return sock
    except OSError:
        pass
    sock.detach()  # not ours after all: leave the descriptor alone
    return None


def bind_unix(path: str, mode: int, backlog: int = 64) -> socket.socket:
    """A listening UNIX socket at ``path`` with ``mode``; a stale file is replaced, a live one refused."""
    from daemon.listeners import ListenerError, _remove_stale_unix

    try:
        _remove_stale_unix(path)
    except ListenerError as exc:
        raise SidecarError(str(exc)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created with the final mode already: no moment where others may connect.
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise SidecarError(f"corral: cannot bind unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    return sock


def bind_tcp(host: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket on ``host:port``."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SidecarError(f"corral: cannot bind {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise SidecarError(f"corral: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    return sock


def unix_path_of(sock: socket.socket) -> str:
    name = sock.getsockname()
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def is_socket_file(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


# A handler gets the bytes read so far and the connection; it returns None
# while the request is incomplete, else the bytes to answer.
Handler = Callable[[bytes, "Connection"], "bytes | None"]


class Server:
    """A listening socket served from the arbiter's selector (a ``Watched`` source)."""

    def __init__(self, arbiter: Any, sock: socket.socket, handler: Handler, *, name: str,
                 max_request: int = 16384, timeout: float = 5.0, max_clients: int = 32,
                 unix_path: str | None = None) -> None:
        self.arbiter = arbiter
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.name = name
        self.max_request = max_request
        self.timeout = timeout
        self.max_clients = max_clients
        self.unix_path = unix_path
        self.clients: set[Connection] = set()
        self.closed = False
        sock.setblocking(False)

    # -- Watched ---------------------------------------------------------------

    def fileno(self) -> int:
        return self.fd

    def on_readable(self) -> bool:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE and friends: try again on the next wake-up
                log.warning("sidecar_accept_failed", server=self.name, error=str(exc))
                break
            if len(self.clients) >= self.max_clients:
                conn.close()
                continue
            conn.setblocking(False)
            client = Connection(self, conn)
            self.clients.add(client)
            self.arbiter.watch(client)
        return False

    def deadline(self) -> float | None:
        return None if self.closed else time.monotonic() + FOREVER

    def on_deadline(self) -> bool:
        return self.closed

    # -- life ------------------------------------------------------------------

    def close(self, *, unlink: bool = True) -> None:
        """Stop listening; close every client; remove the UNIX socket file (not across an exec)."""
        if self.closed:
            return
        self.closed = True
        for client in list(self.clients):
            client.close()
        with contextlib.suppress(Exception):
            self.arbiter.unwatch(self)
        if unlink and self.unix_path:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.stat(self.unix_path), os.fstat(self.fd)) or is_socket_file(self.unix_path):
                    os.unlink(self.unix_path)
        self.sock.close()


class Connection:
    """One accepted client: read a bounded request, answer it, close; all without blocking."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.buffer = b""
        self.out = b""
        self.writing = False
        self.closed = False
        self.expires = time.monotonic() + server.timeout

    def fileno(self) -> int:
        return self.fd

    def deadline(self) -> float | None:
        return None if self.closed else self.expires

    def on_deadline(self) -> bool:
        self.close()
        return True

    def on_readable(self) -> bool:
        """Called when readable, or writable while an answer waits (see :meth:`_want_write`).

        Always False: :meth:`close` unregisters the connection itself, at once,
        before its descriptor number can be reused by an accept.
        """
        if self.closed:
            return False
        if self.writing:
            return self._flush()
        try:
            while len(self.buffer) <= self.server.max_request:
                chunk = self.sock.recv(4096)
                if not chunk:
                    self.close()
                    return False
                self.buffer += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return False
        if len(self.buffer) > self.server.max_request:
            self.close()
            return False
        try:
            answer = self.server.handler(self.buffer, self)
        except Exception:
            log.exception("sidecar_handler_failed", server=self.server.name)
            self.close()
            return False
        if answer is None:
            return False
        self.out = answer
        self.writing = True
        return self._flush()

    def _flush(self) -> bool:
        try:
            while self.out:
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
        except (BlockingIOError, InterruptedError):
            self._want_write()
            return False
        except OSError:
            pass
        self.close()
        return False

    def _want_write(self) -> None:
        # The arbiter calls on_readable() for any event on a watched source.
        with contextlib.suppress(KeyError, ValueError):
            self.server.arbiter.selector.modify(self.fd, selectors.EVENT_WRITE, self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.clients.discard(self)
        with contextlib.suppress(KeyError, ValueError):
            self.server.arbiter.selector.unregister(self.fd)
        if self in getattr(self.server.arbiter, "watched", ()):
            self.server.arbiter.watched.remove(self)
        self.sock.close()
