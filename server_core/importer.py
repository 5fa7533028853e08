"""Loading the application named by ``APP`` and presenting it as ASGI 3.

``load(settings)`` imports ``module.path:attribute.path`` (after putting
``--app-dir`` first on ``sys.path``), calls it when ``--factory`` says it is a
factory, then wraps it for its interface (``--interface``): ASGI 3 as is,
ASGI 2 and WSGI through :mod:`server_core.adapters`.

Failures raise :class:`AppLoadError` with a one-line ``message`` (what the
master reports and the pipe carries) and, when the application's own code
raised, the full traceback in ``details``. A module that simply does not exist
gets no traceback: it would only show our import machinery.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import sys
import traceback
from typing import Any

from server_core.settings import ServerSettings
from server_core.state import ASGIApp

logger = logging.getLogger("corral.error")

INTERFACES = ("auto", "asgi3", "asgi2", "wsgi")


class AppLoadError(Exception):
    """The application cannot be imported, built or wrapped."""

    def __init__(self, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.message}\n{self.details}" if self.details else self.message


def load(settings: ServerSettings) -> ASGIApp:
    """Import (or take) ``settings.app`` and return the ASGI 3 callable to serve."""
    if isinstance(settings.app, str):
        # --app-dir defaults to "" = the current directory, as with uvicorn: the
        # `corral` console script would not otherwise find the app's module.
        path = os.path.abspath(settings.app_dir or os.getcwd())
        if not sys.path or sys.path[0] != path:
            sys.path.insert(0, path)
    target = import_from_string(settings.app) if isinstance(settings.app, str) else settings.app
    if target is None:
        raise AppLoadError("No application given: pass APP as module:attribute.")
    return prepare(target, settings)


def prepare(target: Any, settings: ServerSettings) -> ASGIApp:
    """Turn an already imported object into the ASGI 3 callable to serve.

    Calls it first when it is a factory (``--factory``, or a function taking
    no argument), then wraps it for ``settings.interface``.
    """
    return wrap(call_factory(target, settings.factory), settings.interface)


def import_from_string(import_str: str) -> Any:
    """The object named by ``"module.path:attribute.path"``."""
    module_name, _, attrs = import_str.partition(":")
    if not module_name or not attrs:
        raise AppLoadError(f'Import string "{import_str}" must be in format "<module>:<attribute>".')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        # Only "this module (or a package on its path) does not exist" is the
        # user's typo; a missing import *inside* their module is their bug and
        # deserves its traceback.
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise AppLoadError(f'Could not import module "{module_name}".') from None
        raise _app_raised(f'Error importing module "{module_name}"', exc) from None
    except (Exception, SystemExit) as exc:  # the app's module raised while being imported
        raise _app_raised(f'Error importing module "{module_name}"', exc) from None
    instance: Any = module
    for attr in attrs.split("."):
        try:
            instance = getattr(instance, attr)
        except AttributeError:
            raise AppLoadError(f'Attribute "{attrs}" not found in module "{module_name}".') from None
    return instance


def _app_raised(what: str, exc: BaseException) -> AppLoadError:
    """An AppLoadError for an exception raised by the application's code."""
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return AppLoadError(f"{what}: {summary}", details)


def call_factory(target: Any, factory: bool) -> Any:
    """Call ``target`` when it is an application factory."""
    if factory:
        if not callable(target):
            raise AppLoadError(f"--factory was given but {target!r} is not callable.")
        try:
            return target()
        except TypeError as exc:
            raise _app_raised("Error loading ASGI app factory", exc) from None
        except Exception as exc:
            raise _app_raised("The ASGI app factory raised", exc) from None
    if inspect.isfunction(target) and _required_positional(target) == 0:
        # A plain function taking no argument cannot be an ASGI app, only a
        # factory: use it, as uvicorn does, but say that --factory is missing.
        logger.warning("ASGI app factory detected. Using it, but please consider setting the --factory flag explicitly.")
        try:
            return target()
        except Exception as exc:
            raise _app_raised("The ASGI app factory raised", exc) from None
    return target


def _required_positional(func: Any) -> int | None:
    """How many positional arguments ``func`` requires (None if unknown)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    return sum(
        1
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


def _accepts_three(func: Any) -> bool:
    """True when ``func`` can be called with three positional arguments."""
    try:
        inspect.signature(func).bind(None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): assume the modern interface
        return True
    return True


def detect_interface(app: Any) -> str:
    """``asgi3`` or ``asgi2`` for an application given with ``--interface auto``.

    ASGI 2 is a class instantiated with the scope, or a callable taking the
    scope alone; anything that accepts ``(scope, receive, send)`` is ASGI 3.
    """
    if inspect.isclass(app):
        # A class used directly as an ASGI 3 app must make its instances
        # awaitable (``__init__(scope, receive, send)`` + ``__await__``).
        return "asgi3" if hasattr(app, "__await__") else "asgi2"
    return "asgi3" if _accepts_three(app) else "asgi2"


def wrap(app: Any, interface: str) -> ASGIApp:
    """Present ``app`` as ASGI 3 according to ``interface`` (``auto`` detected)."""
    if interface not in INTERFACES:
        raise AppLoadError(f'Unknown interface "{interface}"; choose one of {", ".join(INTERFACES)}.')
    if not callable(app):
        raise AppLoadError(f"The application {app!r} is not callable.")
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "asgi2":
        from server_core.adapters import ASGI2Adapter

        return ASGI2Adapter(app)
    if interface == "wsgi":
        from server_core.adapters import WSGIAdapter

        return WSGIAdapter(app)
    wrapped: ASGIApp = app
    return wrapped
