"""USR2, the binary upgrade: the master re-executes itself in place and keeps its PID.

Invariant: **at most one upgrade is in flight, and the old generation keeps
serving until the new one is ready** — a broken install, a broken app or a
hanging startup costs a logged ``upgrade_rollback``, never an outage.

Why in place. A process supervisor (supervisor, circus, systemd) watches one
PID. A new master process would be a grandchild the supervisor does not know:
supervisor would think its child died, systemd needs ``MAINPID=`` and
``NotifyAccess=all`` to follow it. Re-executing keeps the PID, so every
supervisor keeps watching the right process, the PID file stays true, and
the workers stay the master's children (``waitpid`` keeps working). After the
upgrade the master still sends ``MAINPID=`` and ``READY=1`` (harmless).

The steps, driven by the arbiter, which the upgrader sees only through the
:class:`Master` protocol (its state compared as a ``MasterState``, its
listeners and live workers for the hand-off, its selector for the preflight,
its recorded signals, ``READY=1``):

1. **Preflight** (``daemon.upgrade_check``): a throw-away ``python -m
   daemon.upgrade --check ARGV`` builds the configuration as the CLI would,
   imports the new master modules and the new application, and exits 0 — or
   prints why not. The arbiter waits for it in its selector with a deadline of
   ``--timeout-worker-boot``; on failure it logs ``upgrade_rollback`` and
   nothing else changes. The exec only happens after a successful check.
2. **Exec** (:func:`exec_in_place`): the listening sockets and the workers'
   control pipes are made inheritable, described in ``$CORRAL_HANDOFF``
   (JSON, :class:`Handoff`), the master's signals are *blocked* — the mask and
   pending signals survive ``execve``, so a TERM in the exec window is
   delivered after the new image installs its handlers instead of killing it
   with the default action — and ``os.execv`` runs the same interpreter with
   the same ``sys.orig_argv`` (works for the ``corral`` script, ``python -m
   daemon`` and a script calling ``daemon.run``).
3. **Adopt** (new image): :func:`read_handoff` takes the description out of
   the environment; its sockets go to ``daemon.listeners.open_listeners``
   like systemd's or none at all; the old workers are still children
   and become the previous generation; then the same readiness-gated roll as
   HUP replaces them. If the new generation is not ready within
   ``--timeout-worker-boot`` or dies, it is killed, the old workers keep
   serving and ``upgrade_rollback`` is logged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import structlog

from daemon.handoff import HANDOFF_VAR, HANDOFF_VERSION, Handoff, ListenerHandoff, WorkerHandoff, read_handoff
from daemon.listeners import Handed, Listener
from daemon.master_state import MasterState
from daemon.upgrade_check import Preflight, config_argv
from daemon.upgrade_check import main as check_entry
from daemon.workers import State, WorkerRecord

__all__ = ["BLOCKED_SIGNALS", "HANDOFF_VAR", "HANDOFF_VERSION", "STOP_SIGNALS", "Handoff", "ListenerHandoff",
           "Master", "Resumed", "Upgrader", "WorkerHandoff", "build_handoff", "exec_in_place", "read_handoff",
           "resume"]

log = structlog.get_logger("corral.master")

# The log events of an upgrade (tests and operators grep for these names).
EVENT_STARTED = "upgrade_started"  # USR2 accepted, preflight running
EVENT_EXEC = "upgrade_exec"  # preflight passed, re-executing now
EVENT_ADOPTED = "upgrade_adopted"  # new image running with the handed-over listeners and workers
EVENT_DONE = "upgrade_done"  # new generation ready, previous one retired
EVENT_ROLLBACK = "upgrade_rollback"  # with reason=: the old generation keeps serving
EVENT_IGNORED = "upgrade_ignored"  # a USR2 while one is in flight
# Signals the master handles: blocked across the exec, unblocked by the new image.
# Signals that stop the master: recorded during the check, they cancel the exec.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
BLOCKED_SIGNALS = frozenset({
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT,
})


def block_signals() -> None:
    """Block the master's signals (kept pending across exec)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED_SIGNALS)


def unblock_signals() -> None:
    """Unblock them; call after the new image installed its handlers (pending ones arrive now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED_SIGNALS)


def exec_argv() -> list[str]:
    """The command line that starts this same program again with this interpreter."""
    return [sys.executable, *sys.orig_argv[1:]]


def exec_in_place(handoff: Handoff, argv: Sequence[str] | None = None) -> NoReturn:
    """Replace this process's image by a fresh one of the same program, same PID.

    Returns only by raising ``OSError`` when ``execv`` fails (the interpreter
    was removed, say); the signals are unblocked and the handoff withdrawn
    again first, so the caller logs the rollback and keeps serving.
    """
    for fd in [item.fd for item in handoff.listeners] + [w.control_fd for w in handoff.workers]:
        os.set_inheritable(fd, True)
    os.environ[HANDOFF_VAR] = handoff.to_json()
    command = list(argv) if argv is not None else exec_argv()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    block_signals()
    try:
        os.execv(command[0], command)
    except OSError:
        os.environ.pop(HANDOFF_VAR, None)
        unblock_signals()
        raise
    raise AssertionError("unreachable")  # pragma: no cover


class Master(Protocol):
    """What the upgrader sees of the master (``daemon.arbiter.Arbiter`` is one): the whole interface."""

    @property
    def config(self) -> Any: ...  # daemon.config.Config: the command line for the preflight
    @property
    def state(self) -> MasterState: ...
    @property
    def generation(self) -> int: ...
    @property
    def listeners(self) -> Sequence[Listener]: ...
    def live_workers(self) -> Iterable[WorkerRecord]: ...
    def watch(self, source: Preflight) -> None: ...  # wait on the preflight in the master's selector
    def recorded_signals(self) -> tuple[int, ...]: ...  # received, not yet dispatched
    def forget_recorded_signals(self) -> None: ...
    def announce_ready(self, *, mainpid: bool = False) -> None: ...  # READY=1 (and MAINPID=) to systemd


class Upgrader:
    """The USR2 handler the arbiter calls (``Arbiter(upgrade=...)``): one upgrade at a time.

    First half, in the running image: start the :class:`Preflight` and have
    the master watch it; on success hand everything over and exec. Second
    half, in the new image (``resumed=True``): the master rolls the adopted
    workers and reports the roll's end through :meth:`roll_finished`.
    """

    def __init__(self, *, socket_activated: bool = False, resumed: bool = False) -> None:
        self.socket_activated = socket_activated
        self.rolling = resumed
        self.check: Preflight | None = None
        # Told each outcome (result, reason): the arbiter records it for corralctl (daemon.actions).
        self.report: Callable[[str, str], None] | None = None

    def in_flight(self, master: Master) -> str | None:
        """Why a USR2 now must be ignored, or None."""
        if self.check is not None and self.check.ok is None:
            return "the upgrade check of a previous USR2 is still running"
        if self.rolling:
            return "the new generation of the previous upgrade is not ready yet"
        if master.state.rolling:
            return "a rolling restart is in progress"
        if master.state.leaving:
            return "the master is stopping"
        return None

    def __call__(self, master: Master) -> None:
        """USR2: start the check of the new code (the exec follows when it passes)."""
        busy = self.in_flight(master)
        if busy:
            log.warning(EVENT_IGNORED, reason=busy)
            _say(f"USR2 ignored: {busy}")
            if self.report is not None:
                self.report("ignored", busy)
            return
        if self.check is not None:
            self.check.close()
        config = master.config
        argv = config_argv(config)
        log.info(EVENT_STARTED, pid=os.getpid(), check=" ".join(argv))
        try:
            self.check = Preflight(argv, float(config.timeout_worker_boot),
                                   on_done=lambda check: self._checked(master, check))
        except OSError as exc:
            self._rollback(f"cannot start the upgrade check: {exc}", stage="check")
            return
        master.watch(self.check)

    def _checked(self, master: Master, check: Preflight) -> None:
        if not check.ok:
            self._rollback(check.reason, stage="check")
            return
        # A stop asked during the check (a TERM with --shutdown-delay included) wins over the exec.
        busy = "the master is stopping" if master.state.leaving else None
        if busy is None and master.state.rolling:
            busy = "a rolling restart started during the check"
        if busy:
            self._rollback(busy, stage="check")
            return
        # From here no signal may be lost: block them (a new one stays pending
        # in the kernel, across the exec) and deal with those already recorded.
        block_signals()
        recorded = master.recorded_signals()
        stops = [sig for sig in recorded if sig in STOP_SIGNALS]
        if stops:
            # A stop asked while the check ran: stop, do not upgrade.
            unblock_signals()
            self._rollback(f"{signal.Signals(stops[0]).name} arrived during the check", stage="check")
            return
        # Re-raised while blocked, each stays pending across execve and is
        # handled by the new image once it unblocks (or here, if exec fails).
        # Sent to this thread, not the process: another thread (one a --preload
        # app started, say) does not block them and would take them first.
        master.forget_recorded_signals()
        for sig in dict.fromkeys(recorded):
            signal.pthread_kill(threading.get_ident(), sig)
        try:
            handoff = build_handoff(master, socket_activated=self.socket_activated)
            log.info(EVENT_EXEC, pid=os.getpid(), argv=" ".join(exec_argv()), workers=len(handoff.workers),
                     listeners=len(handoff.listeners))
            exec_in_place(handoff)
        except OSError as exc:  # exec_in_place unblocked the signals again
            self._rollback(f"exec failed: {exc}", stage="exec")
        except BaseException:
            unblock_signals()
            raise

    def roll_finished(self, master: Master, ok: bool, error: str = "") -> None:
        """Call when the roll of the adopted workers ends: done, or rolled back with ``error``."""
        if not self.rolling:
            return
        self.rolling = False
        if not ok:
            self._rollback(error or "the new generation did not become ready", stage="new-generation")
            return
        log.info(EVENT_DONE, pid=os.getpid(), generation=master.generation)
        if self.report is not None:
            self.report("done", "")
        _say(f"upgrade done: master pid {os.getpid()} runs the new code")
        # Same PID, so MAINPID= changes nothing for systemd; sent anyway so a
        # unit that watched a PID file or a tool following MAINPID stays right.
        master.announce_ready(mainpid=True)

    def _rollback(self, reason: str, *, stage: str) -> None:
        log.error(EVENT_ROLLBACK, reason=reason, stage=stage)
        if self.report is not None:
            self.report("rolled-back", f"{stage}: {reason}")
        _say(f"upgrade rolled back ({stage}), the running workers keep serving: {reason}")


def build_handoff(master: Master, *, socket_activated: bool = False) -> Handoff:
    """Describe the master's listeners and live workers for the next image."""
    listeners = tuple(
        ListenerHandoff(fd=item.sock.fileno(), address=item.address, owned=not item.inherited)
        for item in master.listeners
    )
    workers = tuple(
        WorkerHandoff(pid=record.pid, control_fd=record.read_fd, generation=record.generation,
                      started_at=record.started_at, serial=record.serial, state=record.state.value)
        for record in master.live_workers()
        if record.state is not State.GONE and record.read_fd is not None
    )
    return Handoff(listeners=listeners, workers=workers, generation=int(master.generation),
                   socket_activated=socket_activated)


@dataclass
class Resumed:
    """What a re-executed master takes over: pass to ``run_master``."""

    handoff: Handoff
    handed: Handed  # the listening sockets, for daemon.listeners.open_listeners
    adopted: list[WorkerRecord]
    upgrader: Upgrader

    def abandon(self, reason: str) -> None:
        """The new image cannot serve after all (a listener error, say): stop the adopted workers.

        Call on any early exit of ``run_master`` after :func:`resume`; left
        alone, the previous generation would outlive its master as orphans
        still accepting on the shared sockets.
        """
        log.error(EVENT_ROLLBACK, reason=reason, stage="adopt", action="stopping the adopted workers")
        for record in self.adopted:
            try:
                os.kill(record.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def resume(environ: MutableMapping[str, str] | None = None) -> Resumed | None:
    """In the new image: the hand-off as ``run_master`` arguments, or None on a first start."""
    handoff = read_handoff(environ)
    if handoff is None:
        return None
    now = time.monotonic()
    adopted = []
    for item in handoff.workers:
        state = State(item.state)
        adopted.append(WorkerRecord(
            pid=item.pid, serial=item.serial, generation=item.generation, started_at=item.started_at,
            state=state, ready_at=now if state is State.READY else None,
            # The exec took a moment; do not count it against their heartbeats.
            last_heartbeat=now, read_fd=item.control_fd,
        ))
    log.info(EVENT_ADOPTED, pid=os.getpid(), workers=len(adopted), listeners=len(handoff.listeners),
             generation=handoff.generation)
    return Resumed(handoff=handoff, handed=handoff.handed(), adopted=adopted,
                   upgrader=Upgrader(socket_activated=handoff.socket_activated, resumed=True))


def _say(line: str) -> None:
    # The master's plain-line switch: silent with --log-format json.
    from daemon.pool import say

    say(line)


if __name__ == "__main__":
    # The preflight's command (daemon.upgrade_check): a running master of an
    # earlier release starts exactly this against the new install, so it stays.
    # os._exit, not sys.exit: a non-daemon thread the app starts at import
    # (an SDK's flusher, say) would keep the check alive until the deadline.
    _status = check_entry(sys.argv[1:])
    for _stream in (sys.stdout, sys.stderr):
        try:
            _stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(_status)
