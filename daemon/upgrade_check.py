"""The USR2 preflight: prove the new install can serve before the master execs into it.

A throw-away ``python -m daemon.upgrade --check ARGV`` (that command, not a
new one: a running master of an earlier release starts exactly it against
the new install) builds the configuration as the CLI would, imports the new
master modules and the new application, and exits 0 — or prints why not
after ``CHECK_PREFIX`` and exits non-zero.

Master side: :func:`config_argv` rebuilds the command line, and
:class:`Preflight` runs the check as a source the arbiter waits on in its
selector, with a deadline of ``--timeout-worker-boot``. Check side:
:func:`check_main`. ``daemon.upgrade`` decides what to do with the verdict;
this module never imports it (the hand-off variable it hides from the check
comes from ``daemon.handoff``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from daemon.handoff import HANDOFF_VAR

if TYPE_CHECKING:
    from daemon.config import Config

CHECK_PREFIX = "corral upgrade check: "
# Seconds a check that closed its output gets to exit before it is killed.
EXIT_GRACE = 5.0
CONFIG_ONLY = "--corral-check-config-only"  # first check argument when the app is an object
# Variables the check process must not inherit: it is not the service.
_PRIVATE_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                 "LISTEN_FDNAMES")
# Master modules the check imports, so a syntax error in the new install is caught before exec.
MASTER_MODULES = ("daemon.config", "daemon.cli", "daemon.listeners", "daemon.handoff", "daemon.workers",
                  "daemon.master_state", "daemon.spawn", "daemon.pidfile", "daemon.systemd", "daemon.reloader",
                  "daemon.pool", "daemon.arbiter", "daemon.master", "server_core.worker")


def _check_env() -> dict[str, str]:
    private = (*_PRIVATE_VARS, HANDOFF_VAR)
    return {k: v for k, v in os.environ.items() if k not in private}



def config_argv(config: Config) -> list[str]:
    """A CLI argument list that rebuilds ``config`` (``daemon.config.Config``) from its command line.

    Used for the preflight whatever started the master (``corral``, ``python
    -m daemon``, ``daemon.run``): the environment and ``--config`` file are
    re-read by the check, exactly as the new image will. An app given as an
    object rather than an import string cannot be re-imported: the list then
    starts with ``CONFIG_ONLY`` and only the configuration is checked.
    """
    from daemon.options import BY_NAME

    argv: list[str] = []
    for name, value in config.command_line.items():
        opt = BY_NAME[name]
        if opt.kind == "flag":
            if value:
                argv.append(opt.flag)
        elif opt.kind == "toggle":
            argv.append(opt.flag if value else f"--no-{opt.name}")
        elif opt.kind == "multi":
            for item in value:
                argv += [opt.flag, str(item)]
        elif value is not None:
            argv += [opt.flag, oct(value) if opt.kind == "octal" and isinstance(value, int) else str(value)]
    if isinstance(config.given_app, str):
        argv.append(config.given_app)
    elif config.given_app is not None:
        argv.insert(0, CONFIG_ONLY)
    return argv


class Preflight:
    """The check process of one USR2, waited on in the arbiter's selector (its ``Watched``).

    ``fileno()`` is the check's merged stdout/stderr. The arbiter calls
    :meth:`on_readable` when it is readable and :meth:`on_deadline` once
    :meth:`deadline` has passed; both return True when the check is over.
    Then ``ok`` is True or False (with ``reason``) and ``on_done(self)`` has
    run. The pipe stays open until :meth:`close`, so the arbiter can still
    unregister its descriptor after being told the check is over.
    """

    def __init__(self, argv: Sequence[str], timeout: float, *, cwd: str | None = None,
                 on_done: Callable[[Preflight], None] | None = None) -> None:
        self.popen = start_preflight(argv, cwd=cwd)
        assert self.popen.stdout is not None
        self._fd = self.popen.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._deadline = time.monotonic() + timeout
        self.on_done = on_done
        self.output = b""
        self._exit_by: float | None = None  # set at the end of its output
        self.ok: bool | None = None
        self.reason = ""

    def fileno(self) -> int:
        """The descriptor to wait on."""
        return self._fd

    def deadline(self) -> float | None:
        """When the loop must call :meth:`on_deadline` (``time.monotonic()``); None once the check is over.

        After the check closed its output: at once when it has exited (the
        loop is woken by SIGCHLD), else when it has been given too long to exit.
        """
        if self.ok is not None:
            return None
        if self._exit_by is not None:
            if self.popen.poll() is not None:
                return 0.0
            return min(self._deadline, self._exit_by)
        return self._deadline

    def on_readable(self) -> bool:
        """Read what is there; True once the output is over (the fd needs no more watching).

        Never waits for the process: its exit is collected by :meth:`on_deadline`
        (see :meth:`deadline`), so the master's loop is not held up.
        """
        if self.ok is not None:
            return True
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return False
            if not chunk:
                break
            self.output = (self.output + chunk)[-65536:]
        if self._exit_by is None:
            self._exit_by = time.monotonic() + EXIT_GRACE
        status = self.popen.poll()
        if status is not None:
            self._finish(status == 0, f"check exited with status {status}")
        return True

    def on_deadline(self) -> bool:
        """The check exited, or it took too long (then it is killed and the upgrade fails); True when over."""
        if self.ok is not None:
            return True
        status = self.popen.poll()
        if status is not None and self._exit_by is not None:
            self._finish(status == 0, f"check exited with status {status}")
            return True
        now = time.monotonic()
        if now >= self._deadline:
            self.kill()
            self._finish(False, "check did not finish before --timeout-worker-boot")
            return True
        if self._exit_by is not None and now >= self._exit_by:
            self.kill()
            self._finish(False, f"check closed its output but did not exit within {EXIT_GRACE:g}s")
            return True
        return False

    def expired(self, now: float | None = None) -> bool:
        """Like :meth:`on_deadline`, but only at or past the deadline; True if it fired."""
        moment = self.deadline()
        if moment is None or (now if now is not None else time.monotonic()) < moment:
            return False
        return self.on_deadline()

    def kill(self) -> None:
        """Kill and reap the check process (idempotent)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()

    def close(self) -> None:
        """Kill the check if still running and close its pipe."""
        self.kill()
        if self.popen.stdout is not None and not self.popen.stdout.closed:
            self.popen.stdout.close()

    def _finish(self, ok: bool, fallback: str) -> None:
        self.ok = ok
        if not ok:
            self.reason = _reason(self.output.decode(errors="replace")) or fallback
        if self.on_done is not None:
            self.on_done(self)




def _reason(output: str) -> str:
    """One line saying why the check failed: its own verdict, else the last line it printed."""
    marker = output.rfind(CHECK_PREFIX)
    text = output[marker + len(CHECK_PREFIX):] if marker >= 0 else (output.strip().splitlines() or [""])[-1]
    return " ".join(text.split())[:500]


def start_preflight(argv: Sequence[str], *, cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m daemon.upgrade --check ARGV`` with stdout and stderr on one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.upgrade", "--check", *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=_check_env(), cwd=cwd, close_fds=True, start_new_session=True,
    )


def parse_cli_config(argv: Sequence[str]) -> Config:
    """Build the ``Config`` the ``corral`` CLI would build from ``argv``.

    Uses ``daemon.cli.parse_config`` when the lead has added it, else parses
    with ``build_command().make_context`` and keeps, as the CLI does, only the
    parameters given on the command line.
    """
    from daemon import cli
    from daemon.config import build_config

    parse = getattr(cli, "parse_config", None)
    if parse is not None:
        return parse(list(argv))
    from click.core import ParameterSource

    ctx = cli.build_command().make_context("corral", list(argv), resilient_parsing=False)
    params = dict(ctx.params)
    app = params.pop("app", None)
    given = {name.replace("_", "-"): value for name, value in params.items()
             if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    return build_config(given, app=app)


def check_main(argv: Sequence[str]) -> int:
    """The preflight itself: 0 when config, master code and app all load; else the reason, non-zero."""
    import importlib

    import click

    from daemon.config import ConfigError, apply_env_file

    config_only = bool(argv) and argv[0] == CONFIG_ONLY
    if config_only:
        # daemon.run() was given the app object itself: nothing to import, the
        # re-executed script builds it again; a placeholder satisfies the parser.
        argv = [*argv[1:], "corral_check:placeholder"]
    try:
        config = parse_cli_config(argv)
    except ConfigError as exc:
        print(f"{CHECK_PREFIX}configuration error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:  # --help / --version: nothing to serve
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        print(f"{CHECK_PREFIX}usage error: {exc.format_message()}", file=sys.stderr)
        return 2
    for module in MASTER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                print(f"{CHECK_PREFIX}cannot import {module}: {exc}", file=sys.stderr)
                return 1
        except Exception as exc:  # noqa: BLE001 - any failure of the new install is a reason to stay
            print(f"{CHECK_PREFIX}cannot import {module}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if config_only or not isinstance(config.app, str):
        return 0
    apply_env_file(config)
    from server_core.importer import AppLoadError, load

    try:
        load(config.server_settings())
    except AppLoadError as exc:
        if exc.details:
            print(exc.details, file=sys.stderr)
        print(f"{CHECK_PREFIX}application cannot load: {exc.message}", file=sys.stderr)
        return 3
    except BaseException as exc:  # noqa: BLE001 - SystemExit in app code included
        print(f"{CHECK_PREFIX}application cannot load: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    return 0


def main(args: Sequence[str]) -> int:
    """``python -m daemon.upgrade --check ARGV``: :func:`check_main`; anything else is a usage error (2)."""
    if args and args[0] == "--check":
        return check_main(args[1:])
    print("usage: python -m daemon.upgrade --check [corral arguments]", file=sys.stderr)
    return 2
