"""Listeners: bind or adopt through one path, with real sockets and the real configuration."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import build_config
from daemon.listeners import Handed, ListenerError, address_key, close_listeners, open_listeners, parse_fd
from tests.support import cannot_run


def config(**options: Any) -> Any:
    """The real frozen Config, from options as the command line would give them."""
    return build_config({name.replace("_", "-"): value for name, value in options.items()}, env={},
                        app="master_app:app")


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Listeners opened by a test, closed afterwards whatever happens."""
    listeners: list[Any] = []
    yield listeners
    close_listeners(listeners)


def serves(sock: socket.socket) -> bool:
    """A client can connect and the listener accepts it."""
    address = sock.getsockname()
    family = sock.family
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        client.connect(address)
        sock.settimeout(2)
        conn, _ = sock.accept()
        conn.close()
    return True


def short_tmp(tmp_path: Path) -> Path:
    """UNIX socket paths must stay under ~100 bytes; pytest's tmp_path can be longer."""
    if len(str(tmp_path)) < 60:
        return tmp_path
    import tempfile

    return Path(tempfile.mkdtemp(prefix="corral-"))


def test_tcp_v4_port_zero(opened: list[Any]) -> None:
    opened += open_listeners(config(host="127.0.0.1", port=0))
    (listener,) = opened
    assert listener.family == socket.AF_INET and not listener.inherited
    assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert listener.url().startswith("http://127.0.0.1:")
    assert serves(listener.sock)


def test_tcp_v6(opened: list[Any]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        cannot_run("no IPv6 loopback (::1) on this machine")
    opened += open_listeners(config(bind=("[::1]:0",)))
    (listener,) = opened
    assert listener.family == socket.AF_INET6
    assert listener.url().startswith("http://[::1]:")
    assert serves(listener.sock)


def test_reuse_port(opened: list[Any]) -> None:
    opened += open_listeners(config(host="127.0.0.1", port=0, reuse_port=True))
    assert opened[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError) as err:
            open_listeners(config(host="127.0.0.1", port=port))
    assert str(err.value) == f"corral: cannot bind 127.0.0.1:{port}: address already in use"


def test_a_failure_closes_what_was_opened(tmp_path: Path) -> None:
    path = short_tmp(tmp_path) / "first.sock"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError):
            open_listeners(config(uds=str(path), bind=(f"127.0.0.1:{port}",)))
    assert not path.exists(), "the UNIX socket bound before the failure was cleaned up"


def test_unix_socket_mode_stale_file_and_removal(tmp_path: Path, opened: list[Any]) -> None:
    path = short_tmp(tmp_path) / "app.sock"
    # A stale socket file: bound by a process that died without unlinking it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    listeners = open_listeners(config(uds=str(path), uds_mode=0o600))
    (listener,) = listeners
    assert listener.family == socket.AF_UNIX and listener.unix_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert listener.url() == f"unix:{path}"
    assert serves(listener.sock)
    close_listeners(listeners)
    assert not path.exists(), "the socket file we created is removed at exit"


def test_a_live_unix_socket_is_not_stolen(tmp_path: Path) -> None:
    path = short_tmp(tmp_path) / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ListenerError, match="address already in use"):
            open_listeners(config(uds=str(path)))
        assert path.exists()


def test_a_regular_file_is_never_deleted(tmp_path: Path) -> None:
    path = short_tmp(tmp_path) / "data.txt"
    path.write_text("precious")
    with pytest.raises(ListenerError, match="not a socket"):
        open_listeners(config(bind=(f"unix:{path}",)))
    assert path.read_text() == "precious"


def test_fd_reads_the_real_family_and_is_never_unlinked(tmp_path: Path) -> None:
    path = short_tmp(tmp_path) / "handed.sock"
    owner = socket.socket(socket.AF_UNIX)
    owner.bind(str(path))
    owner.listen()
    try:
        listeners = open_listeners(config(fd=os.dup(owner.fileno())))
        (listener,) = listeners
        assert listener.family == socket.AF_UNIX and listener.inherited
        assert listener.address.startswith("fd://")
        close_listeners(listeners)
        assert path.exists(), "an inherited UNIX socket's file belongs to whoever handed it"
        # close(), not shutdown(): the other holder still accepts.
        assert serves(owner)
    finally:
        owner.close()
        path.unlink()


def test_fd_bound_but_not_listening_is_made_to_listen(opened: list[Any]) -> None:
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    opened += open_listeners(config(fd=raw.detach()))
    assert opened[0].sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert serves(opened[0].sock)


def test_fd_that_is_not_a_socket() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ListenerError, match="not a socket"):
            open_listeners(config(fd=read_end))
    finally:
        os.close(read_end)
        os.close(write_end)


def test_several_listeners_at_once(tmp_path: Path, opened: list[Any]) -> None:
    path = short_tmp(tmp_path) / "multi.sock"
    opened += open_listeners(config(host="127.0.0.1", port=0, bind=(f"unix:{path}", "127.0.0.2:0")))
    assert [lst.family for lst in opened] == [socket.AF_INET, socket.AF_UNIX, socket.AF_INET]
    for listener in opened:
        assert serves(listener.sock)


def test_inherited_sockets_are_adopted_not_rebound(opened: list[Any]) -> None:
    handed = socket.socket()
    handed.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    handed.bind(("127.0.0.1", 0))
    handed.listen()
    extra = socket.socket()
    extra.bind(("127.0.0.1", 0))
    extra.listen()
    key = address_key(handed)
    host, port = key.rsplit(":", 1)
    opened += open_listeners(config(host=host, port=int(port)),
                             Handed(sockets={key: handed, address_key(extra): extra}))
    assert [lst.sock for lst in opened] == [handed, extra]
    assert all(lst.inherited for lst in opened)


def test_parse_fd_is_the_one_reader_of_fd_addresses() -> None:
    assert parse_fd("fd://3") == 3
    assert parse_fd("fd://web-1.api") == "web-1.api"
    assert parse_fd("127.0.0.1:8000") is None and parse_fd("unix:/run/a.sock") is None
    for bad in ("fd://", "fd://a b", "fd://x/y"):
        with pytest.raises(ValueError, match="fd:// needs a descriptor number or a socket name"):
            parse_fd(bad)


def test_after_a_usr2_under_systemd_fd_name_binds_are_the_handed_sockets(opened: list[Any]) -> None:
    """systemd's names do not cross the exec (the hand-off keys sockets by address): `--bind fd://web`
    in the new image is satisfied by the sockets handed over, not an error that would end the service."""
    handed = socket.create_server(("127.0.0.1", 0))
    opened += open_listeners(config(bind=("fd://web",)),
                             Handed(sockets={address_key(handed): handed}, socket_activated=True))
    assert [(lst.sock, lst.inherited) for lst in opened] == [(handed, True)]
    with pytest.raises(ListenerError, match="not socket-activated"):  # without systemd it stays an error
        open_listeners(config(bind=("fd://web",)))
