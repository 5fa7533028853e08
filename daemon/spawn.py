"""A worker process from the master's side: fork it, read its pipe, signal it, reap it.

``spawn_worker`` is the only code that runs on both sides of ``os.fork()``.

The parent gets the child's PID and the read end of its control pipe. The
child leaves the master's world behind before it serves: default signal
dispositions (the master's handlers would record into the master's memory and
write to its wake-up pipe), no master-only descriptors (other workers' pipes,
the wake-up pipe, the selector), then ``server_core.worker.serve``.

Before its first fork the master loads the serving stack (:func:`prepare`:
the event loop, the parser, the protocols, the log stack), so the workers
share those pages instead of each importing them; importing ``daemon``'s own
modules still loads none of it (``corralctl`` and the CLI stay light). The
application is imported in the workers only, unless ``--preload``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import traceback
from collections.abc import Collection, Iterable, Mapping, Sequence
from socket import socket
from typing import Any

from server_core.control import PipeControl
from server_core.settings import ServerSettings

# Signals the master handles; a fresh worker starts with default dispositions
# for them until serve() installs its own.
MASTER_SIGNALS = (
    signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT,
)
# Exit status of a child that crashed before or outside serve().
EXIT_SPAWN_ERROR = 1
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def spawn_worker(settings: ServerSettings, sockets: Sequence[socket], *,
                 close_fds: Iterable[int] = (), app: Any = None,
                 env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Fork a worker serving on ``sockets``; return ``(pid, control_read_fd)`` in the master."""
    read_fd, write_fd = os.pipe()
    # Buffered output would otherwise be written twice, once by each process.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    # Everything the master holds now is frozen out of the collector's sight:
    # a collection in the worker would otherwise write to every object's
    # header and unshare the pages they live on (copy-on-write).
    gc.freeze()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        return pid, read_fd
    _run_child(settings, sockets, read_fd, write_fd, list(close_fds), app, env or {})
    raise AssertionError("unreachable")  # _run_child never returns


def _run_child(settings: ServerSettings, sockets: Sequence[socket], read_fd: int, write_fd: int,
               close_fds: list[int], app: Any, env: Mapping[str, str]) -> None:
    status = EXIT_SPAWN_ERROR
    master = os.getppid()
    try:
        _reset_signals()
        _die_with(master)
        os.close(read_fd)
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        # Only the master talks to systemd (a stray READY=1 from the app
        # would be believed under NotifyAccess=all).
        from daemon.systemd import forget_notify_socket
        from server_core.worker import serve

        forget_notify_socket()
        # --env-file, under the real environment (the master never loads it itself).
        os.environ.update(env)
        status = serve(settings, sockets, control=PipeControl(write_fd), app=app)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else EXIT_SPAWN_ERROR
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        # Never return into the master's code, never run its atexit handlers.
        os._exit(status)


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl-C in a terminal reaches the whole process group; the master decides
    # what it means and signals the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_libc_prctl: Any = None


def _prctl() -> Any:
    """libc's ``prctl`` (Linux), loaded once: in the master, before it forks (see :func:`prepare`)."""
    global _libc_prctl
    if _libc_prctl is None:
        _libc_prctl = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                _libc_prctl = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
    return _libc_prctl or None


def prepare(settings: ServerSettings) -> None:
    """Load, in the master before its first fork, what every worker needs before it serves.

    Done once here, it sits in pages the workers share instead of being
    built again in each of them (and a worker starts sooner): libc's
    ``prctl`` for :func:`_die_with`, and the modules of the serving stack
    (``server_core.worker.warm``; the application itself only with ``--preload``).
    """
    from server_core.worker import warm

    _prctl()
    warm(settings)


def _die_with(master: int) -> None:
    """Have the kernel send SIGTERM (a graceful stop) if the master dies (Linux).

    Without it a SIGKILLed master leaves its workers serving forever, owned
    by nobody. Elsewhere this is a no-op.
    """
    prctl = _prctl()
    if prctl is None:
        return
    try:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except OSError:
        return
    if os.getppid() != master:  # the master died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def read_pipe(fd: int) -> tuple[bytes, bool]:
    """Everything waiting in a worker's (non-blocking) control pipe, and whether it hit EOF."""
    data = b""
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data, True
            data += chunk
    except BlockingIOError:
        return data, False


def send_signal(pid: int, sig: int) -> bool:
    """Signal a worker; False if it is already gone (its exit is reaped separately)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def unexpected_exit(status: int | None, sent: Collection[int] = ()) -> str | None:
    """What was wrong with a worker's exit, or None when it was clean or the master's doing.

    ``status`` is :func:`reap`'s (negative: killed by that signal); ``sent``
    the signals the master sent this worker. A non-zero status is the
    worker's own failure; a signal the master did not send came from someone
    else — for SIGKILL most often the kernel's out-of-memory killer.
    """
    if not status:
        return None
    if status > 0:
        return f"exited with status {status}"
    if -status in sent:
        return None
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    if -status == signal.SIGKILL:
        return (f"was killed by {name}, which corral did not send: most likely the kernel's out-of-memory "
                "killer (check the worker's memory, dmesg, or the container's memory limit)")
    return f"was killed by {name}, which corral did not send"


def reap(pid: int) -> int | None:
    """The exit code of worker ``pid`` if it has exited (negative: killed by that signal), else None.

    Waits for this PID only, never ``waitpid(-1)``: another child of the
    master (the USR2 preflight's Popen) must keep its status for its owner.
    """
    try:
        found, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0  # reaped elsewhere: gone all the same
    return None if found == 0 else os.waitstatus_to_exitcode(status)
