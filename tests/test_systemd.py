"""systemd glue: sd_notify datagrams, LISTEN_FDS adoption, the shipped unit files, and
end to end under `systemd-socket-activate` with the test playing systemd's notify socket."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import systemd
from daemon.config import Config
from daemon.listeners import ListenerError, address_key, close_listeners, implicit_bind, open_listeners
from tests.apps.sd_harness import NotifySocket
from tests.support import (
    APPS,
    FACTOR,
    REQUIRE_ALL,
    ROOT,
    Proc,
    cannot_run,
    free_port,
    require_tool,
    wait_until,
)

UNITS = ROOT / "systemd"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for UNIX socket paths (sun_path holds 107 bytes; pytest's tmp_path may not fit)."""
    path = Path(tempfile.mkdtemp(prefix="corral-sd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- Notifier ---------------------------------------------------------------------------------


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    notifier = systemd.Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


def test_notifier_message_formats_on_a_path_socket(short_tmp: Path) -> None:
    listener = NotifySocket(str(short_tmp / "notify"))
    try:
        notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": listener.env_value})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.ready()
        assert notifier.status("2/2 workers ready\nsecond line")
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.stopping()
        assert notifier.mainpid(4242)
        assert notifier.watchdog()
        assert notifier.ready(status="generation 2")
        wait_until(lambda: len(listener.poll()) >= 7, 5, "seven datagrams")
        raw = listener.raw
        assert raw[0] == b"READY=1"
        assert raw[1] == b"STATUS=2/2 workers ready second line"  # one line: a newline starts a field
        reloading = listener.messages[2]
        assert list(reloading) == ["RELOADING", "MONOTONIC_USEC"]
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        assert raw[3] == b"STOPPING=1"
        assert raw[4] == b"MAINPID=4242"
        assert raw[5] == b"WATCHDOG=1"
        assert raw[6] == b"READY=1\nSTATUS=generation 2"
    finally:
        listener.close()


def test_notifier_abstract_socket() -> None:
    name = f"corral-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(abstract=name)
    try:
        notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == b"\0" + name.encode()
        assert notifier.ready()
        index, message = listener.wait_for(lambda m: "READY" in m, 5)
        assert message == {"READY": "1"}
    finally:
        listener.close()


def test_notifier_send_errors_never_raise(short_tmp: Path) -> None:
    notifier = systemd.Notifier.from_environ({"NOTIFY_SOCKET": str(short_tmp / "nobody-listens")})
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("still fine") is False
    notifier.close()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_when_meant_for_us(env: dict[str, str],
                                                                      interval: float | None) -> None:
    env = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    env["NOTIFY_SOCKET"] = "/run/nothing"
    assert systemd.Notifier.from_environ(env).watchdog_interval == interval


def test_forget_notify_socket_for_workers() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "OTHER": "kept"}
    systemd.forget_notify_socket(env)
    assert env == {"OTHER": "kept"}


# --- LISTEN_FDS -------------------------------------------------------------------------------

_PROBE = """
import json, os, socket
from daemon.systemd import listen_fds
before = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
found = listen_fds()
out = []
for fd, name in found:
    sock = socket.socket(fileno=os.dup(fd))
    out.append({"fd": fd, "name": name, "family": int(sock.family), "addr": str(sock.getsockname()),
                "inheritable": os.get_inheritable(fd)})
after = {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
print(json.dumps({"before": before, "found": out, "after": after, "pid": os.getpid()}))
"""


def _activate(names: str, socks: list[socket.socket], code: str) -> dict:
    argv = [sys.executable, str(APPS / "sd_harness.py"), "activate", names,
            *[str(s.fileno()) for s in socks], "--", sys.executable, "-c", code]
    done = subprocess.run(argv, pass_fds=[s.fileno() for s in socks], capture_output=True, text=True,
                          cwd=ROOT, timeout=30 * FACTOR)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_listen_fds_adopts_tcp_and_unix_with_names_and_clears_the_environment(short_tmp: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(short_tmp / "admin.sock"))
    unix.listen()
    try:
        result = _activate("web:admin", [tcp, unix], _PROBE)
    finally:
        tcp.close()
        unix.close()
    assert result["before"]["LISTEN_PID"] == str(result["pid"])
    assert result["after"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    found = result["found"]
    assert [(f["fd"], f["name"]) for f in found] == [(3, "web"), (4, "admin")]
    assert found[0]["family"] == socket.AF_INET
    assert found[1]["family"] == socket.AF_UNIX
    assert found[1]["addr"].endswith("admin.sock")
    assert not any(f["inheritable"] for f in found)


def test_listen_fds_default_name_is_unknown(short_tmp: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        result = _activate("-", [tcp], _PROBE)
    finally:
        tcp.close()
    assert [(f["fd"], f["name"]) for f in result["found"]] == [(3, "unknown")]


def test_listen_fds_for_another_pid_adopts_nothing_but_still_clears() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "KEEP": "1"}
    assert systemd.listen_fds(env, pid=os.getpid()) == []
    assert env == {"KEEP": "1"}


def test_listen_fds_without_variables() -> None:
    assert systemd.listen_fds({}, pid=os.getpid()) == []


# --- systemd's sockets meet --bind (daemon.listeners.open_listeners) ----------------------------


def _dup_fds(*socks: socket.socket) -> list[int]:
    return [os.dup(s.fileno()) for s in socks]


def _config(binds: tuple[str, ...] = (), **cli: object) -> Config:
    from daemon.config import build_config

    return build_config({"bind": list(binds), **cli} if binds else dict(cli), {}, app="m:app")


def test_systemd_sockets_replace_the_implicit_default_and_satisfy_binds(short_tmp: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(short_tmp / "a.sock"))
    unix.listen()
    other = short_tmp / "elsewhere.sock"
    tcp_key, unix_key = address_key(tcp), address_key(unix)
    try:
        handed = systemd.wrap_fds(list(zip(_dup_fds(tcp, unix), ["web", "admin"], strict=True)))
        assert set(handed.sockets) == {tcp_key, unix_key} and handed.socket_activated
        # No address asked for: the implicit 127.0.0.1:8000 is not bound, systemd's sockets are served.
        listeners = open_listeners(_config(), handed)
        assert [(lst.address, lst.inherited) for lst in listeners] == [(tcp_key, True), (unix_key, True)]
        close_listeners(listeners)
        # The sockets named by fd://NAME, address or fd://N are adopted where their binds stand (once
        # each); a bind no socket satisfies is bound as usual.
        handed = systemd.wrap_fds(list(zip(_dup_fds(tcp, unix), ["web", "admin"], strict=True)))
        binds = (f"unix:{other}", "fd://admin", tcp_key, "fd://web", f"fd://{handed.sockets[unix_key].fileno()}")
        listeners = open_listeners(_config(binds), handed)
        assert [(lst.address, lst.inherited) for lst in listeners] == [
            (f"unix:{other}", False), (unix_key, True), (tcp_key, True)]
        close_listeners(listeners)
    finally:
        tcp.close()
        unix.close()


def test_an_unknown_systemd_name_is_an_error() -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    handed = systemd.wrap_fds([(_dup_fds(tcp)[0], "web")])
    with pytest.raises(ListenerError, match="no socket named 'api'.*web"):
        open_listeners(_config(("fd://api",)), handed)
    for sock in handed.sockets.values():
        sock.close()
    tcp.close()


def test_wrap_fds_refuses_a_datagram_socket() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    with pytest.raises(ListenerError, match="not a stream socket"):
        systemd.wrap_fds([(os.dup(udp.fileno()), "dns")])
    udp.close()


def test_without_systemd_sockets_nothing_is_handed() -> None:
    assert systemd.handed_sockets({}) is None


def test_implicit_bind_follows_what_the_user_gave() -> None:
    from daemon.config import build_config

    assert implicit_bind(build_config({}, {}, app="m:app")) == "127.0.0.1:8000"
    assert implicit_bind(build_config({"port": 9000}, {}, app="m:app")) is None
    assert implicit_bind(build_config({"bind": ["unix:/x"]}, {}, app="m:app")) is None
    assert implicit_bind(build_config({}, {"CORRAL_PORT": "9001"}, app="m:app")) is None


# --- the unit files ---------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def test_service_unit_key_settings() -> None:
    for name in ("corral.service", "corral@.service"):
        service = _unit(name)["Service"]
        assert service["Type"] == "notify"
        assert service["NotifyAccess"] == "all"
        assert service["ExecStart"].startswith("/usr/local/bin/corral ")
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert service["KillMode"] == "mixed"
        assert int(service["WatchdogSec"]) > 0
        # Above the default --timeout-graceful-shutdown (30 s).
        assert int(service["TimeoutStopSec"]) > 30
        assert service["Restart"] == "on-failure"
        assert service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict"
    assert _unit("corral.service")["Service"]["ExecStart"] == "/usr/local/bin/corral myapp:app --workers 4"
    assert "%i" in _unit("corral@.service")["Service"]["ExecStart"]


def test_socket_units_key_settings() -> None:
    with open(UNITS / "corral.socket") as handle:
        streams = [line.split("=", 1)[1].strip() for line in handle if line.startswith("ListenStream=")]
    assert "8000" in streams
    assert any(s.startswith("/") and s.endswith(".sock") for s in streams)
    assert _unit("corral.socket")["Socket"]["FileDescriptorName"]
    assert _unit("corral.socket")["Socket"].get("Accept", "no") == "no"
    template = _unit("corral@.socket")["Socket"]
    assert template["ListenStream"] == "/run/corral/%i.sock"
    assert template["FileDescriptorName"] == "%i"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        cannot_run("systemd-analyze is not installed; the unit files were checked by configparser only",
                   required=REQUIRE_ALL and Path("/usr/lib/systemd").is_dir())
    corral = shutil.which("corral", path=str(Path(sys.executable).parent)) or sys.executable
    for name in ("corral.socket", "corral.service", "corral@.socket", "corral@.service"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/corral", corral)
        (tmp_path / name).write_text(text)
    # Templates are verified through an instance, as systemd loads them.
    (tmp_path / "corral@shop.socket").symlink_to("corral@.socket")
    (tmp_path / "corral@shop.service").symlink_to("corral@.service")
    names = ["corral.socket", "corral.service", "corral@shop.socket", "corral@shop.service"]
    done = subprocess.run([tool, "verify", "--man=no", *[f"./{n}" for n in names]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60 * FACTOR)
    complaints = [line for line in done.stderr.splitlines()
                  if re.search(r"Unknown key|Failed to parse|bad unit file|not executable|fatal", line)]
    assert done.returncode == 0 and not complaints, done.stderr


# --- end to end: systemd-socket-activate and the notify sequence ------------------------------


def _status_counts(message: dict[str, str]) -> tuple[int, int] | None:
    """(ready, total) from a STATUS= line, whichever of the two spellings the master uses."""
    text = message.get("STATUS", "")
    match = re.search(r"ready=(\d+) total=(\d+)", text) or re.search(r"(\d+)/(\d+) workers", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def test_socket_activation_end_to_end_with_notify(tmp_path: Path, short_tmp: Path, procs) -> None:
    import httpx

    activate = require_tool("systemd-socket-activate", "/usr/bin/systemd-socket-activate",
                            "/lib/systemd/systemd-socket-activate")
    port = free_port()
    uds = str(short_tmp / "admin.sock")
    notify = NotifySocket(str(short_tmp / "notify"))
    argv = [activate, "-l", f"127.0.0.1:{port}", "-l", uds, "--fdname=web:admin",
            "-E", f"NOTIFY_SOCKET={notify.env_value}", "-E", "PYTHONUNBUFFERED=1",
            "-E", "CORRAL_LOG_LEVEL=info",
            sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--workers", "2"]
    proc: Proc = procs(argv, name="activate")
    try:
        # systemd-socket-activate starts corral on the first connection.
        wait_until(lambda: _connects(port), 20, "systemd-socket-activate listening", alive=proc.dead)
        _, ready = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        ready_index = notify.messages.index(ready)
        # READY=1 only once workers are ready: a STATUS before it (or with it) counts them.
        counts = [c for m in notify.messages[: ready_index + 1] if (c := _status_counts(m))]
        assert counts and counts[-1][0] >= 1, notify.messages
        tcp_pid = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        transport = httpx.HTTPTransport(uds=uds)
        with httpx.Client(transport=transport) as client:
            assert client.get("http://localhost/", timeout=5).status_code == 200
        assert tcp_pid.isdigit()
        # Neither LISTEN_* nor NOTIFY_SOCKET reach the application.
        assert json.loads(httpx.get(f"http://127.0.0.1:{port}/env", timeout=5).text) == {}
        # The default 127.0.0.1:8000 is not bound in addition to the adopted sockets.
        assert not re.search(r":8000\b", _listening_lines(proc.output())), proc.output()
        master = proc.pid  # systemd-socket-activate exec()s corral: same PID
        os.kill(master, signal.SIGHUP)
        index, reloading = notify.wait_for(lambda m: m.get("RELOADING") == "1", 20 * FACTOR,
                                           start=ready_index + 1, alive=proc.dead)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, start=index + 1, alive=proc.dead)
        os.kill(master, signal.SIGTERM)
        notify.wait_for(lambda m: m.get("STOPPING") == "1", 20 * FACTOR, start=index + 1)
        assert proc.wait_exit(40) == 0
        assert any(_status_counts(m) for m in notify.messages)
    finally:
        notify.close()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _listening_lines(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "listening" in line)


def test_watchdog_pings_at_half_the_period(tmp_path: Path, short_tmp: Path, procs) -> None:
    """WATCHDOG_USEC=1s: WATCHDOG=1 arrives about every 0.5 s while master and workers are healthy."""
    from tests.support import bound_socket

    sock = bound_socket()
    notify = NotifySocket(str(short_tmp / "notify"))
    argv = [sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--fd", str(sock.fileno())]
    proc = procs(argv, name="watchdog", pass_fds=[sock.fileno()],
                 env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "1000000"})
    sock.close()
    try:
        ready, _ = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        index, _ = notify.wait_for(lambda m: m.get("WATCHDOG") == "1", 10 * FACTOR, start=ready, alive=proc.dead)
        first = time.monotonic()
        for _ in range(3):
            index, _ = notify.wait_for(lambda m: m.get("WATCHDOG") == "1", 10 * FACTOR, start=index + 1,
                                       alive=proc.dead)
        # Three more pings at ~0.5 s: well under the 1 s period each, allowing for a busy machine.
        assert time.monotonic() - first < 3 * FACTOR + 1.5
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(30) == 0
    finally:
        notify.close()


def test_bind_fd_name_selects_a_systemd_socket_by_name(tmp_path: Path, procs) -> None:
    """`--bind fd://web` is satisfied by the passed socket named web; an unknown name is one clear line, exit 1.

    Needs daemon.config.parse_bind to accept a non-numeric fd://NAME (the lead's wiring).
    """
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        def start(name: str, bind: str) -> Proc:
            argv = [sys.executable, str(APPS / "sd_harness.py"), "activate", "web", str(sock.fileno()), "--",
                    sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--bind", bind]
            return procs(argv, name=name, pass_fds=[sock.fileno()])

        good = start("named", "fd://web")
        wait_until(lambda: _connects(port) and _answers(port), 30, "corral on the socket named web",
                   alive=good.dead)
        assert not re.search(r":8000\b", _listening_lines(good.output()))
        good.signal(signal.SIGTERM)
        assert good.wait_exit(30) == 0
        bad = start("unnamed", "fd://api")
        assert bad.wait_exit(30) == 1
        assert "no socket named 'api'" in bad.output()
    finally:
        sock.close()


def _answers(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_fd_3_under_socket_activation_is_the_adopted_socket(tmp_path: Path, procs) -> None:
    """`--fd 3` naming the descriptor systemd passed: served once, not wrapped twice (no EBADF), and so
    after a USR2 re-exec too; TERM exits 0."""
    activate = require_tool("systemd-socket-activate", "/usr/bin/systemd-socket-activate",
                            "/lib/systemd/systemd-socket-activate")
    port = free_port()
    argv = [activate, "-l", f"127.0.0.1:{port}", "--fdname=web", "-E", "PYTHONUNBUFFERED=1",
            "-E", "CORRAL_LOG_LEVEL=info",
            sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--workers", "2", "--fd", "3"]
    proc: Proc = procs(argv, name="activate-fd3")
    wait_until(lambda: _connects(port), 20, "systemd-socket-activate listening", alive=proc.dead)
    wait_until(lambda: "ready: 2 workers" in proc.output(), 30, "two workers ready", alive=proc.dead)
    wait_until(lambda: _answers(port), 10, "an answer on the activated socket", alive=proc.dead)
    proc.signal(signal.SIGUSR2)
    wait_until(lambda: "upgrade_done" in proc.output(), 60, "the USR2 upgrade done", alive=proc.dead)
    wait_until(lambda: _answers(port), 10, "an answer after the upgrade", alive=proc.dead)
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(40) == 0, proc.output()
    output = proc.output()
    assert "Bad file descriptor" not in output and "Traceback" not in output, output
    assert len(re.findall(r"corral: listening on", output)) == 2, output  # once per image


def test_watchdog_keeps_pinging_after_winch(tmp_path: Path, short_tmp: Path, procs) -> None:
    """After WINCH (no worker wanted) the master alone is healthy: WATCHDOG=1 goes on."""
    import psutil

    from tests.support import bound_socket

    sock = bound_socket()
    notify = NotifySocket(str(short_tmp / "notify"))
    argv = [sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--fd", str(sock.fileno()),
            "--workers", "2"]
    proc = procs(argv, name="watchdog-winch", pass_fds=[sock.fileno()],
                 env={"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "1000000"})
    sock.close()
    try:
        notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        proc.signal(signal.SIGWINCH)
        wait_until(lambda: not psutil.Process(proc.pid).children(), 30, "every worker to stop", alive=proc.dead)
        index = len(notify.poll())
        for _ in range(3):
            index, _ = notify.wait_for(lambda m: m.get("WATCHDOG") == "1", 5 * FACTOR, start=index,
                                       alive=proc.dead)
            index += 1
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(30) == 0
    finally:
        notify.close()


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_the_notify_socket_does_not_leak_into_workers(tmp_path: Path, short_tmp: Path, procs) -> None:
    """The master's sd_notify socket (created at its first notification) is closed in workers forked later."""
    import psutil

    from tests.support import bound_socket

    sock = bound_socket()
    listener = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    notify = NotifySocket(str(short_tmp / "notify"))
    argv = [sys.executable, "-m", "daemon", "sd_app:app", "--app-dir", str(APPS), "--fd", str(sock.fileno())]
    proc = procs(argv, name="notify-leak", pass_fds=[sock.fileno()], env={"NOTIFY_SOCKET": notify.env_value})
    sock.close()
    try:
        first, _ = notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, alive=proc.dead)
        old = {c.pid for c in psutil.Process(proc.pid).children()}
        proc.signal(signal.SIGHUP)
        index, _ = notify.wait_for(lambda m: m.get("RELOADING") == "1", 30 * FACTOR, start=first + 1,
                                   alive=proc.dead)
        notify.wait_for(lambda m: m.get("READY") == "1", 30 * FACTOR, start=index + 1, alive=proc.dead)
        new = {c.pid for c in psutil.Process(proc.pid).children()} - old
        assert new
        master_only = _socket_inodes(proc.pid) - {listener}
        assert master_only, "the master holds its notify socket"
        for pid in new:
            assert not (_socket_inodes(pid) & master_only), (pid, master_only)
        proc.signal(signal.SIGTERM)
        assert proc.wait_exit(30) == 0
    finally:
        notify.close()
