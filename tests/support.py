"""Helpers for tests that drive the real `corral` CLI as a subprocess.

Every wait has a deadline and polls a condition; a wait also checks that the
process under test is still alive and fails at once with its output if not.
All timeouts scale by $CORRAL_TEST_TIMEOUT_FACTOR.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
FACTOR = float(os.environ.get("CORRAL_TEST_TIMEOUT_FACTOR", "1"))
REQUIRE_ALL = os.environ.get("CORRAL_REQUIRE_ALL") == "1"


def deadline(seconds: float) -> float:
    """A monotonic deadline `seconds` (scaled) from now."""
    return time.monotonic() + seconds * FACTOR


def cannot_run(message: str, *, required: bool = REQUIRE_ALL) -> NoReturn:
    """Skip a test whose tool or facility is missing, naming it in ``message``; fail instead when
    ``required`` (CORRAL_REQUIRE_ALL=1: CI installs everything a test needs)."""
    if required:
        pytest.fail(message + "; CORRAL_REQUIRE_ALL=1 forbids skipping")
    pytest.skip(message)


def require_tool(name: str, *candidates: str) -> str:
    """Path of a program the test needs; skip naming it, or fail under CORRAL_REQUIRE_ALL=1."""
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if os.path.isabs(candidate) and os.access(candidate, os.X_OK) else None)
        if found:
            return found
    cannot_run(f"{name} is not installed (make test installs it as root with apt-get)")


def require_module(name: str) -> Any:
    """A Python package the test needs (``make test`` installs it); skip naming it, or fail
    under CORRAL_REQUIRE_ALL=1."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    cannot_run(f"the Python package {name!r} is not installed (make test installs it: pip install -e '.[test]')")


def bound_socket(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on a free port, to hand to corral with --fd (no port race)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def free_port() -> int:
    """A port that was free a moment ago (for tools that must bind themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, *,
               alive: Callable[[], str | None] | None = None, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy, or fail naming `what`."""
    end = deadline(timeout)
    while True:
        result = condition()
        if result:
            return result
        if alive is not None:
            dead = alive()
            if dead:
                pytest.fail(f"while waiting for {what}: {dead}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout * FACTOR:.1f}s waiting for {what}")
        time.sleep(interval)


def port_answers(host: str, port: int) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    """A process under test: output captured to files, killed by PID in the finalizer."""

    def __init__(self, argv: Sequence[str], tmp: Path, *, env: dict[str, str] | None = None,
                 pass_fds: Sequence[int] = (), cwd: Path | None = None, name: str = "proc",
                 stdin: Any = subprocess.DEVNULL) -> None:
        self.argv = list(argv)
        self.out_path = tmp / f"{name}.out"
        self.err_path = tmp / f"{name}.err"
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.popen = subprocess.Popen(
            self.argv, stdout=self._out, stderr=self._err, stdin=stdin, env=full_env,
            pass_fds=tuple(pass_fds), cwd=str(cwd or ROOT), start_new_session=True,
        )
        self.pid = self.popen.pid

    def output(self) -> str:
        """Everything the process wrote so far, stdout then stderr."""
        self._out.flush()
        self._err.flush()
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def dead(self) -> str | None:
        """A description if the process exited, else None (for wait_until's `alive`)."""
        code = self.popen.poll()
        if code is None:
            return None
        return f"{self.argv[:4]} exited with {code}; output:\n{self.output()[-4000:]}"

    def wait_log(self, text: str, timeout: float = 20, *, count: int = 1) -> None:
        """Wait until `text` appears `count` times in the output."""
        wait_until(lambda: self.output().count(text) >= count, timeout, f"{text!r} in the log",
                   alive=self.dead)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process to exit and return its status."""
        try:
            return self.popen.wait(timeout * FACTOR)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[:4]} did not exit within {timeout * FACTOR:.0f}s; output:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """Kill the process and its whole session (its workers) by PID."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        else:
            # The master is gone; make sure no worker of its session survives it.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.close()
        self._err.close()


class Corral(Proc):
    """`corral ARGS` started as `python -m daemon`, serving on `host:port`."""

    def __init__(self, args: Sequence[str], tmp: Path, *, sock: socket.socket | None = None,
                 env: dict[str, str] | None = None, pass_fds: Sequence[int] = (), name: str = "corral",
                 cwd: Path | None = None) -> None:
        argv = [sys.executable, "-m", "daemon", *args]
        fds = list(pass_fds)
        self.sock = sock
        if sock is not None:
            argv += ["--fd", str(sock.fileno())]
            fds.append(sock.fileno())
            self.host, self.port = sock.getsockname()[:2]
        else:
            self.host, self.port = "127.0.0.1", 0
        base_env = {"CORRAL_LOG_LEVEL": "info"}
        base_env.update(env or {})
        super().__init__(argv, tmp, env=base_env, pass_fds=fds, cwd=cwd, name=name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the server answers HTTP on its port."""
        import httpx

        def answers() -> bool:
            try:
                httpx.get(self.url + "/", timeout=1.0)
                return True
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout, f"corral answering on {self.url}", alive=self.dead, interval=0.05)


def worker_pids(master_pid: int) -> set[int]:
    """PIDs of the live (not zombie) child processes of ``master_pid``: its workers."""
    import psutil

    try:
        children = psutil.Process(master_pid).children()
    except psutil.NoSuchProcess:
        return set()
    pids = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def serves_hello(url: str) -> bool:
    """True when ``url`` answers the bundled example app (examples/hello.py) with 200."""
    import httpx

    try:
        response = httpx.get(url + "/", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text.startswith("Hello from corral")


def kill_supervised_tree(proc: Proc) -> None:
    """Kill a supervising daemon first (so it cannot respawn corral), then everything it started."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    proc.kill()
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def corral_command() -> str:
    """The `corral` console script of this environment, else `python -m daemon`."""
    script = Path(sys.executable).parent / "corral"
    return str(script) if script.exists() else f"{sys.executable} -m daemon"


def substitute(shipped: Path, substitutions: dict[str, str]) -> str:
    """A shipped config's text with only its documented paths and ports replaced.

    Every substitution must still match, so an edit to the shipped file that a
    test relies on fails loudly instead of leaving a different config tested.
    """
    text = shipped.read_text()
    for old, new in substitutions.items():
        assert old in text, f"{shipped.relative_to(ROOT)} no longer contains {old!r}; update its test"
        text = text.replace(old, new)
    return text


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA's certificate for 127.0.0.1/localhost: (certfile, keyfile, cafile) in ``folder``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return certfile, keyfile, cafile


def flood(worker: Any, clients: Sequence[socket.socket], burst: bytes, seconds: float, bound: int,
          what: str) -> tuple[int, int, int]:
    """Send ``burst`` on every non-blocking client as fast as each accepts it for ``seconds``,
    sampling ``worker``'s RSS (a psutil.Process) every 0.25 s; fail at once past start + ``bound``.

    Returns (start RSS, peak RSS, bytes sent).
    """
    import selectors

    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client, selectors.EVENT_WRITE)
    try:
        start = worker.memory_info().rss
        peak, sent = start, 0
        end = time.monotonic() + seconds
        next_sample = time.monotonic()
        while time.monotonic() < end:
            for key, _ in selector.select(timeout=0.1):
                try:
                    sent += key.fileobj.send(burst)  # type: ignore[union-attr]
                except BlockingIOError:
                    pass
            if time.monotonic() >= next_sample:
                next_sample += 0.25
                peak = max(peak, worker.memory_info().rss)
                assert peak < start + bound, (
                    f"{what}: worker RSS {peak >> 20} MiB, started at {start >> 20} MiB ({sent >> 20} MiB sent)")
        return start, peak, sent
    finally:
        selector.close()
