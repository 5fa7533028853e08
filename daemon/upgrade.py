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

The steps, driven by the arbiter:

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
   the environment; the listeners go through ``open_listeners(config,
   inherited=...)`` like any first start; the old workers are still children
   and become the previous generation; then the same readiness-gated roll as
   HUP replaces them. If the new generation is not ready within
   ``--timeout-worker-boot`` or dies, it is killed, the old workers keep
   serving and ``upgrade_rollback`` is logged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import structlog

from daemon.upgrade_check import Preflight, config_argv
from daemon.upgrade_check import main as check_entry

log = structlog.get_logger("corral.master")

HANDOFF_VAR = "CORRAL_HANDOFF"
HANDOFF_VERSION = 1
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


@dataclass(frozen=True)
class ListenerHandoff:
    """One listening socket crossing the exec."""

    fd: int
    address: str  # the key open_listeners looks up (daemon.listeners.address_key or the bind)
    owned: bool  # we bound it (a UNIX path we created is ours to unlink at exit)


@dataclass(frozen=True)
class WorkerHandoff:
    """One live worker crossing the exec: still our child afterwards."""

    pid: int
    control_fd: int  # read end of its control pipe
    generation: int
    started_at: float  # time.monotonic(): CLOCK_MONOTONIC is system-wide, so it survives exec
    serial: int = 0
    state: str = "ready"  # a daemon.workers.State value


@dataclass(frozen=True)
class Handoff:
    """Everything the new image needs to carry on where the old one stopped."""

    listeners: tuple[ListenerHandoff, ...]
    workers: tuple[WorkerHandoff, ...]
    generation: int
    socket_activated: bool = False  # listeners came from systemd: do not bind the implicit default
    upgraded_at: float = field(default_factory=time.monotonic)

    def to_json(self) -> str:
        """The handoff as the JSON text of ``$CORRAL_HANDOFF``."""
        data = asdict(self)
        data["v"] = HANDOFF_VERSION
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Handoff:
        """Parse ``$CORRAL_HANDOFF``; ``ValueError`` when it is not ours or malformed."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.pop("v", None) != HANDOFF_VERSION:
            raise ValueError("unknown CORRAL_HANDOFF version")
        try:
            return cls(
                listeners=tuple(ListenerHandoff(**item) for item in data["listeners"]),
                workers=tuple(WorkerHandoff(**item) for item in data["workers"]),
                generation=int(data["generation"]),
                socket_activated=bool(data.get("socket_activated", False)),
                upgraded_at=float(data.get("upgraded_at", time.monotonic())),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed CORRAL_HANDOFF: {exc}") from None

    def sockets(self) -> dict[str, socket.socket]:
        """``{address: socket}`` for ``open_listeners(config, inherited=...)``."""
        return {item.address: socket.socket(fileno=item.fd) for item in self.listeners}

    def owned_addresses(self) -> frozenset[str]:
        """Addresses the master bound itself (after open_listeners, set ``inherited=False`` on these)."""
        return frozenset(item.address for item in self.listeners if item.owned)


def read_handoff(environ: MutableMapping[str, str] | None = None) -> Handoff | None:
    """The handoff left by the previous image, removed from the environment; None on a first start.

    A malformed value is dropped with ``None``: starting fresh is safer than
    guessing which descriptors are which.
    """
    env = os.environ if environ is None else environ
    text = env.pop(HANDOFF_VAR, None)
    os.environ.pop(HANDOFF_VAR, None)
    if not text:
        return None
    try:
        handoff = Handoff.from_json(text)
    except ValueError:
        return None
    # The exec made them inheritable; the app's own subprocesses must not get them.
    for fd in [item.fd for item in handoff.listeners] + [w.control_fd for w in handoff.workers]:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass
    return handoff


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


class Upgrader:
    """The USR2 handler the arbiter calls (``run_master(upgrade=...)``): one upgrade at a time.

    First half, in the running image: start the :class:`Preflight` and have
    the arbiter watch it; on success hand everything over and exec. Second
    half, in the new image (``resumed=True``): the arbiter rolls the adopted
    workers and reports the roll's end through :meth:`roll_finished`.
    """

    def __init__(self, *, socket_activated: bool = False, resumed: bool = False) -> None:
        self.socket_activated = socket_activated
        self.rolling = resumed
        self.check: Preflight | None = None
        # Told each outcome (result, reason): the arbiter records it for corralctl (daemon.actions).
        self.report: Callable[[str, str], None] | None = None

    def in_flight(self, arbiter: Any) -> str | None:
        """Why a USR2 now must be ignored, or None."""
        if self.check is not None and self.check.ok is None:
            return "the upgrade check of a previous USR2 is still running"
        if self.rolling:
            return "the new generation of the previous upgrade is not ready yet"
        if getattr(arbiter, "roll", None) is not None:
            return "a rolling restart is in progress"
        if getattr(arbiter, "stopping", None):
            return "the master is stopping"
        return None

    def __call__(self, arbiter: Any) -> None:
        """USR2: start the check of the new code (the exec follows when it passes)."""
        busy = self.in_flight(arbiter)
        if busy:
            log.warning(EVENT_IGNORED, reason=busy)
            _say(f"USR2 ignored: {busy}")
            if self.report is not None:
                self.report("ignored", busy)
            return
        if self.check is not None:
            self.check.close()
        config = arbiter.config
        argv = config_argv(config)
        log.info(EVENT_STARTED, pid=os.getpid(), check=" ".join(argv))
        try:
            self.check = Preflight(argv, float(config.timeout_worker_boot),
                                   on_done=lambda check: self._checked(arbiter, check))
        except OSError as exc:
            self._rollback(f"cannot start the upgrade check: {exc}", stage="check")
            return
        arbiter.watch(self.check)

    def _checked(self, arbiter: Any, check: Preflight) -> None:
        if not check.ok:
            self._rollback(check.reason, stage="check")
            return
        busy = "the master is stopping" if getattr(arbiter, "stopping", None) else None
        if busy is None and getattr(arbiter, "roll", None) is not None:
            busy = "a rolling restart started during the check"
        if busy:
            self._rollback(busy, stage="check")
            return
        # From here no signal may be lost: block them (a new one stays pending
        # in the kernel, across the exec) and deal with those already recorded.
        block_signals()
        pending = getattr(arbiter, "pending", None)
        recorded = list(pending) if pending is not None else []
        stops = [sig for sig in recorded if sig in STOP_SIGNALS]
        if stops:
            # A stop asked while the check ran: stop, do not upgrade.
            unblock_signals()
            self._rollback(f"{signal.Signals(stops[0]).name} arrived during the check", stage="check")
            return
        if pending is not None:
            # Re-raised while blocked, each stays pending across execve and is
            # handled by the new image once it unblocks (or here, if exec fails).
            pending.clear()
            for sig in dict.fromkeys(recorded):
                os.kill(os.getpid(), sig)
        try:
            handoff = build_handoff(arbiter, socket_activated=self.socket_activated)
            log.info(EVENT_EXEC, pid=os.getpid(), argv=" ".join(exec_argv()), workers=len(handoff.workers),
                     listeners=len(handoff.listeners))
            exec_in_place(handoff)
        except OSError as exc:  # exec_in_place unblocked the signals again
            self._rollback(f"exec failed: {exc}", stage="exec")
        except BaseException:
            unblock_signals()
            raise

    def roll_finished(self, arbiter: Any, ok: bool, error: str = "") -> None:
        """Call when the roll of the adopted workers ends: done, or rolled back with ``error``."""
        if not self.rolling:
            return
        self.rolling = False
        if not ok:
            self._rollback(error or "the new generation did not become ready", stage="new-generation")
            return
        log.info(EVENT_DONE, pid=os.getpid(), generation=getattr(arbiter, "generation", None))
        if self.report is not None:
            self.report("done", "")
        _say(f"upgrade done: master pid {os.getpid()} runs the new code")
        notify = getattr(arbiter, "notify", None)
        # Same PID, so MAINPID= changes nothing for systemd; sent anyway so a
        # unit that watched a PID file or a tool following MAINPID stays right.
        if notify is not None and hasattr(notify, "mainpid"):
            notify.mainpid(os.getpid())
        if notify is not None:
            notify.ready()

    def _rollback(self, reason: str, *, stage: str) -> None:
        log.error(EVENT_ROLLBACK, reason=reason, stage=stage)
        if self.report is not None:
            self.report("rolled-back", f"{stage}: {reason}")
        _say(f"upgrade rolled back ({stage}), the running workers keep serving: {reason}")


def build_handoff(arbiter: Any, *, socket_activated: bool = False) -> Handoff:
    """Describe the arbiter's listeners and live workers for the next image."""
    listeners = tuple(
        ListenerHandoff(fd=item.sock.fileno(), address=item.address, owned=not item.inherited)
        for item in arbiter.listeners
    )
    workers = tuple(
        WorkerHandoff(pid=record.pid, control_fd=record.read_fd, generation=record.generation,
                      started_at=record.started_at, serial=record.serial, state=record.state.value)
        for record in arbiter.records.values()
        if record.state.value != "gone" and record.read_fd is not None
    )
    return Handoff(listeners=listeners, workers=workers, generation=int(arbiter.generation),
                   socket_activated=socket_activated)


@dataclass
class Resumed:
    """What a re-executed master takes over: pass to ``run_master``."""

    handoff: Handoff
    inherited: dict[str, socket.socket]
    adopted: list[Any]  # daemon.workers.WorkerRecord
    upgrader: Upgrader

    def listen_config(self, config: Any) -> Any:
        """``config`` for ``open_listeners``: without the implicit default bind when systemd's sockets came along."""
        if not self.handoff.socket_activated:
            return config
        from daemon import systemd

        implicit = systemd.implicit_bind(config)
        return systemd.listen_slice(config, [b for b in config.binds if b != implicit])

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

    def claim_ownership(self, listeners: Sequence[Any]) -> None:
        """Mark the sockets the first image bound itself as ours again (their UNIX files go at exit)."""
        owned = self.handoff.owned_addresses()
        for listener in listeners:
            if listener.address in owned:
                listener.inherited = False


def resume(environ: MutableMapping[str, str] | None = None) -> Resumed | None:
    """In the new image: the hand-off as ``run_master`` arguments, or None on a first start."""
    handoff = read_handoff(environ)
    if handoff is None:
        return None
    from daemon.workers import State, WorkerRecord

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
    return Resumed(handoff=handoff, inherited=handoff.sockets(), adopted=adopted,
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
