"""The `corral` command line, generated from the option table.

click parses and type-checks what was typed; everything else (environment,
``--config`` file, defaults, cross-option checks) is layered by
:func:`daemon.config.build_config`, so one rule set serves every source.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from daemon.config import Config, ConfigError, build_config
from daemon.options import OPTIONS, Option
from server_core import __version__

EPILOG = (
    "Every option can also come from the environment as CORRAL_<OPTION> (or uvicorn's UVICORN_<OPTION>), "
    "e.g. CORRAL_TIMEOUT_KEEP_ALIVE=10, and from a --config TOML file whose keys are the long option "
    "names. Precedence: command line > environment > config file > defaults. "
    "Signals to the master: HUP rolling restart, TTIN/TTOU one worker more/fewer, TERM/INT graceful stop, "
    "QUIT quick stop, USR1 reopen logs, USR2 binary upgrade, WINCH stop workers (daemonised only)."
)


def _click_option(opt: Option) -> click.Option:
    """The click parameter for one row; defaults are shown but left to build_config."""
    shown = opt.default
    if isinstance(shown, tuple):
        shown = None
    if opt.kind == "octal" and shown is not None:
        shown = oct(shown)
    help_text = opt.help
    if shown not in (None, ""):
        help_text += f"  [default: {shown}]"
    if opt.env_fallback:
        help_text += f"  [env: {', '.join(opt.env_fallback)}]"
    common: dict[str, Any] = {"help": help_text, "default": None, "show_default": False}
    if opt.metavar:
        common["metavar"] = opt.metavar
    if opt.kind == "flag":
        return click.Option([opt.flag], is_flag=True, **common)
    if opt.kind == "toggle":
        return click.Option([f"{opt.flag}/--no-{opt.name}"], **common)
    if opt.kind == "multi":
        return click.Option([opt.flag], multiple=True, type=str, **common)
    types: dict[str, Any] = {
        "int": int, "float": float, "bool": click.BOOL, "str": str, "path": str, "octal": str,
    }
    if opt.kind == "choice":
        return click.Option([opt.flag], type=click.Choice(opt.choices, case_sensitive=False), **common)
    return click.Option([opt.flag], type=types[opt.kind], **common)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    import platform

    click.echo(f"corral {__version__} with {platform.python_implementation()} "
               f"{platform.python_version()} on {platform.system()}")
    ctx.exit(0)


def _given(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """Only what was typed: everything else is layered by build_config."""
    return {
        name.replace("_", "-"): value
        for name, value in params.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }


def parse_config(argv: list[str]) -> Config:
    """Build the Config the CLI would build from ``argv`` (for the USR2 preflight check).

    Raises ConfigError, or click.UsageError for what click itself rejects.
    """
    command = build_command()
    with command.make_context("corral", list(argv)) as ctx:
        params = dict(ctx.params)
        app = params.pop("app")
        return build_config(_given(ctx, params), app=app)


def _run(**params: Any) -> None:
    ctx = click.get_current_context()
    app = params.pop("app")
    given = _given(ctx, params)
    try:
        config = build_config(given, app=app)
    except ConfigError as exc:
        click.echo(f"corral: error: {exc}", err=True)
        ctx.exit(2)
    from daemon import launch

    ctx.exit(launch(config))


def build_command() -> click.Command:
    """The click command for `corral [OPTIONS] APP`."""
    params: list[click.Parameter] = [click.Argument(["app"], required=False)]
    params += [_click_option(opt) for opt in OPTIONS]
    params.append(click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                               callback=_version, help="Display the corral version and exit."))
    return click.Command(
        "corral", params=params, callback=_run, epilog=EPILOG,
        help="Serve the ASGI application APP (module:attribute) from a master that supervises workers.",
        context_settings={"help_option_names": ["--help"], "max_content_width": 100},
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `corral` console script and `python -m daemon`."""
    build_command().main(args=argv, prog_name="corral")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
