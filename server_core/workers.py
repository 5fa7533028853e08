"""Gunicorn worker classes, for deployments that keep gunicorn as the manager.

    gunicorn -k server_core.workers.CorralWorker myapp:app      # httptools + uvloop
    gunicorn -k server_core.workers.CorralH11Worker myapp:app   # h11 + asyncio

Each gunicorn worker runs corral's :class:`~server_core.worker.WorkerRuntime`
on gunicorn's listening sockets. Settings come from gunicorn's configuration
(keep-alive, graceful timeout, request-head limits, forwarded IPs, TLS,
backlog, max-requests with its jitter) merged with the class's
``CONFIG_KWARGS``; subclass to change any other :class:`ServerSettings` field::

    class MyWorker(CorralWorker):
        CONFIG_KWARGS = {**CorralWorker.CONFIG_KWARGS, "lifespan": "off", "root_path": "/api"}

This is the only module of ``server_core`` that imports gunicorn.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from server_core.control import EXIT_APP_FAILED
from server_core.settings import ServerSettings
from server_core.worker import WorkerRuntime

# gunicorn's "0 means unlimited" for request-head limits, in our terms.
UNLIMITED = 1 << 30


class GunicornControl:
    """The :class:`~server_core.control.WorkerControl` seen by a gunicorn worker.

    Heartbeats become gunicorn's ``notify()`` (the temp-file touch its arbiter
    watches), still sent from the event loop so a blocked loop is caught. A
    recycle request becomes a graceful retirement: gunicorn's arbiter starts
    the replacement when this worker exits.
    """

    def __init__(self, worker: CorralWorker) -> None:
        self.worker = worker

    def ready(self) -> None:
        self.worker.log.debug("Worker %s ready", os.getpid())

    def heartbeat(self) -> None:
        self.worker.notify()
        if self.worker.ppid != os.getppid():
            # The arbiter died and we were re-parented: nobody will ever
            # stop us, so stop ourselves the gentle way.
            self.worker.log.info("Parent changed, shutting down: %s", self.worker)
            self.worker.handle_stop(retire=True)

    def recycle(self, reason: str) -> None:
        self.worker.log.info("Autorestarting worker after current request (%s).", reason)
        self.worker.handle_stop(retire=True)

    def boot_failed(self, message: str) -> None:
        self.worker.log.error("Worker failed to boot: %s", message)


class CorralWorker(Worker):
    """A gunicorn worker serving ASGI with corral (httptools, uvloop)."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runtime: WorkerRuntime | None = None
        # corral's loggers write through gunicorn's handlers, so --error-logfile,
        # --access-logfile and USR1's reopen all apply to them.
        for name, source in (("corral.error", self.log.error_log), ("corral.access", self.log.access_log)):
            logger = logging.getLogger(name)
            logger.handlers = source.handlers
            logger.setLevel(source.level)
            logger.propagate = False

    def server_settings(self) -> ServerSettings:
        """ServerSettings from gunicorn's configuration plus ``CONFIG_KWARGS``."""
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "timeout_keep_alive": float(cfg.keepalive),
            "timeout_graceful_shutdown": float(cfg.graceful_timeout),
            "limit_request_line": cfg.limit_request_line or UNLIMITED,
            "limit_request_fields": cfg.limit_request_fields or UNLIMITED,
            "limit_request_field_size": cfg.limit_request_field_size or UNLIMITED,
            "forwarded_allow_ips": _as_tuple(cfg.forwarded_allow_ips),
            # gunicorn's --proxy-protocol (off|v1|v2|auto; a bool before 24.1): any
            # value but off reads v1 and v2. Its --proxy-allow-from says who may send
            # the header; a UNIX-socket peer needs '*' there (gunicorn trusts it always).
            "proxy_protocol": getattr(cfg, "proxy_protocol", False) not in (False, None, "off"),
            "proxy_protocol_allow_ips": _as_tuple(getattr(cfg, "proxy_allow_ips", None) or "127.0.0.1,::1"),
            # gunicorn already applied max_requests_jitter to self.max_requests.
            "limit_max_requests": self.max_requests if cfg.max_requests > 0 else None,
            # Beat several times per gunicorn --timeout (0 disables its check: corral's default then).
            "timeout_worker_healthcheck": (float(cfg.timeout) if cfg.timeout > 0
                                           else ServerSettings.timeout_worker_healthcheck),
            "access_log": cfg.accesslog is not None,
            "backlog": cfg.backlog,
        }
        if cfg.is_ssl:
            options = cfg.ssl_options
            kwargs.update({
                "ssl_keyfile": options.get("keyfile"),
                "ssl_certfile": options.get("certfile"),
                "ssl_version": options.get("ssl_version"),
                "ssl_cert_reqs": options.get("cert_reqs"),
                "ssl_ca_certs": options.get("ca_certs"),
            })
            kwargs = {key: value for key, value in kwargs.items() if value is not None}
        # gunicorn's --ciphers, None by default: OpenSSL's own list, not corral's "TLSv1" (as uvicorn's worker).
        kwargs["ssl_ciphers"] = cfg.ssl_options.get("ciphers")
        if not (cfg.limit_request_line and cfg.limit_request_fields and cfg.limit_request_field_size):
            # gunicorn has no total head limit, and 0 turns one of its limits
            # off: corral's own (--limit-request-head-size) must not cap it then.
            kwargs["limit_request_head_size"] = UNLIMITED
        kwargs.update(self.CONFIG_KWARGS)
        return ServerSettings(**kwargs)

    def handle_stop(self, retire: bool = False) -> None:
        """Begin a graceful stop of the runtime (on the loop's thread)."""
        self.alive = False
        if self.runtime is not None:
            self.runtime.shutdown(retire=retire)

    def _quit(self) -> None:
        self.alive = False
        self.cfg.worker_int(self)
        if self.runtime is not None:
            self.runtime.quit()

    def _reopen(self) -> None:
        self.log.info("Worker %s reopening log files (USR1)", os.getpid())
        self.log.reopen_files()

    def signal_handlers(self) -> dict[int, Callable[[], None]]:
        """gunicorn's worker signals: TERM graceful, INT/QUIT quick, USR1 reopen logs."""
        return {
            signal.SIGTERM: lambda: self.handle_stop(retire=False),
            signal.SIGINT: self._quit,
            signal.SIGQUIT: self._quit,
            signal.SIGUSR1: self._reopen,
        }

    def run(self) -> None:
        """Serve gunicorn's listeners until a signal stops us, then exit."""
        from server_core.importer import AppLoadError, prepare

        # gunicorn's own handlers (set in init_signals) cover the boot; the
        # runtime replaces them with loop handlers once its loop runs.
        settings = self.server_settings()
        try:
            app = prepare(self.wsgi, settings)
        except AppLoadError as exc:
            self.log.error("%s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        self.runtime = WorkerRuntime(settings, [listener.sock for listener in self.sockets],
                                     control=GunicornControl(self), app=app, configure_logs=False)
        status = self.runtime.run(install_signals=True, signal_handlers=self.signal_handlers())
        if status == EXIT_APP_FAILED:
            # gunicorn's code for "the app cannot boot": the arbiter stops
            # instead of respawning forever.
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        sys.exit(status)


class CorralH11Worker(CorralWorker):
    """The pure-Python variant: h11 and the standard asyncio loop."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "asyncio", "http": "h11"}


def _as_tuple(value: Any) -> tuple[str, ...]:
    """gunicorn's forwarded_allow_ips (a list, or a comma string) as a tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(part) for part in value or ())
