"""One frozen configuration, built from four layers and checked before any bind.

Precedence, strongest first: the command line (or ``daemon.run`` keywords), the
environment (``CORRAL_*``, then ``UVICORN_*``, then a row's own fallback such as
``WEB_CONCURRENCY``), the ``--config`` TOML file, the defaults of
:mod:`daemon.options`. Every value is converted and checked by the same code
whatever its source, and a bad one raises :class:`ConfigError` naming the
source (flag, variable, or file and key), what was given and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from daemon.listeners import fd_address, parse_fd
from daemon.option_types import OptionAttributes
from daemon.options import BY_NAME, OPTIONS, Option, split_ips, worker_slice
from server_core.settings import ServerSettings

TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f", ""}


class ConfigError(Exception):
    """A user mistake in an option, a variable or the config file (exit status 2)."""


def _expected(opt: Option) -> str:
    if opt.kind == "choice":
        return "one of " + ", ".join(opt.choices)
    return {
        "int": "an integer", "float": "a number", "bool": "true or false", "flag": "true or false",
        "toggle": "true or false", "octal": "an octal mode such as 0o660", "multi": "a list of strings",
    }.get(opt.kind, "a string")


def convert(opt: Option, raw: Any, source: str) -> Any:
    """Convert ``raw`` (a string from the environment, a TOML or Python value) for ``opt``.

    ``source`` names where it came from, for the error message.
    """
    def bad(why: str = "") -> ConfigError:
        detail = f" ({why})" if why else ""
        prefix = "" if source == opt.flag else f"{source}: "
        return ConfigError(f"{prefix}invalid value {raw!r} for {opt.flag}: expected {_expected(opt)}{detail}")

    kind = opt.kind
    if raw is None:
        return None
    if kind in ("bool", "flag", "toggle"):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in TRUE | FALSE:
            return raw.strip().lower() in TRUE
        raise bad()
    if kind == "multi":
        if isinstance(raw, str):
            # As click's environment variables: whitespace separates items.
            return tuple(raw.split())
        if isinstance(raw, (list, tuple)) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise bad()
    if kind == "int":
        if isinstance(raw, bool):
            raise bad()
        try:
            value: Any = int(raw.strip()) if isinstance(raw, str) else raw
        except ValueError:
            raise bad() from None
        if not isinstance(value, int):
            raise bad()
    elif kind == "float":
        if isinstance(raw, bool):
            raise bad()
        try:
            value = float(raw.strip()) if isinstance(raw, str) else raw
        except ValueError:
            raise bad() from None
        if not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
    elif kind == "octal":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if not isinstance(raw, str):
            raise bad()
        try:
            return int(raw.strip(), 8)
        except ValueError:
            raise bad() from None
    elif kind == "choice":
        if not isinstance(raw, str) or raw.strip().lower() not in opt.choices:
            raise bad()
        return raw.strip().lower()
    else:
        if not isinstance(raw, str):
            raise bad()
        return raw
    if opt.minimum is not None and value < opt.minimum:
        raise bad(f"must be at least {opt.minimum:g}")
    return value


def _close_match(name: str, names: list[str]) -> list[str]:
    """The known name closest to a misspelt one, for "did you mean" (difflib, imported only then)."""
    import difflib

    return difflib.get_close_matches(name, names, n=1)


def read_config_file(path: str) -> dict[str, Any]:
    """Read a ``--config`` TOML file into ``{option name: value}`` (plus ``app``)."""
    # Imported here: a start without --config does not pay for the TOML parser.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # A [corral] table is accepted as well as top-level keys.
    if isinstance(data.get("corral"), dict):
        data = {**{k: v for k, v in data.items() if k != "corral"}, **data["corral"]}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = key.replace("_", "-")
        if name == "app":
            if not isinstance(raw, str):
                raise ConfigError(f"{path}: key 'app': expected a string such as 'module:app', got {raw!r}")
            values["app"] = raw
            continue
        if name == "config" or name not in BY_NAME:
            hint = _close_match(name, list(BY_NAME))
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{path}: unknown key '{key}'{suggestion}")
        values[name] = convert(BY_NAME[name], raw, f"{path}: key '{key}'")
    return values


def read_environment(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Options set in the environment: ``{name: (value, variable)}``."""
    found: dict[str, tuple[Any, str]] = {}
    for opt in OPTIONS:
        for var in opt.env_names():
            if var in env and env[var] != "":
                found[opt.name] = (convert(opt, env[var], f"environment variable {var}"), var)
                break
    return found


@dataclass(frozen=True)
class Config(OptionAttributes):
    """The whole configuration of one corral master; attributes are option names with underscores.

    Their types are declared by :class:`daemon.option_types.OptionAttributes`
    (generated from the table), so mypy knows ``config.timeout_keep_alive`` is an
    int and refuses a misspelt option; at run time they are read from ``values``.
    """

    app: Any
    values: Mapping[str, Any]
    binds: tuple[str, ...]
    # Where each option came from: "default", "file", the variable name, or "command line".
    sources: Mapping[str, str] = field(default_factory=dict)
    # What built this config, so HUP can rebuild it with a fresh environment and file.
    command_line: Mapping[str, Any] = field(default_factory=dict)
    given_app: Any = None
    given_source: str = "command line"
    # The --env-file's variables as read when this config was built (at start,
    # at every HUP): layered under the real environment in each new worker.
    env_values: Mapping[str, str] = field(default_factory=dict)

    if not TYPE_CHECKING:  # mypy sees the declared attributes only, so a misspelt one is an error
        def __getattr__(self, name: str) -> Any:
            try:
                return self.__dict__["values"][name.replace("_", "-")]
            except KeyError:
                raise AttributeError(name) from None

    def explicit(self, name: str) -> bool:
        """True when the option was set anywhere but the defaults."""
        return self.sources.get(name, "default") != "default"

    def server_settings(self, limit_max_requests: int | None = None) -> ServerSettings:
        """The slice a worker needs (the WORKER rows of the table), with this worker's own request limit."""
        return ServerSettings(app=self.app, limit_max_requests=limit_max_requests, **worker_slice(self.values))


def read_env_file(path: str | None) -> dict[str, str]:
    """The variables of an ``--env-file`` (dotenv syntax); ``{}`` without one. Never touches the environment."""
    if not path:
        return {}
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--env-file {path}: not text: {exc}") from None
    return {name: value for name, value in values.items() if value is not None}


def env_overlay(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``--env-file`` variables the real environment does not set (the real environment wins)."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in config.env_values.items() if name not in env}


def apply_env_file(config: Config) -> None:
    """Layer ``--env-file`` under this process's environment (for a worker or the USR2 check).

    The master itself never calls this: its environment stays the real one, so
    ``CORRAL_*`` lines in the file never become options, and a line removed
    from the file disappears from the workers started after the next HUP.
    """
    os.environ.update(env_overlay(config))


def build_config(command_line: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 *, app: Any = None, source: str = "command line") -> Config:
    """Layer command line (or keywords) over environment over file over defaults, then check.

    ``command_line`` maps option names (dashes) to values already given by the
    user; ``app`` is the positional APP (or a callable from ``daemon.run``).
    """
    env = os.environ if env is None else env
    given_app = app
    values: dict[str, Any] = {opt.name: opt.default for opt in OPTIONS}
    sources: dict[str, str] = {}
    from_env = read_environment(env)
    config_path = command_line.get("config") or (from_env["config"][0] if "config" in from_env else None)
    if config_path:
        file_values = read_config_file(config_path)
        file_app = file_values.pop("app", None)
        for name, value in file_values.items():
            values[name], sources[name] = value, config_path
        if app is None:
            app = file_app
    for name, (value, var) in from_env.items():
        values[name], sources[name] = value, var
    for name, raw in command_line.items():
        opt = BY_NAME.get(name)
        if opt is None:
            hint = _close_match(name.replace("-", "_"), [o.attr for o in OPTIONS])
            raise ConfigError(f"unknown option '{name.replace('-', '_')}'"
                              + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        values[name] = convert(opt, raw, source if source != "command line" else opt.flag)
        sources[name] = source
    if values["workers"] is None:
        values["workers"] = 1
    if values["log-level"] is None:
        values["log-level"] = "info"
    if app is None or app == "":
        raise ConfigError("missing the APP argument: corral module:app (or 'app' in the --config file)")
    if isinstance(app, str) and ":" not in app:
        raise ConfigError(f"APP {app!r} must be in the form 'module:attribute' (for example 'main:app')")
    _resolve_implementations(values, sources)
    _check(values, sources, app)
    config = Config(app=app, values=MappingProxyType(values), binds=_binds(values, sources),
                    sources=MappingProxyType(sources), command_line=MappingProxyType(dict(command_line)),
                    given_app=given_app, given_source=source,
                    env_values=MappingProxyType(read_env_file(values["env-file"])))
    _check_tls(config)
    return config


def _check_tls(config: Config) -> None:
    """Build the TLS context once, so a bad certificate, key or --ssl-* value is a configuration error
    (exit 2, before any bind) rather than every worker failing to start."""
    if not config.values["ssl-certfile"]:
        return
    from server_core.tls import TLSConfigError, make_ssl_context  # imports only ssl

    try:
        make_ssl_context(config.server_settings())
    except TLSConfigError as exc:
        where = _origin("ssl-certfile", config.sources)
        raise ConfigError(f"{exc} (--ssl-certfile from {where})" if where != "--ssl-certfile"
                          else str(exc)) from None


def reload_config(config: Config, env: Mapping[str, str] | None = None) -> Config:
    """Rebuild ``config`` from its command line, a fresh environment and the file (for HUP).

    The APP given on the command line (or to ``daemon.run``) wins; without one,
    the file's possibly changed ``app`` is used.
    """
    return build_config(config.command_line, env, app=config.given_app, source=config.given_source)


def _origin(name: str, sources: Mapping[str, str]) -> str:
    where = sources.get(name, "default")
    if where == "command line":
        return "--" + name
    if where == "default":
        return f"the default of --{name}"
    if where.startswith(("CORRAL_", "UVICORN_")) or where.isupper():
        return f"environment variable {where}"
    return f"{where}: key '{name}'"


# Where a module comes from when it is missing: its distribution, and whether
# corral's [standard] extra brings it (zuvloop is installed on its own).
_DISTRIBUTIONS = {"yaml": "PyYAML"}
_NOT_IN_STANDARD = frozenset({"zuvloop"})


def _need(package: str, what: str) -> None:
    if find_spec(package) is None:
        install = f"pip install {_DISTRIBUTIONS.get(package, package)}"
        if package not in _NOT_IN_STANDARD:
            install += " or 'corral[standard]'"
        raise ConfigError(f"{what} needs the '{package}' package, which is not installed ({install})")


def _resolve_implementations(values: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Turn 'auto' into the implementation that will run; a missing package is an error."""
    loop = values["loop"]
    if loop == "auto":
        values["loop"] = "uvloop" if find_spec("uvloop") else "asyncio"
    elif loop in ("uvloop", "zuvloop"):
        _need(loop, f"--loop {loop} ({_origin('loop', sources)})")
    http = values["http"]
    if http == "auto":
        values["http"] = "httptools" if find_spec("httptools") else "h11"
    else:
        _need(http, f"--http {http} ({_origin('http', sources)})")
    if values["http2"] and values["http"] != "zttp":
        # uvicorn's words (--http2 alone is a usage error there too).
        raise ConfigError(f"{_origin('http2', sources)}: HTTP/2 requires the `zttp` HTTP protocol. "
                          "Install it with `pip install zttp`, then select it with `--http zttp`.")
    ws = values["ws"]
    if ws == "auto":
        values["ws"] = "websockets" if find_spec("websockets") else ("wsproto" if find_spec("wsproto") else "none")
    elif ws == "websockets-sansio":
        _need("websockets", f"--ws {ws} ({_origin('ws', sources)})")
        values["ws"] = "websockets"
    elif ws != "none":
        _need(ws, f"--ws {ws} ({_origin('ws', sources)})")
    if values["log-config"] and str(values["log-config"]).endswith((".yaml", ".yml")):
        _need("yaml", "a YAML --log-config")


def _check(values: dict[str, Any], sources: Mapping[str, str], app: Any) -> None:
    """Checks across options, each naming where the offending value came from."""
    if values["reload"] and values["workers"] > 1:
        raise ConfigError(f"--reload and --workers {values['workers']} cannot be used together "
                          f"(workers from {_origin('workers', sources)})")
    if values["reload"] and not isinstance(app, str):
        raise ConfigError("reload=True needs the app as an import string such as 'main:app'")
    if values["port"] > 65535:
        raise ConfigError(f"{_origin('port', sources)}: invalid port {values['port']}: expected 0-65535")
    for header in values["header"]:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n"):
            raise ConfigError(f"{_origin('header', sources)}: invalid header {header!r}: expected Name:Value")
        # Sent on every response as given: CR or LF would start a header (or a body) of their own.
        problem = _header_problem(name.strip(), value)
        if problem:
            raise ConfigError(f"{_origin('header', sources)}: invalid header {header!r}: {problem}")
    for item in split_ips(values["forwarded-allow-ips"]):
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(f"{_origin('forwarded-allow-ips', sources)}: {item!r} is not an IP address, "
                              "network or '*'") from None
    for name in ("ssl-keyfile", "ssl-certfile", "ssl-ca-certs", "log-config", "env-file"):
        path = values[name]
        if path and not os.path.isfile(path):
            raise ConfigError(f"{_origin(name, sources)}: no such file {path!r}")
    if values["metrics-bind"] and parse_bind(values["metrics-bind"], _origin("metrics-bind", sources))[0] \
            not in ("tcp", "unix"):
        raise ConfigError(f"{_origin('metrics-bind', sources)}: {values['metrics-bind']!r}: expected "
                          "HOST:PORT or unix:PATH")
    if values["control-socket"] and not os.path.isdir(os.path.dirname(os.path.abspath(values["control-socket"]))):
        raise ConfigError(f"{_origin('control-socket', sources)}: no such directory for "
                          f"{values['control-socket']!r}")
    if values["pid"]:
        directory = os.path.dirname(os.path.abspath(values["pid"]))
        if not os.path.isdir(directory):
            raise ConfigError(f"{_origin('pid', sources)}: cannot write {values['pid']!r}: "
                              f"no such directory {directory!r}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{_origin('pid', sources)}: cannot write {values['pid']!r}: "
                              f"directory {directory!r} is not writable")
        if os.path.isdir(values["pid"]):
            raise ConfigError(f"{_origin('pid', sources)}: {values['pid']!r} is a directory")
    if values["ssl-keyfile"] and not values["ssl-certfile"]:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile as well")
    if not 0 <= values["uds-mode"] <= 0o777:
        raise ConfigError(f"{_origin('uds-mode', sources)}: invalid mode {oct(values['uds-mode'])}: "
                          "expected permission bits from 0o000 to 0o777")
    for addr in values["bind"]:
        parse_bind(addr, _origin("bind", sources))


# RFC 9110 section 5.6.2: a field name is a token.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_problem(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot be sent as a response header field (RFC 9110 section 5), or None."""
    bad = next((c for c in name if c not in _TCHAR), None)
    if bad is not None:
        return f"the name may not contain {bad!r} (letters, digits and !#$%&'*+-.^_`|~ only)"
    # field-value: visible ASCII, space, tab and obs-text (0x80-0xFF, sent as latin-1).
    bad = next((c for c in value if not (c == "\t" or " " <= c <= "~" or "\x80" <= c <= "\xff")), None)
    if bad is not None:
        return (f"the value may not contain {bad!r} (CR, LF and other control characters, or characters "
                "beyond latin-1)")
    return None


def parse_bind(addr: str, origin: str = "--bind") -> tuple[str, Any]:
    """Parse a listener address.

    Returns ``("tcp", (host, port))``, ``("unix", path)``, ``("fd", n)`` or, for
    ``fd://NAME`` (a socket systemd passes with that name), ``("fdname", name)``.
    """
    if addr.startswith("unix:"):
        path = addr[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigError(f"{origin}: {addr!r}: unix: needs a path")
        return "unix", path
    try:
        target = parse_fd(addr)  # fd://N, or fd://NAME: a socket systemd passes under that name
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if target is not None:
        return ("fd", target) if isinstance(target, int) else ("fdname", target)
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        raise ConfigError(f"{origin}: {addr!r}: expected HOST:PORT, [V6]:PORT, unix:PATH or fd://N")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{origin}: {addr!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{origin}: {addr!r}: port out of range")
    return "tcp", (host or "0.0.0.0", port)


def format_tcp(host: str, port: int) -> str:
    """``HOST:PORT``, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _binds(values: Mapping[str, Any], sources: Mapping[str, str]) -> tuple[str, ...]:
    """The listeners to open: --fd, else --uds, else --host/--port (unless only --bind was given)."""
    binds: list[str] = []
    if values["fd"] is not None:
        binds.append(fd_address(values["fd"]))
    elif values["uds"]:
        binds.append(f"unix:{values['uds']}")
    elif not values["bind"] or "host" in sources or "port" in sources:
        binds.append(format_tcp(values["host"], values["port"]))
    binds.extend(b for b in values["bind"] if b not in binds)
    return tuple(binds)
