"""The pieces of the USR2 upgrade: the hand-off through a real exec, the signal mask across
it, and the preflight check that keeps a broken install from replacing a working master."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon import upgrade
from daemon.config import build_config
from tests.support import APPS, FACTOR, ROOT

GOOD_APP = """
async def app(scope, receive, send):
    pass
"""


def test_handoff_round_trips_through_a_real_exec() -> None:
    done = subprocess.run([sys.executable, str(APPS / "sd_exec.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=30 * FACTOR)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    first = report["first"]
    # Same process, same descriptors, still listening, bytes still in the pipe.
    assert report["pid"] == first["pid"]
    assert report["sock_fd"] == first["sock_fd"] and report["port"] == first["port"]
    assert report["address"] == f"127.0.0.1:{first['port']}"
    assert report["pipe_fd"] == first["pipe_fd"]
    assert report["pipe"] == "hello from the old image"
    assert report["worker"] == [12345, 1, 1.5, 1, "ready"]
    assert report["owned"] == [report["address"]]
    # The variable is consumed; the fds go back to close-on-exec for the app's subprocesses.
    assert report["handoff_var_left"] is False
    assert report["fd_inheritable"] is False


def test_signal_mask_and_pending_signals_survive_the_exec() -> None:
    done = subprocess.run([sys.executable, str(APPS / "sd_exec.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=30 * FACTOR)
    assert done.returncode == 0, done.stderr  # a pending TERM did not kill the new image
    report = json.loads(done.stdout)
    assert report["blocked_after_exec"] == sorted(s.name for s in upgrade.BLOCKED_SIGNALS)
    assert report["pending_after_exec"] == ["SIGTERM", "SIGUSR1"]
    # Delivered to the new image's handlers once it unblocked.
    assert report["delivered"] == ["SIGTERM", "SIGUSR1"]


def test_failed_exec_restores_the_mask_and_environment() -> None:
    handoff = upgrade.Handoff(listeners=(), workers=(), generation=3)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(OSError):
        upgrade.exec_in_place(handoff, argv=["/nonexistent/python-gone"])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert upgrade.HANDOFF_VAR not in os.environ


def test_handoff_json_round_trip_and_bad_values() -> None:
    handoff = upgrade.Handoff(
        listeners=(upgrade.ListenerHandoff(3, "unix:/run/x.sock", False),),
        workers=(upgrade.WorkerHandoff(10, 7, 2, 99.0, 4, "booting"),),
        generation=2, socket_activated=True, upgraded_at=5.0,
    )
    env = {upgrade.HANDOFF_VAR: handoff.to_json()}
    assert upgrade.read_handoff(env) == handoff
    assert env == {}
    assert upgrade.read_handoff({}) is None
    assert upgrade.read_handoff({upgrade.HANDOFF_VAR: "{not json"}) is None
    assert upgrade.read_handoff({upgrade.HANDOFF_VAR: json.dumps({"v": 99})}) is None
    assert upgrade.read_handoff({upgrade.HANDOFF_VAR: json.dumps({"v": 1, "listeners": []})}) is None


def test_exec_argv_reruns_the_same_program() -> None:
    assert upgrade.exec_argv() == [sys.executable, *sys.orig_argv[1:]]


def test_config_argv_rebuilds_the_same_config(tmp_path: Path) -> None:
    cli = {"workers": 3, "access-log": False, "reuse-port": True, "header": ("X-A:1", "X-B:2"),
           "uds-mode": 0o660, "timeout-worker-boot": 5.0, "app-dir": str(tmp_path)}
    config = build_config(cli, {}, app="main:app")
    argv = upgrade.config_argv(config)
    assert argv[-1] == "main:app"
    again = upgrade.parse_cli_config(argv)
    assert dict(again.values) == dict(config.values)
    assert again.app == "main:app"


def _run_check(argv: list[str], timeout: float = 60) -> upgrade.Preflight:
    """Drive a Preflight the way the arbiter does: its fd in a selector, with its deadline."""
    check = upgrade.Preflight(argv, timeout * FACTOR, cwd=str(ROOT))
    with selectors.DefaultSelector() as selector:
        selector.register(check.fileno(), selectors.EVENT_READ)
        while check.ok is None:
            moment = check.deadline()
            wait = max(0.0, moment - time.monotonic()) if moment is not None else None
            if selector.select(wait):
                check.on_readable()
            else:
                check.expired()
    check.close()
    return check


def _app_dir(tmp_path: Path, source: str) -> Path:
    (tmp_path / "candidate.py").write_text(textwrap.dedent(source))
    return tmp_path


def test_preflight_succeeds_on_a_good_app(tmp_path: Path) -> None:
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, GOOD_APP)), "--workers", "2"])
    assert check.ok is True, check.output.decode()
    assert check.popen.returncode == 0


def test_preflight_fails_on_a_syntax_error(tmp_path: Path) -> None:
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, "def app(:\n"))])
    assert check.ok is False
    assert check.popen.returncode == 3
    assert "application cannot load" in check.reason
    assert "SyntaxError" in check.output.decode() or "syntax" in check.output.decode().lower()


def test_preflight_fails_on_an_import_error(tmp_path: Path) -> None:
    source = "import corral_no_such_module_anywhere\n" + GOOD_APP
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, source))])
    assert check.ok is False
    assert check.popen.returncode == 3
    assert "corral_no_such_module_anywhere" in check.output.decode()


def test_preflight_fails_on_a_missing_attribute(tmp_path: Path) -> None:
    check = _run_check(["candidate:nothere", "--app-dir", str(_app_dir(tmp_path, GOOD_APP))])
    assert check.ok is False and check.popen.returncode == 3
    assert "nothere" in check.reason


def test_preflight_fails_on_a_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "corral.toml"
    bad.write_text("workerz = 2\n")
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, GOOD_APP)), "--config", str(bad)])
    assert check.ok is False and check.popen.returncode == 2
    assert "workerz" in check.reason


def test_preflight_deadline_kills_a_hanging_import(tmp_path: Path) -> None:
    source = "import time\ntime.sleep(600)\n" + GOOD_APP
    started = time.monotonic()
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, source))], timeout=2)
    assert check.ok is False
    assert "did not finish" in check.reason
    assert time.monotonic() - started < 30 * FACTOR
    assert check.popen.returncode is not None


def test_preflight_does_not_inherit_systemd_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = GOOD_APP + textwrap.dedent("""
        import os
        assert "NOTIFY_SOCKET" not in os.environ, "the check must not talk to systemd"
        assert "CORRAL_HANDOFF" not in os.environ
    """)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv(upgrade.HANDOFF_VAR, "{}")
    check = _run_check(["candidate:app", "--app-dir", str(_app_dir(tmp_path, source))])
    assert check.ok is True, check.output.decode()
