"""The master's decisions as pure functions over fake worker records: no process, no clock."""

from __future__ import annotations

import random

import pytest

from daemon.workers import (
    BACKOFF_CAP,
    Due,
    Plan,
    State,
    Verdict,
    WorkerRecord,
    backoff_delay,
    boot_error,
    boot_expired,
    counts,
    deadlines,
    due,
    exit_verdict,
    heartbeat_expired,
    jittered_limit,
    memory_strikes,
    oldest_serving,
    plan,
    roll_pending,
    scale,
    status_line,
    transition,
)

_next_pid = iter(range(1000, 100000))


def worker(state: State = State.READY, generation: int = 1, serial: int | None = None,
           replace: str | None = None, started: float = 0.0) -> WorkerRecord:
    pid = next(_next_pid)
    record = WorkerRecord(pid=pid, serial=serial if serial is not None else pid, generation=generation,
                          started_at=started, replace_reason=replace)
    record.state = state
    if state is State.READY:
        record.ready_at = record.last_heartbeat = started + 1
    return record


def become_ready(record: WorkerRecord) -> None:
    transition(record, State.READY)
    record.ready_at = record.last_heartbeat = 1.0


def step(records: list[WorkerRecord], *, target: int, floor: int = 1, generation: int = 1,
         gap_reason: str = "crash") -> Plan:
    """Apply one plan as the arbiter would: spawn booting records, mark retired ones draining."""
    decision = plan(records, target=target, floor=floor, gap_reason=gap_reason, now=10.0)
    for _ in decision.spawn:
        records.append(worker(State.BOOTING, generation=generation))
    by_pid = {r.pid: r for r in records}
    for pid, _reason in decision.retire:
        transition(by_pid[pid], State.DRAINING)
    return decision


def ready_count(records: list[WorkerRecord]) -> int:
    return sum(1 for r in records if r.state is State.READY)


# -- state machine -------------------------------------------------------------

def test_transitions_follow_the_named_life() -> None:
    record = worker(State.BOOTING)
    assert transition(record, State.READY) is State.BOOTING
    transition(record, State.DRAINING)
    transition(record, State.GONE)
    assert not record.alive
    with pytest.raises(ValueError):
        transition(record, State.READY)


def test_a_ready_worker_cannot_go_back_to_booting_or_fail() -> None:
    record = worker(State.READY)
    for bad in (State.BOOTING, State.FAILED):
        with pytest.raises(ValueError):
            transition(record, bad)


# -- first start, crash, scale ---------------------------------------------------

def test_first_start_spawns_every_worker_at_once() -> None:
    decision = plan([], target=4, floor=1, gap_reason="start", now=0.0)
    assert decision.spawn == ("start",) * 4
    assert decision.retire == ()


def test_a_crash_is_replaced_at_once() -> None:
    records = [worker(), worker()]
    records[0].state = State.GONE
    decision = plan(records, target=2, floor=1, gap_reason="crash", now=0.0)
    assert decision.spawn == ("crash",)


def test_steady_state_does_nothing() -> None:
    assert plan([worker(), worker()], target=2, floor=1, gap_reason="x", now=0.0) == Plan()


def test_ttin_adds_one_and_ttou_retires_the_oldest() -> None:
    records = [worker(serial=1), worker(serial=2)]
    assert plan(records, target=scale(2, +1), floor=1, gap_reason="ttin", now=0).spawn == ("ttin",)
    victim = oldest_serving(records)
    assert victim is records[0]
    victim.replace_reason = "ttou"
    decision = plan(records, target=scale(2, -1), floor=1, gap_reason="x", now=0)
    assert decision.spawn == ()
    assert decision.retire == ((records[0].pid, "ttou"),)


def test_scale_never_goes_below_one() -> None:
    assert scale(1, -1) == 1
    assert scale(0, +1) == 1  # TTIN after WINCH brings one worker back


def test_excess_without_marks_retires_the_oldest() -> None:
    records = [worker(serial=3), worker(serial=1), worker(serial=2)]
    decision = plan(records, target=1, floor=1, gap_reason="x", now=0)
    assert [pid for pid, _ in decision.retire] == [records[1].pid, records[2].pid]


def test_target_zero_retires_everyone_and_spawns_nothing() -> None:
    records = [worker(replace="winch"), worker(replace="winch")]
    decision = plan(records, target=0, floor=1, gap_reason="x", now=0)
    assert decision.spawn == ()
    assert sorted(r for _, r in decision.retire) == ["winch", "winch"]


# -- the readiness-gated roll --------------------------------------------------------

@pytest.mark.parametrize("target", [1, 2, 4])
def test_hup_roll_is_one_at_a_time_and_never_below_capacity(target: int) -> None:
    records = [worker(generation=1) for _ in range(target)]
    floor = generation = 2
    rounds = 0
    spawned = retired = 0
    while any(r.generation < floor and r.state is State.READY for r in records):
        rounds += 1
        assert rounds < 20
        ready_before = ready_count(records)
        decision = step(records, target=target, floor=floor, generation=generation)
        booting = [r for r in records if r.state is State.BOOTING]
        assert len(booting) <= 1, "a roll starts one new worker at a time"
        assert ready_count(records) >= target, "capacity never drops below the target"
        if decision.retire:
            assert ready_before > target, "an old worker retires only once a new one is ready"
            assert {reason for _, reason in decision.retire} == {"hup"}
        spawned += len(decision.spawn)
        retired += len(decision.retire)
        for record in booting:
            become_ready(record)
    step(records, target=target, floor=floor, generation=generation)
    assert spawned == retired == target
    assert not roll_pending(records, floor)
    assert sum(1 for r in records if r.state is State.READY and r.generation == 2) == target


def test_a_new_worker_booting_is_not_doubled() -> None:
    records = [worker(), worker(), worker(State.BOOTING, generation=2)]
    assert plan(records, target=2, floor=2, gap_reason="x", now=0).spawn == ()


def test_roll_retires_the_oldest_old_worker_first() -> None:
    records = [worker(generation=1, serial=5), worker(generation=1, serial=2), worker(generation=2, serial=9)]
    decision = plan(records, target=2, floor=2, gap_reason="x", now=0)
    assert decision.retire == ((records[1].pid, "hup"),)


def test_a_failed_boot_holds_its_slot_until_reaped() -> None:
    # A boot-timed-out worker was SIGKILLed but not reaped yet: no twin is
    # spawned before its failure is judged (which may abort the roll).
    records = [worker(generation=1), worker(State.FAILED, generation=2)]
    assert plan(records, target=1, floor=2, gap_reason="x", now=0).spawn == ()


def test_the_roll_reason_names_the_replacements() -> None:
    records = [worker(generation=1)]
    decision = plan(records, target=1, floor=2, gap_reason="x", now=0, roll_reason="upgrade")
    assert decision.spawn == ("upgrade",)


def test_crash_during_roll_fills_the_gap_at_once_and_keeps_rolling() -> None:
    # target 2: one old still serving, one new booting, the other old just crashed.
    records = [worker(generation=1), worker(State.BOOTING, generation=2)]
    decision = plan(records, target=2, floor=2, gap_reason="crash", now=0)
    assert len(decision.spawn) == 1


# -- recycle: max-requests, memory, heartbeat ---------------------------------------------

@pytest.mark.parametrize("reason", ["max-requests", "memory"])
def test_recycle_starts_the_replacement_before_retiring(reason: str) -> None:
    records = [worker(serial=1, replace=reason), worker(serial=2)]
    decision = step(records, target=2)
    assert decision.spawn == (reason,)
    assert decision.retire == ()
    become_ready(records[-1])
    decision = step(records, target=2)
    assert decision.retire == ((records[0].pid, reason),)
    assert ready_count(records) == 2


def test_two_recycles_at_once_still_go_one_at_a_time() -> None:
    records = [worker(replace="max-requests"), worker(replace="max-requests")]
    assert len(plan(records, target=2, floor=1, gap_reason="x", now=0).spawn) == 1


def test_memory_debounce_needs_consecutive_samples() -> None:
    limit = 100
    strikes = 0
    for rss in (150, 150, 50, 150, 150):
        strikes = memory_strikes(strikes, rss, limit)
    assert strikes == 2  # the dip reset the count
    assert memory_strikes(strikes, 150, limit) == 3


def test_heartbeat_and_boot_deadlines() -> None:
    ready = worker(State.READY, started=0.0)  # ready at 1.0, last beat 1.0
    booting = worker(State.BOOTING, started=0.0)
    assert not heartbeat_expired(ready, now=3.9, timeout=3)
    assert heartbeat_expired(ready, now=4.0, timeout=3)
    assert not heartbeat_expired(booting, now=100, timeout=3), "boot has its own timeout"
    assert boot_expired(booting, now=60, timeout=60)
    assert not boot_expired(ready, now=600, timeout=60)
    moments = deadlines([ready, booting], now=0, boot_timeout=60, heartbeat_timeout=3)
    assert sorted(moments) == [4.0, 60.0]


def test_a_draining_worker_has_its_kill_deadline() -> None:
    record = worker(State.DRAINING)
    record.kill_at = 42.0
    assert deadlines([record], now=0, boot_timeout=1, heartbeat_timeout=1) == [42.0]


# -- boot failures: backoff and give-up ------------------------------------------------------

def test_backoff_doubles_and_is_capped() -> None:
    delays = [backoff_delay(n) for n in range(0, 12)]
    assert delays[:5] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert max(delays) == BACKOFF_CAP
    assert delays == sorted(delays)


def test_no_spawn_before_the_retry_moment() -> None:
    records = [worker()]
    assert plan(records, target=2, floor=1, gap_reason="retry", now=5.0, retry_at=6.0).spawn == ()
    assert plan(records, target=2, floor=1, gap_reason="retry", now=6.0, retry_at=6.0).spawn == ("retry",)


def test_backoff_never_blocks_retiring() -> None:
    records = [worker(), worker(), worker()]
    assert len(plan(records, target=2, floor=1, gap_reason="x", now=0, retry_at=99).retire) == 1


def test_give_up_only_before_anything_served() -> None:
    for previous in (State.BOOTING, State.FAILED):
        assert exit_verdict(previous, ever_ready=False, stopping=False, in_roll=False) is Verdict.GIVE_UP
        assert exit_verdict(previous, ever_ready=True, stopping=False, in_roll=False) is Verdict.RETRY


def test_under_reload_a_first_failure_waits_for_the_next_change() -> None:
    verdict = exit_verdict(State.BOOTING, ever_ready=False, stopping=False, in_roll=False, reloading=True)
    assert verdict is Verdict.WAIT


def test_a_failed_boot_in_a_roll_aborts_it() -> None:
    assert exit_verdict(State.BOOTING, ever_ready=True, stopping=False, in_roll=True) is Verdict.ABORT_ROLL


def test_exits_while_stopping_or_draining_are_expected_and_ready_ones_are_crashes() -> None:
    assert exit_verdict(State.BOOTING, ever_ready=False, stopping=True, in_roll=False) is Verdict.EXPECTED
    assert exit_verdict(State.DRAINING, ever_ready=True, stopping=False, in_roll=False) is Verdict.EXPECTED
    assert exit_verdict(State.READY, ever_ready=True, stopping=False, in_roll=False) is Verdict.CRASH


def test_boot_error_says_why() -> None:
    record = worker(State.FAILED)
    record.exit_status = 3
    assert boot_error(record, 60) == "worker exited with status 3 before it was ready"
    record.drain_reason = "boot-timeout"
    assert boot_error(record, 2.5) == "worker did not become ready within 2.5s"
    record.boot_error = "ModuleNotFoundError: No module named 'nope'"
    assert boot_error(record, 60) == record.boot_error


def test_due_names_each_passed_deadline() -> None:
    stuck = worker(State.READY, started=0.0)
    slow = worker(State.BOOTING, started=0.0)
    draining = worker(State.DRAINING)
    draining.kill_at = 5.0
    fine = worker(State.READY, started=9.0)
    found = due([stuck, slow, draining, fine], 10.0, boot_timeout=5, heartbeat_timeout=3)
    assert found == [(stuck, Due.HEARTBEAT), (slow, Due.BOOT_TIMEOUT), (draining, Due.KILL)]
    # While stopping only the kill deadlines matter.
    assert due([stuck, slow, draining], 10.0, boot_timeout=5, heartbeat_timeout=3,
               supervising=False) == [(draining, Due.KILL)]


# -- small helpers ------------------------------------------------------------------------

def test_jitter_stays_in_range_and_spreads() -> None:
    rng = random.Random(7)
    limits = {jittered_limit(50, 10, rng) for _ in range(200)}
    assert min(limits) >= 50 and max(limits) <= 60  # type: ignore[operator]
    assert len(limits) > 5
    assert jittered_limit(None, 10) is None
    assert jittered_limit(50, 0) == 50


def test_counts_ignore_the_gone() -> None:
    records = [worker(), worker(State.BOOTING), worker(State.DRAINING), worker(State.GONE)]
    assert counts(records) == (1, 3)
    assert status_line(records, 4) == "ready=1 total=3 generation=4"
    assert status_line(records, 4, "boot failed: x").endswith(" last_failure=boot failed: x")
