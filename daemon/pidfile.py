"""The master's PID file: written atomically, removed at exit only if still ours.

A reader (a supervisor, ``kill $(cat corral.pid)``) must never see a partial
or empty file, so the PID goes to a temporary file in the same directory that
is renamed over the target (``rename(2)`` is atomic within a file system).
During a USR2 upgrade the file may be rewritten by the new master; the old one
then must not delete it, hence the "still names us" check on removal.
"""

from __future__ import annotations

import os
import tempfile


def write(path: str, pid: int | None = None) -> None:
    """Atomically make ``path`` contain ``pid`` (default: this process) and a newline."""
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
