"""``corralctl``: talk to a running corral master over its ``--control-socket``.

    corralctl [-s PATH | --pid FILE] [--json] [--timeout S] COMMAND

Commands: ``status``, ``workers``, ``reload``, ``upgrade``, ``scale N|+N|-N``,
``stop [--quick]``, ``reopen-logs``. ``reload`` and ``upgrade`` wait for the
outcome and exit 1 with the reason when the reload is refused (invalid
configuration) or the new generation is rolled back; ``stop`` waits until the
master has exited. Exit statuses: 0 done, 1 the master said no (or the action
failed), 2 usage, 3 cannot reach the master, 4 timed out waiting.

The socket is ``-s PATH``, else ``$CORRAL_CONTROL_SOCKET`` (the variable that
also sets corral's own ``--control-socket``), else found from ``--pid FILE``:
the UNIX sockets the master with that PID holds that answer corralctl.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from daemon.actions import FINISHED, RUNNING, SUPERSEDED

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4
POLL = 0.2


class Unreachable(Exception):
    """The master does not answer on the socket."""


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one JSON line, read one JSON line back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise Unreachable(f"{path}: {exc.strerror or exc}") from None
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        raise Unreachable(f"{path}: the master closed the connection without an answer")
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unreachable(f"{path}: not a corral control socket (answered {data[:60]!r})") from None
    if not isinstance(answer, dict):
        raise Unreachable(f"{path}: unexpected answer {data[:60]!r}")
    return answer


def sockets_of(pid: int) -> list[str]:
    """Paths of the listening UNIX sockets process ``pid`` holds (Linux /proc)."""
    inodes = set()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    paths = []
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for line in table:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; flags 00010000 = listening
                if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
                    paths.append(fields[7])
    except OSError:
        return []
    return paths


def find_socket(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    env = os.environ.get("CORRAL_CONTROL_SOCKET")
    if env:
        return env
    if args.pid:
        try:
            with open(args.pid) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError) as exc:
            raise Unreachable(f"cannot read the PID file {args.pid}: {exc}") from None
        candidates = sockets_of(pid)
        # The control socket is the 0600 one; try those first, the others only if needed.
        candidates.sort(key=lambda p: _mode(p) != 0o600)
        for path in candidates:
            if _mode(path) != 0o600:
                continue
            try:
                if request(path, {"cmd": "ping"}, timeout=2.0).get("pid") == pid:
                    return path
            except Unreachable:
                continue
        raise Unreachable(f"the master (pid {pid}, from {args.pid}) has no control socket "
                          "(start corral with --control-socket PATH)")
    raise Unreachable("which master? give -s PATH (corral's --control-socket), --pid FILE, "
                      "or set CORRAL_CONTROL_SOCKET")


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return -1


# -- output ---------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1048576:.1f}M"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def describe_action(action: dict[str, Any] | None) -> str:
    if not action:
        return "none"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(action["started"]))
    text = f"{action['kind']} #{action['id']} ({action['origin']}, {when}): {action['result']}"
    return text + (f": {action['reason']}" if action.get("reason") else "")


def show_status(answer: dict[str, Any], verbose: bool) -> str:
    workers = answer["workers"]
    lines = [
        f"master      pid {answer['pid']}, up {_age(answer['uptime'])}"
        + (f" (upgraded {_age(answer['image_uptime'])} ago)" if answer.get("upgraded") else ""),
        f"app         {answer['app']}",
        f"generation  {answer['generation']}" + ("  (rolling)" if answer.get("rolling") else ""),
        f"workers     {workers['ready']} ready / {workers['wanted']} wanted ({workers['total']} running)",
        f"listeners   {', '.join(answer['listeners'])}",
        f"last action {describe_action(answer.get('last_action'))}",
    ]
    if answer.get("stopping"):
        lines.append("state       stopping")
    if answer.get("last_failure"):
        lines.append(f"last error  {answer['last_failure']}")
    settings = answer.get("settings", {})
    shown = sorted((name, item) for name, item in settings.items() if verbose or item["source"] != "default")
    if shown:
        lines.append("settings" + ("" if verbose else " (not default; --all for every one)"))
        rows = [["  option", "value", "from"]]
        rows += [[f"  --{name}", json.dumps(item["value"]), item["source"]] for name, item in shown]
        lines.append(table(rows))
    return "\n".join(lines)


def show_workers(answer: dict[str, Any]) -> str:
    rows = [["PID", "GEN", "STATE", "AGE", "REQUESTS", "IN-FLIGHT", "CONNS", "RSS", "CPU%", "HEARTBEAT"]]
    for w in answer["workers"]:
        state = w["state"] + (f" ({w['replacing']})" if w.get("replacing") else "")
        rows.append([str(w["pid"]), str(w["generation"]), state, _age(w["age"]), str(w["requests"]),
                     str(w["in_flight"]), str(w["connections"]), _mib(w["rss"]),
                     "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}",
                     "-" if w["heartbeat_age"] is None else f"{w['heartbeat_age']:.1f}s ago"])
    return table(rows)


# -- waiting for an action ------------------------------------------------------------------


def wait_action(path: str, started: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll until the action in ``started`` is finished, following supersession and an upgrade's re-exec."""
    action = started["action"]
    image = started["image"]
    end = time.monotonic() + timeout
    while True:
        if action["result"] in FINISHED and action["result"] != SUPERSEDED:
            return action
        if time.monotonic() > end:
            raise TimeoutError(f"{action['kind']} #{action['id']} still {action['result']} after {timeout:g}s")
        time.sleep(POLL)
        try:
            status = request(path, {"cmd": "status"})
        except Unreachable:
            continue  # the master is re-executing (upgrade): its socket answers again in a moment
        if status.get("image") != image:
            # An upgrade re-executed the master: the new image records the rest of it.
            handed = [a for a in status.get("actions", []) if a["kind"] == "upgrade" and a["origin"] == "handoff"]
            if action["kind"] == "upgrade" and handed:
                action = handed[-1]
                image = status["image"]
                continue
            if action["kind"] == "upgrade":
                continue
            raise Unreachable("the master was re-executed (an upgrade) while this reload was running; "
                              "check 'corralctl status'")
        found = {a["id"]: a for a in status.get("actions", [])}
        current = found.get(action["id"])
        if current is None:
            raise Unreachable(f"the master forgot {action['kind']} #{action['id']}")
        if current["result"] == SUPERSEDED and current.get("by"):
            action = found.get(current["by"], current)
            continue
        action = current


def show_action(action: dict[str, Any]) -> str:
    if action["result"] == "done":
        gen = f" (generation {action['generation']})" if action.get("generation") else ""
        return f"{action['kind']} done{gen}: every worker runs the new " + (
            "code and configuration" if action["kind"] == "upgrade" else "configuration")
    return f"{action['kind']} {action['result']}: {action.get('reason') or 'no reason given'}"


# -- main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corralctl", description="Control a running corral master over its "
                                     "--control-socket.")
    parser.add_argument("-s", "--socket", metavar="PATH", help="the master's --control-socket")
    parser.add_argument("--pid", metavar="FILE", help="find the control socket of the master in this PID file")
    parser.add_argument("--json", action="store_true", help="print the master's JSON answer (for scripts)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="how long reload, upgrade and stop wait for the outcome (default 300)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = sub.add_parser("status", help="master, generation, workers, last reload/upgrade, settings")
    status.add_argument("--all", action="store_true", help="show every setting, defaults included")
    sub.add_parser("workers", help="one row per worker: pid, generation, state, age, requests, memory...")
    sub.add_parser("reload", help="HUP: re-read the configuration and roll the workers; waits for the outcome")
    sub.add_parser("upgrade", help="USR2: binary upgrade of master, app and configuration; waits for the outcome")
    scale = sub.add_parser("scale", help="set the number of workers: N, +N or -N")
    scale.add_argument("n", metavar="N|+N|-N")
    stop = sub.add_parser("stop", help="graceful stop (TERM); --quick: QUIT")
    stop.add_argument("--quick", action="store_true", help="workers exit at once")
    stop.add_argument("--no-wait", action="store_true", help="do not wait for the master to exit")
    sub.add_parser("reopen-logs", help="USR1: reopen log files in the master and every worker")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``corralctl`` console script."""
    sys.exit(run(sys.argv[1:] if argv is None else argv))


def run(argv: list[str]) -> int:
    # "scale -1": a negative number is an argument, not an option.
    argv = list(argv)
    if "scale" in argv:
        at = argv.index("scale")
        if at + 1 < len(argv) and argv[at + 1].startswith("-") and argv[at + 1][1:].isdigit():
            argv.insert(at + 1, "--")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = find_socket(args)
        return _command(path, args)
    except Unreachable as exc:
        print(f"corralctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimeoutError as exc:
        print(f"corralctl: timed out: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT


def _emit(args: argparse.Namespace, answer: dict[str, Any], text: str) -> None:
    print(json.dumps(answer, indent=2) if args.json else text)


def _command(path: str, args: argparse.Namespace) -> int:
    command = args.command
    payload: dict[str, Any] = {"cmd": command}
    if command == "scale":
        payload["n"] = args.n
    if command == "stop":
        payload["quick"] = args.quick
    answer = request(path, payload)
    if not answer.get("ok"):
        if args.json:
            print(json.dumps(answer, indent=2))
        print(f"corralctl: {command}: {answer.get('error', 'refused')}", file=sys.stderr)
        return EXIT_FAILED
    if command == "status":
        _emit(args, answer, show_status(answer, args.all))
    elif command == "workers":
        _emit(args, answer, show_workers(answer))
    elif command in ("reload", "upgrade"):
        action = wait_action(path, answer, args.timeout)
        ok = FINISHED.get(action["result"], False)
        if args.json:
            print(json.dumps({"ok": ok, "action": action}, indent=2))
        elif ok:
            print(show_action(action))
        if not ok:
            print(f"corralctl: {show_action(action)}", file=sys.stderr)
        return EXIT_OK if ok else EXIT_FAILED
    elif command == "scale":
        workers = answer["workers"]
        _emit(args, answer, f"workers: {workers['before']} -> {workers['wanted']}")
    elif command == "stop":
        if not args.no_wait:
            _wait_gone(path, int(answer["pid"]), args.timeout)
        _emit(args, answer, f"master {answer['pid']} stopped" if not args.no_wait
              else f"master {answer['pid']} stopping")
    elif command == "reopen-logs":
        _emit(args, answer, f"logs reopened (master and {answer['workers']} workers)")
    return EXIT_OK


def _wait_gone(path: str, pid: int, timeout: float) -> None:
    """Until the master stops answering on its socket (it removes it at exit) and its PID is gone."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            answer = request(path, {"cmd": "ping"}, timeout=2.0)
            gone = answer.get("pid") != pid
        except Unreachable:
            gone = True
        if gone and not _alive(pid):
            return
        time.sleep(POLL)
    raise TimeoutError(f"master {pid} still running after {timeout:g}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our test harness's child, say) has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["main", "run", "request", "RUNNING"]
