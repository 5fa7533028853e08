"""The worker pool's decisions with no process at all: daemon.pool.Pool on a stand-in operating system.

``FakeSystem`` plays fork, kill, waitpid, the clock and RSS (``daemon.system.System``); a "worker"
is a control pipe the test writes to (``ready``, ``hb``, ``fail ...``) and an exit status the test
sets. Each test drives the pool the way the arbiter's loop does (read pipes, reap, deadlines,
apply the plan) and looks at what it decided. The process tests (test_master.py, ...) keep the
seams: the real fork, signals and pipes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from daemon.config import build_config
from daemon.master_state import MasterState
from daemon.pool import MEMORY_INTERVAL, STACK_GRACE, Pool
from daemon.workers import State
from server_core.control import EXIT_APP_FAILED, WORKER_SIGNALS


class FakeSystem:
    """fork/kill/waitpid/clock/RSS as the test says; every spawned worker is a pipe the test writes to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.next_pid = 100
        self.writers: dict[int, int] = {}  # pid -> write end of its control pipe
        self.exits: dict[int, int] = {}  # pid -> exit status waiting to be reaped
        self.signals: list[tuple[int, int]] = []
        self.memory: dict[int, int] = {}

    def spawn(self, settings: Any, sockets: Any, *, close_fds: Any, app: Any, env: Any) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.writers[pid] = write_fd
        return pid, read_fd

    def kill(self, pid: int, sig: int) -> bool:
        self.signals.append((pid, sig))
        return pid in self.writers

    def reap(self, pid: int) -> int | None:
        return self.exits.pop(pid, None)

    def monotonic(self) -> float:
        return self.now

    def rss(self, pid: int) -> int | None:
        return self.memory.get(pid)

    # -- the test's side of a worker ------------------------------------------------------------

    def tell(self, pid: int, *lines: str) -> None:
        os.write(self.writers[pid], "".join(f"{line}\n" for line in lines).encode())

    def exit(self, pid: int, status: int) -> None:
        self.exits[pid] = status
        os.close(self.writers.pop(pid))

    def sent(self, pid: int) -> list[int]:
        return [sig for who, sig in self.signals if who == pid]

    def close(self) -> None:
        for fd in self.writers.values():
            os.close(fd)


def config(**options: Any) -> Any:
    return build_config({name.replace("_", "-"): value for name, value in options.items()}, {}, app="m:app")


@pytest.fixture
def system() -> Iterator[FakeSystem]:
    fake = FakeSystem()
    yield fake
    fake.close()


def make_pool(system: FakeSystem, **options: Any) -> Pool:
    pool = Pool(config(**options), [], system=system)  # type: ignore[arg-type]
    pool.maintain()
    return pool


def turn(pool: Pool) -> None:
    """One pass of the arbiter's loop, without the wait and the signals."""
    for record in list(pool.records.values()):
        pool.read_pipe(record)
    pool.reap()
    pool.check_workers(pool.system.monotonic())
    pool.check_memory(pool.system.monotonic())
    pool.maintain()


def pids(pool: Pool, state: State | None = None) -> list[int]:
    return sorted(pid for pid, record in pool.records.items() if state is None or record.state is state)


def start(system: FakeSystem, **options: Any) -> Pool:
    """A pool whose first workers are all ready."""
    pool = make_pool(system, **options)
    for pid in pids(pool):
        system.tell(pid, "ready")
    turn(pool)
    assert pids(pool, State.READY) == pids(pool) and pool.announced_ready
    return pool


def test_first_start_spawns_the_workers_and_serves_once_they_are_ready(system: FakeSystem) -> None:
    pool = make_pool(system, workers=3)
    assert pids(pool, State.BOOTING) == [100, 101, 102]
    system.tell(100, "ready")
    turn(pool)
    assert pool.ever_ready and not pool.announced_ready  # one of three: not READY=1 yet
    system.tell(101, "ready")
    system.tell(102, "ready")
    turn(pool)
    assert pool.announced_ready and pool.state is MasterState.SERVING
    assert len(pool.records) == 3


def test_a_crashed_worker_is_replaced_at_once(system: FakeSystem) -> None:
    pool = start(system, workers=2)
    system.exit(100, 1)
    turn(pool)
    assert pids(pool) == [101, 102] and pool.records[102].state is State.BOOTING
    assert "worker 100 exited with status 1" in pool.last_failure


def test_an_app_that_never_boots_at_first_start_stops_the_master_with_exit_3(system: FakeSystem) -> None:
    pool = make_pool(system, workers=2)
    system.tell(100, "fail ImportError: no module named app")
    system.exit(100, EXIT_APP_FAILED)
    turn(pool)
    assert pool.state is MasterState.QUITTING and pool.exit_status == EXIT_APP_FAILED
    assert system.sent(101) == [WORKER_SIGNALS["quit"]]
    assert "no module named app" in pool.last_failure
    system.exit(101, 0)
    turn(pool)
    assert not pool.records and not system.writers  # nothing respawned


def test_under_reload_a_broken_app_holds_the_master_until_the_next_change(system: FakeSystem) -> None:
    pool = make_pool(system, reload=True)
    system.exit(100, EXIT_APP_FAILED)
    turn(pool)
    assert pool.state is MasterState.HELD and not pool.records
    system.now += 60
    turn(pool)
    assert not pool.records  # held: nothing spawned however long it waits
    pool.start_roll(pool.config, "hup")  # the file changed
    pool.maintain()
    assert pool.state is MasterState.ROLLING and pids(pool) == [101]


def test_a_replacement_that_fails_to_boot_is_retried_with_backoff(system: FakeSystem) -> None:
    pool = start(system, workers=2)
    system.exit(100, 1)
    turn(pool)  # crash: 102 replaces it
    system.exit(102, EXIT_APP_FAILED)
    turn(pool)
    assert pool.failures == 1 and pool.retry_at == system.now + 0.5 and pids(pool) == [101]
    system.now += 0.5
    turn(pool)
    assert pids(pool) == [101, 103]


def test_a_roll_starts_the_new_worker_first_and_retires_the_old_one_once_it_is_ready(system: FakeSystem) -> None:
    pool = start(system, workers=1)
    pool.start_roll(config(workers=1, timeout_keep_alive=7), "hup")
    pool.maintain()
    assert pool.state is MasterState.ROLLING and pids(pool) == [100, 101]
    assert system.sent(100) == []  # the old one serves on
    system.tell(101, "ready")
    turn(pool)
    assert pool.records[100].state is State.DRAINING and system.sent(100) == [WORKER_SIGNALS["retire"]]
    system.exit(100, 0)
    turn(pool)
    assert pool.state is MasterState.SERVING and pool.roll is None and pids(pool) == [101]
    assert pool.config.timeout_keep_alive == 7


def test_a_roll_whose_new_worker_cannot_boot_is_rolled_back(system: FakeSystem) -> None:
    before = config(workers=1)
    pool = start(system, workers=1)
    previous = pool.config
    pool.start_roll(before, "hup")
    pool.maintain()
    system.exit(101, EXIT_APP_FAILED)
    turn(pool)
    assert pool.state is MasterState.SERVING and pool.roll is None
    assert pool.config is previous and pool.generation == 1 and pids(pool, State.READY) == [100]


def test_a_worker_that_does_not_boot_in_time_is_killed(system: FakeSystem) -> None:
    pool = make_pool(system, workers=1, timeout_worker_boot=5)
    system.now += 5
    turn(pool)
    assert pool.records[100].state is State.FAILED and system.sent(100) == [signal.SIGKILL]


def test_a_silent_event_loop_dumps_its_stacks_then_is_killed_and_replaced(system: FakeSystem) -> None:
    pool = start(system, workers=1, timeout_worker_healthcheck=3)
    system.now += 2
    system.tell(100, "hb")
    turn(pool)
    assert pool.records[100].state is State.READY  # it beat in time
    system.now += 3
    turn(pool)
    assert pool.records[100].state is State.DRAINING and system.sent(100) == [WORKER_SIGNALS["stacks"]]
    assert pids(pool) == [100, 101]  # the replacement starts at once
    system.now += STACK_GRACE
    turn(pool)
    assert system.sent(100)[-1] == signal.SIGKILL


def test_a_worker_over_its_memory_limit_twice_in_a_row_is_replaced(system: FakeSystem) -> None:
    pool = start(system, workers=1, limit_worker_memory=100)
    pool.next_memory_sample = system.now
    system.memory[100] = 150 * 1024 * 1024
    turn(pool)
    assert pool.records[100].replace_reason is None  # one sample over: a peak, not a leak
    system.now += MEMORY_INTERVAL
    turn(pool)
    assert pool.records[100].replace_reason == "memory" and pids(pool) == [100, 101]


def test_stop_drains_every_worker_and_quit_wins_over_a_later_term(system: FakeSystem) -> None:
    pool = start(system, workers=2)
    pool.stop(MasterState.QUITTING)
    assert pool.state is MasterState.QUITTING
    assert {pid: system.sent(pid) for pid in (100, 101)} == {100: [WORKER_SIGNALS["quit"]],
                                                              101: [WORKER_SIGNALS["quit"]]}
    pool.stop(MasterState.STOPPING)  # a TERM after QUIT changes nothing
    assert pool.state is MasterState.QUITTING and len(system.signals) == 2
    system.exit(100, 0)
    system.exit(101, 0)
    turn(pool)
    assert not pool.records and pool.exit_status == 0
