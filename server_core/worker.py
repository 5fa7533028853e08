"""What a worker process runs: load the app, serve the shared sockets, stop well.

:func:`serve` is the whole life of a worker, called by the master in each
forked child (and by the gunicorn worker classes through
:class:`WorkerRuntime`):

1. logging, event loop (``--loop``) and TLS context are set up; the
   application is imported inside the running loop (as uvicorn does, so an app
   may look up the loop at import time);
2. lifespan startup runs; only then do the sockets start accepting and
   ``control.ready()`` is sent;
3. the loop beats ``control.heartbeat()`` every ``heartbeat_interval``: a
   blocked loop goes silent, which is what the master watches for;
4. a signal (or the request limit with no supervisor) starts a graceful stop:
   stop accepting, let connections finish within ``--timeout-graceful-shutdown``,
   abort the rest, lifespan shutdown, exit status 0.

The shared listening sockets are never ``shutdown(2)``: closing our server
closes only this process's descriptor, the master and the other workers keep
accepting on the same socket.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from server_core import importer, loops, tls
from server_core.adapters import TRACE, MessageLogger
from server_core.control import EXIT_APP_FAILED, NullControl, WorkerControl
from server_core.lifespan import Lifespan, LifespanFailed
from server_core.settings import ServerSettings
from server_core.state import ASGIApp, ServerState

logger = logging.getLogger("corral.error")

# uvicorn's default --backlog. asyncio calls listen() again on a socket given
# with sock=, so the backlog the master chose must be repeated here.
DEFAULT_BACKLOG = 2048
# How often the drain checks whether the last connection and task are gone.
DRAIN_POLL = 0.05
# Tasks cancelled after the graceful timeout get this long to unwind.
CANCELLED_TASKS_GRACE = 2.0


def serve(settings: ServerSettings, sockets: Sequence[socket.socket], *,
          control: WorkerControl | None = None, app: ASGIApp | None = None,
          install_signals: bool = True) -> int:
    """Serve ``settings.app`` (or ``app``, already an ASGI 3 callable) on ``sockets``.

    Returns the exit status: 0 after a stop, 3 (``EXIT_APP_FAILED``) when the
    app cannot be imported or its lifespan startup fails (after
    ``control.boot_failed``).
    """
    runtime = WorkerRuntime(settings, sockets, control=control, app=app)
    return runtime.run(install_signals=install_signals)


_WEEKDAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")


def http_date(when: float) -> bytes:
    """``when`` as an HTTP date (RFC 9110 §5.6.7 IMF-fixdate): ``Sun, 06 Nov 1994 08:49:37 GMT``.

    English names whatever the locale; written here rather than taken from
    ``email.utils`` (whose import costs every worker's start 2 ms).
    """
    t = time.gmtime(when)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def warm(settings: ServerSettings) -> None:
    """Import the modules a worker with ``settings`` loads before its first request.

    Called by a master before it forks: the modules (the event loop, the
    parser, the protocols, the log stack) are then loaded once, in pages
    every worker shares, instead of once in each worker; and a worker starts
    without importing them. The application is not imported (that is
    ``--preload``): a HUP still loads the new code of the app. An upgrade of
    corral itself goes through USR2, which starts a new master.
    Any failure here is left to the worker, which meets it again and reports it
    as a failed boot (a missing package, an unusable loop): the master goes on.
    """
    try:
        loops.loop_factory(settings.loop)
        from server_core import logs  # noqa: F401  (the log stack: structlog)
        from server_core.http import make_parser, protocol

        make_parser(settings)
        protocol.websocket_handoff()
        if settings.http2:
            from server_core.http import h2  # noqa: F401
        if settings.proxy_protocol:
            from server_core import proxy_gate  # noqa: F401
    except Exception:  # the worker meets it again and reports it (see above)
        return


class WorkerRuntime:
    """One worker's serving life; the methods stop it from signal handlers."""

    def __init__(self, settings: ServerSettings, sockets: Sequence[socket.socket], *,
                 control: WorkerControl | None = None, app: ASGIApp | None = None,
                 configure_logs: bool = True) -> None:
        self.settings = settings
        self.sockets = list(sockets)
        self.control: WorkerControl = control if control is not None else NullControl()
        # Without a master there is nobody to start a replacement, so the
        # request limit ends this process instead (as uvicorn does).
        self.supervised = not isinstance(self.control, NullControl)
        self.app = app
        self.configure_logs = configure_logs
        self.state: ServerState | None = None
        self._ssl: Any = None  # ssl.SSLContext when --ssl-certfile is set
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = False
        self.retiring = False
        self.quitting = False
        self._recycle_asked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[Any] | None = None
        self._stop_event: asyncio.Event | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # -- entry -------------------------------------------------------------

    def run(self, *, install_signals: bool = True,
            signal_handlers: Mapping[int, Callable[[], None]] | None = None) -> int:
        """Serve until stopped and return the exit status.

        ``signal_handlers`` replaces the default table (see
        :meth:`default_signal_handlers`) when ``install_signals`` is true.
        """
        if self.configure_logs:
            try:
                configure_logging(self.settings)
            except ValueError as exc:  # an unusable --log-config
                return self._boot_failed(str(exc))
        logger.info("Started server process [%d]", os.getpid())
        try:
            factory = loops.loop_factory(self.settings.loop)
            self._ssl = tls.make_ssl_context(self.settings)
        except (loops.LoopUnavailable, tls.TLSConfigError) as exc:
            return self._boot_failed(str(exc))
        handlers = None
        if install_signals:
            handlers = signal_handlers if signal_handlers is not None else self.default_signal_handlers()
        try:
            status = loops.run(self._main(handlers), factory)
        except Exception:
            # A bug of ours (or the protocol failing to import): the worker
            # must still end with a status, not an exception in a forked child.
            logger.exception("Worker failed")
            return 1
        logger.info("Finished server process [%d]", os.getpid())
        return status

    def default_signal_handlers(self) -> dict[int, Callable[[], None]]:
        """corral's worker signals (``control.WORKER_SIGNALS``) as loop callbacks."""
        return {
            signal.SIGTERM: lambda: self.shutdown(retire=False),
            signal.SIGHUP: lambda: self.shutdown(retire=True),
            signal.SIGQUIT: self.quit,
            signal.SIGUSR1: reopen_logs,
        }

    async def _main(self, handlers: Mapping[int, Callable[[], None]] | None) -> int:
        self._loop = asyncio.get_running_loop()
        self._main_task = asyncio.current_task()
        self._stop_event = asyncio.Event()
        if handlers is not None:
            self._install_signals(handlers)
        try:
            return await self._serve_life()
        except asyncio.CancelledError:
            if self.quitting:
                return 0
            raise
        finally:
            for timer in self._timers.values():
                timer.cancel()

    async def _serve_life(self) -> int:
        try:
            app = self.app if self.app is not None else importer.load(self.settings)
        except importer.AppLoadError as exc:
            return self._boot_failed(exc.message, exc.details)
        if logger.isEnabledFor(TRACE):
            app = MessageLogger(app, logger)
        state = self.state = self._build_state(app)
        lifespan = Lifespan(app, self.settings.lifespan)
        try:
            await lifespan.startup()
        except LifespanFailed as exc:
            return self._boot_failed(exc.message)
        state.app_state = lifespan.state
        # What exists now (the app, its modules, what its startup built) lives
        # as long as the worker: out of the collector's sight, so its full
        # collections walk only what requests create.
        gc.freeze()
        if not self.stopping:
            try:
                await self._start_servers(state)
            except OSError as exc:
                logger.error("Cannot serve on the listening sockets: %s", exc)
                await lifespan.shutdown(self.settings.timeout_graceful_shutdown)
                return 1
            self.control.ready()
            self._beat()
            assert self._stop_event is not None
            await self._stop_event.wait()
            await self._drain(state)
            self._send_stats()  # the last requests count too (the master keeps the totals)
        await lifespan.shutdown(self.settings.timeout_graceful_shutdown)
        return 0

    def _boot_failed(self, message: str, details: str | None = None) -> int:
        logger.error("%s", f"{message}\n{details}" if details else message)
        self.control.boot_failed(message)
        return EXIT_APP_FAILED

    # -- setup -------------------------------------------------------------

    def _build_state(self, app: ASGIApp) -> ServerState:
        settings = self.settings
        state = ServerState(settings=settings, app=app)
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in settings.headers]
        if settings.server_header and not any(name == b"server" for name, _ in headers):
            headers.insert(0, (b"server", b"corral"))
        state.default_headers = headers
        if settings.date_header:
            self._tick_date(state)
        if settings.access_log:
            state.access_log = make_access_log(settings)
        if settings.metrics:
            state.record = state.metrics.record
        state.timed = state.access_log is not None or state.record is not None
        if settings.limit_max_requests:
            state.on_request_limit = self._request_limit_reached
        return state

    def _install_signals(self, handlers: Mapping[int, Callable[[], None]]) -> None:
        assert self._loop is not None
        for signum, handler in handlers.items():
            self._loop.add_signal_handler(signum, handler)
        # Ctrl-C in a terminal reaches the whole process group; the master
        # decides what it means and signals us.
        if signal.SIGINT not in handlers:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Written straight to fd 2 by the C handler, so it works while the
        # loop (or the GIL holder) is stuck: the master's way to see why.
        faulthandler.register(signal.SIGUSR2, file=2, all_threads=True, chain=False)

    async def _start_servers(self, state: ServerState) -> None:
        from server_core.http.protocol import HTTPProtocol

        assert self._loop is not None
        backlog = self.settings.backlog or DEFAULT_BACKLOG

        def factory() -> asyncio.Protocol:
            return HTTPProtocol(state)

        ssl_context = self._ssl
        if self.settings.proxy_protocol:
            # Each connection's PROXY header first (server_core.proxy_gate),
            # and TLS after it; without the option the factory is untouched.
            from server_core.proxy_gate import gated

            factory = gated(state, factory, ssl_context)  # type: ignore[assignment]
            ssl_context = None
        # asyncio refuses a handshake timeout without TLS.
        tls: dict[str, Any] = {"ssl": ssl_context}
        if ssl_context is not None:
            tls["ssl_handshake_timeout"] = self.settings.timeout_tls_handshake
        for sock in self.sockets:
            if sock.type != socket.SOCK_STREAM:
                raise OSError(f"listener fd {sock.fileno()} is not a stream socket")
            if sock.family == socket.AF_UNIX:
                server = await self._loop.create_unix_server(factory, sock=sock, backlog=backlog, **tls)
            else:
                server = await self._loop.create_server(factory, sock=sock, backlog=backlog, **tls)
            self.servers.append(server)
            logger.debug("Accepting on %s", sock.getsockname())

    # -- loop timers -------------------------------------------------------

    def _beat(self) -> None:
        """Heartbeat from the loop itself: it stops when the loop is blocked."""
        assert self._loop is not None
        self.control.heartbeat()
        self._send_stats()
        self._timers["heartbeat"] = self._loop.call_later(self.settings.heartbeat_interval, self._beat)

    def _send_stats(self) -> None:
        """The counters to the master (server_core.metrics), when it listens for them."""
        state, send = self.state, getattr(self.control, "stats", None)
        if state is not None and send is not None:
            send(state.metrics.snapshot(state.total_requests, len(state.connections), len(state.tasks)))

    def _tick_date(self, state: ServerState) -> None:
        """Refresh the encoded Date header once a second, at the second's edge."""
        now = time.time()
        state.date_header = [(b"date", http_date(now))]
        if self._loop is not None:
            delay = 1.0 - (now % 1.0) + 0.001
            self._timers["date"] = self._loop.call_later(delay, self._tick_date, state)

    # -- stopping ----------------------------------------------------------

    def _request_limit_reached(self) -> None:
        if self._recycle_asked:
            return
        self._recycle_asked = True
        limit = self.settings.limit_max_requests
        if self.supervised:
            logger.info("Maximum request limit of %s reached; asking the master for a replacement.", limit)
            self.control.recycle("max-requests")
        else:
            logger.warning("Maximum request limit of %s exceeded. Terminating process.", limit)
            self.shutdown(retire=False)

    def shutdown(self, retire: bool = False) -> None:
        """Begin a graceful stop (call on the loop's thread).

        ``retire=True`` keeps idle keep-alive connections until their next
        request (others keep serving); ``False`` closes them at once. A second
        call may only make the stop harsher: TERM after HUP closes idle ones.
        """
        if self.stopping:
            if retire or not self.retiring:
                return
            self.retiring = False
            if self.state is not None:
                self.state.retiring = False
                for conn in list(self.state.connections):
                    conn.shutdown(False)
            return
        logger.info("Shutting down (%s)", "retiring" if retire else "stopping")
        self.stopping = True
        self.retiring = retire
        if self.state is not None:
            self.state.stopping = True
            self.state.retiring = retire
        if self._stop_event is not None:
            self._stop_event.set()

    def quit(self) -> None:
        """Stop at once: abort every connection, skip lifespan shutdown, exit 0."""
        logger.info("Quitting immediately")
        self.quitting = True
        for server in self.servers:
            server.close()
        if self.state is not None:
            for conn in list(self.state.connections):
                conn.abort()
        if self._main_task is not None:
            self._main_task.cancel()

    async def _drain(self, state: ServerState) -> None:
        """Stop accepting, let connections and tasks finish, abort the rest."""
        assert self._loop is not None
        for server in self.servers:
            server.close()
        # Connections accepted in the same loop iteration get their
        # connection_made now; later ones see state.stopping themselves.
        await asyncio.sleep(0)
        for conn in list(state.connections):
            conn.shutdown(self.retiring)
        # None (uvicorn's default) waits as long as it takes.
        timeout: float | None = self.settings.timeout_graceful_shutdown
        deadline = float("inf") if timeout is None else self._loop.time() + timeout
        while (state.connections or _live(state.tasks)) and self._loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        if state.connections:
            logger.warning("Closing %d connection(s) still open after %ss", len(state.connections), timeout)
            for conn in list(state.connections):
                conn.abort()
        tasks = _live(state.tasks)
        if tasks:
            logger.warning("Cancelling %d task(s) still running after %ss", len(tasks), timeout)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=CANCELLED_TASKS_GRACE)


def _live(tasks: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [task for task in tasks if not task.done()]


# -- logs ----------------------------------------------------------------------


def configure_logging(settings: ServerSettings) -> None:
    """Set up this worker's logging (imported late: it pulls in structlog)."""
    from server_core import logs

    logs.configure(settings, process="worker")


def make_access_log(settings: ServerSettings) -> Any:
    """The access logger for ``state.access_log``."""
    from server_core import logs

    return logs.AccessLog(settings)


def reopen_logs() -> None:
    """Reopen log files (USR1), e.g. after logrotate moved them."""
    from server_core import logs

    logs.reopen()
