"""Starting the master: what opens in which order, and the one clean-up when a start fails.

:func:`run_master` checks the PID file, takes the previous image's hand-off (USR2) or systemd's
sockets, opens the listeners, loads the serving stack (``spawn.prepare``) and the app with
``--preload``, writes the PID file, opens the sidecars (control socket, metrics) and runs an
:class:`daemon.arbiter.Arbiter` until it stops. Whatever stops the start half-way raises
:class:`CannotStart` and goes through one clean-up. The loop itself is ``daemon.arbiter``'s.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import structlog

from daemon import pidfile, pool, spawn
from daemon.arbiter import Arbiter
from daemon.listeners import Listener, ListenerError, close_listeners, open_listeners
from daemon.pool import Notifier, say
from server_core.control import EXIT_APP_FAILED

if TYPE_CHECKING:
    from daemon.config import Config

__all__ = ["CannotStart", "open_sidecars", "preload", "run_master"]

log = structlog.get_logger("corral.master")


def open_sidecars(arbiter: Arbiter, config: Config) -> list[Any]:
    """The control socket and the metrics listener, if asked for, served from the arbiter's loop."""
    opened: list[Any] = []
    try:
        if config.control_socket:
            from daemon.control_socket import open_control

            opened.append(open_control(arbiter, config.control_socket))
        if config.metrics_bind:
            from daemon.metrics import open_metrics

            opened.append(open_metrics(arbiter, config.metrics_bind))
    except BaseException:
        for server in opened:
            server.close()
        raise
    return opened


class CannotStart(Exception):
    """``run_master`` cannot start serving: the exit status, and why (for the previous image's workers)."""

    def __init__(self, status: int, reason: str, line: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.line = line  # printed on stderr as it is; None when it was already logged


def run_master(config: Config, *, notify: Notifier | None = None) -> int:
    """Open the listeners, fork the workers and supervise them until stopped; the exit status.

    Also the second half of a USR2 upgrade: a re-executed master finds the
    hand-off of the previous image (``daemon.upgrade.resume``), adopts its
    listeners and workers, and rolls them onto the new code at once.
    ``notify`` defaults to an sd_notify client (a no-op without ``$NOTIFY_SOCKET``).
    Whatever stops the start half-way goes through one clean-up (the ``except``
    and ``finally`` below): the adopted workers are stopped, what was opened is closed.
    """
    from daemon import systemd, upgrade

    pool.PLAIN_LINES = config.log_format != "json"
    owner = pidfile.running_master(config.pid) if config.pid else None
    if owner is not None:
        # Overwriting it (and deleting it at our exit) would lose the running master.
        print(f"corral: --pid {config.pid} names a running corral master (pid {owner}): stop it first, "
              "or give this one another --pid file", file=sys.stderr, flush=True)
        return 1
    if notify is None:
        notify = systemd.Notifier.from_environ()
    resumed = upgrade.resume()
    listeners: list[Listener] = []
    sidecars: list[Any] = []
    pid_written = started = False
    try:
        # One path for every listener: the previous image's (USR2), systemd's, or bound here.
        try:
            handed = resumed.handed if resumed is not None else systemd.handed_sockets()
            listeners = open_listeners(config, handed)
        except ListenerError as exc:
            raise CannotStart(1, str(exc), str(exc)) from None
        scheme = "https" if config.ssl_certfile else "http"
        for listener in listeners:
            log.info("listening", address=listener.url(scheme), inherited=listener.inherited)
            say(f"listening on {listener.url(scheme)}")
        app = preload(config) if config.preload else None
        spawn.prepare(config.server_settings())
        if config.pid:
            try:
                pidfile.write(config.pid)
            except OSError as exc:
                raise CannotStart(1, f"cannot write --pid {config.pid}",
                                  f"corral: cannot write --pid {config.pid}: {exc.strerror or exc}") from None
            pid_written = True
        log.info("master_started", pid=os.getpid(), workers=config.workers)
        started = True
        activated = handed is not None and handed.socket_activated
        upgrader = resumed.upgrader if resumed is not None else upgrade.Upgrader(socket_activated=activated)
        arbiter = Arbiter(config, listeners, notify=notify, app=app, upgrade=upgrader)
        upgrader.report = arbiter.upgrade_outcome
        arbiter.pool.totals.take_inherited(keep=resumed is not None)
        try:
            sidecars = open_sidecars(arbiter, config)
        except Exception as exc:  # SidecarError: one line; anything else as well, never half-started
            raise CannotStart(1, str(exc), str(exc)) from None
        if resumed is not None:
            for record in resumed.adopted:
                arbiter.pool.adopt(record)
            arbiter.pool.on_roll_end = lambda ok, error: upgrader.roll_finished(arbiter, ok, error)
            arbiter.pool.start_roll(config, "upgrade")
            arbiter.pool.actions.begin("upgrade", "handoff").generation = arbiter.pool.generation
        return arbiter.run()
    except CannotStart as exc:
        if exc.line is not None:
            print(exc.line, file=sys.stderr, flush=True)
        if resumed is not None:
            resumed.abandon(exc.reason)  # no orphans of the previous image
        return exc.status
    finally:
        for sidecar in sidecars:
            sidecar.close()
        close_listeners(listeners)
        if pid_written and config.pid:
            pidfile.remove(config.pid)
        if started:
            log.info("master_stopped", pid=os.getpid())


def preload(config: Config) -> Any:
    """``--preload``: the app imported in the master (forked workers share it); :class:`CannotStart` (3) if not."""
    from daemon.config import env_overlay
    from server_core.importer import AppLoadError, load

    # The app is imported here: let it see --env-file as a worker would,
    # without the master's own environment (its options) ever taking it in.
    overlay = env_overlay(config)
    os.environ.update(overlay)
    try:
        return load(config.server_settings())
    except AppLoadError as exc:
        log.error("boot_failed", error=exc.message, details=exc.details, action="exit")
        say(f"the application could not start: {exc}")
        raise CannotStart(EXIT_APP_FAILED, exc.message) from None
    finally:
        for name in overlay:
            os.environ.pop(name, None)
