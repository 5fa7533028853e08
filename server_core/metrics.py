"""A worker's request counters: plain integers bumped on the hot path, shipped with the heartbeat.

:class:`WorkerMetrics` lives in ``ServerState.metrics``. The protocols call
:meth:`~WorkerMetrics.record` once per finished request and the
``connection_opened``/``connection_closed`` (and ``websocket_*``) pairs; each
is a few integer operations on one object: no lock (one thread, the event
loop), no Prometheus object, no allocation on the common path.

The worker sends :meth:`~WorkerMetrics.snapshot` with its heartbeat over the
control pipe (``stats <json>``); the numbers are cumulative since the worker
started, so a lost message loses nothing. The master keeps the last snapshot
of each live worker and folds it into its totals when the worker exits
(``daemon.metrics``), so every counter it exports stays monotonic across
worker replacement.

This module imports neither asyncio nor the application: the master may
import it for :func:`parse_snapshot` and the bucket bounds.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from typing import Any

# Upper bounds (seconds) of the request-duration histogram (Prometheus'
# defaults, plus 30 s and 60 s for slow endpoints); +Inf is implicit.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
                                       1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0)
FIRST_BOUND = DURATION_BUCKETS[0]
# Methods kept as their own label; anything else is counted as "other" (a
# client cannot blow up the master's label sets with made-up methods).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class WorkerMetrics:
    """Cumulative counters of one worker (since it started); gauges are read at snapshot time."""

    __slots__ = ("rows", "durations", "duration_sum", "response_bytes", "connections_total", "websockets",
                 "websockets_total")

    def __init__(self) -> None:
        # {method: [count by status // 100, 0..9]}: a str key (its hash is cached) and a list
        # index cost less than a (method, status) tuple key. Folded into 1xx..5xx for the master.
        self.rows: dict[str, list[int]] = {}
        # One slot per bucket bound plus +Inf: NOT cumulative here (cheaper to bump).
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.response_bytes = 0
        self.connections_total = 0
        self.websockets = 0  # open now
        self.websockets_total = 0

    # -- the hot path ----------------------------------------------------------

    def record(self, method: str, status: int, size: int, duration: float) -> None:
        """One finished request: its method, response status, body bytes sent and seconds taken.

        Call it once per response, whatever the outcome (the app's, a 4xx/5xx of the server, a
        499 for a client that left). It never raises.
        """
        row = self.rows.get(method)
        if row is None:
            row = self._row(method)
        try:
            row[status // 100] += 1
        except IndexError:  # not a 3-digit status: counted as a server error
            row[5] += 1
        if duration <= FIRST_BOUND:  # most requests: skip the bisect call
            self.durations[0] += 1
        else:
            self.durations[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.response_bytes += size

    def _row(self, method: str) -> list[int]:
        # Off the hot path: a method seen for the first time. Unknown methods share the
        # "other" row (and are never cached under their own name), so a client cannot grow
        # this dict, or the master's label sets, at will.
        if method not in METHODS:
            method = "other"
        row = self.rows.get(method)
        if row is None:
            row = self.rows[method] = [0] * 10
        return row

    def connection_opened(self) -> None:
        """A connection was accepted (open connections are ``len(state.connections)``)."""
        self.connections_total += 1

    def connection_closed(self) -> None:
        """A connection ended (nothing to count: kept so the protocols' calls come in pairs)."""

    def websocket_opened(self) -> None:
        self.websockets += 1
        self.websockets_total += 1

    def websocket_closed(self) -> None:
        self.websockets -= 1

    # -- reporting -------------------------------------------------------------

    def by_class(self) -> dict[tuple[str, int], int]:
        """Requests by (method, status class index 0..4: 1xx..5xx); odd statuses count as 5xx."""
        out: dict[tuple[str, int], int] = {}
        for method, row in self.rows.items():
            for hundred, count in enumerate(row):
                if count:
                    key = (method, hundred - 1 if 1 <= hundred <= 5 else 4)
                    out[key] = out.get(key, 0) + count
        return out

    @property
    def finished(self) -> int:
        return sum(sum(row) for row in self.rows.values())

    def snapshot(self, total_requests: int = 0, open_connections: int = 0, tasks: int = 0) -> str:
        """The compact JSON text sent to the master (well below PIPE_BUF).

        ``total_requests`` is ``ServerState.total_requests`` (request heads handed to the app,
        counted by the protocols anyway), ``open_connections`` ``len(ServerState.connections)``
        and ``tasks`` ``len(ServerState.tasks)`` (running ASGI calls; minus the open WebSocket
        sessions, the requests in flight): gauges read here cost the hot path nothing.
        """
        data = {
            "n": total_requests,
            "r": [[method, cls, count] for (method, cls), count in self.by_class().items()],
            "d": self.durations,
            "ds": round(self.duration_sum, 6),
            "b": self.response_bytes,
            "c": open_connections,
            "ct": self.connections_total,
            "w": self.websockets,
            "wt": self.websockets_total,
            "f": max(0, tasks - self.websockets),
        }
        return json.dumps(data, separators=(",", ":"))


def parse_snapshot(text: str) -> dict[str, Any] | None:
    """A worker's snapshot as a dict with checked types, or None when malformed (never raises)."""
    try:
        data = json.loads(text)
        requests = {}
        for method, cls, count in data["r"]:
            if not isinstance(method, str) or method not in METHODS | {"other"} or cls not in range(5):
                continue
            requests[(method, int(cls))] = int(count)
        durations = [int(x) for x in data["d"]]
        if len(durations) != len(DURATION_BUCKETS) + 1:
            return None
        return {
            "total": int(data.get("n", 0)), "requests": requests, "durations": durations, "duration_sum": float(data["ds"]),
            "response_bytes": int(data["b"]), "connections": int(data["c"]),
            "connections_total": int(data["ct"]), "websockets": int(data["w"]),
            "websockets_total": int(data["wt"]), "in_flight": int(data["f"]),
        }
    except (ValueError, TypeError, KeyError):
        return None
