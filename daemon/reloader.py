"""``--reload`` (development): watch the source tree and roll the workers on a change.

The watcher is a daemon thread of the master running ``watchfiles.watch``. It
does not restart anything itself: on a change it sends ``SIGHUP`` to its own
process, which the master already treats as a readiness-gated roll. So a
reload goes through the one replacement mechanism every other reason uses —
the new worker imports the new code, and the old one keeps serving until the
new one is ready. A syntax error therefore only fails the new worker (logged
with its traceback); the old one keeps answering until the file is fixed and
saved again.

Patterns follow uvicorn: ``--reload-include`` defaults to ``*.py``,
``--reload-exclude`` to ``.*``, ``.py[cod]``, ``.sw.*``, ``~*``; a pattern the
user includes is taken out of the default excludes and one the user excludes
is taken out of the default includes (``--reload-include '.env'`` works).
Includes match a path from its right end (``pathlib.PurePath.match``, so
``templates/*.html`` works); excludes match any component of the path below a
watched directory (so ``.*`` also hides ``.git/``) or the path itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from daemon.config import Config

log = structlog.get_logger("corral.master")

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
# uvicorn's default excludes name compiled and editor swap files by their
# suffix; as glob patterns they would only match a file called ".pyc". They
# also exclude by suffix here, so `--reload-include '*'` still skips them.
SUFFIX_FORMS = {".py[cod]": "*.py[cod]", ".sw.*": "*.sw?"}


def resolve_patterns(includes: Sequence[str], excludes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Merge user patterns with uvicorn's defaults; each side's user patterns override the other's defaults."""
    default_includes = [p for p in DEFAULT_INCLUDES if p not in excludes]
    default_excludes = [p for p in DEFAULT_EXCLUDES if p not in includes]
    merged_includes = list(dict.fromkeys([*default_includes, *includes]))
    merged_excludes = list(dict.fromkeys([*default_excludes, *excludes]))
    return merged_includes, merged_excludes


class PathFilter:
    """Decides whether a changed path should trigger a reload (a ``watchfiles`` filter)."""

    def __init__(self, roots: Sequence[Path], includes: Sequence[str], excludes: Sequence[str]) -> None:
        self.roots = [root.resolve() for root in roots]
        self.includes = list(includes)
        self.excludes = [*excludes, *(SUFFIX_FORMS[p] for p in excludes if p in SUFFIX_FORMS)]

    def _relative(self, path: PurePath) -> PurePath:
        for root in self.roots:
            try:
                return path.relative_to(root)
            except ValueError:
                continue
        return PurePath(path.name)

    def __call__(self, _change: object, raw_path: str) -> bool:
        path = PurePath(raw_path)
        relative = self._relative(path)
        for pattern in self.excludes:
            if path.match(pattern) or any(PurePath(part).match(pattern) for part in relative.parts):
                return False
        return any(path.match(pattern) for pattern in self.includes)


class ReloadWatcher:
    """A daemon thread calling ``on_change(paths)`` after each debounced batch of relevant changes."""

    def __init__(self, config: Config, on_change: Callable[[list[str]], None]) -> None:
        dirs = [Path(d) for d in (config.reload_dir or ())] or [Path.cwd()]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            log.warning("reload_dir_missing", dirs=missing)
        self.dirs = [d.resolve() for d in dirs if d.is_dir()] or [Path.cwd().resolve()]
        includes, excludes = resolve_patterns(tuple(config.reload_include or ()),
                                              tuple(config.reload_exclude or ()))
        self.filter = PathFilter(self.dirs, includes, excludes)
        self.delay_ms = max(int(float(config.reload_delay or 0) * 1000), 1)
        self.on_change = on_change
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (returns at once; :meth:`wait_started` waits for the watch to be armed)."""
        self._thread = threading.Thread(target=self._run, name="corral-reload", daemon=True)
        self._thread.start()

    def wait_started(self, timeout: float | None = None) -> bool:
        """True once the first scan is armed, so a change made after it is seen."""
        return self._started.wait(timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the thread to stop and wait for it (it polls the event every ``step``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        import watchfiles

        try:
            watcher = watchfiles.watch(
                *self.dirs, watch_filter=self.filter, debounce=self.delay_ms, step=50,
                stop_event=self._stop, yield_on_timeout=True, rust_timeout=200, raise_interrupt=False,
            )
            for changes in watcher:
                # The first yield (a timeout or a batch) proves the notifier is armed.
                self._started.set()
                if self._stop.is_set():
                    break
                paths = sorted({path for _change, path in changes})
                if not paths:
                    continue
                log.info("reload_change", paths=[os.path.relpath(p) for p in paths][:10])
                try:
                    self.on_change(paths)
                except Exception:  # noqa: BLE001 - the watcher must outlive a bad callback
                    log.exception("reload_callback_failed")
        except Exception:  # noqa: BLE001 - a broken watcher must not take the master down
            log.exception("reload_watcher_failed")
        finally:
            self._started.set()


def signal_roll(_paths: list[str]) -> None:
    """The default ``on_change``: SIGHUP to our own process, the master's readiness-gated roll."""
    os.kill(os.getpid(), signal.SIGHUP)


def run_reloader(config: Config) -> int:
    """Run the master with a watcher attached (``daemon.launch`` with ``--reload``); its exit status."""
    if not isinstance(config.app, str):
        print("corral: error: --reload needs the app as an import string such as 'main:app'", file=sys.stderr)
        return 2
    from daemon.master import run_master

    # Until the arbiter installs its HUP handler, a change must not kill the
    # master with SIGHUP's default action; the first workers import the
    # files as they are then anyway.
    if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watcher = ReloadWatcher(config, signal_roll)
    log.info("reload_watching", dirs=[str(d) for d in watcher.dirs], include=watcher.filter.includes,
             exclude=watcher.filter.excludes)
    watcher.start()
    try:
        return run_master(config)
    finally:
        watcher.stop()
