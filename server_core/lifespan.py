"""The ASGI lifespan protocol: application startup before serving, shutdown after.

``--lifespan`` decides how much we insist:

- ``auto``: run it, but an application that raises on the ``lifespan`` scope
  (or returns without answering) simply does not support it; we say so at
  info level and serve anyway.
- ``on``: the application must complete startup; anything else fails the boot.
- ``off``: never call the application with a lifespan scope.

An explicit ``lifespan.startup.failed`` fails the boot in both ``auto`` and
``on``. The scope's ``state`` dict is kept in :attr:`Lifespan.state`; the worker
hands it to every request scope (as ``ServerState.app_state``).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

from server_core.state import ASGIApp

logger = logging.getLogger("corral.error")


class LifespanFailed(Exception):
    """Application startup failed; the worker must not serve."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Lifespan:
    """Drive one application's lifespan scope: :meth:`startup`, then :meth:`shutdown`."""

    def __init__(self, app: ASGIApp, mode: str = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"lifespan mode must be auto, on or off, not {mode!r}")
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        # True once the app answered startup; shutdown is only sent then.
        self.started = False
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._startup_answer: asyncio.Future[dict[str, Any]] | None = None
        self._shutdown_answer: asyncio.Future[dict[str, Any]] | None = None
        self._error: BaseException | None = None

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait for the answer.

        Raises :class:`LifespanFailed` (message for the operator) when startup
        fails; returns normally when it completed or is unsupported in ``auto``.
        """
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._startup_answer = loop.create_future()
        logger.info("Waiting for application startup.")
        self._task = loop.create_task(self._run(), name="corral-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        waiting: list[asyncio.Future[Any]] = [self._startup_answer, self._task]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._startup_answer.done():
            answer = self._startup_answer.result()
            if answer["type"] == "lifespan.startup.complete":
                self.started = True
                logger.info("Application startup complete.")
                return
            text = answer.get("message", "")
            logger.error("Application startup failed: %s", text or "(no message)")
            raise LifespanFailed(f"Application startup failed: {text}" if text else "Application startup failed.")
        self._unanswered_startup()

    def _unanswered_startup(self) -> None:
        """The app's lifespan ended before answering startup: unsupported or broken."""
        error = self._error
        if self.mode == "auto":
            # Most apps without lifespan support raise on an unknown scope type.
            logger.info("ASGI 'lifespan' protocol appears unsupported.")
            if error is not None:
                logger.debug("The application raised on the lifespan scope: %r", error)
            return
        if error is None:
            message = "The application returned from the lifespan scope without completing startup (--lifespan on)."
        else:
            summary = "".join(traceback.format_exception_only(type(error), error)).strip()
            message = f"Exception in 'lifespan' protocol: {summary}"
            logger.error("Exception in 'lifespan' protocol", exc_info=error)
        logger.error("Application startup failed. Exiting.")
        raise LifespanFailed(message)

    async def shutdown(self, timeout: float | None) -> None:
        """Send ``lifespan.shutdown`` and wait up to ``timeout`` seconds for the answer."""
        task = self._task
        if not self.started or task is None:
            return
        if task.done():
            # The app left its lifespan early (its error, if any, is logged).
            return
        loop = asyncio.get_running_loop()
        self._shutdown_answer = loop.create_future()
        logger.info("Waiting for application shutdown.")
        await self._inbox.put({"type": "lifespan.shutdown"})
        waiting: list[asyncio.Future[Any]] = [self._shutdown_answer, task]
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            logger.warning("Application shutdown did not finish within %ss; cancelling it.", timeout)
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
            return
        if self._shutdown_answer.done():
            answer = self._shutdown_answer.result()
            if answer["type"] == "lifespan.shutdown.complete":
                logger.info("Application shutdown complete.")
            else:
                logger.error("Application shutdown failed: %s", answer.get("message", "") or "(no message)")
        elif self._error is None:
            logger.info("Application shutdown complete.")
        # Let the app's coroutine finish after its last message.
        await asyncio.wait([task], timeout=1.0)

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            if self.started:
                # After startup an error is a real failure of the app's code,
                # worth its traceback whatever the mode.
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            answer = self._startup_answer
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            answer = self._shutdown_answer
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent in the lifespan scope.")
        if answer is None or answer.done():
            raise RuntimeError(f"ASGI message {kind!r} sent at the wrong time in the lifespan scope.")
        answer.set_result(message)
