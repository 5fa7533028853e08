"""``--log-config``: apply a .ini, .json or .yaml logging configuration; uvicorn's names as aliases."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from server_core.logs.render import ALIASES


def apply_log_config(path: str) -> set[str]:
    """Apply a .json/.yaml/.yml (dictConfig) or other (fileConfig) file; the logger names it configures."""
    if not os.path.isfile(path):
        raise ValueError(f"--log-config {path}: no such file")
    import logging.config  # only with --log-config

    lower = path.lower()
    try:
        if lower.endswith((".json", ".yaml", ".yml")):
            config = _load_dict_config(path)
            logging.config.dictConfig(config)
            return set(config.get("loggers", {}) or {})
        logging.config.fileConfig(path, disable_existing_loggers=False)
        return _ini_logger_names(path)
    except ValueError as exc:
        if str(exc).startswith("--log-config"):
            raise
        raise ValueError(f"--log-config {path}: {exc}") from exc
    except Exception as exc:  # KeyError, TypeError, ImportError… from the logging config code
        raise ValueError(f"--log-config {path}: {type(exc).__name__}: {exc}") from exc


def _load_dict_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        if path.lower().endswith(".json"):
            try:
                data = json.load(file)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--log-config {path}: invalid JSON: {exc}") from exc
        else:
            try:
                import yaml
            except ImportError:
                raise ValueError(
                    f"--log-config {path}: YAML needs PyYAML (pip install 'corral[standard]')"
                ) from None
            try:
                data = yaml.safe_load(file)
            except yaml.YAMLError as exc:
                raise ValueError(f"--log-config {path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"--log-config {path}: expected a mapping (logging's dictConfig schema)")
    return data


def _ini_logger_names(path: str) -> set[str]:
    import configparser

    parser = configparser.RawConfigParser()
    parser.read(path, encoding="utf-8")
    keys = [key.strip() for key in parser.get("loggers", "keys", fallback="").split(",") if key.strip()]
    names = set()
    for key in keys:
        if key != "root":
            names.add(parser.get(f"logger_{key}", "qualname", fallback=key))
    return names


def apply_aliases(configured: set[str]) -> None:
    """Give ``corral.*`` the configuration the file gave the matching ``uvicorn.*`` logger."""
    for alias, ours in ALIASES.items():
        if alias in configured and ours not in configured:
            source = logging.getLogger(alias)
            target = logging.getLogger(ours)
            target.setLevel(source.level)
            target.handlers[:] = source.handlers
            target.propagate = source.propagate
            configured.add(ours)


def configured_by_file(name: str, configured: set[str]) -> bool:
    """True when the file set ``name`` or one of its ``corral`` ancestors."""
    parts = name.split(".")
    return any(".".join(parts[:end]) in configured for end in range(1, len(parts) + 1))

