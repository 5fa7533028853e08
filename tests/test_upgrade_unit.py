"""The pieces of the USR2 upgrade: the hand-off through a real exec, the signal mask across
it, and the preflight check that keeps a broken install from replacing a working master."""

from __future__ import annotations

import collections
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

from daemon import upgrade, upgrade_check
from daemon.config import build_config
from daemon.master_state import MasterState
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
    argv = upgrade_check.config_argv(config)
    assert argv[-1] == "main:app"
    again = upgrade_check.parse_cli_config(argv)
    assert dict(again.values) == dict(config.values)
    assert again.app == "main:app"


def _run_check(argv: list[str], timeout: float = 60) -> upgrade_check.Preflight:
    """Drive a Preflight the way the arbiter does: its fd in a selector, with its deadline."""
    check = upgrade_check.Preflight(argv, timeout * FACTOR, cwd=str(ROOT))
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


# --- the USR2 handler, against a stand-in arbiter ---------------------------------------------


class FakeArbiter:
    """A stand-in master: all the Upgrader may use of one (``daemon.upgrade.Master``)."""

    def __init__(self, config, records=(), listeners=()) -> None:
        self.config = config
        self.records = {r.pid: r for r in records}
        self.listeners = list(listeners)
        self.generation = 4
        self.state = MasterState.SERVING
        self.sent: list[str] = []
        self.watched: list[upgrade_check.Preflight] = []
        self.pending: collections.deque[int] = collections.deque()

    def live_workers(self):
        return [r for r in self.records.values() if r.alive]

    def watch(self, source: upgrade_check.Preflight) -> None:
        self.watched.append(source)

    def recorded_signals(self) -> tuple[int, ...]:
        return tuple(self.pending)

    def forget_recorded_signals(self) -> None:
        self.pending.clear()

    def announce_ready(self, *, mainpid: bool = False) -> None:
        self.sent += [f"MAINPID={os.getpid()}"] * mainpid + ["READY=1"]


def _drive(check: upgrade_check.Preflight) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(check.fileno(), selectors.EVENT_READ)
        while check.ok is None:
            moment = check.deadline()
            if selector.select(max(0.0, moment - time.monotonic()) if moment else None):
                check.on_readable()
            else:
                check.expired()
    check.close()


def test_upgrader_rolls_back_on_a_failing_check_and_ignores_usr2_meanwhile(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = build_config({"app-dir": str(_app_dir(tmp_path, "def app(:\n"))}, {}, app="candidate:app")
    arbiter = FakeArbiter(config)
    upgrader = upgrade.Upgrader()
    upgrader(arbiter)
    assert len(arbiter.watched) == 1
    upgrader(arbiter)  # a second USR2 while the check runs
    assert len(arbiter.watched) == 1
    assert "USR2 ignored" in capsys.readouterr().err
    _drive(arbiter.watched[0])
    err = capsys.readouterr().err
    assert "upgrade rolled back (check)" in err and "SyntaxError" in err
    assert upgrader.in_flight(arbiter) is None  # the next USR2 may try again


def test_upgrader_refuses_during_a_roll_or_a_stop(tmp_path: Path) -> None:
    arbiter = FakeArbiter(build_config({}, {}, app="candidate:app"))
    upgrader = upgrade.Upgrader()
    arbiter.state = MasterState.ROLLING
    assert "rolling restart" in (upgrader.in_flight(arbiter) or "")
    for state in (MasterState.LEAVING, MasterState.STOPPING, MasterState.QUITTING):
        arbiter.state = state
        assert "stopping" in (upgrader.in_flight(arbiter) or "")
    upgrader(arbiter)
    assert arbiter.watched == []


def test_a_stop_during_the_check_cancels_the_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TERM while the preflight runs (with --shutdown-delay: the master is leaving, still serving)
    rolls the upgrade back instead of exec'ing into an image that would not know about the stop."""
    class Passed:
        ok, reason = True, ""

    execs: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: execs.append(argv))
    reports: list[tuple[str, str]] = []
    for state in (MasterState.LEAVING, MasterState.STOPPING, MasterState.ROLLING):
        arbiter = FakeArbiter(build_config({}, {}, app="candidate:app"))
        arbiter.state = state
        upgrader = upgrade.Upgrader()
        upgrader.report = lambda result, reason: reports.append((result, reason))
        upgrader._checked(arbiter, Passed())  # type: ignore[arg-type]
    assert execs == []
    assert [result for result, _ in reports] == ["rolled-back"] * 3
    assert "stopping" in reports[0][1] and "stopping" in reports[1][1] and "rolling restart" in reports[2][1]


def test_resumed_upgrader_reports_the_end_of_its_roll() -> None:
    arbiter = FakeArbiter(build_config({}, {}, app="candidate:app"))
    upgrader = upgrade.Upgrader(resumed=True)
    assert "previous upgrade" in (upgrader.in_flight(arbiter) or "")
    upgrader.roll_finished(arbiter, ok=True)
    assert arbiter.sent == [f"MAINPID={os.getpid()}", "READY=1"]
    assert upgrader.in_flight(arbiter) is None
    upgrader.roll_finished(arbiter, ok=True)  # only once
    assert len(arbiter.sent) == 2


def test_build_handoff_and_resume_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from daemon.listeners import Listener, open_listeners
    from daemon.workers import State, WorkerRecord

    sock = socket.create_server(("127.0.0.1", 0))
    read_fd, write_fd = os.pipe()
    records = [WorkerRecord(pid=101, serial=1, generation=4, started_at=10.0, state=State.READY, read_fd=read_fd),
               WorkerRecord(pid=102, serial=2, generation=4, started_at=11.0, state=State.GONE, read_fd=None)]
    listeners = [Listener(address="127.0.0.1:8000", sock=sock, inherited=False)]
    arbiter = FakeArbiter(build_config({}, {}, app="candidate:app"), records, listeners)
    handoff = upgrade.build_handoff(arbiter, socket_activated=True)
    assert [w.pid for w in handoff.workers] == [101]
    assert handoff.listeners[0].owned and handoff.generation == 4
    monkeypatch.setenv(upgrade.HANDOFF_VAR, handoff.to_json())
    resumed = upgrade.resume()
    assert resumed is not None and upgrade.HANDOFF_VAR not in os.environ
    try:
        (record,) = resumed.adopted
        assert (record.pid, record.state, record.read_fd, record.generation) == (101, State.READY, read_fd, 4)
        assert record.last_heartbeat is not None and record.ready_at is not None
        assert set(resumed.handed.sockets) == {"127.0.0.1:8000"}
        assert resumed.handed.owned == {"127.0.0.1:8000"} and resumed.handed.socket_activated
        assert resumed.upgrader.rolling and resumed.upgrader.socket_activated
        # Socket-activated: the implicit default bind is not bound again in the new image; the
        # socket the first image bound is ours again (its UNIX file would be removed at exit).
        adopted = open_listeners(arbiter.config, resumed.handed)
        assert [(lst.address, lst.sock, lst.inherited) for lst in adopted] == [
            ("127.0.0.1:8000", resumed.handed.sockets["127.0.0.1:8000"], False)]
    finally:
        for s in resumed.handed.sockets.values():
            s.detach()  # same fd as `sock`
        sock.close()
        os.close(read_fd)
        os.close(write_fd)


def test_config_only_check_for_an_app_object(tmp_path: Path) -> None:
    """daemon.run(app_object): the check validates the configuration and skips the import."""
    config = build_config({"workers": 2}, {}, app=lambda scope, receive, send: None, source="daemon.run()")
    argv = upgrade_check.config_argv(config)
    assert argv[0] == upgrade_check.CONFIG_ONLY
    assert _run_check(argv).ok is True
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 'many'\n")
    check = _run_check([upgrade_check.CONFIG_ONLY, "--config", str(bad)])
    assert check.ok is False and check.popen.returncode == 2


def test_abandon_stops_the_adopted_workers() -> None:
    """A new image that cannot serve must not leave the previous workers as orphans."""
    from daemon.workers import State, WorkerRecord

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        handoff = upgrade.Handoff(listeners=(), workers=(), generation=1)
        record = WorkerRecord(pid=child.pid, serial=1, generation=1, started_at=0.0, state=State.READY)
        resumed = upgrade.Resumed(handoff=handoff, handed=handoff.handed(), adopted=[record],
                                  upgrader=upgrade.Upgrader())
        resumed.abandon("cannot open listeners")
        assert child.wait(30 * FACTOR) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_blocked_signals_are_exactly_the_ones_the_master_handles() -> None:
    """Blocked across the exec must equal handled (then unblocked) by the new image's arbiter."""
    from daemon.arbiter import COMMANDS

    assert set(COMMANDS) == set(upgrade.BLOCKED_SIGNALS)


def test_signals_recorded_before_the_exec_stay_pending_across_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal the master recorded but had not dispatched when the check passed is re-raised while the
    signals are blocked (so the new image gets it); a recorded TERM cancels the exec instead."""
    class Passed:
        ok, reason = True, ""

    seen: list[set[int]] = []

    def execv(path: str, argv: list[str]) -> None:
        seen.append(set(signal.sigpending()))
        raise OSError("no exec in this test")

    monkeypatch.setattr(os, "execv", execv)
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: got.append(signum))
    try:
        arbiter = FakeArbiter(build_config({}, {}, app="candidate:app"))
        arbiter.pending = collections.deque([signal.SIGUSR1])
        upgrade.Upgrader()._checked(arbiter, Passed())  # type: ignore[arg-type]
        assert seen and signal.SIGUSR1 in seen[0]  # pending in the kernel at the exec
        assert got == [signal.SIGUSR1]  # and delivered once the failed exec unblocked it
        assert not arbiter.pending
        seen.clear()
        arbiter.pending = collections.deque([signal.SIGTERM])
        upgrade.Upgrader()._checked(arbiter, Passed())  # type: ignore[arg-type]
        assert seen == []  # no exec: the TERM is dispatched by this master
        assert list(arbiter.pending) == [signal.SIGTERM]
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.signal(signal.SIGUSR1, previous)
