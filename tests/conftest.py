"""Fixtures shared by the whole suite."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import APPS, Corral, Proc, bound_socket


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[Callable[..., Corral]]:
    """Start `corral` with arguments; by default on a fresh --fd socket, apps from tests/apps.

    `corral("app:app", "--workers", "2")` returns a started Corral; every process
    and socket is killed/closed in the finalizer.
    """
    started: list[Corral] = []
    sockets: list[socket.socket] = []

    def start(*args: str, fd: bool = True, app_dir: bool = True, wait: bool = True, **kw: Any) -> Corral:
        sock = None
        if fd and "sock" not in kw:
            sock = bound_socket()
            sockets.append(sock)
        elif "sock" in kw:
            sock = kw.pop("sock")
        argv = list(args)
        if app_dir:
            argv += ["--app-dir", str(APPS)]
        proc = Corral(argv, tmp_path, sock=sock, name=f"corral{len(started)}", **kw)
        started.append(proc)
        if wait and sock is not None:
            proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.kill()
    for sock in sockets:
        sock.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start any other program under test (nginx, supervisord, curl…), killed in the finalizer."""
    started: list[Proc] = []

    def start(argv: list[str], **kw: Any) -> Proc:
        kw.setdefault("name", Path(argv[0]).name + str(len(started)))
        proc = Proc(argv, tmp_path, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
