"""Corral as PID 1 (a container): reap the orphans the kernel hands us, quietly.

In a PID namespace the first process adopts every orphan: the app's
double-forked helpers, a shell's background jobs. Their zombies must be
reaped or they fill the process table, but they are not workers: they are
never counted, never judged, and their exit status can never stop the
master. The master reaps its workers by PID only (``daemon.spawn.reap``);
this reaps every other zombie child except those someone else waits for
(``known``: the workers, the USR2 preflight).
"""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger("corral.master")


def reap_orphans(known: set[int]) -> int:
    """Reap every zombie child not in ``known``; return how many."""
    import psutil

    reaped = 0
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return 0
    for child in children:
        if child.pid in known:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        except psutil.Error:
            pass
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if pid:
            reaped += 1
            log.debug("orphan_reaped", pid=pid, status=os.waitstatus_to_exitcode(status))
    return reaped
