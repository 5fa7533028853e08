"""The master's PID file: written atomically, removed at exit only if still ours.

A reader (a supervisor, ``kill $(cat corral.pid)``) must never see a partial
or empty file, so the PID goes to a temporary file in the same directory that
is renamed over the target (``rename(2)`` is atomic within a file system).
During a USR2 upgrade the file may be rewritten by the new master; the old one
then must not delete it, hence the "still names us" check on removal.

A second master given the same file must not overwrite (and at its exit
delete) the file of a master still running: :func:`running_master` tells a
live corral master from a stale file (its PID dead, reused by a process
started after the file was written, or not a corral master), which a new
master takes over.
"""

from __future__ import annotations

import os


def write(path: str, pid: int | None = None) -> None:
    """Atomically make ``path`` contain ``pid`` (default: this process) and a newline."""
    import tempfile  # only with --pid

    pid = os.getpid() if pid is None else pid
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".corral-pid-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{pid}\n")
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; a PID file is meant to be read by others.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(path: str) -> int | None:
    """The PID in ``path``, or None if it is missing or not a number."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def remove(path: str, pid: int | None = None) -> bool:
    """Delete ``path`` if it still names ``pid`` (default: this process); True if deleted."""
    pid = os.getpid() if pid is None else pid
    if read(path) != pid:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# A PID file is written by the master it names after that master started; a
# process whose start is later than the file's time (this many seconds of
# slack for clock granularity) got the PID by reuse.
START_SLACK = 1.0


def running_master(path: str) -> int | None:
    """The PID of a live corral master other than this process that ``path`` names, else None.

    None means the file is missing, unreadable or stale and may be taken over:
    the PID is not running (or a zombie), the process holding it now started
    after the file was written (the PID was reused), or its command line is not
    corral's (the ``corral`` script, ``python -m daemon``). A process we may
    not inspect counts as a master: refusing to start is safer than taking the
    file of a running master.
    """
    pid = read(path)
    if pid is None or pid <= 0 or pid == os.getpid():
        return None
    import psutil

    try:
        written = os.stat(path).st_mtime
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if process.create_time() > written + START_SLACK:
            return None
        argv = process.cmdline()
    except (OSError, psutil.NoSuchProcess):
        return None
    except psutil.AccessDenied:
        return pid
    return pid if _is_corral(argv) else None


def _is_corral(argv: list[str]) -> bool:
    """True for the command line of a corral master: ``corral ...`` or ``python -m daemon ...``."""
    for index, arg in enumerate(argv):
        if os.path.basename(arg) == "corral" or arg == "-mdaemon":
            return True
        if arg == "-m" and argv[index + 1:index + 2] == ["daemon"]:
            return True
    return False
