"""Where a worker spends its time under load: py-spy on one worker while wrk drives it.

    python -m tests.bench.profile [--server corral|uvicorn] [--scenario hello] [--http h11|zttp]
                                  [--h2] [--duration 10] [--rate 499] [--top 25]

The server runs as in the benchmark (pinned to CPU 0, one worker, access log off); wrk and
py-spy share CPU 1. py-spy samples the worker without pausing it (``--nonblocking``) and writes
collapsed stacks (``bench-results/profile-<server>-<scenario>.txt``: open it in speedscope or
feed it to flamegraph.pl). This module then prints the functions with the most samples on top
of the stack (self) and anywhere in the stack (inclusive), line numbers folded together, so
the cost of the hot path can be read in the terminal. ``--h2`` profiles HTTP/2 (``--http zttp
--http2``, hello driven by ``h2load -c16 -m10`` instead of wrk). Needs py-spy (``pip install py-spy``)
and permission to ptrace the worker (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.bench import h2load, wrk
from tests.bench.measure import SCENARIOS, LoadSettings, wrk_script
from tests.bench.servers import ROOT, ServerProcess, ServerSpec, ServerStartError

RESULTS = ROOT / "bench-results"
_LINE_NUMBER = re.compile(r":\d+\)$")
# Frames that start an event loop: everything above them (the interpreter start, the CLI, the
# master's fork) is in every sample and says nothing about the request path.
_LOOP_ENTRY = re.compile(
    r"^(\w+\.)?(run|run_forever|run_until_complete) \((.*loops\.py|asyncio/runners\.py|"
    r"asyncio/base_events\.py|uvloop/__init__\.py)\)$"
)


def py_spy_path() -> str | None:
    """py-spy beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def fold(frame: str) -> str:
    """``handle (server_core/http/protocol.py:120)`` → ``handle (server_core/http/protocol.py)``."""
    return _LINE_NUMBER.sub(")", frame.strip())


def summarize(collapsed: str) -> tuple[Counter[str], Counter[str], int]:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [fold(f) for f in stack.split(";") if f.strip()]
        entries = [i for i, frame in enumerate(frames) if _LOOP_ENTRY.match(frame)]
        if entries:
            frames = frames[entries[-1] + 1:] or frames[-1:]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def _table(title: str, counts: Counter[str], total: int, top: int) -> str:
    lines = [f"{title}", f"{'share':>7}  {'samples':>8}  function"]
    for frame, count in counts.most_common(top):
        lines.append(f"{count / total:>7.1%}  {count:>8}  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile one worker under load and print where its samples fall."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("corral", "uvicorn"), default="corral")
    parser.add_argument("--scenario", choices=[n for n, s in SCENARIOS.items() if s.kind == "http"], default="hello")
    parser.add_argument("--http", choices=("httptools", "h11", "zttp"), default="httptools")
    parser.add_argument("--h2", action="store_true",
                        help="HTTP/2: --http zttp --http2, loaded by h2load -c16 -m10 (hello only)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load and sampling (default 10)")
    parser.add_argument("--rate", type=int, default=499, help="py-spy samples per second (default 499)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--top", type=int, default=25, help="functions listed per table (default 25)")
    parser.add_argument("--native", action="store_true",
                        help="py-spy --native: C/Zig frames too (zttp, uvloop); pauses the worker per sample")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1", help="CPU list of wrk and py-spy (default 1)")
    args = parser.parse_args(argv)

    spy = py_spy_path()
    if spy is None:
        print("tests.bench.profile: py-spy is not installed (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    scenario = SCENARIOS[args.scenario]
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = RESULTS / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    if args.h2:
        if args.scenario != "hello":
            parser.error("--h2 profiles the hello scenario only")
        args.http = "zttp"
        scenario = SCENARIOS["h2"]
    suffix = ("-h2" if args.h2 else "") or (f"-{args.http}" if args.http != "httptools" else "")
    out = RESULTS / f"profile-{args.server}-{args.scenario}{suffix}.txt"
    load = LoadSettings(duration_s=args.duration, connections=args.connections, wrk_cpus=args.load_cpus)
    script = wrk_script(scenario, workdir)
    spec = ServerSpec(args.server, http=args.http, cpus=args.server_cpus, h2=args.h2)

    def drive(duration_s: float) -> int:
        """Load the server for ``duration_s``; return the requests completed."""
        if args.h2:
            # Runs of a fixed count (3700 streams per connection: corral says GOAWAY after 3712),
            # one after another on new connections until the time is up.
            done, end = 0, time.perf_counter() + duration_s
            while True:
                figures, _ = h2load.run(server.url, duration_s=duration_s, cpus=load.wrk_cpus,
                                        requests=h2load.CLIENTS * h2load.REQUESTS_PER_CONNECTION)
                done += int(figures["requests"])
                if time.perf_counter() >= end:
                    return done
        result, _ = wrk.run(server.url, connections=load.connections, duration_s=duration_s, script=script,
                            cpus=load.wrk_cpus)
        return result.requests

    server = ServerProcess(spec, scenario.app_attr, workdir / "logs")
    try:
        server.start(timeout=load.start_timeout_s)
        drive(1)
        tree = server.processes()
        worker = tree[1] if len(tree) > 1 else tree[0]
        sampler = subprocess.Popen(
            wrk.pinned([spy, "record", "--pid", str(worker.pid), "--duration", str(args.duration),
                        "--rate", str(args.rate), "--format", "raw", "--native" if args.native else "--nonblocking",
                        "--output", str(out)],
                       args.load_cpus),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)  # let py-spy attach before the load starts
        cpu_before = server.cpu_seconds()
        wall = time.perf_counter()
        requests = drive(args.duration)
        wall = time.perf_counter() - wall
        cpu = server.cpu_seconds() - cpu_before
        _, spy_err = sampler.communicate(timeout=args.duration + 60)
    except (ServerStartError, wrk.WrkError, h2load.H2loadError, subprocess.TimeoutExpired) as exc:
        print(f"tests.bench.profile: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    if not out.exists():
        print(f"tests.bench.profile: py-spy wrote nothing:\n{spy_err}", file=sys.stderr)
        return 1
    own, inclusive, total = summarize(out.read_text())
    print(f"{spec.label}, {scenario.title}: {requests} requests, {requests / wall:,.0f} req/s, "
          f"{cpu / max(requests, 1) * 1e6:.1f} CPU µs/req while sampled (py-spy adds a little); "
          f"{total} samples of worker {worker.pid}; stacks in {out}")
    if total:
        print()
        print(_table("self (on top of the stack):", own, total, args.top))
        print()
        print(_table("inclusive (anywhere in the stack below the event loop):", inclusive, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
