"""Choosing and running the worker's event loop.

``--loop`` names an implementation: ``auto`` (uvloop when installed, else
asyncio), ``asyncio``, ``uvloop`` or ``zuvloop`` (its ``new_event_loop``, as
uvicorn 0.54 does). A name whose package is missing is an error that names the
package, never a silent fallback: a deployment that asked for uvloop and runs
on asyncio is slower without anyone knowing why.

:func:`run` drives one coroutine to completion on a fresh loop. It does what
``asyncio.Runner`` does (which needs Python 3.11) plus one thing we need: the
clean-up of tasks left behind by the application is bounded in time, so a task
that ignores cancellation cannot keep a stopping worker alive forever.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
T = TypeVar("T")

logger = logging.getLogger("corral.error")

# The package each loop implementation needs (so an error can name it).
LOOP_PACKAGES = {"uvloop": "uvloop", "zuvloop": "zuvloop", "asyncio": "asyncio"}

# How long leftover tasks get to react to cancellation once the main coroutine
# has returned; beyond this the loop is closed with them still pending.
LEFTOVER_TASKS_TIMEOUT = 5.0


class LoopUnavailable(RuntimeError):
    """The requested event loop implementation cannot be used."""


def resolve_loop(name: str) -> str:
    """Return the concrete implementation for ``name`` (``auto`` resolved)."""
    if name == "auto":
        try:
            importlib.import_module("uvloop")
        except ImportError:
            return "asyncio"
        return "uvloop"
    if name not in LOOP_PACKAGES:
        raise LoopUnavailable(f'Unknown event loop "{name}"; choose auto, asyncio, uvloop or zuvloop.')
    return name


def loop_factory(name: str) -> LoopFactory:
    """A callable creating a new event loop of implementation ``name``.

    Raises :class:`LoopUnavailable` naming the package when it is not installed.
    """
    resolved = resolve_loop(name)
    if resolved == "asyncio":
        return asyncio.new_event_loop
    package = LOOP_PACKAGES[resolved]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise LoopUnavailable(
            f'--loop {name} needs the "{package}" package, which is not installed '
            f'(pip install {package}; {exc}).'
        ) from None
    factory: LoopFactory = module.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], factory: LoopFactory) -> T:
    """Run ``main`` on a new loop made by ``factory`` and close the loop after.

    Tasks still pending when ``main`` returns are cancelled and given
    ``LEFTOVER_TASKS_TIMEOUT`` seconds to finish; async generators and the
    default executor are shut down as ``asyncio.run`` does.
    """
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(
                asyncio.wait_for(loop.shutdown_default_executor(), LEFTOVER_TASKS_TIMEOUT)
            )
        except (asyncio.TimeoutError, RuntimeError) as exc:
            logger.debug("event loop clean-up incomplete: %s", exc)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task still pending and wait a bounded time for them."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    done, still_pending = loop.run_until_complete(asyncio.wait(pending, timeout=LEFTOVER_TASKS_TIMEOUT))
    for task in done:
        # Retrieve results so asyncio does not log "exception never retrieved"
        # for tasks whose failure was already reported where it happened.
        if not task.cancelled() and task.exception() is not None:
            logger.debug("task %r ended with %r during shutdown", task, task.exception())
    if still_pending:
        logger.warning("%d task(s) ignored cancellation at shutdown", len(still_pending))
