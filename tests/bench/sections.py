"""Optional sections written by other benchmark modules, run when their file exists.

``tests/bench/zero_downtime.py`` (rolling restarts, scaling, max-requests and kills under
load, corral against the alternatives) is a separate module with its own command line. It is run as ``python -m tests.bench.<name>`` in a subprocess with a deadline, so a
crash or a hang there cannot take the main suite down. Its standard output (markdown) goes
into the report as it is; when its ``--help`` offers ``--json PATH`` the file it writes is kept
in the JSON results, and when it offers ``--quick`` that is passed on for a quick run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

OPTIONAL: dict[str, str] = {
    "zero_downtime": "Zero downtime: restarts and scaling under load",
}
"""Modules run as whole sections. (``ws_echo`` is a load client: the ``ws`` scenario drives it.)"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _flags(module: str) -> str:
    """The module's ``--help`` text ('' if it has none or fails)."""
    try:
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                              timeout=60, cwd=ROOT, env=_env(), check=False)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` in its own session; on timeout SIGTERM it (so its own cleanup runs), then
    SIGKILL its whole session, and return None."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM of the runner): take the section's servers down with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_section(name: str, *, quick: bool, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``tests.bench.<name>`` if present; return its status, markdown and JSON data."""
    title = OPTIONAL.get(name, name)
    if not (HERE / f"{name}.py").exists():
        return {"name": name, "title": title, "status": "absent", "markdown": "", "data": None}
    module = f"tests.bench.{name}"
    help_text = _flags(module)
    argv = [sys.executable, "-m", module]
    json_path: Path | None = None
    if "--quick" in help_text and quick:
        argv.append("--quick")
    if "--json" in help_text:
        json_path = workdir / f"{name}.json"
        json_path.unlink(missing_ok=True)
        argv += ["--json", str(json_path)]
    started = time.perf_counter()
    done = _run(argv, timeout_s)
    if done is None:
        return {"name": name, "title": title, "status": "failed", "argv": argv,
                "error": f"did not finish within {timeout_s:.0f}s (stopped)", "markdown": "", "data": None}
    data: Any = None
    if json_path is not None and json_path.exists():
        try:
            data = json.loads(json_path.read_text())
        except ValueError as exc:
            data = {"unreadable": str(exc)}
    status = "ok" if done.returncode == 0 else "failed"
    return {
        "name": name, "title": title, "status": status, "argv": argv, "returncode": done.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "error": None if status == "ok" else done.stderr[-3000:],
        "markdown": done.stdout.strip(), "stderr_tail": done.stderr[-3000:], "data": data,
    }
