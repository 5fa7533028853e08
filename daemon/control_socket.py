"""``--control-socket``: the master answers ``corralctl`` on a UNIX socket, one JSON line each way.

A request is one line ``{"cmd": "status"}`` (``workers``, ``reload``,
``upgrade``, ``scale`` with ``"n": "3" | "+1" | "-1"``, ``stop`` with
``"quick": true``, ``reopen-logs``, ``action`` with ``"id"``, ``ping``); the
answer is one line ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``,
then the master closes the connection. The socket is mode 0600 and only a
peer with the master's user (or root) is answered.

``reload`` and ``upgrade`` do what HUP and USR2 do and answer at once with
the action's id (``daemon.actions``); ``corralctl`` then asks ``status``
until that action has finished, so a client waits without the master ever
holding anything open for it (an upgrade re-executes the master: a held
connection would not survive it, the listening socket does).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

import structlog

from daemon import actions
from daemon.sidecar import (
    CONTROL_FD_VAR,
    Connection,
    Server,
    SidecarError,
    bind_unix,
    keep_across_exec,
    take_inherited,
    unix_path_of,
)
from daemon.workers import State, counts

log = structlog.get_logger("corral.master")

MODE = 0o600
MAX_REQUEST = 4096
SECRET_OPTIONS = frozenset({"ssl-keyfile-password"})
READ_ONLY = frozenset({"ping", "status", "workers", "action"})


def open_control(arbiter: Any, path: str) -> Server:
    """Bind (or take over after USR2) the control socket and serve it from ``arbiter``'s loop."""
    path = os.path.abspath(path)
    sock = take_inherited(CONTROL_FD_VAR, lambda s: s.family == socket.AF_UNIX and unix_path_of(s) == path)
    if sock is None:
        sock = bind_unix(path, MODE)
    keep_across_exec(CONTROL_FD_VAR, sock)
    server = Server(arbiter, sock, ControlHandler(arbiter), name="control", max_request=MAX_REQUEST,
                    unix_path=path)
    arbiter.watch(server)
    log.info("control_socket", path=path)
    return server


def peer_allowed(sock: socket.socket) -> bool:
    """Root or the master's own user (the file's mode already says so; a root-owned master may be reached by root)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return True
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (0, os.geteuid())


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def setting_source(raw: str) -> str:
    """``flag``, ``env:VAR``, ``file:PATH``, ``default`` or ``daemon.run()`` from ``Config.sources``."""
    if raw == "command line":
        return "flag"
    if raw == "default":
        return "default"
    if raw.endswith("()"):
        return raw
    if raw.isupper() or raw.startswith(("CORRAL_", "UVICORN_")):
        return f"env:{raw}"
    return f"file:{raw}"


class ControlHandler:
    """Turn one JSON request into one JSON answer, acting on the arbiter."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.cpu: dict[int, tuple[float, float]] = {}  # pid -> (monotonic, cpu seconds) of the last look

    def __call__(self, buffer: bytes, conn: Connection) -> bytes | None:
        if b"\n" not in buffer:
            return None
        if not peer_allowed(conn.sock):
            return self._encode({"ok": False, "error": "permission denied"})
        try:
            request = json.loads(buffer.split(b"\n", 1)[0])
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ValueError("expected an object with a 'cmd'")
        except ValueError as exc:
            return self._encode({"ok": False, "error": f"bad request: {exc}"})
        cmd = request["cmd"].replace("_", "-")
        method = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if method is None:
            return self._encode({"ok": False, "error": f"unknown command {cmd!r}"})
        try:
            answer = method(request)
        except ValueError as exc:
            answer = {"ok": False, "error": str(exc)}
        # What changes something is logged; the polling of a waiting corralctl is not.
        (log.debug if cmd in READ_ONLY else log.info)("control_command", cmd=cmd, ok=answer.get("ok"),
                                                      error=answer.get("error"))
        return self._encode(answer)

    @staticmethod
    def _encode(answer: dict[str, Any]) -> bytes:
        return json.dumps(answer, separators=(",", ":"), default=str).encode() + b"\n"

    # -- commands ------------------------------------------------------------------

    def cmd_ping(self, _request: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "image": self.arbiter.image_id}

    def cmd_status(self, _request: dict[str, Any]) -> dict[str, Any]:
        a = self.arbiter
        ready, total = counts(a.pool.records.values())
        scheme = "https" if a.config.ssl_certfile else "http"
        settings = {}
        for name, value in a.config.values.items():
            shown = "***" if name in SECRET_OPTIONS and value else _jsonable(value)
            settings[name] = {"value": shown, "source": setting_source(a.config.sources.get(name, "default"))}
        last = a.pool.actions.last
        return {
            "ok": True, "pid": os.getpid(), "image": a.image_id,
            "uptime": round(time.time() - a.process_started, 3),
            "image_uptime": round(time.time() - a.image_started, 3),
            "upgraded": any(item.origin == "handoff" for item in a.pool.actions.items),
            "generation": a.generation, "app": _jsonable(a.config.app),
            "listeners": [lst.url(scheme) for lst in a.listeners],
            "workers": {"ready": ready, "total": total, "wanted": a.pool.target},
            "stopping": a.state.leaving,
            "rolling": a.pool.roll is not None,
            "last_failure": a.pool.last_failure,
            "last_action": last.as_dict() if last is not None else None,
            "actions": [item.as_dict() for item in a.pool.actions.items],
            "settings": settings,
        }

    def cmd_action(self, request: dict[str, Any]) -> dict[str, Any]:
        action = self.arbiter.pool.actions.get(int(request.get("id", 0)))
        if action is None:
            return {"ok": False, "error": "no such action", "image": self.arbiter.image_id}
        return {"ok": True, "action": action.as_dict(), "image": self.arbiter.image_id}

    def cmd_workers(self, _request: dict[str, Any]) -> dict[str, Any]:
        import psutil

        now, rows = time.monotonic(), []
        for record in sorted(self.arbiter.pool.records.values(), key=lambda r: r.serial):
            stats = record.stats or {}
            rss = cpu = None
            try:
                proc = psutil.Process(record.pid)
                rss = proc.memory_info().rss
                times = proc.cpu_times()
                used = times.user + times.system
                before = self.cpu.get(record.pid)
                if before is not None and now - before[0] >= 0.1:
                    cpu = 100.0 * (used - before[1]) / (now - before[0])
                else:  # first look: the average over its life
                    cpu = 100.0 * used / max(0.001, time.time() - proc.create_time())
                self.cpu[record.pid] = (now, used)
            except psutil.Error:
                pass
            rows.append({
                "pid": record.pid, "generation": record.generation, "state": record.state.value,
                "age": round(now - record.started_at, 3),
                "requests": stats.get("total", 0), "in_flight": stats.get("in_flight", 0),
                "connections": stats.get("connections", 0), "websockets": stats.get("websockets", 0),
                "rss": rss, "cpu_percent": None if cpu is None else round(cpu, 1),
                "heartbeat_age": None if record.last_heartbeat is None else round(now - record.last_heartbeat, 3),
                "replacing": record.replace_reason or record.drain_reason,
            })
        live = {record.pid for record in self.arbiter.pool.records.values()}
        for pid in list(self.cpu):
            if pid not in live:
                del self.cpu[pid]
        return {"ok": True, "workers": rows}

    def cmd_reload(self, _request: dict[str, Any]) -> dict[str, Any]:
        action = self.arbiter.request_reload(origin="corralctl")
        return {"ok": True, "action": action.as_dict(), "image": self.arbiter.image_id}

    def cmd_upgrade(self, _request: dict[str, Any]) -> dict[str, Any]:
        action = self.arbiter.request_upgrade(origin="corralctl")
        return {"ok": True, "action": action.as_dict(), "image": self.arbiter.image_id}

    def cmd_scale(self, request: dict[str, Any]) -> dict[str, Any]:
        a = self.arbiter
        text = str(request.get("n", "")).strip()
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"expected N, +N or -N, got {text!r}") from None
        wanted = a.pool.target + number if text[:1] in "+-" else number
        if wanted < 1:
            raise ValueError(f"at least one worker (asked for {wanted})")
        if a.state.leaving:
            raise ValueError("the master is stopping")
        before = a.pool.target
        while a.pool.target < wanted:
            a.on_scale_up()
        while a.pool.target > wanted:
            a.on_scale_down()
        return {"ok": True, "workers": {"before": before, "wanted": a.pool.target}}

    def cmd_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        quick = bool(request.get("quick"))
        if quick:
            self.arbiter.on_quit()
        else:
            self.arbiter.on_stop()
        return {"ok": True, "pid": os.getpid(), "mode": "quit" if quick else "term",
                "shutdown_delay": self.arbiter.config.shutdown_delay}

    def cmd_reopen_logs(self, _request: dict[str, Any]) -> dict[str, Any]:
        self.arbiter.on_reopen()
        return {"ok": True, "workers": sum(1 for r in self.arbiter.pool.records.values() if r.state is not State.GONE)}


__all__ = ["open_control", "SidecarError", "actions"]
