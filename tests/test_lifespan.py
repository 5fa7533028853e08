"""The lifespan protocol: the Lifespan driver in-process, and its effect on a real worker."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_core.lifespan import Lifespan, LifespanFailed
from tests.apps.rt_harness import WorkerProc

Message = dict[str, Any]


def run(coro: Any) -> Any:
    """Run a coroutine on a fresh loop with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, 30))


async def complete_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers startup and shutdown, and stores something in the state."""
    assert scope["type"] == "lifespan"
    assert scope["asgi"]["version"] == "3.0" and scope["asgi"]["spec_version"] == "2.0"
    assert (await receive())["type"] == "lifespan.startup"
    scope["state"]["db"] = "connected"
    await send({"type": "lifespan.startup.complete"})
    assert (await receive())["type"] == "lifespan.shutdown"
    scope["state"]["db"] = "closed"
    await send({"type": "lifespan.shutdown.complete"})


async def raising_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("no lifespan here")


async def returning_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def failing_app(message: str) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": message})
    return app


def test_startup_and_shutdown_share_the_state() -> None:
    async def scenario() -> Lifespan:
        lifespan = Lifespan(complete_app, "on")
        await lifespan.startup()
        assert lifespan.started and lifespan.state == {"db": "connected"}
        await lifespan.shutdown(5)
        return lifespan

    assert run(scenario()).state == {"db": "closed"}


@pytest.mark.parametrize("app", [raising_app, returning_app])
def test_auto_tolerates_an_app_without_lifespan(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> Lifespan:
        lifespan = Lifespan(app, "auto")
        await lifespan.startup()
        await lifespan.shutdown(5)  # nothing to shut down: returns at once
        return lifespan

    with caplog.at_level(logging.INFO, "corral.error"):
        assert not run(scenario()).started
    assert "ASGI 'lifespan' protocol appears unsupported." in caplog.text


def test_on_requires_it() -> None:
    with pytest.raises(LifespanFailed, match="Exception in 'lifespan' protocol: RuntimeError: no lifespan here"):
        run(Lifespan(raising_app, "on").startup())
    with pytest.raises(LifespanFailed, match="without completing startup"):
        run(Lifespan(returning_app, "on").startup())


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_startup_failed_message_fails_the_boot(mode: str) -> None:
    with pytest.raises(LifespanFailed, match="Application startup failed: cache is cold"):
        run(Lifespan(failing_app("cache is cold"), mode).startup())


def test_off_never_calls_the_app() -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    async def scenario() -> None:
        lifespan = Lifespan(app, "off")
        await lifespan.startup()
        await lifespan.shutdown(5)

    run(scenario())
    assert called == []


def test_shutdown_is_bounded_by_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    cancelled: list[bool] = []

    async def stuck_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        try:
            await asyncio.sleep(3600)  # never answers shutdown
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> float:
        lifespan = Lifespan(stuck_app, "on")
        await lifespan.startup()
        started = time.monotonic()
        await lifespan.shutdown(0.3)
        return time.monotonic() - started

    with caplog.at_level(logging.WARNING, "corral.error"):
        elapsed = run(scenario())
    assert 0.3 <= elapsed < 10
    assert cancelled == [True]
    assert "did not finish within" in caplog.text


def test_shutdown_failed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})

    async def scenario() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()
        await lifespan.shutdown(5)

    with caplog.at_level(logging.INFO, "corral.error"):
        run(scenario())
    assert "Application shutdown failed: flush failed" in caplog.text


def test_out_of_order_messages_raise_in_the_app() -> None:
    seen: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await send({"type": "lifespan.shutdown.complete"})
        except RuntimeError as exc:
            seen.append(exc)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def scenario() -> None:
        lifespan = Lifespan(app, "on")
        await lifespan.startup()
        await lifespan.shutdown(5)

    run(scenario())
    assert len(seen) == 1 and "wrong time" in str(seen[0])


# -- in a real worker ------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """Start ``serve()`` workers; each is killed by PID in the finalizer."""
    started: list[WorkerProc] = []

    def start(settings: dict[str, Any], **kw: Any) -> WorkerProc:
        proc = WorkerProc(tmp_path, settings, name=f"worker{len(started)}", **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_worker_serves_an_app_without_lifespan_in_auto(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"app": "rt_no_lifespan:app", "lifespan": "auto"})
    proc.wait_message("ready")
    assert httpx.get(proc.url + "/", timeout=20).text == "ok"
    assert "ASGI 'lifespan' protocol appears unsupported." in proc.output()


def test_worker_with_lifespan_on_refuses_such_an_app(worker: Callable[..., WorkerProc]) -> None:
    proc = worker({"app": "rt_no_lifespan:app", "lifespan": "on"})
    message = proc.wait_message("fail")
    assert proc.wait_exit() == 3
    assert "rt_no_lifespan only speaks http" in message.arg
    assert "Traceback (most recent call last)" in proc.output()


def test_lifespan_state_reaches_requests_and_shutdown_runs(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    stopped = tmp_path / "stopped"
    proc = worker({"app": "rt_app:app", "lifespan": "on"}, env={"RT_STOPPED": str(stopped)})
    proc.wait_message("ready")
    view = json.loads(httpx.get(proc.url + "/scope", timeout=20).text)
    assert view["state"] == {"greeting": "hello from lifespan"}
    proc.signal(15)
    assert proc.wait_exit() == 0
    assert stopped.exists()


def test_lifespan_off_skips_startup(worker: Callable[..., WorkerProc], tmp_path: Path) -> None:
    started = tmp_path / "started"
    proc = worker({"app": "rt_app:app", "lifespan": "off"}, env={"RT_STARTED": str(started)})
    proc.wait_message("ready")
    view = json.loads(httpx.get(proc.url + "/scope", timeout=20).text)
    assert view["state"] == {}
    assert not started.exists()
