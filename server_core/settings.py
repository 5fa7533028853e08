"""The slice of configuration a worker needs, as one frozen object.

The master builds it once from its own configuration (``daemon.config``) and
passes it to :func:`server_core.worker.serve`; the gunicorn worker classes build
it from gunicorn's settings plus ``CONFIG_KWARGS``. Everything here already has
its final type: choices are resolved names, sizes are ints, headers are pairs.

Each field fed by an option has that option's default from corral's option
table (``daemon/options.py``, uvicorn 0.54's defaults), after the table's
conversion to the worker (``"127.0.0.1,::1"`` becomes a tuple). They are
repeated here so that a worker never imports ``daemon``;
``tests/test_option_defaults.py`` proves they agree.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

# The default heartbeat period is derived from the health-check timeout so a
# healthy worker sends several beats per timeout even on a busy machine.
HEARTBEATS_PER_TIMEOUT = 6


@dataclass(frozen=True)
class ServerSettings:
    """Everything a worker needs to serve: the app, protocols, limits, TLS, logs."""

    # The application: an import string "module:attr" or an ASGI callable.
    app: Any = None
    factory: bool = False
    app_dir: str = ""
    interface: str = "auto"  # auto | asgi3 | asgi2 | wsgi

    # Implementations, resolved by the master ("auto" is resolved here too if
    # the settings are built by hand): loop asyncio|uvloop, http httptools|h11,
    # ws websockets|wsproto|none.
    loop: str = "auto"
    http: str = "auto"
    # HTTP/2 beside HTTP/1.1 (only with http == "zttp"): TLS ALPN h2, or the
    # connection preface on cleartext connections (prior knowledge).
    http2: bool = False
    # The master serves /metrics (--metrics-bind): count every request by
    # method, status and duration (otherwise only totals and gauges, free).
    metrics: bool = False
    ws: str = "auto"
    lifespan: str = "auto"  # auto | on | off

    # WebSocket.
    ws_max_size: int = 16 * 1024 * 1024
    ws_max_queue: int = 32
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    ws_per_message_deflate: bool = True

    # HTTP behaviour.
    root_path: str = ""
    proxy_headers: bool = True
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    # --proxy-protocol: every connection starts with a PROXY v1/v2 header from
    # a peer trusted by proxy_protocol_allow_ips (None: forwarded_allow_ips;
    # the gunicorn workers map gunicorn's proxy_allow_ips here).
    proxy_protocol: bool = False
    proxy_protocol_allow_ips: tuple[str, ...] | None = None
    server_header: bool = True
    date_header: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    limit_concurrency: int | None = None
    # asyncio repeats listen() on a socket passed with sock=, so the worker
    # needs the master's --backlog too.
    backlog: int = 2048
    # Already jittered by the master: the exact number this worker serves.
    limit_max_requests: int | None = None
    timeout_keep_alive: float = 5.0
    timeout_graceful_shutdown: float = 30.0
    # A client must send a complete request head within this many seconds of
    # its first byte (slowloris protection).
    timeout_request_head: float = 10.0
    # The application waits in receive() for request body bytes: the longest
    # wait for the next piece, answered 408 (or cut) and closed.
    timeout_request_body: float = 60.0
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    # Total bytes of a request head, complete or not (431), on every parser.
    limit_request_head_size: int = 65536
    h11_max_incomplete_event_size: int | None = None
    reset_contextvars: bool = False

    # TLS.
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_version: int = int(ssl.PROTOCOL_TLS_SERVER)
    ssl_cert_reqs: int = int(ssl.CERT_NONE)
    ssl_ca_certs: str | None = None
    ssl_ciphers: str | None = "TLSv1"  # uvicorn's default; None sets no cipher list
    # A connection whose TLS handshake is not done within this many seconds is
    # dropped (asyncio's own default is 60).
    timeout_tls_handshake: float = 10.0

    # Logs.
    log_level: str = "info"
    log_config: str | None = None
    log_format: str = "console"  # console | json
    use_colors: bool | None = None
    access_log: bool = True

    # Health: a worker's event loop beats every heartbeat_interval seconds.
    timeout_worker_healthcheck: float = 30.0

    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_ssl(self) -> bool:
        """True when the worker terminates TLS itself."""
        return bool(self.ssl_certfile)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats from the worker's event loop."""
        return max(0.05, min(1.0, self.timeout_worker_healthcheck / HEARTBEATS_PER_TIMEOUT))
