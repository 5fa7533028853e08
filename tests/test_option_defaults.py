"""One default per option, wherever the option can enter.

The option table (``daemon/options.py``) holds each default once. This walks
every way in: the click command line, the environment, a ``--config`` TOML
file, ``daemon.run()`` keywords, ``ServerSettings()`` (which repeats the
defaults so that a worker never imports ``daemon``) and the gunicorn worker
classes, and proves each gives the table's default — after the table's own
conversion to the worker (``TO_WORKER``) — or names why not.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click
import pytest

import daemon
from daemon.cli import build_command, parse_config
from daemon.config import Config, build_config
from daemon.options import MASTER, OPTIONS, PER_WORKER, TO_WORKER, WORKER, WORKER_OPTIONS, worker_slice
from server_core.settings import ServerSettings

APP = "tests.apps.rt_app:app"
ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {opt.name: opt.default for opt in OPTIONS}

# What build_config fills in after the layers: the implementations "auto"
# resolves to (whatever is installed) and --workers from $WEB_CONCURRENCY or 1.
RESOLVED = {"loop", "http", "ws", "workers"}

# ServerSettings fields no option feeds: the app, the head timeout (no option
# yet) and what only the gunicorn worker classes set.
NOT_FROM_OPTIONS = {"app", "timeout_request_head", "proxy_protocol_allow_ips", "extra"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No option in the environment: the defaults are what is left."""
    for name in list(os.environ):
        if name.startswith(("CORRAL_", "UVICORN_")) or name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
            monkeypatch.delenv(name)


def table_values(config: Config) -> dict[str, Any]:
    """The config's values, but for those build_config resolves."""
    return {name: value for name, value in config.values.items() if name not in RESOLVED}


EXPECTED = {name: value for name, value in DEFAULTS.items() if name not in RESOLVED}


def test_every_row_is_for_one_process() -> None:
    from tests.test_option_table import MASTER_OPTIONS

    assert {opt.process for opt in OPTIONS} == {WORKER, MASTER}
    assert set(TO_WORKER) | PER_WORKER <= {opt.name for opt in WORKER_OPTIONS}
    # A master-only row is read by the master (test_option_table names where).
    assert {opt.name for opt in OPTIONS if opt.process == MASTER} <= set(MASTER_OPTIONS)


def test_no_environment_gives_the_table_defaults() -> None:
    config = build_config({}, {}, app=APP)
    assert table_values(config) == EXPECTED
    assert config.workers == 1
    assert config.sources == {}


def test_an_empty_config_file_gives_the_table_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "corral.toml"
    empty.write_text("")
    config = build_config({"config": str(empty)}, {}, app=APP)
    assert table_values(config) == {**EXPECTED, "config": str(empty)}


def test_the_command_line_leaves_every_default_to_the_table() -> None:
    command = build_command()
    options = {param.name: param for param in command.params if isinstance(param, click.Option)}
    for opt in OPTIONS:
        param = options[opt.attr]
        # click's own default is None: the table's is layered by build_config
        # (a click default would hide the environment and the file).
        assert param.default is None, opt.name
        shown = oct(opt.default) if opt.kind == "octal" else opt.default
        if shown not in (None, "", ()):
            assert f"[default: {shown}]" in (param.help or ""), opt.name
    assert table_values(parse_config([APP])) == EXPECTED


def test_run_keywords_give_the_table_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []
    monkeypatch.setattr(daemon, "launch", lambda config: seen.append(config) or 0)
    assert daemon.run(APP) == 0
    assert table_values(seen[0]) == EXPECTED
    # Every option is a keyword of run() under its attribute name, with the table's default.
    monkeypatch.setattr(daemon, "launch", lambda config: seen.append(config) or 0)
    given = {opt.attr: opt.default for opt in OPTIONS if opt.default is not None}
    assert daemon.run(APP, **given) == 0
    assert table_values(seen[1]) == EXPECTED


def test_server_settings_defaults_are_the_tables() -> None:
    from_table = worker_slice(DEFAULTS)
    fields = {f.name: f for f in dataclasses.fields(ServerSettings)}
    settings = ServerSettings()
    fed = set(from_table) | {name.replace("-", "_") for name in PER_WORKER}
    assert set(fields) == fed | NOT_FROM_OPTIONS, "a ServerSettings field no row feeds, or a row with no field"
    for name, value in from_table.items():
        assert getattr(settings, name) == value, f"ServerSettings.{name} default differs from the option table"
    for name in PER_WORKER:
        assert getattr(settings, name.replace("-", "_")) == DEFAULTS[name]


def test_the_slice_a_default_config_gives_a_worker_is_serversettings_defaults() -> None:
    config = build_config({}, {}, app=APP)
    given = config.server_settings()
    assert given == dataclasses.replace(ServerSettings(), app=APP, loop=config.loop, http=config.http, ws=config.ws)


# The gunicorn worker classes take these from gunicorn's own settings, so a
# default gunicorn gives gunicorn's defaults (or the classes' CONFIG_KWARGS).
GUNICORN_OWN = {
    "timeout_keep_alive": 2.0,  # gunicorn --keep-alive
    "limit_request_line": 4094,  # gunicorn --limit-request-line
    "access_log": False,  # gunicorn logs access only with --access-logfile
    "ssl_ciphers": None,  # gunicorn --ciphers: OpenSSL's list
    "proxy_protocol_allow_ips": ("127.0.0.1", "::1"),  # gunicorn --proxy-allow-from
    "loop": "uvloop", "http": "httptools",  # CorralWorker.CONFIG_KWARGS
}


def test_a_default_gunicorn_gives_the_table_defaults_but_its_own() -> None:
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.glogging import Logger

    from server_core.workers import CorralWorker

    cfg = GunicornConfig()
    settings = CorralWorker(0, 1, [], None, 9, cfg, Logger(cfg)).server_settings()
    # gunicorn's defaults that happen to be the table's: --graceful-timeout 30,
    # --timeout 30, --backlog 2048, --limit-request-fields 100,
    # --limit-request-field-size 8190, --forwarded-allow-ips 127.0.0.1,::1.
    expected = {**dataclasses.asdict(ServerSettings()), **GUNICORN_OWN}
    for name, value in dataclasses.asdict(settings).items():
        assert value == expected[name], f"gunicorn worker: {name} = {value!r}, expected {expected[name]!r}"


def test_config_declares_every_option_with_its_type() -> None:
    """daemon/option_types.py is generated from the table (``python -m daemon.options`` rewrites it)."""
    from daemon.option_types import OptionAttributes
    from daemon.options import render_attributes

    assert (ROOT / "daemon" / "option_types.py").read_text() == render_attributes(), \
        "daemon/option_types.py is out of date: run `python -m daemon.options`"
    assert list(OptionAttributes.__annotations__) == [opt.attr for opt in OPTIONS]
    config = build_config({}, {}, app=APP)
    for opt in OPTIONS:
        assert getattr(config, opt.attr) == config.values[opt.name]
