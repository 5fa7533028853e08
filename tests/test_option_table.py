"""No option is accepted and then ignored: a walk over the whole option table.

Every row of ``daemon.options.OPTIONS`` is one of two kinds, and this test
knows which (a new row fails here until it is placed):

- a **worker option**: a value other than the default must change the
  ``ServerSettings`` a worker receives (the value really reaches the process
  that uses it);
- a **master option**: the master reads it itself; the module that does is
  named here, and the option's name must be read there.

Then every *choice* of the implementation options must select a different
implementation in the worker, or be refused at start with a ConfigError
naming it — which is how ``--http zttp`` (silently served by httptools) and
``--http2`` (silently ignored) slipped through before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, build_config
from daemon.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent

# Master options, and the module whose code reads each one.
MASTER_OPTIONS = {
    "host": "daemon/config.py",
    "port": "daemon/config.py",
    "uds": "daemon/config.py",
    "fd": "daemon/config.py",
    "bind": "daemon/config.py",
    "uds-mode": "daemon/listeners.py",
    "reuse-port": "daemon/listeners.py",
    "reload": "daemon/arbiter.py",
    "reload-dir": "daemon/reloader.py",
    "reload-include": "daemon/reloader.py",
    "reload-exclude": "daemon/reloader.py",
    "reload-delay": "daemon/reloader.py",
    "workers": "daemon/pool.py",
    "env-file": "daemon/config.py",
    "config": "daemon/config.py",
    "pid": "daemon/master.py",
    "preload": "daemon/master.py",
    "timeout-worker-boot": "daemon/pool.py",
    "limit-worker-memory": "daemon/pool.py",
    "limit-max-requests": "daemon/pool.py",  # jittered per worker, then in its settings
    "limit-max-requests-jitter": "daemon/pool.py",
    "control-socket": "daemon/master.py",
    "metrics-bind": "daemon/master.py",
    "shutdown-delay": "daemon/arbiter.py",
}

# A value other than the default, for worker options whose default cannot
# simply be flipped or bumped (files, addresses, choices).
SAMPLES: dict[str, Any] = {
    "loop": "asyncio",
    "http": "h11",
    "ws": "wsproto",
    "lifespan": "on",
    "interface": "asgi2",
    "log-level": "debug",
    "log-format": "json",
    "forwarded-allow-ips": "10.0.0.1",
    "root-path": "/api",
    "header": ["X-A:1"],
    "app-dir": "/tmp",
    "ssl-version": 16,  # PROTOCOL_TLS_CLIENT: another value that is not deprecated
    "ssl-cert-reqs": 1,
    "ssl-ciphers": "ECDHE+AESGCM",
    "ssl-keyfile-password": "secret",
    "http2": True,
}


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))  # usable alone
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    log_config = folder / "logging.json"
    log_config.write_text('{"version": 1}')
    return {"ssl-certfile": str(certfile), "ssl-keyfile": str(keyfile), "ssl-ca-certs": str(cafile),
            "log-config": str(log_config)}


def _other_value(option: Any, files: dict[str, str]) -> Any:
    if option.name in files:
        return files[option.name]
    if option.name in SAMPLES:
        return SAMPLES[option.name]
    kind, default = option.kind, option.default
    if kind in ("flag", "toggle", "bool"):
        return not default if default is not None else True
    if kind in ("int", "float"):
        return (default or 0) + 3
    raise AssertionError(f"no sample value for --{option.name}: add one to SAMPLES")


def test_every_option_is_placed() -> None:
    """A new row must be placed here as a master or a worker option."""
    names = {option.name for option in OPTIONS}
    assert set(MASTER_OPTIONS) <= names, set(MASTER_OPTIONS) - names


@pytest.mark.parametrize("option", [o for o in OPTIONS if o.name not in MASTER_OPTIONS], ids=lambda o: o.name)
def test_worker_option_reaches_the_worker(option: Any, tls_files: dict[str, str]) -> None:
    base: dict[str, Any] = {}
    if option.name.startswith("ssl-") and option.name != "ssl-certfile":
        base = {"ssl-certfile": tls_files["ssl-certfile"]}
    if option.name == "http2":
        base = {"http": "zttp"}
    if option.name == "h11-max-incomplete-event-size":
        base = {"http": "h11"}
    before = build_config(base, {}, app="m:a").server_settings()
    after = build_config({**base, option.name: _other_value(option, tls_files)}, {}, app="m:a").server_settings()
    assert before != after, f"--{option.name} changes nothing a worker receives"


@pytest.mark.parametrize("name", sorted(MASTER_OPTIONS))
def test_master_option_is_read_by_the_master(name: str) -> None:
    source = (ROOT / MASTER_OPTIONS[name]).read_text()
    attr = name.replace("-", "_")
    used = re.search(rf"\.{attr}\b|\[\"{re.escape(name)}\"\]|\"{re.escape(name)}\"", source)
    assert used, f"--{name} is not read in {MASTER_OPTIONS[name]}"


def _implementation(option: str, value: str) -> Any:
    """What the worker runs for one choice (the resolved settings value, then its consumer)."""
    settings = build_config({option: value, **({"http": "zttp"} if option == "http2" else {})}, {},
                            app="m:a").server_settings()
    if option == "http":
        from server_core.http import make_parser

        return type(make_parser(settings)).__name__
    if option == "loop":
        from server_core.loops import loop_factory

        return loop_factory(settings.loop)
    if option == "ws":
        if settings.ws == "none":
            return None
        from server_core.websocket import engine_factory

        return engine_factory(settings.ws)
    return getattr(settings, option.replace("-", "_"))


@pytest.mark.parametrize("option", ["http", "loop", "ws", "lifespan", "interface", "log-level", "log-format"])
def test_each_choice_selects_its_own_implementation_or_is_refused(option: str) -> None:
    row = next(o for o in OPTIONS if o.name == option)
    seen: dict[Any, str] = {}
    for choice in row.choices:
        try:
            implementation = _implementation(option, choice)
        except ConfigError as exc:
            assert choice in str(exc) or option in str(exc), exc  # refused, naming what
            continue
        if choice == "auto" or (option == "ws" and choice == "websockets-sansio"):
            continue  # a name for another choice (uvicorn's): checked through that one
        assert implementation not in seen, f"--{option} {choice} runs the same as --{option} {seen[implementation]}"
        seen[implementation] = choice
    assert len(seen) >= 2


def test_http_choices_run_their_own_parser() -> None:
    assert {choice: _implementation("http", choice) for choice in ("httptools", "h11", "zttp")} == {
        "httptools": "HttptoolsParser", "h11": "H11Parser", "zttp": "ZttpParser"}


def test_http2_turns_on_the_preface_sniffing_and_alpn() -> None:
    from server_core.tls import make_ssl_context

    assert _implementation("http2", True) is True  # type: ignore[arg-type]
    settings = build_config({"http": "zttp", "http2": True}, {}, app="m:a").server_settings()
    assert settings.http2
    assert make_ssl_context(settings) is None  # no TLS asked: nothing to announce
