"""The option table, the layered configuration and its error messages (no sockets)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import parse_config
from daemon.config import ConfigError, build_config, parse_bind, reload_config
from daemon.options import BY_NAME, OPTIONS
from tests.support import ROOT

# uvicorn 0.54's --help, option for option (checked against the real one below when installed).
UVICORN_054 = """host port uds fd reload reload-dir reload-include reload-exclude reload-delay workers loop http
http2 ws ws-max-size ws-max-queue ws-ping-interval ws-ping-timeout ws-per-message-deflate lifespan interface
env-file log-config log-level access-log use-colors proxy-headers server-header date-header forwarded-allow-ips
root-path limit-concurrency backlog limit-max-requests limit-max-requests-jitter timeout-keep-alive
timeout-graceful-shutdown timeout-worker-healthcheck ssl-keyfile ssl-certfile ssl-keyfile-password ssl-version
ssl-cert-reqs ssl-ca-certs ssl-ciphers header app-dir h11-max-incomplete-event-size reset-contextvars
factory""".split()
OURS = """bind uds-mode config pid preload timeout-worker-boot limit-worker-memory limit-request-line
limit-request-fields limit-request-field-size log-format reuse-port control-socket metrics-bind
shutdown-delay""".split()

OURS += ["proxy-protocol"]

OURS += ["timeout-tls-handshake"]

OURS += ["limit-request-head-size", "timeout-request-body"]


def test_every_uvicorn_and_corral_option_is_declared() -> None:
    assert set(UVICORN_054) | set(OURS) == set(BY_NAME)


def test_help_lists_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "daemon", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    for opt in OPTIONS:
        assert opt.flag in out, opt.flag
    assert "--version" in out
    assert "30" in out and "uvicorn waits forever" in out  # the documented deliberate difference


def test_uvicorn_help_matches() -> None:
    """uvicorn (a test dependency, as the reference) offers no option that corral lacks."""
    import os

    uvicorn = Path(sys.executable).parent / "uvicorn"
    out = subprocess.run([str(uvicorn), "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "300"}).stdout
    theirs = {m for m in re.findall(r"^  --([a-z0-9-]+)", out, re.M) if not m.startswith("no-")} - {"help", "version"}
    assert theirs <= set(BY_NAME), theirs - set(BY_NAME)


def test_example_toml_documents_every_key() -> None:
    text = (ROOT / "etc" / "corral.toml").read_text()
    keys = set(re.findall(r"^#? ?([a-z0-9-]+) = ", text, re.M))
    missing = {opt.name for opt in OPTIONS if opt.name != "config"} - keys
    assert not missing, f"etc/corral.toml lacks {sorted(missing)}"
    config = build_config({"config": str(ROOT / "etc" / "corral.toml")}, {})
    for opt in OPTIONS:
        if opt.default is not None and opt.name != "config":
            assert config.values[opt.name] == opt.default or opt.name in ("loop", "http", "ws"), opt.name


def test_precedence_command_line_over_env_over_file_over_default(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('app = "file:app"\ntimeout-keep-alive = 7\nbacklog = 10\nroot-path = "/file"\n')
    env = {"UVICORN_BACKLOG": "20", "CORRAL_ROOT_PATH": "/env", "UVICORN_ROOT_PATH": "/uvicorn"}
    config = build_config({"config": str(conf), "root-path": "/cli"}, env)
    assert config.app == "file:app"
    assert config.timeout_keep_alive == 7  # file over default
    assert config.backlog == 20  # UVICORN_ env over file
    assert config.root_path == "/cli"  # command line over everything
    assert build_config({"config": str(conf)}, env).root_path == "/env"  # CORRAL_ over UVICORN_
    assert config.limit_request_line == 8190  # default
    assert config.sources["backlog"] == "UVICORN_BACKLOG"


def test_env_fallbacks() -> None:
    config = build_config({}, {"WEB_CONCURRENCY": "3", "FORWARDED_ALLOW_IPS": "10.0.0.0/8,*"}, app="m:a")
    assert config.workers == 3
    assert config.server_settings().forwarded_allow_ips == ("10.0.0.0/8", "*")
    assert build_config({}, {}, app="m:a").workers == 1
    assert build_config({}, {"WEB_CONCURRENCY": "3", "CORRAL_WORKERS": "5"}, app="m:a").workers == 5


@pytest.mark.parametrize(("line", "env", "file", "message"), [
    ({}, {"CORRAL_PORT": "abc"}, "", "environment variable CORRAL_PORT: invalid value 'abc' for --port: expected an integer"),
    ({}, {"UVICORN_LOOP": "tokio"}, "", "UVICORN_LOOP: invalid value 'tokio' for --loop: expected one of auto, asyncio"),
    ({}, {}, "timout-keep-alive = 5", "unknown key 'timout-keep-alive' (did you mean 'timeout-keep-alive'?)"),
    ({}, {}, 'timeout-keep-alive = "five"', "key 'timeout-keep-alive': invalid value 'five' for --timeout-keep-alive: expected an integer"),
    ({}, {}, "workers = true", "key 'workers': invalid value True for --workers"),
    ({}, {}, "access-log = 3", "key 'access-log': invalid value 3 for --access-log: expected true or false"),
    ({}, {}, "workers = 0", "must be at least 1"),
    ({}, {}, "header = ['nocolon']", "invalid header 'nocolon': expected Name:Value"),
    ({}, {}, "bind = ['localhost']", "expected HOST:PORT"),
    ({}, {}, 'forwarded-allow-ips = "10.0.0.300"', "'10.0.0.300' is not an IP address"),
    ({}, {}, "[[", "not valid TOML"),
    ({"reload": True, "workers": 2}, {}, "", "--reload and --workers 2 cannot be used together"),
    ({"loop": "zuvloop"}, {}, "", "needs the 'zuvloop' package"),
    ({"http2": True}, {}, "", "--http2: HTTP/2 requires the `zttp` HTTP protocol"),
    ({"http": "h11"}, {"CORRAL_HTTP2": "true"}, "", "environment variable CORRAL_HTTP2: HTTP/2 requires the `zttp` HTTP protocol"),
    ({"ssl-certfile": "/nonexistent.pem"}, {}, "", "--ssl-certfile: no such file '/nonexistent.pem'"),
    ({"uds-mode": "9"}, {}, "", "invalid value '9' for --uds-mode: expected an octal mode"),
])
def test_errors_name_their_source(tmp_path: Path, line: dict, env: dict, file: str, message: str) -> None:
    given = dict(line)
    if file:
        conf = tmp_path / "bad.toml"
        conf.write_text(file + "\n")
        given["config"] = str(conf)
    with pytest.raises(ConfigError) as info:
        build_config(given, env, app="m:a")
    assert message in str(info.value)
    if file and "TOML" not in message:
        assert str(tmp_path / "bad.toml") in str(info.value)


def test_http_zttp_and_http2_resolve_to_the_zttp_stack() -> None:
    config = build_config({"http": "zttp", "http2": True}, {}, app="m:a")
    settings = config.server_settings()
    assert (settings.http, settings.http2) == ("zttp", True)
    assert build_config({}, {}, app="m:a").server_settings().http2 is False


def test_app_errors() -> None:
    with pytest.raises(ConfigError, match="missing the APP argument"):
        build_config({}, {})
    with pytest.raises(ConfigError, match="module:attribute"):
        build_config({}, {}, app="justamodule")


def test_websockets_sansio_is_websockets_and_auto_resolves() -> None:
    config = build_config({"ws": "websockets-sansio"}, {}, app="m:a")
    assert config.ws == "websockets"
    auto = build_config({}, {}, app="m:a")
    assert (auto.http, auto.loop, auto.ws) == ("httptools", "uvloop", "websockets")


def test_binds() -> None:
    assert build_config({}, {}, app="m:a").binds == ("127.0.0.1:8000",)
    assert build_config({"host": "::1", "port": 9}, {}, app="m:a").binds == ("[::1]:9",)
    assert build_config({"fd": 3}, {}, app="m:a").binds == ("fd://3",)
    assert build_config({"uds": "/tmp/s"}, {}, app="m:a").binds == ("unix:/tmp/s",)
    assert build_config({"bind": ("unix:/a", "[::]:80")}, {}, app="m:a").binds == ("unix:/a", "[::]:80")
    assert build_config({"port": 81, "bind": ("unix:/a",)}, {}, app="m:a").binds == ("127.0.0.1:81", "unix:/a")
    assert parse_bind("[::1]:80") == ("tcp", ("::1", 80))
    assert parse_bind("fd://4") == ("fd", 4)
    assert parse_bind("fd://web") == ("fdname", "web")
    with pytest.raises(ConfigError, match="descriptor number or a socket name"):
        parse_bind("fd://")
    assert parse_bind("unix:/run/x.sock") == ("unix", "/run/x.sock")


def test_reload_config_rereads_file_and_env(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("timeout-keep-alive = 7\n")
    config = build_config({"config": str(conf), "workers": 2}, {}, app="m:a")
    conf.write_text("timeout-keep-alive = 9\nheader = ['X-New:1']\n")
    again = reload_config(config, {"CORRAL_BACKLOG": "11"})
    assert (again.timeout_keep_alive, again.backlog, again.workers) == (9, 11, 2)
    assert again.server_settings().headers == (("X-New", "1"),)
    conf.write_text("timeout-keep-alive = 'x'\n")
    with pytest.raises(ConfigError, match="timeout-keep-alive"):
        reload_config(config, {})


def test_server_settings_slice() -> None:
    config = parse_config(["m:a", "--header", "X-A: 1", "--ws-ping-interval", "0", "--no-access-log",
                           "--ws-per-message-deflate", "false", "--limit-request-line", "100"])
    settings = config.server_settings(limit_max_requests=42)
    assert settings.headers == (("X-A", "1"),)
    assert settings.ws_ping_interval is None
    assert settings.access_log is False
    assert settings.ws_per_message_deflate is False
    assert settings.limit_request_line == 100
    assert settings.limit_max_requests == 42


def test_run_rejects_unknown_keyword() -> None:
    import daemon

    with pytest.raises(ConfigError, match="unknown option 'timout_keep_alive'.*timeout_keep_alive"):
        daemon.run("m:a", timout_keep_alive=3)
    with pytest.raises(ConfigError, match="reload=True needs the app as an import string"):
        daemon.run(lambda scope, receive, send: None, reload=True)


def test_cli_config_errors_exit_2_before_binding(tmp_path: Path) -> None:
    """A bad option never binds: the port stays free and the status is 2 with one clear line."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "c.toml"
    conf.write_text("workers = 'many'\n")
    cases = [
        (["m:a", "--port", str(port), "--config", str(conf)], {}, f"{conf}: key 'workers'"),
        (["m:a", "--port", str(port)], {"CORRAL_TIMEOUT_KEEP_ALIVE": "soon"}, "CORRAL_TIMEOUT_KEEP_ALIVE"),
        (["m:a", "--port", str(port), "--no-such-option"], {}, "No such option '--no-such-option'"),
        (["m:a", "--port", str(port), "--reload", "--workers", "2"], {}, "cannot be used together"),
    ]
    import os

    for argv, env, message in cases:
        proc = subprocess.run([sys.executable, "-m", "daemon", *argv], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, **env}, timeout=30)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_readme_documents_every_option() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.lstrip().startswith("# corral")
    assert "make run" in readme and "make test" in readme
    for opt in OPTIONS:
        assert f"`--{opt.name}`" in readme or f"`--{opt.name}` /" in readme, opt.name


def test_a_bad_pid_path_is_a_config_error_before_binding(tmp_path: Path) -> None:
    """--pid in a missing (or unwritable) directory: exit 2, one line naming --pid, nothing bound or left."""
    import os

    uds = tmp_path / "s.sock"
    for pid in (tmp_path / "missing" / "corral.pid", tmp_path):
        proc = subprocess.run([sys.executable, "-m", "daemon", "m:a", "--uds", str(uds), "--pid", str(pid)],
                              capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=30)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--pid" in lines[0], proc.stderr
        assert not uds.exists()


def test_a_bad_tls_certificate_is_a_config_error_before_binding(tmp_path: Path) -> None:
    """A garbage --ssl-certfile: exit 2 with one line naming it, before any listener (nothing bound)."""
    import os

    cert = tmp_path / "bad.pem"
    cert.write_text("not a certificate\n")
    uds = tmp_path / "s.sock"
    proc = subprocess.run([sys.executable, "-m", "daemon", "tests.apps.master_app:app", "--uds", str(uds),
                           "--ssl-certfile", str(cert)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ssl-certfile" in lines[0], proc.stderr
    assert "listening" not in proc.stderr and not uds.exists()
    with pytest.raises(ConfigError, match="--ssl-certfile"):
        build_config({"ssl-certfile": str(cert)}, {}, app="m:a")


def test_an_encrypted_key_without_password_is_an_error_not_a_prompt(tmp_path: Path) -> None:
    """OpenSSL would prompt for the passphrase on a terminal; corral must fail with a line instead."""
    import pty

    import trustme
    from cryptography.hazmat.primitives import serialization

    cert = trustme.CA().issue_cert("localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    (tmp_path / "key.pem").write_bytes(encrypted)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    # A terminal as stdin: where OpenSSL's default callback would ask and block.
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "daemon", "m:a", "--ssl-certfile", str(tmp_path / "cert.pem"),
                               "--ssl-keyfile", str(tmp_path / "key.pem")], stdin=terminal,
                              capture_output=True, text=True, cwd=ROOT, timeout=30)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 2, proc.stderr
    assert "--ssl-certfile" in proc.stderr and "Traceback" not in proc.stderr
    config = build_config({"ssl-certfile": str(tmp_path / "cert.pem"), "ssl-keyfile": str(tmp_path / "key.pem"),
                           "ssl-keyfile-password": "secret"}, {}, app="m:a")
    assert config.ssl_keyfile_password == "secret"
