"""systemd glue: socket activation (``LISTEN_FDS``) and readiness (``sd_notify``).

Both protocols are small enough to speak with the standard library, so corral
needs no systemd package:

* **Socket activation.** systemd passes the sockets of a ``.socket`` unit as
  descriptors 3, 4, … and says so in ``LISTEN_PID`` (the process meant),
  ``LISTEN_FDS`` (how many) and ``LISTEN_FDNAMES`` (their
  ``FileDescriptorName=``, colon-separated). :func:`listen_fds` reads them once
  in the master and removes the variables, so neither the workers nor the
  application ever see them (a library in the app that also speaks the
  protocol would otherwise try to adopt our listeners).

* **Notification.** :class:`Notifier` sends ``READY=1``, ``STATUS=…``,
  ``RELOADING=1``, ``STOPPING=1``, ``MAINPID=`` and ``WATCHDOG=1`` as
  datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
  socket). Without the variable it is a no-op object, so the master calls it
  unconditionally. A failed send is logged once at debug level and otherwise
  ignored: systemd being gone must never take the master down.

What this module does with the sockets ends at :func:`handed_sockets`: it
wraps them and hands them to ``daemon.listeners.open_listeners``, which
decides which ``--bind`` entry each satisfies (``fd://NAME``, ``fd://N``, the
address it listens on) and drops the implicit default bind.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Mapping, MutableMapping

import structlog

from daemon.listeners import Handed, ListenerError, address_key

log = structlog.get_logger("corral.master")

# The first descriptor systemd passes (after stdin, stdout, stderr).
SD_LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
DEFAULT_FD_NAME = "unknown"  # what systemd itself uses for an unnamed socket


def listen_fds(environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> list[tuple[int, str]]:
    """The sockets systemd passed to process ``pid``: ``[(fd, name), …]`` from fd 3.

    ``environ`` defaults to ``os.environ``. When ``LISTEN_PID`` names another
    process (a child that inherited our environment) nothing is adopted. The
    three variables are removed from ``environ`` — and always from
    ``os.environ`` as well — whatever the outcome. The descriptors are marked
    close-on-exec: workers are forked, not executed, so they keep them, while a
    program the app spawns does not (the USR2 re-exec marks them inheritable
    itself, on purpose).
    """
    env = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    raw_pid, raw_count, raw_names = (env.get(name) for name in LISTEN_VARS)
    for mapping in (env, os.environ):
        for name in LISTEN_VARS:
            mapping.pop(name, None)
    if raw_pid is None or raw_count is None:
        return []
    try:
        if int(raw_pid) != pid:
            return []
        count = int(raw_count)
    except ValueError:
        log.warning("systemd_listen_fds_ignored", reason="LISTEN_PID/LISTEN_FDS are not numbers",
                    listen_pid=raw_pid, listen_fds=raw_count)
        return []
    names = raw_names.split(":") if raw_names else []
    found: list[tuple[int, str]] = []
    for index in range(max(count, 0)):
        fd = SD_LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else DEFAULT_FD_NAME
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:  # systemd promised a descriptor that is not there
            raise ListenerError(f"corral: systemd passed LISTEN_FDS={count} but fd {fd} is unusable: "
                                f"{exc.strerror}") from None
        found.append((fd, name))
    return found


def handed_sockets(environ: MutableMapping[str, str] | None = None) -> Handed | None:
    """The sockets systemd passed to this process (:func:`listen_fds`), for ``open_listeners``; None if none."""
    fds = listen_fds(environ)
    return wrap_fds(fds) if fds else None


def wrap_fds(fds: Iterable[tuple[int, str]]) -> Handed:
    """Wrap the ``(fd, name)`` pairs of :func:`listen_fds`: keyed by the address each really listens on.

    A descriptor that is not a stream socket raises
    :class:`~daemon.listeners.ListenerError`.
    """
    sockets: dict[str, socket.socket] = {}
    names: dict[str, str] = {}
    for fd, name in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ListenerError(f"corral: systemd socket {name!r} (fd {fd}) is not a socket: "
                                f"{exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ListenerError(f"corral: systemd socket {name!r} (fd {fd}) is not a stream socket "
                                "(use ListenStream=, not ListenDatagram=)")
        key = address_key(sock)
        sockets[key] = sock
        names.setdefault(name, key)
    return Handed(sockets=sockets, names=names, socket_activated=True)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends ``sd_notify`` datagrams; every method is a no-op when not under systemd."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        # Half the period systemd allows, so one late beat does not kill us.
        self.watchdog_interval: float | None = watchdog_usec / 2_000_000 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (``@`` = abstract namespace) and ``$WATCHDOG_USEC``.

        The watchdog applies only when ``WATCHDOG_PID`` is unset or names
        ``pid`` (default: this process).
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET") or None
        address: str | bytes | None = None
        if raw is not None:
            # Linux abstract sockets: '@' stands for the leading NUL byte.
            address = b"\0" + raw[1:].encode() if raw.startswith("@") else raw
        watchdog: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "0"))
            owner = env.get("WATCHDOG_PID")
            if usec > 0 and (not owner or int(owner) == pid):
                watchdog = usec
        except ValueError:
            watchdog = None
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        """True when there is a ``NOTIFY_SOCKET`` to talk to."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one newline-separated datagram; False if not sent."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.debug("sd_notify_failed", error=str(exc), address=repr(self.address))
            return False

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the first workers are ready (or a reload/upgrade is done)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> bool:
        """``STOPPING=1``: a shutdown has begun."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """``STATUS=text`` (one line: newlines would start new fields)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def mainpid(self, pid: int | None = None) -> bool:
        """``MAINPID=pid``: the process systemd should treat as the service (after an upgrade)."""
        return self.notify(f"MAINPID={os.getpid() if pid is None else pid}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``; the caller sends it only while master and workers are healthy."""
        return self.notify("WATCHDOG=1")

    def fileno(self) -> int | None:
        """The datagram socket's descriptor once created (master-only: a forked worker closes it)."""
        return self._sock.fileno() if self._sock is not None else None

    def close(self) -> None:
        """Release the datagram socket (it is reopened on the next send)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def forget_notify_socket(environ: MutableMapping[str, str] | None = None) -> None:
    """Drop ``NOTIFY_SOCKET`` and the watchdog variables (call in a forked worker).

    Workers and the application must not talk to systemd: with
    ``NotifyAccess=all`` a stray ``READY=1`` from the app would be believed.
    """
    env = os.environ if environ is None else environ
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
