"""The master loop: one selector, signals as commands.

The master owns the listeners and supervises the workers it forks. Everything
it does happens in :meth:`Arbiter.run`'s loop, which waits in one selector on
the signal wake-up pipe, every worker's control pipe and the earliest deadline
(a boot, a heartbeat, a graceful stop, a backoff, a memory sample, the
watchdog, a watched source such as the USR2 preflight). Signal handlers only
append the signal number to a queue; the loop turns each one into a command
through ``COMMANDS`` (a readable table, not scattered ifs).

The workers themselves — spawning, pipes, reaping, deadlines, the one way to
replace a worker — are a :class:`daemon.pool.Pool`, which ``Arbiter`` holds
(``arbiter.pool``) and drives.
:func:`daemon.master.run_master` opens the listeners and runs an ``Arbiter``.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from daemon import spawn
from daemon.actions import Action
from daemon.listeners import Listener
from daemon.master_state import MasterState
from daemon.pool import MEMORY_INTERVAL, Notifier, NullNotifier, Pool, say
from daemon.system import System
from daemon.workers import Reason, State, WorkerRecord, counts, oldest_serving, scale
from server_core.control import WORKER_SIGNALS

if TYPE_CHECKING:
    from daemon.config import Config

__all__ = ["COMMANDS", "Arbiter", "Notifier", "NullNotifier", "Watched"]

log = structlog.get_logger("corral.master")

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


class Watched(Protocol):
    """Something else the loop waits on (the USR2 preflight, say): a readable fd and a deadline."""

    def fileno(self) -> int: ...
    def on_readable(self) -> bool: ...  # True: finished, stop watching
    def deadline(self) -> float | None: ...
    def on_deadline(self) -> bool: ...  # called once the deadline passed; True: finished


class Arbiter:
    """The master: the loop that drives a :class:`~daemon.pool.Pool` (``self.pool``) from signals,
    worker pipes, watched sources and deadlines. Create, then :meth:`run` once."""

    def __init__(self, config: Config, listeners: list[Listener], *, notify: Notifier | None = None,
                 app: Any = None, upgrade: Callable[[Arbiter], None] | None = None,
                 on_roll_end: Callable[[bool, str], None] | None = None, system: System | None = None) -> None:
        # The master's one wait: signals, the workers' pipes (the pool registers them), watched sources.
        self.selector = selectors.DefaultSelector()
        self.pool = Pool(config, listeners, notify=notify, app=app, on_roll_end=on_roll_end, system=system,
                         extra_fds=self._own_fds, selector=self.selector)
        self.upgrade = upgrade
        self.watched: list[Watched] = []
        self.interrupts = 0
        self.next_watchdog: float | None = None
        self.pending: collections.deque[int] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        # For corralctl status and the metrics: this image, and the process across USR2 re-execs.
        self.image_started = time.time()
        self.image_id = f"{os.getpid()}-{time.time_ns()}"
        # A HUP that arrived during the USR2 roll: applied once that roll ends.
        self._deferred_reload: Action | None = None
        self._process_started: float | None = None

    @property
    def process_started(self) -> float:
        """When this process started (the same across USR2 re-execs); read when first asked
        (psutil is not imported on the way to the first worker)."""
        if self._process_started is None:
            self._process_started = process_start_time()
        return self._process_started

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

    def _own_fds(self) -> list[int]:
        # Watched sources (the control socket, the metrics listener and their clients) are the master's too.
        return [self.wake_r, self.wake_w, *(w.fileno() for w in self.watched)]

    def _record_signal(self, signum: int, _frame: object) -> None:
        # Only record: the loop does the work (no logging, no waitpid here).
        self.pending.append(signum)

    def _teardown(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in COMMANDS:
            signal.signal(sig, signal.SIG_DFL)
        for record in self.pool.records.values():
            self.pool.close_pipe(record)
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    # -- the loop ------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit status (0, or 3 if the app cannot start)."""
        self._install_signals()
        try:
            if self.pool.config.limit_worker_memory:
                self.pool.next_memory_sample = self.pool.system.monotonic() + MEMORY_INTERVAL
            if self.pool.notify.watchdog_interval:
                self.next_watchdog = self.pool.system.monotonic() + self.pool.notify.watchdog_interval
            self.pool.maintain()
            while True:
                self._wait()
                self._dispatch()
                self.pool.reap()
                self._check_timers()
                if self.pool.state.stopping and not self.pool.records:
                    return self.pool.exit_status
                self.pool.maintain()
                if self._deferred_reload is not None and self.pool.roll is None:
                    self.on_reload()
                    self.pool.maintain()
        finally:
            self._teardown()

    def _wait(self) -> None:
        now = self.pool.system.monotonic()
        moments = self.pool.moments(now)
        leaving = self.pool.stop_requested if self.pool.state is MasterState.LEAVING else None
        extras = [self.next_watchdog, leaving] + [w.deadline() for w in self.watched]
        moments += [moment for moment in extras if moment is not None]
        timeout = max(0.0, min(moments) - now) if moments else None
        events = self.selector.select(timeout)
        if timeout is not None and self.pool.system.monotonic() - now - timeout >= OVERSLEPT:
            self._forgive(self.pool.system.monotonic() - now)
        for key, _ in events:
            if key.data is None:
                self._drain_wakeup()
            elif isinstance(key.data, WorkerRecord):
                self.pool.read_pipe(key.data)
            elif key.data.on_readable():
                # Its fd is done; it may still wait for a deadline (a process's exit).
                self._unregister(key.data)
                if key.data.deadline() is None:
                    self.unwatch(key.data)

    def _forgive(self, away: float) -> None:
        """Restart the workers' clocks after the master was stopped for up to ``away`` seconds.

        After Ctrl-Z and ``fg`` the whole process group was stopped: the
        workers could not beat either, and without this every one would look
        stuck. Each gets a fresh heartbeat period and its boot and kill
        deadlines move by the time away.
        """
        log.warning("master_was_stopped", seconds=round(away, 1))
        now = self.pool.system.monotonic()
        for record in self.pool.records.values():
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
            self._unregister(source)

    def _unregister(self, source: Watched) -> None:
        try:
            self.selector.unregister(source.fileno())
        except (KeyError, ValueError):
            pass

    def _check_timers(self) -> None:
        now = self.pool.system.monotonic()
        self.pool.check_workers(now)
        for source in list(self.watched):
            moment = source.deadline()
            if moment is None or (now >= moment and source.on_deadline()):
                self.unwatch(source)
        self.pool.check_memory(now)
        if self.pool.state is MasterState.LEAVING and self.pool.stop_requested is not None and now >= self.pool.stop_requested:
            log.info("shutdown_delay_over", seconds=self.pool.config.shutdown_delay)
            self.pool.stop(MasterState.STOPPING)
        if self.next_watchdog is not None and now >= self.next_watchdog:
            self.next_watchdog = now + (self.pool.notify.watchdog_interval or 1.0)
            # Healthy: some worker ready, or none wanted (after WINCH the master
            # alone is the service until TTIN/HUP; systemd must not kill it).
            if not self.pool.state.stopping and counts(self.pool.records.values())[0] >= min(1, self.pool.target):
                self.pool.notify.watchdog()

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

    # -- commands (one per signal, see COMMANDS) ------------------------------

    def on_stop(self) -> None:
        """TERM: graceful shutdown of every worker, then exit 0 (after --shutdown-delay, serving meanwhile)."""
        delay = float(self.pool.config.shutdown_delay or 0)
        if delay > 0 and not self.pool.state.leaving:
            # /readyz says 503 from now on; keep serving while the load balancer
            # (a Kubernetes Service) takes this instance out of its endpoints.
            self.pool.stop_requested = self.pool.system.monotonic() + delay
            self.pool.set_state(MasterState.LEAVING, seconds=delay)
            self.pool.interrupt_actions()
            self.pool.notify.stopping()
            log.info("shutdown_delayed", seconds=delay, reason="--shutdown-delay: not ready, still serving")
            say(f"stopping in {delay:g}s (--shutdown-delay); /readyz answers 503, serving goes on meanwhile")
            return
        self.pool.stop(MasterState.STOPPING)

    def on_interrupt(self) -> None:
        """INT: as TERM; a second INT is QUIT (Ctrl-C twice)."""
        self.interrupts += 1
        self.pool.stop(MasterState.STOPPING if self.interrupts == 1 else MasterState.QUITTING)

    def on_quit(self) -> None:
        """QUIT: workers exit at once, then the master."""
        self.pool.stop(MasterState.QUITTING)

    def on_reload(self) -> None:
        """HUP: validate the new configuration, then roll the workers onto it."""
        self.request_reload()

    def request_reload(self, origin: str = "signal") -> Action:
        """HUP's work, recorded as an :class:`~daemon.actions.Action` whose result ``corralctl`` waits for."""
        from daemon.actions import IGNORED, REFUSED

        deferred, self._deferred_reload = self._deferred_reload, None
        action = deferred or self.pool.actions.begin("reload", origin)
        if self.pool.state.leaving:
            self.pool.actions.finish(action, IGNORED, "the master is stopping")
            return action
        if self.pool.roll is not None and self.pool.roll.reason == "upgrade":
            # Superseding the upgrade's roll would report the upgrade done (and
            # READY=1) before any new worker is ready: finish it first.
            self._deferred_reload = action
            if deferred is None:
                log.info("reload_deferred", reason="the USR2 upgrade's new generation is not ready yet; "
                         "the reload follows it")
                say("reload deferred until the upgrade's new generation is ready")
            return action
        from daemon.config import ConfigError, reload_config

        try:
            new = reload_config(self.pool.config)
        except ConfigError as exc:
            log.error("config_invalid", error=str(exc), action="keep-serving")
            say(f"reload refused, configuration invalid: {exc}")
            self.pool.actions.finish(action, REFUSED, f"configuration invalid: {exc}")
            return action
        if tuple(new.binds) != tuple(self.pool.config.binds):
            log.warning("listeners_unchanged", reason="changing listeners needs a restart or USR2",
                        wanted=list(new.binds), kept=[lst.address for lst in self.pool.listeners])
        if self.pool.preloaded_app is not None:
            log.warning("app_not_reloaded", reason="--preload: the app was imported in the master; "
                        "new workers run the same code (use USR2 to load new code)")
        self.pool.notify.reloading()
        self._reconfigure_logs(new)
        spawn.prepare(new.server_settings())  # a new --http, --loop or --ws: its modules too
        self.pool.start_roll(new, Reason.HUP.value)
        action.generation = self.pool.generation
        return action

    def _reconfigure_logs(self, config: Config) -> None:
        try:
            from server_core import logs

            logs.configure(config.server_settings(), process="master")
        except Exception as exc:  # a broken --log-config must not stop the reload
            log.error("log_config_invalid", error=str(exc))

    def on_scale_up(self) -> None:
        """TTIN: one worker more."""
        if not self.pool.state.stopping:
            self.pool.target = scale(self.pool.target, +1)
            self.pool.vacancy = Reason.TTIN.value
            log.info("scale", workers=self.pool.target, reason="ttin")

    def on_scale_down(self) -> None:
        """TTOU: one worker fewer (never below one); the oldest retires."""
        if self.pool.state.stopping or self.pool.target <= 1:  # never below one; after WINCH (0) stay at 0
            return
        self.pool.target = scale(self.pool.target, -1)
        victim = oldest_serving(self.pool.records.values())
        if victim is not None:
            victim.replace_reason = Reason.TTOU.value
        log.info("scale", workers=self.pool.target, reason="ttou")

    def on_reopen(self) -> None:
        """USR1: reopen log files here and in every worker."""
        try:
            from server_core import logs

            logs.reopen()
        except Exception as exc:
            log.error("log_reopen_failed", error=str(exc))
        log.info("logs_reopened")
        for record in self.pool.records.values():
            self.pool.signal_worker(record, WORKER_SIGNALS["reopen"])

    def on_upgrade(self) -> None:
        """USR2: the binary upgrade, handed to ``daemon.upgrade`` through the ``upgrade`` hook."""
        self.request_upgrade()

    def request_upgrade(self, origin: str = "signal") -> Action:
        """USR2's work, recorded as an action; its outcome comes through :meth:`upgrade_outcome`."""
        from daemon.actions import IGNORED

        action = self.pool.actions.begin("upgrade", origin)
        if self.pool.state.leaving:
            self.pool.actions.finish(action, IGNORED, "the master is stopping")
            return action
        if self.upgrade is None:
            log.warning("upgrade_unavailable", reason="no upgrade handler in this master")
            self.pool.actions.finish(action, IGNORED, "no upgrade handler in this master")
            return action
        self.upgrade(self)
        return action

    def upgrade_outcome(self, result: str, reason: str = "") -> None:
        """Told by the upgrader: the running upgrade ended (``done``, ``rolled-back``, ``ignored``)."""
        self.pool.actions.finish(self.pool.actions.running("upgrade"), result, reason)

    # -- what the upgrader sees (daemon.upgrade.Master) -------------------------

    @property
    def config(self) -> Any:
        """The configuration the workers run (the preflight rebuilds its command line)."""
        return self.pool.config

    @property
    def state(self) -> MasterState:
        """The master's mode."""
        return self.pool.state

    @property
    def generation(self) -> int:
        """The generation of the configuration new workers get."""
        return self.pool.generation

    @property
    def listeners(self) -> list[Listener]:
        """The listening sockets."""
        return self.pool.listeners

    def live_workers(self) -> list[WorkerRecord]:
        """The workers not reaped yet (the hand-off describes them to the next image)."""
        return [record for record in self.pool.records.values() if record.alive]

    def recorded_signals(self) -> tuple[int, ...]:
        """Signals received and not yet dispatched, oldest first."""
        return tuple(self.pending)

    def forget_recorded_signals(self) -> None:
        """Drop them (the upgrader re-raises them, blocked, for the next image)."""
        self.pending.clear()

    def announce_ready(self, *, mainpid: bool = False) -> None:
        """``READY=1`` to systemd; with ``mainpid``, ``MAINPID=`` first (the end of an upgrade)."""
        if mainpid:
            self.pool.notify.mainpid(os.getpid())
        self.pool.notify.ready()

    def on_winch(self) -> None:
        """WINCH (off a terminal): stop every worker gracefully, keep master and sockets."""
        if self.pool.state.stopping:
            return
        if on_terminal():
            # In a terminal, WINCH only means the window was resized.
            log.debug("winch_ignored", reason="in the foreground of a terminal")
            return
        self.pool.target = 0
        for record in self.pool.records.values():
            if record.state in (State.BOOTING, State.READY):
                record.replace_reason = Reason.WINCH.value
        log.info("scale", workers=0, reason="winch")

    def on_reap(self) -> None:
        """CHLD: every turn of the loop reaps the workers; as PID 1, also reap the orphans handed to us."""
        if os.getpid() == 1:
            from daemon.orphans import reap_orphans

            known = set(self.pool.records)
            known.update(getattr(getattr(w, "popen", None), "pid", None) or 0 for w in self.watched)
            reap_orphans(known)

    def on_resume(self) -> None:
        """CONT (``fg`` after Ctrl-Z): the workers were stopped too; none of them is stuck."""
        now = self.pool.system.monotonic()
        for record in self.pool.records.values():
            if record.last_heartbeat is not None:
                record.last_heartbeat = max(record.last_heartbeat, now)


def process_start_time() -> float:
    """When this process started (Unix time; the same across an exec in place)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:
        return time.time()


def on_terminal() -> bool:
    """True when a WINCH may just be a window resize (gunicorn honours WINCH only when daemonised).

    stdin is a terminal, or this process is in the foreground process group of
    its controlling terminal (``corral app < /dev/null`` typed in a shell).
    """
    if os.isatty(0):
        return True
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal: daemonised
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)
