"""The master's listening sockets: bound or adopted once, kept for its whole life.

One function, :func:`open_listeners`, produces every listener, whatever its
origin: an address the master binds itself (``HOST:PORT``, ``[V6]:PORT``,
``unix:PATH``), a descriptor handed down on the command line (``fd://N`` from
``--fd``), or sockets handed over by systemd (``LISTEN_FDS``) or by the old
master during a USR2 upgrade (the ``inherited`` mapping). First start, socket
activation and the upgrade therefore run the same code.

An inherited socket belongs to someone else as well: it is never
``shutdown(2)`` (that would stop the other holder's accepts too) and its UNIX
path is never unlinked.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class ListenerError(Exception):
    """A listener cannot be opened; ``str(e)`` is the one line shown to the user."""


class ListenConfig(Protocol):
    """The slice of ``daemon.config.Config`` this module reads."""

    @property
    def binds(self) -> tuple[str, ...]: ...
    @property
    def uds_mode(self) -> int: ...
    @property
    def backlog(self) -> int: ...
    @property
    def reuse_port(self) -> bool: ...


@dataclass
class Listener:
    """One listening socket and where it came from."""

    address: str  # normalised: "127.0.0.1:8000", "[::1]:8000", "unix:/path", "fd://3"
    sock: socket.socket
    inherited: bool  # handed to us: never shutdown(2), never unlink its path
    unix_path: str | None = None

    @property
    def family(self) -> int:
        return self.sock.family

    def url(self, scheme: str = "http") -> str:
        """A human URL of where this listener really listens (port 0 resolved)."""
        return describe(self.sock, scheme)


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """``http://127.0.0.1:8000``, ``http://[::1]:8000`` or ``unix:/path`` for a listening socket."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        return f"unix:{name or '(unnamed)'}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def address_key(sock: socket.socket) -> str:
    """The normalised address a socket listens on (keys of the ``inherited`` mapping)."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return f"unix:{name.decode() if isinstance(name, bytes) else name}"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this host"
    return (exc.strerror or str(exc)).lower()


def split_host_port(address: str) -> tuple[str, int]:
    """``"[::1]:8000" -> ("::1", 8000)``, ``"0.0.0.0:80" -> ("0.0.0.0", 80)``."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ListenerError(f"corral: bad listener address {address!r} (want [V6]:PORT)")
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ListenerError(f"corral: bad listener address {address!r} (want HOST:PORT)")
    try:
        return host, int(port)
    except ValueError:
        raise ListenerError(f"corral: bad port in listener address {address!r}") from None


def _bind_tcp(address: str, config: ListenConfig) -> Listener:
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenerError(f"corral: cannot bind {address}: {exc.strerror}") from None
    # Like uvicorn, bind the first address the name resolves to.
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if config.reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # So "[::]:80" and "0.0.0.0:80" can be bound side by side.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"corral: cannot bind {address}: {_reason(exc)}") from None
    return Listener(address=address, sock=sock, inherited=False)


def _remove_stale_unix(path: str) -> None:
    """Unlink a socket file nobody listens on; refuse a live socket or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"corral: cannot bind unix:{path}: a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        # Nobody accepts: a leftover from a process that died.
        try:
            os.unlink(path)
        except OSError as exc:
            raise ListenerError(f"corral: cannot bind unix:{path}: {_reason(exc)}") from None
        return
    except OSError as exc:
        raise ListenerError(f"corral: cannot bind unix:{path}: {_reason(exc)}") from None
    finally:
        probe.close()
    raise ListenerError(f"corral: cannot bind unix:{path}: address already in use")


def _bind_unix(address: str, config: ListenConfig) -> Listener:
    path = address[len("unix:"):]
    if path.startswith("//"):  # "unix:///run/app.sock" as well as "unix:/run/app.sock"
        path = path[2:]
    _remove_stale_unix(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, config.uds_mode)
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"corral: cannot bind {address}: {_reason(exc)}") from None
    return Listener(address=address, sock=sock, inherited=False, unix_path=path)


def adopt_fd(fd: int, backlog: int, address: str | None = None) -> Listener:
    """Take over descriptor ``fd`` as a listener; its family and type are read from it."""
    label = address or f"fd://{fd}"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise ListenerError(f"corral: cannot use {label}: descriptor {fd} is not a socket") from None
        raise ListenerError(f"corral: cannot use {label}: {_reason(exc)}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ListenerError(f"corral: cannot use {label}: not a stream socket")
    return _adopt(sock, backlog, label)


def _adopt(sock: socket.socket, backlog: int, label: str) -> Listener:
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if not listening:
        # Bound but not yet listening (some supervisors hand such sockets).
        try:
            sock.listen(backlog)
        except OSError as exc:
            raise ListenerError(f"corral: cannot listen on {label}: {_reason(exc)}") from None
    path = None
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        path = (name.decode() if isinstance(name, bytes) else name) or None
    return Listener(address=label, sock=sock, inherited=True, unix_path=path)


def open_listeners(config: ListenConfig,
                   inherited: Mapping[str, socket.socket] | None = None) -> list[Listener]:
    """Every listener of ``config.binds``, adopting inherited sockets before binding.

    ``inherited`` maps a normalised address (see :func:`address_key`) to a
    socket already listening there — from systemd or the previous master. An
    address found there is adopted instead of bound; inherited sockets no bind
    asks for are adopted too (systemd units name their sockets, not the
    command line). On any failure, what was opened is closed and
    :class:`ListenerError` says which address and why.
    """
    pending = dict(inherited or {})
    opened: list[Listener] = []
    try:
        for address in config.binds:
            if address in pending:
                opened.append(_adopt(pending.pop(address), config.backlog, address))
            elif address.startswith("fd://"):
                try:
                    fd = int(address[len("fd://"):])
                except ValueError:
                    raise ListenerError(
                        f"corral: {address} names a socket that systemd passes (LISTEN_FDNAMES), "
                        "but this process was not socket-activated") from None
                same = next((key for key, sock in pending.items() if sock.fileno() == fd), None)
                if same is not None:
                    # Already handed over under its address (systemd's socket after a
                    # USR2): one socket object per descriptor, or it is closed twice.
                    opened.append(_adopt(pending.pop(same), config.backlog, same))
                else:
                    opened.append(adopt_fd(fd, config.backlog, address))
            elif address.startswith("unix:"):
                opened.append(_bind_unix(address, config))
            else:
                opened.append(_bind_tcp(address, config))
        for address, sock in pending.items():
            opened.append(_adopt(sock, config.backlog, address))
    except BaseException:
        close_listeners(opened)
        raise
    return opened


def close_listeners(listeners: Iterable[Listener]) -> None:
    """Close our sockets at exit; unlink the UNIX files we created (never inherited ones)."""
    for listener in listeners:
        if listener.unix_path and not listener.inherited:
            try:
                os.unlink(listener.unix_path)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # someone else's file now; leave it
        # close(), never shutdown(): workers or another master may still hold it.
        listener.sock.close()
