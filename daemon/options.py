"""Every corral option, declared once.

Each row feeds the click command line (``daemon.cli``), the environment
(``CORRAL_<NAME>`` then ``UVICORN_<NAME>``, plus the row's own fallbacks such as
``WEB_CONCURRENCY``), the TOML keys of ``--config`` (the long option name), the
keyword arguments of ``daemon.run()`` (the name with underscores) and the
documented ``etc/corral.toml``. The first block is uvicorn 0.54's ``--help``,
name for name and default for default; the second is corral's own.

The ``process`` column says which process an option is for. A ``WORKER``
option is part of the worker's slice, :class:`server_core.settings.ServerSettings`,
under its own name (underscores) unless :data:`TO_WORKER` converts it; the
master may read it as well (``--backlog``). A ``MASTER`` option is read by the
master alone. ``ServerSettings`` keeps its own defaults (the worker never
imports ``daemon``); ``tests/test_option_defaults.py`` proves each equals this
table's default after the same conversion.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Kinds of value. "flag" is an on-only switch (--reload); "toggle" has a
# --no- form (--access-log/--no-access-log); "bool" takes a value
# (--ws-per-message-deflate false) as uvicorn's BOOLEAN does; "multi" repeats.
KINDS = ("str", "path", "int", "float", "bool", "flag", "toggle", "choice", "multi", "octal")

# Which process an option is for: the worker's slice (ServerSettings), or the master alone.
WORKER = "worker"
MASTER = "master"


@dataclass(frozen=True)
class Option:
    """One option: its long name, kind, default, help and fallbacks."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    env_fallback: tuple[str, ...] = ()  # extra variables, after CORRAL_/UVICORN_
    metavar: str | None = None
    uvicorn: bool = True  # declared by uvicorn (drop-in) rather than corral's own
    minimum: float | None = None
    process: str = WORKER  # WORKER: in the worker's ServerSettings; MASTER: the master's alone

    @property
    def attr(self) -> str:
        """The Python name: ``timeout-keep-alive`` → ``timeout_keep_alive``."""
        return self.name.replace("-", "_")

    @property
    def flag(self) -> str:
        return "--" + self.name

    def env_names(self) -> tuple[str, ...]:
        """Environment variables that may carry this option, strongest first."""
        upper = self.attr.upper()
        return (f"CORRAL_{upper}", f"UVICORN_{upper}", *self.env_fallback)


def _o(name: str, kind: str, default: Any, help: str, **kw: Any) -> Option:
    return Option(name, kind, default, help, **kw)


UVICORN_OPTIONS: tuple[Option, ...] = (
    _o("host", "str", "127.0.0.1", "Bind socket to this host.", minimum=None, process=MASTER),
    _o("port", "int", 8000, "Bind socket to this port. If 0, an available port will be picked.", minimum=0,
       process=MASTER),
    _o("uds", "str", None, "Bind to a UNIX domain socket.", process=MASTER),
    _o("fd", "int", None, "Bind to socket from this file descriptor (its family and type are read from it).",
       minimum=0, process=MASTER),
    _o("reload", "flag", False, "Enable auto-reload (development; not with --workers > 1).", process=MASTER),
    _o("reload-dir", "multi", (), "Set reload directories explicitly, instead of using the current working "
       "directory.", metavar="PATH", process=MASTER),
    _o("reload-include", "multi", (), "Glob patterns to include while watching for files (default '*.py').",
       process=MASTER),
    _o("reload-exclude", "multi", (), "Glob patterns to exclude while watching for files (default '.*, "
       ".py[cod], .sw.*, ~*').", process=MASTER),
    _o("reload-delay", "float", 0.25, "Delay between previous and next check if application needs to be "
       "reloaded.", minimum=0, process=MASTER),
    _o("workers", "int", None, "Number of worker processes. Defaults to the $WEB_CONCURRENCY environment "
       "variable if available, or 1. Not valid with --reload.", env_fallback=("WEB_CONCURRENCY",), minimum=1,
       process=MASTER),
    _o("loop", "choice", "auto", "Event loop implementation.", choices=("auto", "asyncio", "uvloop", "zuvloop")),
    _o("http", "choice", "auto", "HTTP protocol implementation: httptools (auto, when installed), h11 (pure "
       "Python) or zttp (the zttp package; HTTP/2 too with --http2). All three refuse the same requests.",
       choices=("auto", "h11", "httptools", "zttp")),
    _o("http2", "flag", False, "Enable HTTP/2 support. Requires --http zttp. Cleartext HTTP/2 with prior "
       "knowledge and, over TLS, ALPN h2, beside HTTP/1.1 on the same listeners."),
    _o("ws", "choice", "auto", "WebSocket protocol implementation.",
       choices=("auto", "none", "websockets", "websockets-sansio", "wsproto")),
    _o("ws-max-size", "int", 16777216, "WebSocket max size message in bytes.", minimum=1),
    _o("ws-max-queue", "int", 32, "The maximum length of the WebSocket message queue.", minimum=1),
    _o("ws-ping-interval", "float", 20.0, "WebSocket ping interval in seconds.", minimum=0),
    _o("ws-ping-timeout", "float", 20.0, "WebSocket ping timeout in seconds.", minimum=0),
    _o("ws-per-message-deflate", "bool", True, "WebSocket per-message-deflate compression."),
    _o("lifespan", "choice", "auto", "Lifespan implementation.", choices=("auto", "on", "off")),
    _o("interface", "choice", "auto", "Select ASGI3, ASGI2, or WSGI as the application interface.",
       choices=("auto", "asgi3", "asgi2", "wsgi")),
    _o("env-file", "path", None, "Environment configuration file (dotenv syntax) for the application: read "
       "at start and again at every HUP; its variables are added under the real environment (which wins) "
       "in each new worker, a line removed from the file is gone from the workers started after the next "
       "HUP, and CORRAL_*/UVICORN_* lines in it never set corral options (as uvicorn, which loads it after "
       "parsing the options).", process=MASTER),
    _o("log-config", "path", None, "Logging configuration file. Supported formats: .ini, .json, .yaml."),
    _o("log-level", "choice", "info", "Log level.",
       choices=("critical", "error", "warning", "info", "debug", "trace")),
    _o("access-log", "toggle", True, "Enable/Disable access log."),
    _o("use-colors", "toggle", None, "Enable/Disable colorized logging."),
    _o("proxy-headers", "toggle", True, "Enable/Disable X-Forwarded-Proto, X-Forwarded-For, X-Forwarded-Port "
       "to populate url scheme and remote address info (from trusted peers only)."),
    _o("server-header", "toggle", True, "Enable/Disable default Server header."),
    _o("date-header", "toggle", True, "Enable/Disable default Date header."),
    _o("forwarded-allow-ips", "str", "127.0.0.1,::1", "Comma separated list of IP addresses or networks to "
       "trust with proxy headers. Defaults to the $FORWARDED_ALLOW_IPS environment variable if available, "
       "or '127.0.0.1,::1'. The literal '*' means trust everything (UNIX-socket peers are trusted only "
       "then).", env_fallback=("FORWARDED_ALLOW_IPS",)),
    _o("root-path", "str", "", "Set the ASGI 'root_path' for applications submounted below a given URL path."),
    _o("limit-concurrency", "int", None, "Maximum number of concurrent connections or tasks to allow, before "
       "issuing HTTP 503 responses.", minimum=1),
    _o("backlog", "int", 2048, "Maximum number of connections to hold in backlog.", minimum=1),
    _o("limit-max-requests", "int", None, "Maximum number of requests to service before a worker is replaced "
       "(the replacement is ready before it leaves).", minimum=1),
    _o("limit-max-requests-jitter", "int", 0, "Maximum jitter to add to limit_max_requests. Staggers worker "
       "restarts to avoid all workers restarting simultaneously.", minimum=0, process=MASTER),
    _o("timeout-keep-alive", "int", 5, "Close Keep-Alive connections if no new data is received within this "
       "timeout (in seconds).", minimum=0),
    _o("timeout-graceful-shutdown", "int", 30, "Maximum number of seconds to wait for graceful shutdown. "
       "corral: 30 by default (uvicorn waits forever, which hangs deployments on open WebSockets).",
       minimum=0),
    _o("timeout-worker-healthcheck", "int", 30, "Seconds a worker's event loop may go without a heartbeat "
       "before its stacks are logged and it is replaced. corral: 30 by default, and the heartbeat comes "
       "from the event loop itself, so a blocked loop is caught (uvicorn: 5, answered from a thread).",
       minimum=1),
    _o("ssl-keyfile", "path", None, "SSL key file."),
    _o("ssl-certfile", "path", None, "SSL certificate file."),
    _o("ssl-keyfile-password", "str", None, "SSL keyfile password."),
    _o("ssl-version", "int", int(ssl.PROTOCOL_TLS_SERVER), "SSL version to use (see stdlib ssl module's)."),
    _o("ssl-cert-reqs", "int", int(ssl.CERT_NONE), "Whether client certificate is required (see stdlib ssl "
       "module's).", minimum=0),
    _o("ssl-ca-certs", "path", None, "CA certificates file."),
    _o("ssl-ciphers", "str", "TLSv1", "Ciphers to use (see stdlib ssl module's)."),
    _o("header", "multi", (), "Specify custom default HTTP response headers as a Name:Value pair.",
       metavar="NAME:VALUE"),
    _o("app-dir", "str", "", "Look for APP in the specified directory, by adding this to the PYTHONPATH. "
       "Defaults to the current working directory."),
    _o("h11-max-incomplete-event-size", "int", None, "For h11, the maximum number of bytes to buffer of an "
       "incomplete event.", minimum=1),
    _o("reset-contextvars", "flag", False, "Run each ASGI request in a fresh contextvars.Context. Hides context "
       "set in the lifespan."),
    _o("factory", "flag", False, "Treat APP as an application factory, i.e. a () -> <ASGI app> callable."),
)

CORRAL_OPTIONS: tuple[Option, ...] = (
    _o("bind", "multi", (), "Extra listener (repeatable): HOST:PORT, [V6]:PORT, unix:PATH or fd://N.",
       metavar="ADDR", uvicorn=False, process=MASTER),
    _o("uds-mode", "octal", 0o666, "Permissions of UNIX sockets corral creates.", metavar="OCTAL",
       uvicorn=False, process=MASTER),
    _o("config", "path", None, "A TOML file whose keys are these long option names, plus 'app'.",
       uvicorn=False, process=MASTER),
    _o("pid", "path", None, "Write the master's PID to this file (atomically; removed at exit).",
       uvicorn=False, process=MASTER),
    _o("preload", "flag", False, "Import the app in the master before forking (shares memory; HUP then "
       "cannot load new code).", uvicorn=False, process=MASTER),
    _o("timeout-worker-boot", "float", 60.0, "A worker not ready (lifespan startup done, accepting) within "
       "this many seconds is killed.", uvicorn=False, minimum=0.1, process=MASTER),
    _o("limit-worker-memory", "int", None, "A worker whose RSS passes this many MiB is replaced (replacement "
       "first).", metavar="MIB", uvicorn=False, minimum=1, process=MASTER),
    _o("limit-request-line", "int", 8190, "Longest request line accepted (longer: 414).", uvicorn=False,
       minimum=16),
    _o("limit-request-fields", "int", 100, "Most header fields accepted in a request (more: 431).",
       uvicorn=False, minimum=1),
    _o("limit-request-field-size", "int", 8190, "Longest header field accepted (longer: 431).", uvicorn=False,
       minimum=16),
    _o("limit-request-head-size", "int", 65536, "Most bytes of a request head (request line and fields), complete "
       "or not (more: 431).", uvicorn=False, minimum=64),
    _o("timeout-request-body", "float", 60.0, "Longest wait, in seconds, for the next piece of a request body "
       "the app is waiting for (then 408 and close).", metavar="S", uvicorn=False, minimum=0.1),
    _o("control-socket", "path", None, "UNIX socket (mode 0600) on which the master answers corralctl "
       "(status, workers, reload, upgrade, scale, stop, reopen-logs).", metavar="PATH", uvicorn=False, process=MASTER),
    _o("metrics-bind", "str", None, "Serve Prometheus /metrics, /livez and /readyz from the master on "
       "HOST:PORT or unix:PATH.", metavar="ADDR", uvicorn=False),
    _o("shutdown-delay", "float", 0.0, "On TERM, /readyz answers 503 at once but serving goes on for this "
       "many seconds (so load balancers stop routing here), then the graceful stop.", metavar="S",
       uvicorn=False, minimum=0, process=MASTER),
    _o("log-format", "choice", "console", "Renderer for all logs.", choices=("console", "json"),
       uvicorn=False),
    _o("reuse-port", "flag", False, "Set SO_REUSEPORT on listeners corral binds itself.", uvicorn=False,
       process=MASTER),
    _o("timeout-tls-handshake", "float", 10.0, "A TLS handshake not done within this many seconds is dropped "
       "(with --ssl-certfile).", metavar="S", uvicorn=False, minimum=0.1),
    _o("proxy-protocol", "flag", False, "Every connection starts with a PROXY protocol v1/v2 header (HAProxy "
       "send-proxy, AWS NLB) from a peer in --forwarded-allow-ips; its source address becomes the client. "
       "Otherwise the connection is closed unanswered.", uvicorn=False),
)

OPTIONS: tuple[Option, ...] = UVICORN_OPTIONS + CORRAL_OPTIONS
BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}
BY_ATTR: dict[str, Option] = {opt.attr: opt for opt in OPTIONS}
WORKER_OPTIONS: tuple[Option, ...] = tuple(opt for opt in OPTIONS if opt.process == WORKER)


def split_ips(text: str) -> tuple[str, ...]:
    """``--forwarded-allow-ips`` as the worker takes it: ``"a, b"`` → ``("a", "b")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def split_header(text: str) -> tuple[str, str]:
    """One ``--header NAME:VALUE`` as a ``(name, value)`` pair."""
    name, _, value = text.partition(":")
    return name.strip(), value.strip()


# The worker options whose ServerSettings field is not the option's value under
# its own name: option → (field, conversion). Every other WORKER row is passed as is.
TO_WORKER: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "forwarded-allow-ips": ("forwarded_allow_ips", split_ips),
    "header": ("headers", lambda headers: tuple(split_header(h) for h in headers)),
    "ws-ping-interval": ("ws_ping_interval", lambda seconds: seconds or None),  # 0: no pings
    "ws-ping-timeout": ("ws_ping_timeout", lambda seconds: seconds or None),
    "metrics-bind": ("metrics", bool),  # the master serves /metrics; the worker counts per request
}

# Worker options whose value the master computes for each worker (the
# jittered request limit) and passes to Config.server_settings().
PER_WORKER = frozenset({"limit-max-requests"})


def worker_slice(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ServerSettings keywords for option ``values`` (``{name: value}``), without the app
    and the PER_WORKER values."""
    kwargs: dict[str, Any] = {}
    for opt in WORKER_OPTIONS:
        if opt.name in PER_WORKER:
            continue
        field, convert = TO_WORKER.get(opt.name, (opt.attr, _same))
        kwargs[field] = convert(values[opt.name])
    return kwargs


def _same(value: Any) -> Any:
    return value

# `--version` and `--help` are actions, not settings; `app` is the positional argument.
ACTIONS = ("version", "help")


# What build_config always fills in, whatever the layers left (None is never seen).
FILLED = frozenset({"workers", "log-level"})

_PYTHON_TYPES = {"str": "str", "path": "str", "int": "int", "float": "float", "bool": "bool", "flag": "bool",
                 "toggle": "bool", "choice": "str", "multi": "tuple[str, ...]", "octal": "int"}


def python_type(opt: Option) -> str:
    """The type of ``Config.<attr>`` for this row: by kind, optional when the default is None."""
    base = _PYTHON_TYPES[opt.kind]
    return f"{base} | None" if opt.default is None and opt.name not in FILLED else base


def render_attributes() -> str:
    """The text of ``daemon/option_types.py``: every option as a typed attribute, for mypy."""
    lines = [
        '"""Every option as a typed attribute of :class:`daemon.config.Config`, for mypy.',
        "",
        "Generated from the table in ``daemon/options.py`` by ``python -m daemon.options``: do not edit",
        "(``tests/test_option_defaults.py`` fails while it is out of date).",
        '"""',
        "",
        "",
        "class OptionAttributes:",
        '    """``config.<option>`` (underscores), answered from ``config.values`` at run time."""',
        "",
    ]
    lines += [f"    {opt.attr}: {python_type(opt)}" for opt in OPTIONS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates daemon/option_types.py
    import pathlib

    pathlib.Path(__file__).with_name("option_types.py").write_text(render_attributes())
