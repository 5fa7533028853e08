"""The master loop: one selector, signals as commands, one way to replace a worker.

The master owns the listeners and supervises the workers it forks. Everything
it does happens in :meth:`Arbiter.run`'s loop, which waits in one selector on
the signal wake-up pipe, every worker's control pipe and the earliest deadline
(a boot, a heartbeat, a graceful stop, a backoff, a memory sample). Signal
handlers only append the signal number to a queue; the loop turns each one
into a command through ``COMMANDS`` (a readable table, not scattered ifs).

Every replacement — a HUP roll, TTOU, max-requests, memory, a silent event
loop, a crash — goes through :func:`daemon.workers.plan`: the new worker is
started first and the old one retired only once the new one is ready.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from daemon import pidfile
from daemon.listeners import Listener, ListenerError, close_listeners, open_listeners
from daemon.spawn import read_pipe, reap, send_signal, spawn_worker
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
    oldest_serving,
    plan,
    roll_pending,
    scale,
    status_line,
    transition,
)
from server_core.control import EXIT_APP_FAILED, WORKER_SIGNALS, parse_messages

log = structlog.get_logger("corral.master")

# Seconds past --timeout-graceful-shutdown before a draining worker is
# SIGKILLed: room for lifespan shutdown after the worker's own timeout.
KILL_MARGIN = 5.0
# After SIGUSR2 (dump stacks) to a worker whose loop went silent, how long
# faulthandler gets to write before the SIGKILL.
STACK_GRACE = 1.0
# QUIT: workers exit at once; anything still alive after this is killed.
QUIT_GRACE = 2.0
MEMORY_INTERVAL = 1.0
# A wait that ends this much later than asked means the master was stopped
# (SIGSTOP, Ctrl-Z), not merely busy: see Arbiter._forgive.
OVERSLEPT = 1.0

COMMANDS = {
    signal.SIGTERM: "stop",
    signal.SIGINT: "interrupt",
    signal.SIGQUIT: "quit",
    signal.SIGHUP: "reload",
    signal.SIGTTIN: "scale_up",
    signal.SIGTTOU: "scale_down",
    signal.SIGUSR1: "reopen",
    signal.SIGUSR2: "upgrade",
    signal.SIGWINCH: "winch",
    signal.SIGCHLD: "reap",
    signal.SIGCONT: "resume",
}


class Notifier(Protocol):
    """Where the master reports its lifecycle (systemd's sd_notify; no-op by default)."""

    watchdog_interval: float | None

    def ready(self) -> object: ...
    def reloading(self) -> object: ...
    def stopping(self) -> object: ...
    def status(self, text: str) -> object: ...
    def watchdog(self) -> object: ...


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


class Watched(Protocol):
    """Something else the loop waits on (the USR2 preflight, say): a readable fd and a deadline."""

    def fileno(self) -> int: ...
    def on_readable(self) -> bool: ...  # True: finished, stop watching
    def deadline(self) -> float | None: ...
    def on_deadline(self) -> bool: ...  # called once the deadline passed; True: finished


@dataclass
class Roll:
    """A HUP roll in progress, and what to go back to if its first new worker fails."""

    generation: int
    reason: str  # hup, upgrade
    previous_config: Any
    previous_floor: int
    previous_generation: int


# With --log-format json, stderr carries JSON lines only (log shippers parse
# every line); the same facts are in the structured events.
PLAIN_LINES = True


def say(line: str) -> None:
    """One plain human line on stderr (``corral: ...``) for console logs."""
    if PLAIN_LINES:
        print(f"corral: {line}", file=sys.stderr, flush=True)


class Arbiter:
    """The master's state and loop. Create, then :meth:`run` once."""

    def __init__(self, config: Any, listeners: list[Listener], *, notify: Notifier | None = None,
                 app: Any = None, upgrade: Callable[[Arbiter], None] | None = None,
                 on_roll_end: Callable[[bool, str], None] | None = None) -> None:
        self.config = config
        self.listeners = listeners
        self.notify: Notifier = notify or NullNotifier()
        self.preloaded_app = app
        self.upgrade = upgrade
        # Told when a roll ends: (True, "") done or superseded, (False, error) aborted.
        self.on_roll_end = on_roll_end
        self.watched: list[Watched] = []
        self.records: dict[int, WorkerRecord] = {}
        self.target = int(config.workers)
        self.generation = 1  # generation of the config new workers get
        self.floor = 1  # workers older than this are replaced (a roll)
        self.serial = 0
        self.roll: Roll | None = None
        self.vacancy = Reason.START.value
        self.failures = 0  # consecutive failed boots while serving
        self.on_hold = False  # --reload with a broken app: spawn nothing until the next HUP
        self.retry_at: float | None = None
        self.ever_ready = False
        self.announced_ready = False
        self.last_failure = ""
        self.stopping: str | None = None
        self.stop_deadline: float | None = None
        self.exit_status = 0
        self.interrupts = 0
        self.next_memory_sample: float | None = None
        self.next_watchdog: float | None = None
        self.pending: collections.deque[int] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self._last_status = ""

    # -- setup ---------------------------------------------------------------

    def _install_signals(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in COMMANDS:
            signal.signal(sig, self._record_signal)
        # A re-executed master (USR2) starts with these blocked so none is
        # lost or fatal during the exec; now that they are handled, let them in.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(COMMANDS))

    def _record_signal(self, signum: int, _frame: object) -> None:
        # Only record: the loop does the work (no logging, no waitpid here).
        self.pending.append(signum)

    def _teardown(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in COMMANDS:
            signal.signal(sig, signal.SIG_DFL)
        for record in self.records.values():
            self._close_pipe(record)
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit status (0, or 3 if the app cannot start)."""
        self._install_signals()
        try:
            if self.config.limit_worker_memory:
                self.next_memory_sample = time.monotonic() + MEMORY_INTERVAL
            if self.notify.watchdog_interval:
                self.next_watchdog = time.monotonic() + self.notify.watchdog_interval
            self._maintain()
            while True:
                self._wait()
                self._dispatch()
                self._reap()
                self._check_timers()
                if self.stopping and not self.records:
                    return self.exit_status
                self._maintain()
        finally:
            self._teardown()

    def _wait(self) -> None:
        now = time.monotonic()
        moments = deadlines(list(self.records.values()), now=now,
                            boot_timeout=self.config.timeout_worker_boot,
                            heartbeat_timeout=self.config.timeout_worker_healthcheck)
        extras = [self.stop_deadline, self.retry_at, self.next_memory_sample, self.next_watchdog]
        extras += [w.deadline() for w in self.watched]
        moments += [moment for moment in extras if moment is not None]
        timeout = max(0.0, min(moments) - now) if moments else None
        events = self.selector.select(timeout)
        if timeout is not None and time.monotonic() - now - timeout >= OVERSLEPT:
            self._forgive(time.monotonic() - now)
        for key, _ in events:
            if key.data is None:
                self._drain_wakeup()
            elif isinstance(key.data, WorkerRecord):
                self._read_pipe(key.data)
            elif key.data.on_readable():
                self.unwatch(key.data)

    def _forgive(self, away: float) -> None:
        """Restart the workers' clocks after the master was stopped for up to ``away`` seconds.

        After Ctrl-Z and ``fg`` the whole process group was stopped: the
        workers could not beat either, and without this every one would look
        stuck. Each gets a fresh heartbeat period and its boot and kill
        deadlines move by the time away.
        """
        log.warning("master_was_stopped", seconds=round(away, 1))
        now = time.monotonic()
        for record in self.records.values():
            record.started_at += away
            if record.last_heartbeat is not None:
                record.last_heartbeat = now
            if record.kill_at is not None:
                record.kill_at += away

    def watch(self, source: Watched) -> None:
        """Also wait on ``source`` (its fd and its deadline) until it says it is finished."""
        self.watched.append(source)
        self.selector.register(source.fileno(), selectors.EVENT_READ, source)

    def unwatch(self, source: Watched) -> None:
        """Stop waiting on ``source``."""
        if source in self.watched:
            self.watched.remove(source)
            self.selector.unregister(source.fileno())

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _dispatch(self) -> None:
        while self.pending:
            signum = self.pending.popleft()
            getattr(self, "on_" + COMMANDS[signal.Signals(signum)])()

    # -- worker pipes --------------------------------------------------------

    def _read_pipe(self, record: WorkerRecord) -> None:
        if record.read_fd is None:
            return
        data, eof = read_pipe(record.read_fd)
        messages, record.buffer = parse_messages(record.buffer + data)
        for message in messages:
            self._on_message(record, message.kind, message.arg)
        if eof:
            self._close_pipe(record)

    def _close_pipe(self, record: WorkerRecord) -> None:
        if record.read_fd is not None:
            try:
                self.selector.unregister(record.read_fd)
            except (KeyError, ValueError):
                pass
            os.close(record.read_fd)
            record.read_fd = None

    def _on_message(self, record: WorkerRecord, kind: str, arg: str) -> None:
        now = time.monotonic()
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

    # -- state changes -------------------------------------------------------

    def _transition(self, record: WorkerRecord, new: State, **fields: Any) -> None:
        old = transition(record, new)
        ready, total = counts(self.records.values())
        event = {State.READY: "worker_ready", State.DRAINING: "worker_draining",
                 State.FAILED: "worker_failed", State.GONE: "worker_exited"}[new]
        log.info(event, worker=record.pid, generation=record.generation, previous=old.value,
                 ready=ready, total=total, **fields)
        self._update_status()

    def _update_status(self) -> None:
        ready = counts(self.records.values())[0]
        text = status_line(self.records.values(), self.generation, self.last_failure)
        if text != self._last_status:
            self._last_status = text
            self.notify.status(text)
        if not self.announced_ready and not self.stopping and ready >= max(1, self.target):
            self.announced_ready = True
            say(f"ready: {ready} worker{'s' if ready != 1 else ''} serving (master pid {os.getpid()})")
            self.notify.ready()

    def _signal(self, record: WorkerRecord, sig: int) -> None:
        send_signal(record.pid, sig)  # if already dead, the CHLD wake-up reaps it

    def _spawn(self, reason: str) -> None:
        limit = jittered_limit(self.config.limit_max_requests, self.config.limit_max_requests_jitter)
        settings = self.config.server_settings(limit)
        close_fds = [self.wake_r, self.wake_w, self.selector.fileno()]
        close_fds += [r.read_fd for r in self.records.values() if r.read_fd is not None]
        try:
            pid, read_fd = spawn_worker(settings, [lst.sock for lst in self.listeners],
                                        close_fds=close_fds, app=self.preloaded_app)
        except OSError as exc:  # fork or pipe failed: out of processes or memory
            log.error("spawn_failed", error=str(exc))
            self.failures += 1
            self.retry_at = time.monotonic() + backoff_delay(self.failures)
            return
        self.serial += 1
        record = WorkerRecord(pid=pid, serial=self.serial, generation=self.generation,
                              started_at=time.monotonic(), limit_max_requests=limit, read_fd=read_fd)
        self.records[pid] = record
        self.selector.register(read_fd, selectors.EVENT_READ, record)
        ready, total = counts(self.records.values())
        log.info("worker_spawned", worker=pid, generation=self.generation, reason=reason,
                 limit_max_requests=limit, ready=ready, total=total)

    def _retire(self, record: WorkerRecord, reason: str) -> None:
        """Gracefully stop one worker while the others serve on."""
        record.drain_reason = reason
        record.kill_at = time.monotonic() + self.config.timeout_graceful_shutdown + KILL_MARGIN
        self._transition(record, State.DRAINING, reason=reason)
        self._signal(record, WORKER_SIGNALS["retire"])

    def _maintain(self) -> None:
        """Apply the plan: spawn what is missing, retire what is in excess."""
        if self.stopping or self.on_hold:
            return
        decision = plan(self.records.values(), target=self.target, floor=self.floor,
                        gap_reason=self.vacancy, now=time.monotonic(), retry_at=self.retry_at,
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

    def _reap(self) -> None:
        for record in list(self.records.values()):
            status = reap(record.pid)
            if status is None:
                continue
            self._read_pipe(record)  # a last "ready" or "fail" may still be in the pipe
            self._close_pipe(record)
            record.exit_status = status
            self._on_exit(record)

    def _on_exit(self, record: WorkerRecord) -> None:
        previous = record.state
        del self.records[record.pid]
        in_roll = self.roll is not None and record.generation == self.roll.generation
        verdict = exit_verdict(previous, ever_ready=self.ever_ready, stopping=bool(self.stopping),
                               in_roll=in_roll, reloading=bool(self.config.reload))
        reason = record.drain_reason or (Reason.CRASH.value if verdict is Verdict.CRASH else "")
        self._transition(record, State.GONE, status=record.exit_status, reason=reason)
        if verdict is Verdict.CRASH:
            self.vacancy = Reason.CRASH.value
            self.last_failure = f"worker {record.pid} died (status {record.exit_status})"
        elif verdict is not Verdict.EXPECTED:
            self._boot_failed(record, verdict)

    def _boot_failed(self, record: WorkerRecord, verdict: Verdict) -> None:
        message = boot_error(record, self.config.timeout_worker_boot)
        self.last_failure = f"boot failed: {message}"
        if verdict is Verdict.GIVE_UP:
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message, action="exit")
            say(f"the application could not start: {message}")
            self.exit_status = EXIT_APP_FAILED
            self._stop("quit")
        elif verdict is Verdict.WAIT:
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message,
                      action="wait-for-change")
            say(f"the application could not start, waiting for a change: {message}")
            self.on_hold = True
            self.roll = None
        elif verdict is Verdict.ABORT_ROLL and self.roll is not None:
            log.error("roll_aborted", generation=self.roll.generation, worker=record.pid, error=message)
            say(f"reload aborted, the previous workers keep serving: {message}")
            self.config = self.roll.previous_config
            self.floor = self.roll.previous_floor
            self.generation = self.roll.previous_generation
            self.target = int(self.config.workers)
            self._end_roll(False, message)
            self.notify.ready()
        else:
            self.failures += 1
            delay = backoff_delay(self.failures)
            self.retry_at = time.monotonic() + delay
            self.vacancy = Reason.RETRY.value
            log.error("boot_failed", worker=record.pid, status=record.exit_status, error=message,
                      action="retry", retry_in=delay, failures=self.failures)
        self._update_status()

    def _check_timers(self) -> None:
        now = time.monotonic()
        cfg = self.config
        for record, what in due(self.records.values(), now, boot_timeout=cfg.timeout_worker_boot,
                                heartbeat_timeout=cfg.timeout_worker_healthcheck,
                                supervising=not self.stopping):
            if what is Due.KILL:
                record.kill_at = None
                log.warning("worker_killed", worker=record.pid, reason=record.drain_reason)
                self._signal(record, signal.SIGKILL)
            elif what is Due.BOOT_TIMEOUT:
                record.drain_reason = Reason.BOOT_TIMEOUT.value
                self._transition(record, State.FAILED, reason=record.drain_reason)
                self._signal(record, signal.SIGKILL)
            else:
                # A silent event loop: log its stacks (SIGUSR2 → faulthandler), then kill it.
                log.error("heartbeat_timeout", worker=record.pid, timeout=cfg.timeout_worker_healthcheck)
                record.drain_reason = Reason.HEARTBEAT.value
                record.kill_at = now + STACK_GRACE
                self.vacancy = Reason.HEARTBEAT.value
                self._transition(record, State.DRAINING, reason=record.drain_reason)
                self._signal(record, WORKER_SIGNALS["stacks"])
        if self.stop_deadline is not None and now >= self.stop_deadline:
            self.stop_deadline = None
            for record in self.records.values():
                log.warning("worker_killed", worker=record.pid, reason="shutdown-timeout")
                self._signal(record, signal.SIGKILL)
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
        for source in list(self.watched):
            moment = source.deadline()
            if moment is not None and now >= moment and source.on_deadline():
                self.unwatch(source)
        if self.next_memory_sample is not None and now >= self.next_memory_sample:
            # A HUP may have removed the limit: then stop sampling.
            self.next_memory_sample = now + MEMORY_INTERVAL if self.config.limit_worker_memory else None
            if self.next_memory_sample is not None:
                self._sample_memory()
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.next_watchdog = now + (self.notify.watchdog_interval or 1.0)
            if not self.stopping and counts(self.records.values())[0] >= 1:
                self.notify.watchdog()

    def _sample_memory(self) -> None:
        import psutil

        limit = int(self.config.limit_worker_memory) * 1024 * 1024
        for record in self.records.values():
            if record.state is not State.READY or record.replace_reason is not None:
                continue
            try:
                rss = psutil.Process(record.pid).memory_info().rss
            except psutil.Error:
                continue
            record.memory_strikes = memory_strikes(record.memory_strikes, rss, limit)
            if record.memory_strikes >= MEMORY_STRIKES:
                record.replace_reason = Reason.MEMORY.value
                log.warning("worker_recycle", worker=record.pid, reason=record.replace_reason,
                            rss_mib=rss // (1024 * 1024), limit_mib=self.config.limit_worker_memory)

    # -- commands (one per signal, see COMMANDS) ------------------------------

    def _stop(self, mode: str) -> None:
        if self.stopping == "quit" or self.stopping == mode:
            return
        self.stopping = mode
        self.notify.stopping()
        now = time.monotonic()
        if mode == "quit":
            sig, self.stop_deadline = WORKER_SIGNALS["quit"], now + QUIT_GRACE
        else:
            sig = WORKER_SIGNALS["shutdown"]
            self.stop_deadline = now + self.config.timeout_graceful_shutdown + KILL_MARGIN
        log.info("shutdown", mode=mode, workers=len(self.records))
        for record in self.records.values():
            record.kill_at = None
            if record.state in (State.BOOTING, State.READY):
                record.drain_reason = Reason.QUIT.value if mode == "quit" else Reason.SHUTDOWN.value
                self._transition(record, State.DRAINING, reason=record.drain_reason)
            self._signal(record, sig)

    def on_stop(self) -> None:
        """TERM: graceful shutdown of every worker, then exit 0."""
        self._stop("term")

    def on_interrupt(self) -> None:
        """INT: as TERM; a second INT is QUIT (Ctrl-C twice)."""
        self.interrupts += 1
        self._stop("term" if self.interrupts == 1 else "quit")

    def on_quit(self) -> None:
        """QUIT: workers exit at once, then the master."""
        self._stop("quit")

    def on_reload(self) -> None:
        """HUP: validate the new configuration, then roll the workers onto it."""
        if self.stopping:
            return
        from daemon.config import ConfigError, reload_config

        try:
            new = reload_config(self.config)
        except ConfigError as exc:
            log.error("config_invalid", error=str(exc), action="keep-serving")
            say(f"reload refused, configuration invalid: {exc}")
            return
        if tuple(new.binds) != tuple(self.config.binds):
            log.warning("listeners_unchanged", reason="changing listeners needs a restart or USR2",
                        wanted=list(new.binds), kept=[lst.address for lst in self.listeners])
        if self.preloaded_app is not None:
            log.warning("app_not_reloaded", reason="--preload: the app was imported in the master; "
                        "new workers run the same code (use USR2 to load new code)")
        self.notify.reloading()
        self._reconfigure_logs(new)
        self.start_roll(new, Reason.HUP.value)

    def _end_roll(self, ok: bool, error: str) -> None:
        self.roll = None
        if self.on_roll_end is not None:
            callback, self.on_roll_end = self.on_roll_end, None
            callback(ok, error)

    def start_roll(self, config: Any, reason: str) -> None:
        """Replace every worker by one of a new generation running ``config``, readiness-gated."""
        if self.roll is not None:
            # A new roll supersedes the running one; its new workers stay current.
            log.info("roll_superseded", generation=self.roll.generation)
            self._end_roll(True, "")
        self.roll = Roll(generation=self.generation + 1, reason=reason, previous_config=self.config,
                         previous_floor=self.floor, previous_generation=self.generation)
        self.config = config
        self.generation = self.floor = self.roll.generation
        self.target = int(config.workers)
        self.vacancy = reason
        self.failures, self.retry_at, self.on_hold = 0, None, False
        if config.limit_worker_memory and self.next_memory_sample is None:
            self.next_memory_sample = time.monotonic() + MEMORY_INTERVAL
        log.info("roll_started", generation=self.generation, workers=self.target, reason=reason)

    def adopt(self, record: WorkerRecord) -> None:
        """Supervise a worker forked before this image (the USR2 re-exec hands them over)."""
        self.records[record.pid] = record
        self.serial = max(self.serial, record.serial)
        self.generation = max(self.generation, record.generation)
        self.floor = self.generation
        if record.state is State.READY:
            self.ever_ready = self.announced_ready = True
        if record.read_fd is not None:
            os.set_blocking(record.read_fd, False)
            self.selector.register(record.read_fd, selectors.EVENT_READ, record)
        log.info("worker_adopted", worker=record.pid, generation=record.generation, state=record.state.value)

    def _reconfigure_logs(self, config: Any) -> None:
        try:
            from server_core import logs

            logs.configure(config.server_settings(), process="master")
        except Exception as exc:  # a broken --log-config must not stop the reload
            log.error("log_config_invalid", error=str(exc))

    def on_scale_up(self) -> None:
        """TTIN: one worker more."""
        if not self.stopping:
            self.target = scale(self.target, +1)
            self.vacancy = Reason.TTIN.value
            log.info("scale", workers=self.target, reason="ttin")

    def on_scale_down(self) -> None:
        """TTOU: one worker fewer (never below one); the oldest retires."""
        if self.stopping or self.target <= 1:  # never below one; after WINCH (0) stay at 0
            return
        self.target = scale(self.target, -1)
        victim = oldest_serving(self.records.values())
        if victim is not None:
            victim.replace_reason = Reason.TTOU.value
        log.info("scale", workers=self.target, reason="ttou")

    def on_reopen(self) -> None:
        """USR1: reopen log files here and in every worker."""
        try:
            from server_core import logs

            logs.reopen()
        except Exception as exc:
            log.error("log_reopen_failed", error=str(exc))
        log.info("logs_reopened")
        for record in self.records.values():
            self._signal(record, WORKER_SIGNALS["reopen"])

    def on_upgrade(self) -> None:
        """USR2: the binary upgrade, handed to ``daemon.upgrade`` through the ``upgrade`` hook."""
        if self.stopping:
            return
        if self.upgrade is None:
            log.warning("upgrade_unavailable", reason="no upgrade handler in this master")
            return
        self.upgrade(self)

    def on_winch(self) -> None:
        """WINCH (off a terminal): stop every worker gracefully, keep master and sockets."""
        if self.stopping:
            return
        if os.isatty(0):
            # In a terminal, WINCH only means the window was resized.
            log.debug("winch_ignored", reason="stdin is a terminal")
            return
        self.target = 0
        for record in self.records.values():
            if record.state in (State.BOOTING, State.READY):
                record.replace_reason = Reason.WINCH.value
        log.info("scale", workers=0, reason="winch")

    def on_reap(self) -> None:
        """CHLD: nothing to do here; every turn of the loop reaps."""

    def on_resume(self) -> None:
        """CONT (``fg`` after Ctrl-Z): the workers were stopped too; none of them is stuck."""
        now = time.monotonic()
        for record in self.records.values():
            if record.last_heartbeat is not None:
                record.last_heartbeat = max(record.last_heartbeat, now)


def open_all(config: Any, inherited: dict[str, Any] | None) -> tuple[list[Listener], bool]:
    """The listeners, and whether systemd passed some: handed-over ones, systemd's, ``config.binds``."""
    if inherited is None:
        from daemon import systemd

        fds = systemd.listen_fds()
        if fds:
            binds, inherited = systemd.match_names(fds, config.binds, implicit=systemd.implicit_bind(config))
            return open_listeners(systemd.listen_slice(config, binds), inherited), True
    return open_listeners(config, inherited), False


def run_master(config: Any, *, notify: Notifier | None = None) -> int:
    """Open the listeners, fork the workers and supervise them until stopped; the exit status.

    Also the second half of a USR2 upgrade: a re-executed master finds the
    hand-off of the previous image (``daemon.upgrade.resume``), adopts its
    listeners and workers, and rolls them onto the new code at once.
    ``notify`` defaults to an sd_notify client (a no-op without ``$NOTIFY_SOCKET``).
    """
    from daemon import upgrade

    global PLAIN_LINES
    PLAIN_LINES = config.log_format != "json"
    if notify is None:
        from daemon.systemd import Notifier as SdNotifier

        notify = SdNotifier.from_environ()
    resumed = upgrade.resume()
    try:
        if resumed is not None:
            listeners, activated = open_all(resumed.listen_config(config), resumed.inherited)
            resumed.claim_ownership(listeners)
            activated = resumed.handoff.socket_activated
        else:
            listeners, activated = open_all(config, None)
    except ListenerError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        if resumed is not None:
            resumed.abandon(str(exc))  # no orphans of the previous image
        return 1
    scheme = "https" if config.ssl_certfile else "http"
    for listener in listeners:
        log.info("listening", address=listener.url(scheme), inherited=listener.inherited)
        say(f"listening on {listener.url(scheme)}")
    app = None
    if config.preload:
        from server_core.importer import AppLoadError, load

        try:
            app = load(config.server_settings())
        except AppLoadError as exc:
            log.error("boot_failed", error=exc.message, details=exc.details, action="exit")
            say(f"the application could not start: {exc}")
            close_listeners(listeners)
            if resumed is not None:
                resumed.abandon(exc.message)
            return EXIT_APP_FAILED
    if config.pid:
        pidfile.write(config.pid)
    log.info("master_started", pid=os.getpid(), workers=config.workers)
    upgrader = resumed.upgrader if resumed is not None else upgrade.Upgrader(socket_activated=activated)
    try:
        arbiter = Arbiter(config, listeners, notify=notify, app=app, upgrade=upgrader)
        if resumed is not None:
            for record in resumed.adopted:
                arbiter.adopt(record)
            arbiter.on_roll_end = lambda ok, error: upgrader.roll_finished(arbiter, ok, error)
            arbiter.start_roll(config, "upgrade")
        return arbiter.run()
    finally:
        close_listeners(listeners)
        if config.pid:
            pidfile.remove(config.pid)
        log.info("master_stopped", pid=os.getpid())
