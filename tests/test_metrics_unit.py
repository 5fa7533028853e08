"""The counters' bookkeeping without processes: worker snapshots, the master's totals, actions."""

from __future__ import annotations

from daemon.actions import DONE, REFUSED, ROLLED_BACK, RUNNING, SUPERSEDED, Actions
from daemon.metrics import Totals
from server_core.control import PipeControl
from server_core.metrics import DURATION_BUCKETS, WorkerMetrics, parse_snapshot


def test_record_and_snapshot_round_trip() -> None:
    metrics = WorkerMetrics()
    metrics.connection_opened()
    metrics.record("GET", 200, 12, 0.003)
    metrics.record("GET", 404, 9, 0.2)
    metrics.record("BREW", 503, 0, 99.0)  # made-up method: "other"; past the last bound: +Inf
    metrics.websocket_opened()
    metrics.record("GET", 1200, 0, 0.003)  # not a 3-digit status: a server error, never an exception
    metrics.record("PUT", -1, 0, 0.003)
    stats = parse_snapshot(metrics.snapshot(total_requests=3, open_connections=4, tasks=3))
    assert stats is not None
    assert stats["requests"] == {("GET", 1): 1, ("GET", 3): 1, ("other", 4): 1, ("GET", 4): 1, ("PUT", 4): 1}
    assert stats["durations"][0] == 3 and stats["durations"][-1] == 1
    assert sum(stats["durations"]) == 5 and len(stats["durations"]) == len(DURATION_BUCKETS) + 1
    assert set(metrics.rows) == {"GET", "PUT", "other"}  # BREW was never cached under its own name
    assert stats["response_bytes"] == 21 and stats["total"] == 3
    assert stats["connections"] == 4 and stats["connections_total"] == 1
    assert stats["websockets"] == 1 and stats["in_flight"] == 2  # 3 tasks, one a WebSocket session


def test_a_malformed_snapshot_is_ignored() -> None:
    assert parse_snapshot("{") is None
    assert parse_snapshot('{"r": [], "d": [1]}') is None


def test_the_snapshot_fits_an_atomic_pipe_write() -> None:
    import select

    metrics = WorkerMetrics()
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "X"):
        for status in (101, 200, 301, 404, 500):
            metrics.record(method, status, 10**9, 1e6)
    line = b"stats " + metrics.snapshot(10**12, 10**6).encode() + b"\n"
    assert len(line) < select.PIPE_BUF


def test_stats_go_over_the_control_pipe() -> None:
    import os

    from server_core.control import parse_messages

    read, write = os.pipe()
    try:
        control = PipeControl(write)
        metrics = WorkerMetrics()
        metrics.record("POST", 201, 5, 0.01)
        control.heartbeat()
        control.stats(metrics.snapshot(1, 0))
        messages, rest = parse_messages(os.read(read, 65536))
        assert rest == b"" and [m.kind for m in messages] == ["hb", "stats"]
        assert parse_snapshot(messages[1].arg)["requests"] == {("POST", 1): 1}  # type: ignore[index]
    finally:
        os.close(read)
        os.close(write)


def test_totals_stay_monotonic_when_workers_go() -> None:
    def snap(gets: int, total: int) -> dict:
        metrics = WorkerMetrics()
        for _ in range(gets):
            metrics.record("GET", 200, 10, 0.001)
        stats = parse_snapshot(metrics.snapshot(total, 1, 1))
        assert stats is not None
        return stats

    totals = Totals()
    a, b = snap(3, 3), snap(2, 2)
    assert totals.combined([a, b])["requests"] == {("GET", 1): 5}
    totals.worker_exited(a, "hup")
    c = snap(1, 1)
    combined = totals.combined([b, c])
    assert combined["requests"] == {("GET", 1): 6} and combined["total"] == 6
    assert combined["response_bytes"] == 60 and combined["connections"] == 2  # gauges: the living only
    assert combined["in_flight"] == 2
    totals.worker_exited(None, "")  # a worker that never reported: a failed boot
    totals.worker_exited(b, "shutdown")  # not a restart
    totals.worker_exited(c, "ttou")  # not a restart either
    assert totals.restarts["hup"] == 1 and totals.restarts["boot-failed"] == 1
    assert "shutdown" not in totals.restarts and "ttou" not in totals.restarts
    assert totals.combined([])["requests"] == {("GET", 1): 6}


def test_actions_follow_their_roll() -> None:
    actions = Actions()
    first = actions.begin("reload", "corralctl")
    first.generation = 2
    second = actions.begin("reload", "signal")
    second.generation = 3
    actions.roll_ended(2, True, "", superseded=True)
    assert first.result == SUPERSEDED and first.by == second.id
    actions.roll_ended(3, False, "worker exited with status 3", superseded=False)
    assert second.result == ROLLED_BACK and "status 3" in second.reason
    refused = actions.begin("reload")
    actions.finish(refused, REFUSED, "bad key")
    actions.finish(refused, DONE)  # finished once only
    assert refused.result == REFUSED
    upgrade = actions.begin("upgrade")
    assert actions.running("upgrade") is upgrade and upgrade.result == RUNNING
    for _ in range(40):
        actions.begin("reload")
    assert len(actions.items) == 20 and actions.get(first.id) is None


def test_workers_never_load_prometheus_client() -> None:
    """The worker side is plain integers: prometheus_client is the master's, and only with --metrics-bind."""
    import subprocess
    import sys

    code = ("import sys, server_core.worker, server_core.http.protocol, daemon.arbiter, daemon.pool; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert WorkerMetrics.__slots__  # no per-instance dict on the hot path
