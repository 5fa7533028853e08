"""Every option as a typed attribute of :class:`daemon.config.Config`, for mypy.

Generated from the table in ``daemon/options.py`` by ``python -m daemon.options``: do not edit
(``tests/test_option_defaults.py`` fails while it is out of date).
"""


class OptionAttributes:
    """``config.<option>`` (underscores), answered from ``config.values`` at run time."""

    host: str
    port: int
    uds: str | None
    fd: int | None
    reload: bool
    reload_dir: tuple[str, ...]
    reload_include: tuple[str, ...]
    reload_exclude: tuple[str, ...]
    reload_delay: float
    workers: int
    loop: str
    http: str
    http2: bool
    ws: str
    ws_max_size: int
    ws_max_queue: int
    ws_ping_interval: float
    ws_ping_timeout: float
    ws_per_message_deflate: bool
    lifespan: str
    interface: str
    env_file: str | None
    log_config: str | None
    log_level: str
    access_log: bool
    use_colors: bool | None
    proxy_headers: bool
    server_header: bool
    date_header: bool
    forwarded_allow_ips: str
    root_path: str
    limit_concurrency: int | None
    backlog: int
    limit_max_requests: int | None
    limit_max_requests_jitter: int
    timeout_keep_alive: int
    timeout_graceful_shutdown: int
    timeout_worker_healthcheck: int
    ssl_keyfile: str | None
    ssl_certfile: str | None
    ssl_keyfile_password: str | None
    ssl_version: int
    ssl_cert_reqs: int
    ssl_ca_certs: str | None
    ssl_ciphers: str
    header: tuple[str, ...]
    app_dir: str
    h11_max_incomplete_event_size: int | None
    reset_contextvars: bool
    factory: bool
    bind: tuple[str, ...]
    uds_mode: int
    config: str | None
    pid: str | None
    preload: bool
    timeout_worker_boot: float
    limit_worker_memory: int | None
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    limit_request_head_size: int
    timeout_request_body: float
    control_socket: str | None
    metrics_bind: str | None
    shutdown_delay: float
    log_format: str
    reuse_port: bool
    timeout_tls_handshake: float
    proxy_protocol: bool
