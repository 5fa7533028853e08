"""Logs end to end: the real `corral` CLI, its master and workers (app: tests/apps/log_app.py)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, Corral, wait_until

ETC = ROOT / "etc"
APP = "log_app:app"


def records(text: str) -> list[dict[str, Any]]:
    """The JSON log records in ``text``: with --log-format json every line is one."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
        else:
            assert not line.strip(), f"not a JSON log line: {line!r}"
    return found


def stderr_records(proc: Corral) -> list[dict[str, Any]]:
    proc.output()  # flushes our copies of the files
    return records(proc.err_path.read_text(errors="replace"))


def file_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # The last line may be mid-write when polled; only complete lines count.
    text = path.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def get(proc: Corral, path: str) -> httpx.Response:
    # A fresh connection per request, so the kernel spreads them over the workers.
    with httpx.Client(base_url=proc.url, timeout=10) as client:
        return client.get(path, headers={"connection": "close"})


def test_json_access_lines_app_logs_and_lifecycle_events(corral: Callable[..., Corral]) -> None:
    proc = corral(APP, "--workers", "2", "--log-format", "json")
    assert get(proc, "/bytes?7").content == b"x" * 7
    assert get(proc, "/applog?zz").text == "ok"
    assert get(proc, "/missing?a=1").status_code == 404

    def access() -> list[dict[str, Any]]:
        lines = [r for r in stderr_records(proc) if r["logger"] == "corral.access"]
        return lines if {"/bytes?7", "/applog?zz", "/missing?a=1"} <= {r["path"] for r in lines} else []

    lines = wait_until(access, 20, "three access lines", alive=proc.dead)
    by_path = {r["path"]: r for r in lines}
    everything = stderr_records(proc)
    for record in everything:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record["timestamp"]), record
        assert {"timestamp", "level", "logger", "event", "pid"} <= set(record), record

    bytes_line = by_path["/bytes?7"]
    assert (bytes_line["event"], bytes_line["level"], bytes_line["method"], bytes_line["status"],
            bytes_line["size"], bytes_line["http_version"]) == ("request", "info", "GET", 200, 7, "1.1")
    assert isinstance(bytes_line["duration_ms"], float) and 0 <= bytes_line["duration_ms"] < 10_000
    assert re.match(r"^127\.0\.0\.1:\d+$", bytes_line["client"])
    assert (by_path["/missing?a=1"]["status"], by_path["/missing?a=1"]["size"]) == (404, 9)
    # Access lines come from workers, never from the master.
    assert all(r["pid"] != proc.pid for r in lines)

    (app_line,) = [r for r in everything if r["logger"] == "log_app"]
    assert (app_line["level"], app_line["event"], app_line["user_id"]) == ("warning", "app_message zz", 42)

    master = [r for r in everything if r["logger"] == "corral.master"]
    spawned = [r for r in master if r["event"] == "worker_spawned"]
    ready = [r for r in master if r["event"] == "worker_ready"]
    assert len(spawned) >= 2 and len(ready) >= 2
    # `pid` is always the process that wrote the line (the master); `worker` names the worker.
    assert all(r["pid"] == proc.pid for r in spawned + ready)
    assert all(isinstance(r["worker"], int) and isinstance(r["generation"], int) for r in spawned + ready)
    assert {r["worker"] for r in ready} >= {r["pid"] for r in lines}

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    events = [(r["logger"], r["event"]) for r in stderr_records(proc)]
    assert ("corral.master", "worker_draining") in events


def test_console_access_line(corral: Callable[..., Corral]) -> None:
    proc = corral(APP, "--no-use-colors")
    get(proc, "/bytes?3")
    proc.wait_log('"GET /bytes?3 HTTP/1.1" 200 3B ')
    line = next(line for line in proc.output().splitlines() if "/bytes?3" in line)
    assert re.search(r'127\.0\.0\.1:\d+ - "GET /bytes\?3 HTTP/1\.1" 200 3B \d+\.\d\dms \[corral\.access\] pid=\d+$',
                     line), line
    assert "\x1b[" not in proc.output()


def test_every_access_line_whole_and_counted_through_shutdown(corral: Callable[..., Corral]) -> None:
    """Many concurrent keep-alive requests over 2 workers (lines batched per loop pass), then TERM at once:
    every request has exactly one whole access line."""
    import concurrent.futures

    proc = corral(APP, "--workers", "2", "--log-format", "json")
    per_client, clients = 150, 8

    def client(index: int) -> None:
        with httpx.Client(base_url=proc.url, timeout=10) as http:
            for i in range(per_client):
                assert http.get(f"/bytes?{index * per_client + i}").status_code == 200

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0
    lines = [r for r in stderr_records(proc)  # every line parses
             if r["logger"] == "corral.access" and r["path"].startswith("/bytes")]
    assert sorted(r["size"] for r in lines) == list(range(per_client * clients))


def test_no_access_log_writes_no_access_lines(corral: Callable[..., Corral]) -> None:
    proc = corral(APP, "--no-access-log", "--log-format", "json")
    for _ in range(5):
        assert get(proc, "/bytes?2").status_code == 200
    get(proc, "/applog?after")  # one worker: logged after the requests above finished
    wait_until(lambda: any(r["logger"] == "log_app" for r in stderr_records(proc)), 20, "the app's log line",
               alive=proc.dead)
    assert [r for r in stderr_records(proc) if r["logger"] == "corral.access"] == []


def rewritten_config(tmp_path: Path, name: str, access_log: Path, *, everything_to_file: bool = False) -> Path:
    """etc/<name> with the access file moved into tmp_path (optionally every logger into that file)."""
    text = (ETC / name).read_text()
    if name.endswith(".ini"):
        text = text.replace("args = ('access.log',)", f"args = ({str(access_log)!r},)")
        if everything_to_file:
            text = text.replace("handlers = stderr", "handlers = access_file")
    elif name.endswith(".json"):
        config = json.loads(text)
        config["handlers"]["access_file"]["filename"] = str(access_log)
        if everything_to_file:
            config["loggers"]["corral"]["handlers"] = ["access_file"]
        text = json.dumps(config)
    else:
        text = text.replace("filename: access.log", f"filename: {access_log}")
        if everything_to_file:
            text = text.replace("handlers: [stderr]", "handlers: [access_file]")
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["logging.json", "logging.ini", "logging.yaml"])
def test_log_config_example_files(corral: Callable[..., Corral], tmp_path: Path, name: str) -> None:
    if name.endswith(".yaml"):
        import yaml  # noqa: F401  (a test dependency)
    access_log = tmp_path / "access.log"
    config = rewritten_config(tmp_path, name, access_log)
    proc = corral(APP, "--workers", "2", "--log-config", str(config))
    for size in (1, 2, 3):
        get(proc, f"/bytes?{size}")

    def bytes_lines() -> list[dict[str, Any]] | None:
        lines = [r for r in file_records(access_log) if r.get("path", "").startswith("/bytes")]
        return lines if len(lines) >= 3 else None

    lines = wait_until(bytes_lines, 20, "access lines in the file", alive=proc.dead)
    assert sorted(r["size"] for r in lines) == [1, 2, 3]
    assert all(r["logger"] == "corral.access" and r["event"] == "request" for r in lines)
    # Lifecycle events go to stderr, rendered by the file's console formatter.
    proc.wait_log("worker_ready")
    assert "[corral.master]" in proc.output()
    assert "/bytes?" not in proc.output()


def test_uvicorns_own_logging_config(corral: Callable[..., Corral], tmp_path: Path) -> None:
    """uvicorn.config.LOGGING_CONFIG as a --log-config file: its AccessFormatter unpacks five args."""
    import uvicorn.config as uvicorn_config
    config = tmp_path / "uvicorn-logging.json"
    config.write_text(json.dumps(uvicorn_config.LOGGING_CONFIG))
    proc = corral(APP, "--workers", "2", "--log-config", str(config))
    for size in (1, 2, 3):
        assert get(proc, f"/bytes?{size}").status_code == 200
    assert get(proc, "/missing").status_code == 404

    def access_lines() -> list[str] | None:
        # Wait for the last request's line: the fixture's readiness probe
        # adds a line of its own, so a count alone can be reached too early.
        lines = [line for line in proc.out_path.read_text(errors="replace").splitlines() if " - " in line]
        return lines if any("/missing" in line for line in lines) else None

    lines = wait_until(access_lines, 20, "the access lines on stdout", alive=proc.dead)
    # uvicorn's access format, exactly as uvicorn prints it (no colours: not a terminal).
    for size in (1, 2, 3):
        assert any(re.fullmatch(rf'INFO:     127\.0\.0\.1:\d+ - "GET /bytes\?{size} HTTP/1\.1" 200 OK', line)
                   for line in lines), lines
    assert any(line.endswith('"GET /missing HTTP/1.1" 404 Not Found') for line in lines), lines
    # uvicorn.error's configuration (the "default" formatter on stderr) drives corral.error.
    proc.wait_log("Started server process")
    err = proc.err_path.read_text(errors="replace")
    assert re.search(r"^INFO:     Started server process \[\d+\]$", err, re.M), err
    assert "Logging error" not in proc.output() and "Traceback" not in proc.output()


def test_bad_log_config_exits_2(corral: Callable[..., Corral], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    proc = corral(APP, "--log-config", str(bad), wait=False)
    assert proc.wait_exit() == 2
    assert f"--log-config {bad}" in proc.output() and "invalid JSON" in proc.output()


def test_usr1_reopens_the_moved_file_in_master_and_workers(corral: Callable[..., Corral], tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    config = rewritten_config(tmp_path, "logging.json", access_log, everything_to_file=True)
    proc = corral(APP, "--workers", "2", "--log-config", str(config))
    sent = 0

    def request() -> None:
        nonlocal sent
        assert get(proc, f"/bytes?{sent}").status_code == 200
        sent += 1

    def worker_pids(lines: list[dict[str, Any]]) -> set[int]:
        return {r["pid"] for r in lines if r["logger"] == "corral.access" and r["path"].startswith("/bytes")}

    # Both workers have written to the original file.
    def both_workers_in(path: Path) -> bool:
        request()
        return len(worker_pids(file_records(path))) >= 2

    wait_until(lambda: both_workers_in(access_log), 30, "access lines from both workers", alive=proc.dead)

    rotated = tmp_path / "access.log.1"
    os.rename(access_log, rotated)  # logrotate's move...
    request()  # ...written to the moved file: nobody has reopened yet
    proc.signal(signal.SIGUSR1)

    # The master reopens and says so in the new file; every worker then writes there.
    wait_until(lambda: any(r["event"] == "logs_reopened" and r["logger"] == "corral.master"
                           for r in file_records(access_log)), 20, "the master's logs_reopened in the new file",
               alive=proc.dead)
    wait_until(lambda: both_workers_in(access_log), 30, "access lines from both workers in the new file",
               alive=proc.dead)

    # No line lost: every request is in exactly one of the two files.
    def all_logged() -> list[int] | None:
        sizes = [r["size"] for r in file_records(rotated) + file_records(access_log)
                 if r["logger"] == "corral.access" and r["path"].startswith("/bytes")]
        return sizes if len(sizes) >= sent else None

    sizes = wait_until(all_logged, 20, f"{sent} access lines in the two files", alive=proc.dead)
    assert sorted(sizes) == list(range(sent))
    assert worker_pids(file_records(rotated))  # the old file kept what was written before the reopen


def test_log_level_trace_logs_asgi_messages(corral: Callable[..., Corral]) -> None:
    proc = corral(APP, "--log-level", "trace", "--log-format", "json")
    get(proc, "/bytes?4")

    def traced() -> list[dict[str, Any]]:
        return [r for r in stderr_records(proc) if r["level"] == "trace" and "/bytes" in r["event"]]

    lines = wait_until(traced, 20, "TRACE lines about the request", alive=proc.dead)
    assert all(r["logger"].startswith("corral.") and r["pid"] != proc.pid for r in lines)
    # The same run at info has none.
    quiet = corral(APP, "--log-format", "json")
    get(quiet, "/bytes?4")
    wait_until(lambda: any(r["logger"] == "corral.access" and r["path"] == "/bytes?4" for r in stderr_records(quiet)),
               20, "the access line", alive=quiet.dead)
    assert not [r for r in stderr_records(quiet) if r["level"] in ("trace", "debug")]
