"""The worker pool: the records of the master's workers, and everything that changes them.

:class:`Pool` keeps ``config.workers`` workers serving. It forks them
(``daemon.spawn``), reads their control pipes (ready, heartbeat, recycle,
fail), reaps them and judges each exit, enforces their deadlines (boot,
heartbeat, the kill after a graceful stop), samples their memory and applies
:func:`daemon.workers.plan`. Every replacement — a HUP roll, TTOU,
max-requests, memory, a silent event loop, a crash — goes through that plan:
the new worker is started first and the old one retired only once the new
one is ready.

What to decide is pure and lives in ``daemon.workers``; doing it lives here;
*when* to do it — signals turned into commands, the one wait — lives in
``daemon.arbiter``, whose ``Arbiter`` drives a Pool (``arbiter.pool``). The
operating system (fork, kill, waitpid, the clock, RSS) is reached through
``daemon.system.System`` only, so ``tests/test_pool.py`` runs a Pool without
a process.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from daemon.actions import INTERRUPTED, Actions
from daemon.config import Config, env_overlay
from daemon.listeners import Listener
from daemon.master_state import MasterState
from daemon.master_state import transition as master_transition
from daemon.metrics import Totals
from daemon.spawn import read_pipe, unexpected_exit
from daemon.system import System
from daemon.workers import (
    MEMORY_STRIKES,
    Due,
    Reason,
    State,
    Verdict,
    WorkerRecord,
    backoff_delay,
    boot_error,
    counts,
    deadlines,
    due,
    exit_verdict,
    jittered_limit,
    memory_strikes,
    plan,
    roll_pending,
    status_line,
    transition,
)
from server_core.control import EXIT_APP_FAILED, WORKER_SIGNALS, parse_messages
from server_core.metrics import parse_snapshot

log = structlog.get_logger("corral.master")

# A draining worker may use --timeout-graceful-shutdown twice: for its
# connections, then (after cancelling what is left) for lifespan shutdown.
# It is SIGKILLed only after both, plus this margin.
KILL_MARGIN = 5.0


def kill_delay(graceful: float) -> float:
    """Seconds after a graceful stop or retire before the worker is SIGKILLed."""
    return 2 * graceful + KILL_MARGIN
# After SIGUSR2 (dump stacks) to a worker whose loop went silent, how long
# faulthandler gets to write before the SIGKILL.
STACK_GRACE = 1.0
# QUIT: workers exit at once; anything still alive after this is killed.
QUIT_GRACE = 2.0
# Seconds between two RSS samples (--limit-worker-memory). With MEMORY_STRIKES
# samples in a row over the limit, a worker leaking 20 MB/s is caught within
# about 0.4 s, some 8 MB (10 % of a 100 MB limit) past it; a sample is one
# read of /proc/PID/statm per worker.
MEMORY_INTERVAL = 0.2


class Notifier(Protocol):
    """Where the master reports its lifecycle (systemd's sd_notify; no-op by default)."""

    watchdog_interval: float | None

    def ready(self) -> object: ...
    def reloading(self) -> object: ...
    def stopping(self) -> object: ...
    def status(self, text: str) -> object: ...
    def watchdog(self) -> object: ...
    def mainpid(self, pid: int | None = None) -> object: ...


class NullNotifier:
    """Nobody to tell."""

    watchdog_interval: float | None = None

    def ready(self) -> None:
        pass

    def reloading(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def mainpid(self, pid: int | None = None) -> None:
        pass


@dataclass
class Roll:
    """A HUP roll in progress, and what to go back to if its first new worker fails."""

    generation: int
    reason: str  # hup, upgrade
    previous_config: Config
    previous_floor: int
    previous_generation: int


# With --log-format json, stderr carries JSON lines only (log shippers parse
# every line); the same facts are in the structured events. Set by run_master.
PLAIN_LINES = True


def say(line: str) -> None:
    """One plain human line on stderr (``corral: ...``) for console logs."""
    if PLAIN_LINES:
        print(f"corral: {line}", file=sys.stderr, flush=True)


class Pool:
    """The master's workers, its mode, and the operations on them; ``daemon.arbiter.Arbiter`` drives it."""

    def __init__(self, config: Config, listeners: list[Listener], *, notify: Notifier | None = None,
                 app: Any = None, on_roll_end: Callable[[bool, str], None] | None = None,
                 system: System | None = None, extra_fds: Callable[[], Iterable[int]] | None = None,
                 selector: selectors.DefaultSelector | None = None) -> None:
        self.config = config
        # The descriptors of whoever drives the pool (the arbiter's wake-up pipe, its watched
        # sources): master-only as well, closed in every forked worker.
        self.extra_fds = extra_fds
        # fork, kill, waitpid, the clock and RSS: all the pool does to the OS (a test passes its own).
        self.system = system or System()
        self.listeners = listeners
        self.notify: Notifier = notify or NullNotifier()
        self.preloaded_app = app
        # Told when a roll ends: (True, "") done or superseded, (False, error) aborted.
        self.on_roll_end = on_roll_end
        self.records: dict[int, WorkerRecord] = {}
        self.target = int(config.workers)
        self.generation = 1  # generation of the config new workers get
        # The highest generation ever started: a new roll goes above it, so the
        # survivors of an aborted roll are older than the next roll's floor.
        self.last_generation = 1
        self.floor = 1  # workers older than this are replaced (a roll)
        self.serial = 0
        self.roll: Roll | None = None
        self.vacancy = Reason.START.value
        self.failures = 0  # consecutive failed boots while serving
        self.retry_at: float | None = None
        # The master's mode; changed by set_state only (daemon.master_state has the table).
        self.state = MasterState.SERVING
        # Facts, not modes (they only ever become True): some worker was ready once
        # (a failed boot is retried from then on), and READY=1 was sent.
        self.ever_ready = False
        self.announced_ready = False
        self.last_failure = ""
        self.stop_deadline: float | None = None
        # When --shutdown-delay's wait ends (the master is LEAVING until then).
        self.stop_requested: float | None = None
        self.exit_status = 0
        self.next_memory_sample: float | None = None
        # The signals sent to each live worker: an exit by any other signal was not our doing.
        self.sent_signals: dict[int, set[int]] = {}
        # One selector for the whole master: the pool registers the workers' pipes in it.
        self.selector = selector or selectors.DefaultSelector()
        self._last_status = ""
        # Counters of reaped workers (metrics stay monotonic) and the reloads/upgrades and their outcomes.
        self.totals = Totals()
        self.actions = Actions()

    # -- worker pipes --------------------------------------------------------

    def read_pipe(self, record: WorkerRecord) -> None:
        if record.read_fd is None:
            return
        data, eof = read_pipe(record.read_fd)
        messages, record.buffer = parse_messages(record.buffer + data)
        for message in messages:
            self._on_message(record, message.kind, message.arg)
        if eof:
            self.close_pipe(record)

    def close_pipe(self, record: WorkerRecord) -> None:
        if record.read_fd is not None:
            try:
                self.selector.unregister(record.read_fd)
            except (KeyError, ValueError):
                pass
            os.close(record.read_fd)
            record.read_fd = None

    def _on_message(self, record: WorkerRecord, kind: str, arg: str) -> None:
        now = self.system.monotonic()
        if kind == "hb":
            record.last_heartbeat = now
        elif kind == "ready" and record.state is State.BOOTING:
            record.ready_at = record.last_heartbeat = now
            self._transition(record, State.READY)
            self.ever_ready = True
            self.failures, self.retry_at = 0, None
        elif kind == "recycle" and record.state is State.READY and record.replace_reason is None:
            record.replace_reason = arg or Reason.MAX_REQUESTS.value
            log.info("worker_recycle", worker=record.pid, reason=record.replace_reason)
        elif kind == "fail":
            record.boot_error = arg
        elif kind == "stats":
            record.stats = parse_snapshot(arg) or record.stats

    # -- state changes -------------------------------------------------------

    def _transition(self, record: WorkerRecord, new: State, **fields: Any) -> None:
        old = transition(record, new)
        ready, total = counts(self.records.values())
        event = {State.READY: "worker_ready", State.DRAINING: "worker_draining",
                 State.FAILED: "worker_failed", State.GONE: "worker_exited"}[new]
        log.info(event, worker=record.pid, generation=record.generation, previous=old.value,
                 ready=ready, total=total, **fields)
        self._update_status()

    def set_state(self, new: MasterState, **fields: Any) -> None:
        """The one place the master's mode changes, and is logged (``master_state``)."""
        old, self.state = self.state, master_transition(self.state, new)
        if new is not old:
            log.info("master_state", state=new.value, previous=old.value, **fields)

    def _update_status(self) -> None:
        ready = counts(self.records.values())[0]
        text = status_line(self.records.values(), self.generation, self.last_failure)
        if text != self._last_status:
            self._last_status = text
            self.notify.status(text)
        if not self.announced_ready and not self.state.stopping and ready >= max(1, self.target):
            self.announced_ready = True
            say(f"ready: {ready} worker{'s' if ready != 1 else ''} serving (master pid {os.getpid()})")
            self.notify.ready()

    def _master_fds(self) -> list[int]:
        """Descriptors only the master may hold; a forked worker closes them first."""
        fds = [*(self.extra_fds() if self.extra_fds is not None else ()), self.selector.fileno()]
        fds += [r.read_fd for r in self.records.values() if r.read_fd is not None]
        # The sd_notify socket (created lazily by the first notification).
        notify_fd = getattr(self.notify, "fileno", lambda: None)()
        if notify_fd is not None:
            fds.append(notify_fd)
        return fds

    def signal_worker(self, record: WorkerRecord, sig: int) -> None:
        self.sent_signals.setdefault(record.pid, set()).add(sig)
        self.system.kill(record.pid, sig)  # if already dead, the CHLD wake-up reaps it

    def _spawn(self, reason: str) -> None:
        limit = jittered_limit(self.config.limit_max_requests, self.config.limit_max_requests_jitter)
        settings = self.config.server_settings(limit)
        try:
            pid, read_fd = self.system.spawn(settings, [lst.sock for lst in self.listeners],
                                             close_fds=self._master_fds(), app=self.preloaded_app,
                                             env=env_overlay(self.config) if self.config.env_file else None)
        except OSError as exc:  # fork or pipe failed: out of processes or memory
            log.error("spawn_failed", error=str(exc))
            self.failures += 1
            self.retry_at = self.system.monotonic() + backoff_delay(self.failures)
            return
        self.serial += 1
        record = WorkerRecord(pid=pid, serial=self.serial, generation=self.generation,
                              started_at=self.system.monotonic(), limit_max_requests=limit, read_fd=read_fd)
        self.records[pid] = record
        self.selector.register(read_fd, selectors.EVENT_READ, record)
        ready, total = counts(self.records.values())
        log.info("worker_spawned", worker=pid, generation=self.generation, reason=reason,
                 limit_max_requests=limit, ready=ready, total=total)

    def _retire(self, record: WorkerRecord, reason: str) -> None:
        """Gracefully stop one worker while the others serve on."""
        record.drain_reason = reason
        record.kill_at = self.system.monotonic() + kill_delay(self.config.timeout_graceful_shutdown)
        self._transition(record, State.DRAINING, reason=reason)
        self.signal_worker(record, WORKER_SIGNALS["retire"])

    def maintain(self) -> None:
        """Apply the plan: spawn what is missing, retire what is in excess."""
        if self.state.stopping or self.state is MasterState.HELD:
            return
        decision = plan(self.records.values(), target=self.target, floor=self.floor,
                        gap_reason=self.vacancy, now=self.system.monotonic(), retry_at=self.retry_at,
                        roll_reason=self.roll.reason if self.roll else Reason.HUP.value)
        for reason in decision.spawn:
            self._spawn(reason)
        for pid, reason in decision.retire:
            self._retire(self.records[pid], reason)
        if self.roll and not roll_pending(self.records.values(), self.floor) \
                and counts(self.records.values())[0] >= self.target:
            log.info("roll_done", generation=self.roll.generation)
            self._end_roll(True, "")
            self.notify.ready()
        self._update_status()

    # -- reaping and failures ------------------------------------------------

    def reap(self) -> None:
        for record in list(self.records.values()):
            status = self.system.reap(record.pid)
            if status is None:
                continue
            self.read_pipe(record)  # a last "ready" or "fail" may still be in the pipe
            self.close_pipe(record)
            record.exit_status = status
            self._on_exit(record)

    def _on_exit(self, record: WorkerRecord) -> None:
        previous = record.state
        del self.records[record.pid]
        in_roll = self.roll is not None and record.generation == self.roll.generation
        verdict = exit_verdict(previous, ever_ready=self.ever_ready, stopping=self.state.stopping,
                               in_roll=in_roll, reloading=bool(self.config.reload))
        reason = record.drain_reason or (Reason.CRASH.value if verdict is Verdict.CRASH else "")
        self._transition(record, State.GONE, status=record.exit_status, reason=reason)
        problem = unexpected_exit(record.exit_status, self.sent_signals.pop(record.pid, ()))
        # A boot failure has its own error line (_boot_failed); anything else is a crash to see
        # at --log-level warning: a non-zero status, or a signal nobody here sent (the OOM killer).
        if problem and verdict in (Verdict.CRASH, Verdict.EXPECTED):
            log.error("worker_crashed", worker=record.pid, status=record.exit_status, state=previous.value,
                      error=f"worker {record.pid} {problem}")
        self.totals.worker_exited(record.stats, reason)
        if verdict is Verdict.CRASH:
            self.vacancy = Reason.CRASH.value
            self.last_failure = f"worker {record.pid} {problem or f'died (status {record.exit_status})'}"
        elif verdict is not Verdict.EXPECTED:
            self._boot_failed(record, verdict)

    def _boot_failed(self, record: WorkerRecord, verdict: Verdict) -> None:
        message = boot_error(record, self.config.timeout_worker_boot)
        self.last_failure = f"boot failed: {message}"
        if verdict is Verdict.GIVE_UP:
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message, action="exit")
            say(f"the application could not start: {message}")
            self.exit_status = EXIT_APP_FAILED
            self.stop(MasterState.QUITTING)
        elif verdict is Verdict.WAIT:
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message,
                      action="wait-for-change")
            say(f"the application could not start, waiting for a change: {message}")
            self.roll = None
            if self.state is MasterState.LEAVING:
                # Leaving anyway (--shutdown-delay): spawn nothing until the delay ends and the stop begins.
                self.retry_at = self.stop_requested
            else:
                self.set_state(MasterState.HELD, reason="boot-failed")
        elif verdict is Verdict.ABORT_ROLL and self.roll is not None:
            log.error("roll_aborted", generation=self.roll.generation, worker=record.pid, error=message)
            say(f"reload aborted, the previous workers keep serving: {message}")
            # Back to the previous config; its generation number is never reused
            # (last_generation keeps the aborted one), so the next roll replaces
            # this roll's surviving new workers too.
            self.config = self.roll.previous_config
            self.floor = self.roll.previous_floor
            self.generation = self.roll.previous_generation
            self.target = int(self.config.workers)
            self._end_roll(False, message)
            self.notify.ready()
        else:
            self.failures += 1
            delay = backoff_delay(self.failures)
            self.retry_at = self.system.monotonic() + delay
            self.vacancy = Reason.RETRY.value
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message,
                      action="retry", retry_in=delay, failures=self.failures)
        self._update_status()

    # -- deadlines -----------------------------------------------------------

    def moments(self, now: float) -> list[float]:
        """The pool's pending moments: each worker's boot, heartbeat and kill, the stop, a retry, a sample."""
        moments = deadlines(list(self.records.values()), now=now,
                            boot_timeout=self.config.timeout_worker_boot,
                            heartbeat_timeout=self.config.timeout_worker_healthcheck)
        extras = [self.stop_deadline, self.retry_at, self.next_memory_sample]
        return moments + [moment for moment in extras if moment is not None]

    def check_workers(self, now: float) -> None:
        """Act on every worker deadline that has passed: kill, boot timeout, silent loop, the stop, a retry."""
        cfg = self.config
        for record, what in due(self.records.values(), now, boot_timeout=cfg.timeout_worker_boot,
                                heartbeat_timeout=cfg.timeout_worker_healthcheck,
                                supervising=not self.state.stopping):
            if what is Due.KILL:
                record.kill_at = None
                log.warning("worker_killed", worker=record.pid, reason=record.drain_reason)
                self.signal_worker(record, signal.SIGKILL)
            elif what is Due.BOOT_TIMEOUT:
                record.drain_reason = Reason.BOOT_TIMEOUT.value
                self._transition(record, State.FAILED, reason=record.drain_reason)
                self.signal_worker(record, signal.SIGKILL)
            else:
                # A silent event loop: log its stacks (SIGUSR2 → faulthandler), then kill it.
                log.error("heartbeat_timeout", worker=record.pid, timeout=cfg.timeout_worker_healthcheck)
                record.drain_reason = Reason.HEARTBEAT.value
                record.kill_at = now + STACK_GRACE
                self.vacancy = Reason.HEARTBEAT.value
                self._transition(record, State.DRAINING, reason=record.drain_reason)
                self.signal_worker(record, WORKER_SIGNALS["stacks"])
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            for record in self.records.values():
                log.warning("worker_killed", worker=record.pid, reason="shutdown-timeout")
                self.signal_worker(record, signal.SIGKILL)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None

    def check_memory(self, now: float) -> None:
        """Sample the workers' memory when it is time (--limit-worker-memory)."""
        if self.next_memory_sample is not None and now >= self.next_memory_sample:
            # A HUP may have removed the limit: then stop sampling.
            self.next_memory_sample = now + MEMORY_INTERVAL if self.config.limit_worker_memory else None
            if self.next_memory_sample is not None:
                self._sample_memory()

    def _sample_memory(self) -> None:
        if self.config.limit_worker_memory is None:  # sampled only with a limit
            return
        limit = int(self.config.limit_worker_memory) * 1024 * 1024
        for record in self.records.values():
            if record.state is not State.READY or record.replace_reason is not None:
                continue
            rss = self.system.rss(record.pid)
            if rss is None:
                continue
            record.memory_strikes = memory_strikes(record.memory_strikes, rss, limit)
            if record.memory_strikes >= MEMORY_STRIKES:
                record.replace_reason = Reason.MEMORY.value
                log.warning("worker_recycle", worker=record.pid, reason=record.replace_reason,
                            rss_mib=rss // (1024 * 1024), limit_mib=self.config.limit_worker_memory)

    # -- stop, roll, adopt ---------------------------------------------------

    def stop(self, how: MasterState) -> None:
        """Stop every worker: ``STOPPING`` gracefully, ``QUITTING`` at once; each with a kill deadline."""
        self.interrupt_actions()
        if self.state is MasterState.QUITTING or self.state is how:
            return
        mode = "quit" if how is MasterState.QUITTING else "term"
        self.set_state(how)
        self.notify.stopping()
        now = self.system.monotonic()
        if mode == "quit":
            sig, self.stop_deadline = WORKER_SIGNALS["quit"], now + QUIT_GRACE
        else:
            sig = WORKER_SIGNALS["shutdown"]
            self.stop_deadline = now + kill_delay(self.config.timeout_graceful_shutdown)
        log.info("shutdown", mode=mode, workers=len(self.records))
        for record in self.records.values():
            record.kill_at = None
            if record.state in (State.BOOTING, State.READY):
                record.drain_reason = Reason.QUIT.value if mode == "quit" else Reason.SHUTDOWN.value
                self._transition(record, State.DRAINING, reason=record.drain_reason)
            self.signal_worker(record, sig)

    def interrupt_actions(self) -> None:
        """A stop began: every reload or upgrade still running ends as ``interrupted``."""
        for action in list(self.actions.items):
            self.actions.finish(action, INTERRUPTED, "the master is stopping")

    def _end_roll(self, ok: bool, error: str, *, superseded: bool = False) -> None:
        if self.roll is not None:
            self.actions.roll_ended(self.roll.generation, ok, error, superseded)
        self.roll = None
        if self.state.rolling and not superseded:
            # (A roll that began before a TERM with --shutdown-delay ends while the master is leaving.)
            self.set_state(MasterState.SERVING, roll="done" if ok else "aborted")
        if self.on_roll_end is not None:
            callback, self.on_roll_end = self.on_roll_end, None
            callback(ok, error)

    def start_roll(self, config: Config, reason: str) -> None:
        """Replace every worker by one of a new generation running ``config``, readiness-gated."""
        if self.roll is not None:
            # A new roll supersedes the running one; its new workers stay current.
            log.info("roll_superseded", generation=self.roll.generation)
            self._end_roll(True, "", superseded=True)
        self.last_generation = max(self.last_generation, self.generation) + 1
        self.roll = Roll(generation=self.last_generation, reason=reason, previous_config=self.config,
                         previous_floor=self.floor, previous_generation=self.generation)
        self.config = config
        self.generation = self.floor = self.roll.generation
        self.target = int(config.workers)
        self.vacancy = reason
        self.failures, self.retry_at = 0, None
        self.set_state(MasterState.UPGRADING if reason == "upgrade" else MasterState.ROLLING,
                        generation=self.generation)
        if config.limit_worker_memory and self.next_memory_sample is None:
            self.next_memory_sample = self.system.monotonic() + MEMORY_INTERVAL
        log.info("roll_started", generation=self.generation, workers=self.target, reason=reason)

    def adopt(self, record: WorkerRecord) -> None:
        """Supervise a worker forked before this image (the USR2 re-exec hands them over)."""
        self.records[record.pid] = record
        self.serial = max(self.serial, record.serial)
        self.generation = max(self.generation, record.generation)
        self.last_generation = max(self.last_generation, self.generation)
        self.floor = self.generation
        if record.state is State.READY:
            self.ever_ready = self.announced_ready = True
        if record.read_fd is not None:
            os.set_blocking(record.read_fd, False)
            self.selector.register(record.read_fd, selectors.EVENT_READ, record)
        log.info("worker_adopted", worker=record.pid, generation=record.generation, state=record.state.value)

