"""The master's view of its workers: named states and pure decisions over them.

Every worker the master forks has a :class:`WorkerRecord`. Its life is a small
state machine (``booting → ready → draining → gone``, and ``failed`` for a
worker that never became ready); :func:`transition` is the only place a state
changes, so every change is logged the same way by whoever calls it.

Everything the master *decides* lives here as pure functions over the records:
what to spawn, whom to retire, when to retry a failed boot, when to give up.
They take the clock as an argument and touch no process, pipe or socket, so
``tests/test_decisions.py`` runs every scenario (roll, scale, recycle, crash,
backoff) in microseconds. This module imports neither asyncio nor socket.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Capped exponential backoff for a replacement that fails to boot once serving.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
# Consecutive RSS samples over --limit-worker-memory before a worker is
# recycled: one sample can catch a transient peak (a big response buffer).
# Samples are daemon.pool.MEMORY_INTERVAL apart, so two keep the overshoot of
# a fast leak small.
MEMORY_STRIKES = 2
# A roll (or any planned replacement) starts this many new workers at a time:
# capacity then stays between N and N + MAX_SURGE ready workers.
MAX_SURGE = 1


class State(enum.Enum):
    """Where a worker is in its life, as the master sees it."""

    BOOTING = "booting"  # forked; no "ready" yet (lifespan startup, binding the loop)
    READY = "ready"  # serving, heartbeating
    DRAINING = "draining"  # told to stop (retire, shutdown, or stuck); still may hold requests
    FAILED = "failed"  # never became ready: boot failure or boot timeout
    GONE = "gone"  # reaped


# Which transitions are legal; anything else is a bug in the master.
_ALLOWED: dict[State, frozenset[State]] = {
    State.BOOTING: frozenset({State.READY, State.DRAINING, State.FAILED, State.GONE}),
    State.READY: frozenset({State.DRAINING, State.GONE}),
    State.DRAINING: frozenset({State.GONE}),
    State.FAILED: frozenset({State.GONE}),
    State.GONE: frozenset(),
}


class Reason(str, enum.Enum):
    """Why a worker is replaced, retired or spawned (the ``reason=`` log field)."""

    START = "start"
    HUP = "hup"
    TTIN = "ttin"
    TTOU = "ttou"
    WINCH = "winch"
    MAX_REQUESTS = "max-requests"
    MEMORY = "memory"
    HEARTBEAT = "heartbeat"
    CRASH = "crash"
    BOOT_TIMEOUT = "boot-timeout"
    RETRY = "retry"
    SHUTDOWN = "shutdown"
    QUIT = "quit"


@dataclass(eq=False)
class WorkerRecord:
    """One worker as the master knows it. Mutable: the arbiter updates it."""

    pid: int
    serial: int  # spawn order: lower is older
    generation: int  # the configuration generation it was started with
    started_at: float
    state: State = State.BOOTING
    ready_at: float | None = None
    last_heartbeat: float | None = None
    # Set when the worker should be replaced (max-requests, memory, ttou,
    # winch): it keeps serving until the replacement is ready.
    replace_reason: str | None = None
    # Why it is draining (retire/shutdown reason), for logs.
    drain_reason: str | None = None
    # When a draining or failed worker is SIGKILLed if still alive.
    kill_at: float | None = None
    limit_max_requests: int | None = None
    memory_strikes: int = 0
    exit_status: int | None = None
    # The message of a "fail <message>" from the worker (why it cannot boot).
    boot_error: str | None = None
    read_fd: int | None = None
    buffer: bytes = b""  # a partial line read from the control pipe
    # Its last counters (server_core.metrics.parse_snapshot), cumulative since it started.
    stats: dict[str, Any] | None = None

    @property
    def alive(self) -> bool:
        """Not reaped yet."""
        return self.state is not State.GONE


def transition(record: WorkerRecord, new: State) -> State:
    """Move ``record`` to ``new`` and return the old state; illegal moves raise."""
    old = record.state
    if new is old:
        return old
    if new not in _ALLOWED[old]:
        raise ValueError(f"worker {record.pid}: illegal transition {old.value} -> {new.value}")
    record.state = new
    return old


def is_current(record: WorkerRecord, floor: int) -> bool:
    """A worker that belongs in the target set: recent enough, not marked for replacement."""
    return record.generation >= floor and record.replace_reason is None


def doom_reason(record: WorkerRecord, floor: int, roll_reason: str = Reason.HUP.value) -> str | None:
    """Why a ready worker should be replaced, or None if it should stay."""
    if record.replace_reason is not None:
        return record.replace_reason
    if record.generation < floor:
        return roll_reason
    return None


@dataclass(frozen=True)
class Plan:
    """What the master should do now: spawn workers (with reasons), retire some."""

    spawn: tuple[str, ...] = ()
    retire: tuple[tuple[int, str], ...] = ()  # (pid, reason), oldest first


def plan(records: Iterable[WorkerRecord], *, target: int, floor: int, gap_reason: str,
         now: float, retry_at: float | None = None, max_surge: int = MAX_SURGE,
         roll_reason: str = Reason.HUP.value) -> Plan:
    """Decide what to spawn and whom to retire so that ``target`` current workers serve.

    ``floor`` is the oldest generation still counted as current (a HUP raises
    it). A worker marked for replacement, or older than ``floor``, keeps
    serving until a newer one is ready: planned replacements go ``max_surge``
    at a time, and a ready worker is retired only while the ready ones would
    still number at least ``target`` without it. Missing capacity (a crash, a
    TTIN, the first start) is spawned at once, with ``gap_reason``. No spawn
    happens before ``retry_at`` (backoff after a failed boot). A worker that
    failed to boot holds its slot until it is reaped and its failure judged
    (retry, abort the roll, give up), so a failure never spawns a twin at once.
    """
    def why(record: WorkerRecord) -> str | None:
        return doom_reason(record, floor, roll_reason)

    live = [r for r in records if r.state in (State.BOOTING, State.READY, State.FAILED)]
    serving = sorted((r for r in live if r.state is State.READY), key=lambda r: r.serial)
    booting = [r for r in live if r.state is not State.READY]
    current = sum(1 for r in live if is_current(r, floor))

    spawn: list[str] = []
    shortfall = target - current
    if shortfall > 0 and (retry_at is None or now >= retry_at):
        # Slots with nobody at all to serve them are filled at once; replacing
        # a worker that still serves waits for the surge budget.
        # Booting workers fill the empty slots first, then count against the
        # surge budget of planned replacements.
        empty = max(0, target - len(serving))
        gap = max(0, empty - len(booting))
        surge = max(0, max_surge - max(0, len(booting) - empty))
        count = min(shortfall, gap + surge)
        doomed = [why(r) for r in serving if why(r)]
        uncovered = doomed[max(0, len(booting) - empty):]
        for i in range(count):
            if i < gap:
                spawn.append(gap_reason)
            elif uncovered:
                spawn.append(str(uncovered.pop(0)))
            else:
                spawn.append(gap_reason)

    # Retire the excess of ready workers: marked/old ones first, then the oldest.
    excess = len(serving) - target
    retire: list[tuple[int, str]] = []
    if excess > 0:
        ranked = sorted(serving, key=lambda r: (why(r) is None, r.serial))
        for record in ranked[:excess]:
            retire.append((record.pid, why(record) or Reason.TTOU.value))
    return Plan(spawn=tuple(spawn), retire=tuple(retire))


def roll_pending(records: Iterable[WorkerRecord], floor: int) -> bool:
    """True while some live worker is older than ``floor`` (a roll is not done)."""
    return any(r.generation < floor for r in records if r.state in (State.BOOTING, State.READY))


def scale(target: int, delta: int) -> int:
    """The worker count after TTIN (+1) or TTOU (-1): never below one."""
    return max(1, target + delta)


def oldest_serving(records: Iterable[WorkerRecord]) -> WorkerRecord | None:
    """The oldest ready worker not already marked for replacement (TTOU's victim)."""
    candidates = [r for r in records if r.state is State.READY and r.replace_reason is None]
    return min(candidates, key=lambda r: r.serial, default=None)


def backoff_delay(failures: int, *, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds before retrying after ``failures`` consecutive failed boots (0 for none)."""
    if failures <= 0:
        return 0.0
    return min(cap, base * 2 ** (failures - 1))


class Verdict(str, enum.Enum):
    """What a worker's exit means to the master."""

    EXPECTED = "expected"  # it was told to stop, or the master is stopping
    CRASH = "crash"  # a ready worker died: replace it at once
    RETRY = "retry"  # a replacement failed to boot: retry after a backoff
    ABORT_ROLL = "abort-roll"  # a HUP's new worker failed to boot: keep the old generation
    GIVE_UP = "give-up"  # nothing ever served and a worker cannot boot: exit 3
    WAIT = "wait"  # as GIVE_UP, but --reload: show the error, wait for the next change


def exit_verdict(previous: State, *, ever_ready: bool, stopping: bool, in_roll: bool,
                 reloading: bool = False) -> Verdict:
    """Classify the exit of a worker that was in state ``previous``.

    At first start a worker that cannot boot means the app cannot start
    (import error, lifespan failure, boot timeout); retrying would loop
    forever, so the master gives up. Once something has served, a failure is
    retried with backoff while the healthy workers carry on — except the new
    worker of a roll (``in_roll``), whose failure stops the roll. Under
    ``--reload`` (``reloading``) the developer fixes the file instead: the
    master waits for the next change rather than exit.
    """
    if stopping:
        return Verdict.EXPECTED
    if previous in (State.BOOTING, State.FAILED):
        if not ever_ready:
            return Verdict.WAIT if reloading else Verdict.GIVE_UP
        return Verdict.ABORT_ROLL if in_roll else Verdict.RETRY
    if previous is State.READY:
        return Verdict.CRASH
    return Verdict.EXPECTED


def boot_error(record: WorkerRecord, boot_timeout: float) -> str:
    """The one-line reason a worker did not boot, for logs and the exit-3 message."""
    if record.boot_error:
        return record.boot_error
    if record.drain_reason == Reason.BOOT_TIMEOUT.value:
        return f"worker did not become ready within {boot_timeout:g}s"
    return f"worker exited with status {record.exit_status} before it was ready"


class Due(str, enum.Enum):
    """A deadline of one worker that has passed."""

    KILL = "kill"  # draining or failed past its kill moment: SIGKILL
    BOOT_TIMEOUT = "boot-timeout"  # booting past --timeout-worker-boot
    HEARTBEAT = "heartbeat"  # ready but silent past --timeout-worker-healthcheck


def due(records: Iterable[WorkerRecord], now: float, *, boot_timeout: float, heartbeat_timeout: float,
        supervising: bool = True) -> list[tuple[WorkerRecord, Due]]:
    """Every worker whose deadline has passed, and which one (health checks only while ``supervising``)."""
    out: list[tuple[WorkerRecord, Due]] = []
    for record in records:
        if record.kill_at is not None and now >= record.kill_at:
            out.append((record, Due.KILL))
        elif supervising and boot_expired(record, now, boot_timeout):
            out.append((record, Due.BOOT_TIMEOUT))
        elif supervising and heartbeat_expired(record, now, heartbeat_timeout):
            out.append((record, Due.HEARTBEAT))
    return out


def status_line(records: Iterable[WorkerRecord], generation: int, last_failure: str = "") -> str:
    """The one-line state of the pool (systemd ``STATUS=``)."""
    ready, total = counts(records)
    text = f"ready={ready} total={total} generation={generation}"
    return f"{text} last_failure={last_failure}" if last_failure else text


def boot_expired(record: WorkerRecord, now: float, timeout: float) -> bool:
    """A booting worker past --timeout-worker-boot."""
    return record.state is State.BOOTING and now - record.started_at >= timeout


def heartbeat_expired(record: WorkerRecord, now: float, timeout: float) -> bool:
    """A ready worker whose event loop has been silent for --timeout-worker-healthcheck."""
    if record.state is not State.READY:
        return False
    last = record.last_heartbeat if record.last_heartbeat is not None else record.ready_at
    return last is not None and now - last >= timeout


def memory_strikes(strikes: int, rss: int, limit: int) -> int:
    """The new count of consecutive over-limit samples (reset by one sample under it)."""
    return strikes + 1 if rss > limit else 0


def jittered_limit(limit: int | None, jitter: int, rng: random.Random | None = None) -> int | None:
    """A worker's own --limit-max-requests: the limit plus a random jitter in [0, jitter].

    Different limits keep workers started together from recycling together.
    """
    if not limit:
        return None
    extra = (rng or random).randint(0, jitter) if jitter > 0 else 0
    return limit + extra


def deadlines(records: Sequence[WorkerRecord], *, now: float, boot_timeout: float,
              heartbeat_timeout: float) -> list[float]:
    """Every moment at which some worker needs attention (for the selector timeout)."""
    out: list[float] = []
    for r in records:
        if r.state is State.BOOTING:
            out.append(r.started_at + boot_timeout)
        elif r.state is State.READY:
            last = r.last_heartbeat if r.last_heartbeat is not None else r.ready_at
            if last is not None:
                out.append(last + heartbeat_timeout)
        if r.kill_at is not None and r.state in (State.DRAINING, State.FAILED):
            out.append(r.kill_at)
    return out


def counts(records: Iterable[WorkerRecord]) -> tuple[int, int]:
    """(ready, total live) for logs and the systemd STATUS line."""
    ready = total = 0
    for r in records:
        if r.state is State.GONE:
            continue
        total += 1
        if r.state is State.READY:
            ready += 1
    return ready, total
