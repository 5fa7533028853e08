"""The master's metrics: totals that outlive workers, Prometheus exposition, /livez and /readyz.

Each worker sends its cumulative counters with its heartbeat
(``server_core.metrics``); the master keeps the last snapshot of every live
worker on its record, and :class:`Totals` adds a worker's last snapshot to
the totals of the dead when it is reaped. A counter exported here is the
dead workers' totals plus the live workers' snapshots, so it never goes down
when a worker is replaced (HUP, recycle, crash). Gauges (open connections,
WebSockets, in flight) are the live workers' only.

The exposition is ``prometheus_client``'s (a custom collector in its own
``CollectorRegistry``, ``generate_latest``), imported only when
``--metrics-bind`` is set. The listen backlog is read from the kernel on
every scrape: ``TCP_INFO`` on a listening TCP socket gives the accept queue's
current length (``tcpi_unacked``) and its limit (``tcpi_sacked``); for a UNIX
socket, ``sock_diag`` (``UNIX_DIAG_RQLEN``) gives the same two numbers.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

from server_core.metrics import DURATION_BUCKETS, STATUS_CLASSES

# Worker exits counted as restarts, shown even at zero.
RESTART_REASONS = ("crash", "heartbeat", "memory", "max-requests", "hup", "upgrade", "boot-failed")
# Exits that are not restarts: the master stops, or fewer workers are wanted.
NOT_RESTARTS = frozenset({"shutdown", "quit", "ttou", "winch"})
COUNTER_KEYS = ("duration_sum", "response_bytes", "connections_total", "websockets_total", "total")
# The totals of the dead cross the USR2 re-exec in the environment (only the exec sees it).
TOTALS_VAR = "CORRAL_METRICS_TOTALS"


def _drop_totals() -> None:
    os.environ.pop(TOTALS_VAR, None)


os.register_at_fork(after_in_child=_drop_totals)


class Totals:
    """Counters of workers that are gone, and restarts by reason (all monotonic)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.durations = [0] * (len(DURATION_BUCKETS) + 1)
        self.counters: dict[str, float] = dict.fromkeys(COUNTER_KEYS, 0)
        self.restarts: dict[str, int] = dict.fromkeys(RESTART_REASONS, 0)
        self.spawned = 0

    def worker_exited(self, stats: dict[str, Any] | None, reason: str) -> None:
        """Fold a reaped worker's last counters in; count its exit as a restart unless the master stops."""
        if stats:
            for key, count in stats["requests"].items():
                self.requests[key] = self.requests.get(key, 0) + count
            self.durations = [a + b for a, b in zip(self.durations, stats["durations"], strict=True)]
            for key in COUNTER_KEYS:
                self.counters[key] += stats[key]
        reason = reason or "boot-failed"
        if reason not in NOT_RESTARTS:
            self.restarts[reason] = self.restarts.get(reason, 0) + 1
        # Kept ready for an exec in place (USR2): a few hundred bytes, once per worker exit.
        os.environ[TOTALS_VAR] = self.to_json()

    def to_json(self) -> str:
        return json.dumps({"requests": [[m, c, n] for (m, c), n in self.requests.items()],
                           "durations": self.durations, "counters": self.counters,
                           "restarts": self.restarts}, separators=(",", ":"))

    def take_inherited(self, keep: bool) -> None:
        """Continue from the totals the previous image left (``keep``: this image was re-executed)."""
        text = os.environ.pop(TOTALS_VAR, None)
        if not keep or not text:
            return
        try:
            data = json.loads(text)
            requests = {(str(m), int(c)): int(n) for m, c, n in data["requests"]}
            durations = [int(x) for x in data["durations"]]
            counters = {key: float(data["counters"][key]) for key in COUNTER_KEYS}
            restarts = {str(k): int(v) for k, v in data["restarts"].items()}
        except (ValueError, TypeError, KeyError):
            return
        if len(durations) == len(self.durations):
            self.requests, self.durations, self.counters = requests, durations, counters
            self.restarts.update(restarts)

    def combined(self, live: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
        """Totals of the dead plus the snapshots of the living."""
        requests = dict(self.requests)
        durations = list(self.durations)
        counters = dict(self.counters)
        gauges = {"connections": 0, "websockets": 0, "in_flight": 0}
        for stats in live:
            if not stats:
                continue
            for key, count in stats["requests"].items():
                requests[key] = requests.get(key, 0) + count
            durations = [a + b for a, b in zip(durations, stats["durations"], strict=True)]
            for key in COUNTER_KEYS:
                counters[key] += stats[key]
            for key in gauges:
                gauges[key] += stats[key]
        return {"requests": requests, "durations": durations, **counters, **gauges}


# -- the listen backlog ---------------------------------------------------------

TCP_INFO_UNACKED = 24  # offsetof(struct tcp_info, tcpi_unacked): 8 bytes of u8 fields, then rto, ato, snd_mss, rcv_mss
SOCK_DIAG_BY_FAMILY = 20
NETLINK_SOCK_DIAG = 4
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
TCP_LISTEN = 10
NLM_F_REQUEST = 1
NLMSG_ERROR = 2


def tcp_backlog(sock: socket.socket) -> tuple[int, int] | None:
    """(connections waiting in the accept queue, the queue's limit) of a listening TCP socket (Linux)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return struct.unpack_from("=II", info, TCP_INFO_UNACKED)  # type: ignore[return-value]
    except (OSError, AttributeError, struct.error):
        return None


def unix_backlog(sock: socket.socket) -> tuple[int, int] | None:
    """The same for a listening UNIX socket, through netlink ``sock_diag`` (Linux), else None."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        return None
    try:
        # The kernel answers within send(): never wait for it (the master's loop must not block).
        nl.setblocking(False)
        # struct unix_diag_req: family, protocol, pad16, states, ino, show, cookie[2]
        req = struct.pack("=BBHIII2I", socket.AF_UNIX, 0, 0, 1 << TCP_LISTEN, inode, UDIAG_SHOW_RQLEN, 0xFFFFFFFF,
                          0xFFFFFFFF)
        header = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
        nl.send(header + req)
        data = nl.recv(8192)
        length, kind = struct.unpack_from("=IH", data, 0)
        if kind == NLMSG_ERROR or length > len(data):
            return None
        # struct unix_diag_msg (16 bytes) after the 16-byte header, then attributes.
        offset = 32
        while offset + 4 <= length:
            attr_len, attr_type = struct.unpack_from("=HH", data, offset)
            if attr_len < 4:
                break
            if attr_type == UNIX_DIAG_RQLEN:
                return struct.unpack_from("=II", data, offset + 4)  # type: ignore[return-value]
            offset += (attr_len + 3) & ~3
        return None
    except (OSError, struct.error):
        return None
    finally:
        nl.close()


def listen_backlog(sock: socket.socket) -> tuple[int, int] | None:
    """(queued, limit) of any listening stream socket, or None where the kernel does not say."""
    if sock.family == socket.AF_UNIX:
        return unix_backlog(sock)
    return tcp_backlog(sock)


# -- exposition ----------------------------------------------------------------------


class Collector:
    """A prometheus_client collector reading the arbiter's state at scrape time."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:  # noqa: C901 - one metric after the other
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        arbiter = self.arbiter
        totals: Totals = arbiter.pool.totals
        records = list(arbiter.pool.records.values())
        data = totals.combined(record.stats for record in records)

        requests = CounterMetricFamily("corral_requests", "HTTP requests served, by method and status class.",
                                       labels=["method", "status"])
        for (method, cls), count in sorted(data["requests"].items()):
            requests.add_metric([method, STATUS_CLASSES[cls]], count)
        yield requests
        yield CounterMetricFamily("corral_requests_started", "Requests whose head was parsed and handed to "
                                  "the application (every protocol).", value=data["total"])

        buckets = []
        running = 0
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), data["durations"], strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        yield HistogramMetricFamily("corral_request_duration_seconds", "Time from request head to the end of "
                                    "the response.", buckets=buckets, sum_value=data["duration_sum"])
        yield CounterMetricFamily("corral_response_body_bytes", "Response body bytes sent.",
                                  value=data["response_bytes"])
        yield CounterMetricFamily("corral_connections", "Connections accepted by workers.",
                                  value=data["connections_total"])
        yield CounterMetricFamily("corral_websockets", "WebSocket sessions opened.", value=data["websockets_total"])
        yield GaugeMetricFamily("corral_connections_open", "Connections open in the workers now.",
                                value=data["connections"])
        yield GaugeMetricFamily("corral_websockets_open", "WebSocket sessions open now.", value=data["websockets"])
        yield GaugeMetricFamily("corral_requests_in_flight", "Requests being served now.", value=data["in_flight"])

        from daemon.workers import State

        by_state = GaugeMetricFamily("corral_workers", "Worker processes by state.", labels=["state"])
        for state in (State.BOOTING, State.READY, State.DRAINING, State.FAILED):
            by_state.add_metric([state.value], sum(1 for r in records if r.state is state))
        yield by_state
        yield GaugeMetricFamily("corral_workers_wanted", "Workers the master keeps ready.", value=arbiter.pool.target)
        restarts = CounterMetricFamily("corral_worker_restarts", "Workers replaced or lost, by reason.",
                                       labels=["reason"])
        for reason, count in sorted(totals.restarts.items()):
            restarts.add_metric([reason], count)
        yield restarts

        now = time.monotonic()
        heartbeat = GaugeMetricFamily("corral_worker_heartbeat_age_seconds", "Seconds since each worker's "
                                      "last heartbeat.", labels=["pid"])
        rss = GaugeMetricFamily("corral_worker_resident_memory_bytes", "Resident memory of each worker.",
                                labels=["pid"])
        for record in records:
            if record.last_heartbeat is not None:
                heartbeat.add_metric([str(record.pid)], round(now - record.last_heartbeat, 3))
            size = worker_rss(record.pid)
            if size is not None:
                rss.add_metric([str(record.pid)], size)
        yield heartbeat
        yield rss

        backlog = GaugeMetricFamily("corral_listen_backlog", "Connections waiting in the kernel's accept queue "
                                    "of each listener (scale out when it stays above zero).", labels=["listener"])
        limit = GaugeMetricFamily("corral_listen_backlog_limit", "Length limit of each listener's accept queue.",
                                  labels=["listener"])
        for listener in arbiter.listeners:
            found = listen_backlog(listener.sock)
            if found is not None:
                backlog.add_metric([listener.address], found[0])
                limit.add_metric([listener.address], found[1])
        yield backlog
        yield limit
        yield GaugeMetricFamily("corral_generation", "Configuration generation of new workers.",
                                value=arbiter.generation)
        yield GaugeMetricFamily("corral_master_start_time_seconds", "When this master image started (Unix time).",
                                value=arbiter.image_started)


def worker_rss(pid: int) -> int | None:
    """Resident set size of a process in bytes (psutil), or None."""
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def exposition(arbiter: Any) -> bytes:
    """The Prometheus text of everything above."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(arbiter))  # type: ignore[arg-type]
    return generate_latest(registry)


# -- the HTTP side -----------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def ready(arbiter: Any) -> tuple[bool, str]:
    """/readyz: at least one worker ready and the master not stopping (nor in --shutdown-delay)."""
    if arbiter.state.leaving:
        return False, "stopping"
    from daemon.workers import counts

    if counts(arbiter.pool.records.values())[0] < 1:
        return False, "no worker ready"
    return True, "ready"


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head else body)


def http_handler(arbiter: Any) -> Any:
    """The sidecar handler for the metrics listener: GET /metrics, /livez, /readyz."""
    def handle(buffer: bytes, _conn: Any) -> bytes | None:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            end = buffer.find(b"\n\n")
            if end < 0:
                return None
        line = buffer.split(b"\n", 1)[0].strip().decode("latin-1", "replace")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return response(400, b"bad request\n")
        method, target = parts[0], parts[1].split("?", 1)[0]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return response(405, b"method not allowed\n")
        if target == "/metrics":
            return response(200, exposition(arbiter), CONTENT_TYPE, head)
        if target == "/livez":
            # Answered by the master's loop itself: an answer means it turns.
            return response(200, b"ok\n", head=head)
        if target == "/readyz":
            ok, why = ready(arbiter)
            return response(200 if ok else 503, (why + "\n").encode(), head=head)
        return response(404, b"not found: try /metrics, /livez, /readyz\n", head=head)

    return handle


def open_metrics(arbiter: Any, address: str) -> Any:
    """Bind (or take over after USR2) ``--metrics-bind`` and serve it from ``arbiter``'s loop."""
    import structlog

    from daemon.config import parse_bind
    from daemon.sidecar import METRICS_FD_VAR, Server, bind_tcp, bind_unix, keep_across_exec, take_inherited

    kind, where = parse_bind(address, "--metrics-bind")
    unix_path = os.path.abspath(where) if kind == "unix" else None

    def same(sock: socket.socket) -> bool:
        if unix_path is not None:
            from daemon.sidecar import unix_path_of

            return sock.family == socket.AF_UNIX and unix_path_of(sock) == unix_path
        return sock.family != socket.AF_UNIX and sock.getsockname()[1] == where[1]

    sock = take_inherited(METRICS_FD_VAR, same)
    if sock is None:
        sock = bind_unix(unix_path, int(arbiter.config.uds_mode)) if unix_path else bind_tcp(*where)
    keep_across_exec(METRICS_FD_VAR, sock)
    server = Server(arbiter, sock, http_handler(arbiter), name="metrics", max_request=8192, timeout=5.0,
                    max_clients=64, unix_path=unix_path)
    arbiter.watch(server)
    from daemon.listeners import describe

    structlog.get_logger("corral.master").info("metrics_listening", address=describe(sock))
    return server
