"""The corral master: configuration, listeners, the arbiter and its signals.

``daemon.run(app, **options)`` is the programmatic entry point: the same
options as the command line, as keyword arguments with underscores.
"""

from __future__ import annotations

import sys
from typing import Any

from daemon.config import Config, ConfigError, build_config

__all__ = ["run", "launch", "Config", "ConfigError"]


def launch(config: Config) -> int:
    """Serve with a validated config: the reloader with --reload, else the master. Returns the exit status.

    ``--env-file`` is not loaded here: each worker gets it (see ``daemon.config.apply_env_file``).
    """
    try:
        from server_core import logs

        logs.configure(config.server_settings(), process="master")
    except ValueError as exc:  # a broken --log-config
        print(f"corral: error: {exc}", file=sys.stderr)
        return 2
    if config.reload:
        from daemon.reloader import run_reloader

        return run_reloader(config)
    from daemon.master import run_master

    return run_master(config)


def run(app: Any, **options: Any) -> int:
    """Serve ``app`` (an import string or an ASGI callable) with corral's options as keywords.

    ``daemon.run("main:app", workers=2, port=8080)``. Raises :class:`ConfigError`
    for a bad option; returns the exit status of the master.
    """
    given = {name.replace("_", "-"): value for name, value in options.items()}
    config = build_config(given, app=app, source="daemon.run()")
    return launch(config)
