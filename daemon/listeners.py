"""The master's listening sockets: bound or adopted once, kept for its whole life.

One function, :func:`open_listeners`, produces every listener, whatever its
origin: an address the master binds itself (``HOST:PORT``, ``[V6]:PORT``,
``unix:PATH``), a descriptor handed down on the command line (``fd://N`` from
``--fd``), or sockets handed to this process before it binds anything — by
systemd (``LISTEN_FDS``, see ``daemon.systemd.handed_sockets``) or by the
previous image of a USR2 upgrade (``daemon.upgrade.resume``). Those two only
*supply* a :class:`Handed`; which bind each socket satisfies, what is bound
and what is adopted is decided here, so first start, socket activation and
the upgrade run the same code.

How handed sockets meet ``config.binds``: a bind naming a handed socket — by
the address it really listens on, by systemd's ``FileDescriptorName``
(``fd://NAME``) or by its descriptor (``fd://N``) — is that socket, adopted in
the bind's place; handed sockets no bind names are adopted after the others
(every socket systemd passes is served: units name their sockets, not the
command line). Under socket activation the implicit default ``127.0.0.1:8000``
(:func:`implicit_bind`) is not bound in addition. ``fd://`` addresses are
parsed by :func:`parse_fd`, here only (``daemon.config`` validates with it).

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
from dataclasses import dataclass, field
from typing import Protocol

FD_PREFIX = "fd://"


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
    def explicit(self, name: str) -> bool: ...


@dataclass
class Handed:
    """Listening sockets this process was given before binding anything.

    From systemd (``daemon.systemd.handed_sockets``) or from the previous
    image of a USR2 (``daemon.upgrade.resume``); see the module docstring for
    how they meet ``config.binds``.
    """

    sockets: dict[str, socket.socket]  # by address (address_key, or the bind the previous image opened)
    names: Mapping[str, str] = field(default_factory=dict)  # systemd's FileDescriptorName -> address
    owned: frozenset[str] = frozenset()  # addresses the previous image bound itself: ours to unlink at exit
    socket_activated: bool = False  # systemd passed them, to this image or to the previous one


def parse_fd(address: str) -> int | str | None:
    """What an ``fd://`` address names: a descriptor (``fd://3`` -> 3) or a socket systemd passes by name
    (``fd://web`` -> ``"web"``); None for any other address.

    The one parser of ``fd://`` (``daemon.config.parse_bind`` validates with
    it); ``ValueError`` when what follows is neither a number nor a name.
    """
    if not address.startswith(FD_PREFIX):
        return None
    target = address[len(FD_PREFIX):]
    if target.isdigit():
        return int(target)
    if target and all(c.isalnum() or c in "-_.@" for c in target):
        return target
    raise ValueError(f"{address!r}: fd:// needs a descriptor number or a socket name")


def fd_address(fd: int) -> str:
    """The listener address of descriptor ``fd`` (``--fd 3`` is ``fd://3``)."""
    return f"{FD_PREFIX}{fd}"


def implicit_bind(config: ListenConfig) -> str | None:
    """The default ``HOST:PORT`` in ``config.binds`` when the user asked for no address at all.

    When none of ``--fd``, ``--uds``, ``--host``, ``--port`` came from anywhere
    but the defaults, the first bind is the implicit ``127.0.0.1:8000``, which
    socket-activated sockets replace.
    """
    if any(config.explicit(name) for name in ("fd", "uds", "host", "port")):
        return None
    binds = config.binds
    if not binds or binds[0].startswith(("unix:", FD_PREFIX)):
        return None
    return binds[0]


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


def open_listeners(config: ListenConfig, handed: Handed | None = None) -> list[Listener]:
    """Every listener of ``config.binds``, adopting ``handed`` sockets before binding anything.

    The one entry for bind, ``--fd``, systemd's ``LISTEN_FDS`` and the USR2
    hand-off (rules in the module docstring). On any failure, what was opened
    is closed and :class:`ListenerError` says which address and why.
    """
    handed = handed if handed is not None else Handed(sockets={})
    implicit = implicit_bind(config) if handed.socket_activated and handed.sockets else None
    taken: set[str] = set()
    opened: list[Listener] = []
    try:
        for address in config.binds:
            if address == implicit:
                continue
            key = _handed_key(address, handed)
            if key is not None:
                if key not in taken:  # one socket object per descriptor, or it is closed twice
                    taken.add(key)
                    opened.append(_adopt(handed.sockets[key], config.backlog, key))
                continue
            target = _fd_target(address)
            if isinstance(target, str) and handed.socket_activated and not handed.names:
                # The new image of a USR2 under systemd: the names did not cross the exec, the
                # sockets did, and every one of them is adopted below, as the first image served them.
                continue
            if isinstance(target, str):
                raise ListenerError(
                    f"corral: {address} names a socket that systemd passes (LISTEN_FDNAMES), "
                    "but this process was not socket-activated")
            if target is not None:
                opened.append(adopt_fd(target, config.backlog, address))
            elif address.startswith("unix:"):
                opened.append(_bind_unix(address, config))
            else:
                opened.append(_bind_tcp(address, config))
        for key, sock in handed.sockets.items():
            if key not in taken:
                opened.append(_adopt(sock, config.backlog, key))
    except BaseException:
        close_listeners(opened)
        raise
    for listener in opened:
        if listener.address in handed.owned:
            listener.inherited = False  # the previous image bound it: its UNIX file is ours to remove
    return opened


def _fd_target(address: str) -> int | str | None:
    try:
        return parse_fd(address)
    except ValueError as exc:
        raise ListenerError(f"corral: bad listener address {exc}") from None


def _handed_key(address: str, handed: Handed) -> str | None:
    """The handed socket ``address`` names (its key in ``handed.sockets``), or None."""
    if address in handed.sockets:
        return address
    target = _fd_target(address)
    if isinstance(target, str) and handed.names:
        if target not in handed.names:
            known = ", ".join(sorted(handed.names)) or "none"
            raise ListenerError(f"corral: --bind {address}: systemd passed no socket named {target!r} "
                                f"(names: {known})")
        return handed.names[target]
    if isinstance(target, int):
        # `--fd 3` naming a descriptor systemd passed (or that crossed the USR2 exec).
        return next((key for key, sock in handed.sockets.items() if sock.fileno() == target), None)
    return None


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
