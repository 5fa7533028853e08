"""Round trip of a USR2 hand-off through a real exec (driven by tests/test_upgrade_unit.py).

First image (no $CORRAL_HANDOFF): open a listening TCP socket and a pipe with
bytes waiting in it, block the master's signals and raise SIGTERM and SIGUSR1
against ourselves (now pending, as if they arrived in the exec window), then
``exec_in_place`` with the default argv (``sys.orig_argv``: this same script).
Second image: read the hand-off, check the mask survived, install handlers,
unblock, and report as JSON on stdout: the PID, the socket's address (and that
it still accepts), the pipe's bytes, and which pending signals arrived.
"""

import json
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from daemon import upgrade  # noqa: E402


def first() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"hello from the old image")
    os.close(write_fd)
    os.environ["SD_EXEC_FIRST"] = json.dumps({"pid": os.getpid(), "port": sock.getsockname()[1],
                                              "sock_fd": sock.fileno(), "pipe_fd": read_fd})
    handoff = upgrade.Handoff(
        listeners=(upgrade.ListenerHandoff(fd=sock.fileno(), address=f"127.0.0.1:{sock.getsockname()[1]}",
                                           owned=True),),
        workers=(upgrade.WorkerHandoff(pid=12345, control_fd=read_fd, generation=1, started_at=1.5,
                                       serial=1),),
        generation=1,
    )
    upgrade.block_signals()
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGUSR1)
    upgrade.exec_in_place(handoff)


def second(handoff: upgrade.Handoff) -> None:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    pending = signal.sigpending()
    got: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: got.append(signal.Signals(signum).name))
    upgrade.unblock_signals()
    handed = handoff.handed()
    (address, sock), = handed.sockets.items()
    client = socket.create_connection(sock.getsockname()[:2], timeout=5)
    conn, _ = sock.accept()
    conn.close()
    client.close()
    worker = handoff.workers[0]
    print(json.dumps({
        "first": json.loads(os.environ["SD_EXEC_FIRST"]),
        "pid": os.getpid(),
        "address": address,
        "port": sock.getsockname()[1],
        "sock_fd": sock.fileno(),
        "pipe_fd": worker.control_fd,
        "pipe": os.read(worker.control_fd, 100).decode(),
        "worker": [worker.pid, worker.generation, worker.started_at, worker.serial, worker.state],
        "owned": sorted(handed.owned),
        "blocked_after_exec": sorted(s.name for s in mask if s in upgrade.BLOCKED_SIGNALS),
        "pending_after_exec": sorted(s.name for s in pending),
        "delivered": sorted(got),
        "handoff_var_left": upgrade.HANDOFF_VAR in os.environ,
        "fd_inheritable": os.get_inheritable(sock.fileno()),
    }))


if __name__ == "__main__":
    found = upgrade.read_handoff()
    if found is None:
        first()
    else:
        second(found)
