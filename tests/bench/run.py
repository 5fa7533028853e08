"""``make bench``: corral against uvicorn, the bare ceiling and (when installed) granian.

Usage::

    python -m tests.bench.run [--quick] [--repeat N] [--duration S] [--only hello,json,ws,h2]
                              [--servers corral,uvicorn] [--http httptools,h11,zttp] [--json out.json]

For every repetition, every scenario and every server configuration, one server tree is started
on a free port under ``taskset -c 0``, warmed up, loaded by ``taskset -c 1 wrk`` and stopped.
Repetitions are interleaved (rep 1 of everything, then rep 2…) so a slow phase of a shared
machine hits every server alike. The ``ws`` scenario runs when the
``tests/bench/ws_echo.py`` client exists, the ``h2`` scenario (HTTP/2 hello, ``h2load``) when
h2load and zttp are installed. granian runs beside corral and uvicorn in every HTTP/1.1
scenario. Then time to first 200 (1 and 4 workers), memory of 4-worker trees and the optional
``zero_downtime`` section run. The markdown report goes to stdout and
``bench-results/latest.md``; every raw figure to ``bench-results/latest.json``.
See docs/BENCHMARKS.md for what each column means.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from tests.bench import h2load, probes, report, sections, wrk, ws_load
from tests.bench.measure import SCENARIOS, LoadSettings, Scenario, measure
from tests.bench.servers import (
    POLL_S,
    ROOT,
    ServerSpec,
    granian_path,
    gunicorn_has_asgi,
    hypercorn_installed,
    zttp_installed,
)

RESULTS = ROOT / "bench-results"
FAMILIES = ("corral", "uvicorn", "ceiling", "granian", "gunicorn", "hypercorn")
PARSERS = ("httptools", "h11", "zttp")


def plan(scenarios: Sequence[Scenario], families: Sequence[str], *, server_cpus: str | None,
         multi_cpus: str | None, parsers: Sequence[str] = PARSERS) -> list[tuple[Scenario, ServerSpec]]:
    """Every (scenario, server configuration) to measure, in the order they run. ``parsers``
    limits the HTTP/1.1 rows of corral and uvicorn (httptools, h11, zttp); the HTTP/2 rows are
    chosen with the ``h2`` scenario."""
    cases: list[tuple[Scenario, ServerSpec]] = []
    have_granian = granian_path() is not None
    have_gunicorn = gunicorn_has_asgi()
    have_zttp = zttp_installed()
    for scenario in scenarios:
        if scenario.kind == "h2":
            if have_zttp and h2load.h2load_path() is not None:
                specs = [ServerSpec("corral", http="zttp", h2=True, cpus=server_cpus),
                         ServerSpec("uvicorn", http="zttp", h2=True, cpus=server_cpus)]
                if have_granian:
                    specs.append(ServerSpec("granian", http="-", h2=True, cpus=server_cpus))
                if hypercorn_installed():
                    specs.append(ServerSpec("hypercorn", http="-", h2=True, cpus=server_cpus))
                cases += [(scenario, spec) for spec in specs if spec.family in families]
            continue
        if scenario.kind == "ws":
            if ws_load.available():
                specs = [ServerSpec("corral", cpus=server_cpus), ServerSpec("uvicorn", cpus=server_cpus),
                         ServerSpec("corral", ws="wsproto", cpus=server_cpus),
                         ServerSpec("uvicorn", ws="wsproto", cpus=server_cpus)]
                cases += [(scenario, spec) for spec in specs if spec.family in families]
            continue
        specs = [ServerSpec("corral", cpus=server_cpus), ServerSpec("uvicorn", cpus=server_cpus)]
        if have_granian:  # the compiled reference of issue 16: in every HTTP/1.1 scenario
            specs.append(ServerSpec("granian", http="-", cpus=server_cpus))
        if scenario.name == "hello":
            # The ceiling answers hello only; gunicorn's asgi worker is a reference on the headline case.
            specs.append(ServerSpec("ceiling", http="-", cpus=server_cpus))
            if have_gunicorn:
                specs.append(ServerSpec("gunicorn", http="-", cpus=server_cpus))
        specs += [ServerSpec("corral", http="h11", cpus=server_cpus),
                  ServerSpec("uvicorn", http="h11", cpus=server_cpus)]
        if have_zttp:
            specs += [ServerSpec("corral", http="zttp", cpus=server_cpus),
                      ServerSpec("uvicorn", http="zttp", cpus=server_cpus)]
        if scenario.name == "hello":
            specs += [ServerSpec("corral", access_log=True, cpus=server_cpus),
                      ServerSpec("uvicorn", access_log=True, cpus=server_cpus)]
        if scenario.name != "headers":  # the same app as hello: its 2-worker rows say the same
            specs += [ServerSpec("corral", workers=2, cpus=multi_cpus),
                      ServerSpec("uvicorn", workers=2, cpus=multi_cpus)]
        cases += [(scenario, spec) for spec in specs
                  if spec.family in families and (spec.http not in PARSERS or spec.http in parsers)]
    return cases


PROBE_WORKERS = 4
"""Workers of the memory probe and of the second start-up probe (issue 16's 4-worker rows)."""
PROBE_FAMILIES = ("corral", "uvicorn", "granian", "gunicorn")


def probe_specs(families: Sequence[str], workers: int, cpus: str | None) -> list[ServerSpec]:
    """The start-up and memory probes' configurations: corral, uvicorn, granian and gunicorn
    (``-k asgi``) when installed and selected, with ``workers`` workers each."""
    specs = []
    for family in PROBE_FAMILIES:
        if family not in families or (family == "granian" and granian_path() is None) or (
                family == "gunicorn" and not gunicorn_has_asgi()):
            continue
        specs.append(ServerSpec(family, http="httptools" if family in ("corral", "uvicorn") else "-",
                                workers=workers, cpus=cpus))
    return specs


def _cpu_set(cpus: str) -> set[int]:
    """``"0,2-3"`` → ``{0, 2, 3}`` (taskset's list syntax)."""
    found: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def _cpus(value: str, unpinned: list[str]) -> str | None:
    """A taskset CPU list, or None for 'none' or for CPUs this process may not use (noted)."""
    if value.lower() in ("", "none", "-"):
        return None
    try:
        wanted = _cpu_set(value)
    except ValueError:
        raise SystemExit(f"tests.bench.run: bad CPU list {value!r} (taskset syntax: 0 or 0,1 or 0-3)") from None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    if not wanted <= allowed:
        unpinned.append(f"CPU list {value} is not available here (allowed: {sorted(allowed)}): left unpinned.")
        return None
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat of 2 s, 2 start-ups")
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per run, whole seconds (default 5)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up load (default 1)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (default 64)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"scenarios, comma-separated (default {','.join(SCENARIOS)})")
    parser.add_argument("--servers", default=",".join(FAMILIES),
                        help=f"server families, comma-separated (default {','.join(FAMILIES)})")
    parser.add_argument("--http", default=",".join(PARSERS),
                        help="HTTP/1.1 implementations of the corral and uvicorn rows, comma-separated "
                             f"(default {','.join(PARSERS)}; the HTTP/2 rows are the h2 scenario)")
    parser.add_argument("--h2-clients", type=int, default=h2load.CLIENTS,
                        help=f"h2load connections of the h2 scenario (default {h2load.CLIENTS})")
    parser.add_argument("--h2-streams", type=int, default=h2load.STREAMS,
                        help=f"h2load concurrent streams per connection (default {h2load.STREAMS})")
    parser.add_argument("--h2-requests", type=int, default=None,
                        help="requests per h2 run (default 3700 per connection, under corral's GOAWAY at 3712 and zttp's 4096 streams "
                             "per connection; 0: run for --duration instead)")
    parser.add_argument("--server-cpus", default="0", help="taskset CPU list of the server (default 0)")
    parser.add_argument("--multi-cpus", default="0",
                        help="CPU list of 2-worker servers (default 0: a scheduling check; 'none' to unpin)")
    parser.add_argument("--wrk-cpus", default="1", help="taskset CPU list of wrk (default 1)")
    parser.add_argument("--startup-runs", type=int, default=None, help="start-ups per server (default 5)")
    parser.add_argument("--no-load", action="store_true", help="skip the load runs")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up probe")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probe")
    parser.add_argument("--no-sections", action="store_true", help="skip the zero_downtime section")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="raw results file")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "latest.md", help="markdown report file")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    args.startup_runs = args.startup_runs or (2 if args.quick else 5)
    if args.h2_requests is None:
        args.h2_requests = args.h2_clients * h2load.REQUESTS_PER_CONNECTION // (2 if args.quick else 1)
    unknown = [s for s in args.only.split(",") if s and s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    bad = [f for f in args.servers.split(",") if f and f not in FAMILIES]
    if bad:
        parser.error(f"unknown server(s) {', '.join(bad)}; choose from {', '.join(FAMILIES)}")
    bad = [p for p in args.http.split(",") if p and p not in PARSERS]
    if bad:
        parser.error(f"unknown --http {', '.join(bad)}; choose from {', '.join(PARSERS)}")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return "FAILED: " + (row["error"] or "").strip().splitlines()[0][:160]
    text = (f"{row['cpu_us_per_req']:.1f} µs/req, {row['rps']:,.0f} req/s, "
            f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
    return text + (f" — {row['error']}" if row["error"] else "")


def run_load(cases: Sequence[tuple[Scenario, ServerSpec]], load: LoadSettings, repeat: int,
             workdir: Path, runs: list[dict[str, Any]]) -> None:
    """Every case ``repeat`` times, repetitions interleaved; appends one raw dict per run to ``runs``
    (as it goes, so an interrupted suite still reports what it measured)."""
    total = len(cases) * repeat
    for rep in range(1, repeat + 1):
        for scenario, spec in cases:
            _progress(f"[{len(runs) + 1}/{total}] rep {rep} {scenario.name} {spec.label} …")
            row = measure(spec, scenario, load, workdir, rep)
            runs.append(row)
            _progress(f"    {_describe(row)}")


def _notes(settings: dict[str, Any], families: Sequence[str], load_before: float,
           load_after: float) -> list[str]:
    server, multi, load = settings["server_cpus"], settings["multi_cpus"], settings["wrk_cpus"]
    if multi is not None and multi == server and len(_cpu_set(multi)) == 1:
        multi_note = ("both workers share one core, so they check that a second worker costs little CPU per "
                      "request and scheduling stays fair — they cannot show more throughput.")
    else:
        multi_note = "the workers may spread over several cores (compare CPU per request, not req/s, with 1 worker)."
    notes = [
        f"Servers run pinned to CPU {server or 'none'} (master and workers together), wrk to CPU "
        f"{load or 'none'}. The 2-worker rows are pinned to CPU {multi or 'none'}: " + multi_note,
        f"The {PROBE_WORKERS}-worker start-up and memory probes are pinned to CPU {multi or 'none'} (the 1-worker "
        f"start-up to CPU {server or 'none'}); start-up is polled every {POLL_S * 1e3:g} ms; memory is read after "
        f"{probes.MEMORY_REQUESTS} requests on new connections ({probes.MEMORY_CLIENTS} concurrent clients) and "
        f"{probes.MEMORY_REST_S:g} s of rest; every process of the tree is counted (uvicorn --workers N: its "
        "multiprocessing resource tracker too).",
        "corral and uvicorn run with their defaults (loop auto → uvloop), `--log-level warning "
        "--no-access-log`; the access-log rows use `--log-level info --access-log` with output to a file.",
        "The ceiling is tests/bench/ceiling.py: uvloop + httptools answering a fixed response, no ASGI.",
        f"1-minute load average: {load_before:.2f} before, {load_after:.2f} after. With other work on the "
        "machine, req/s and latency move; CPU µs per request is the figure to trust.",
    ]
    if "ws" in settings["scenarios"]:
        notes.append(
            f"ws rows: {ws_load.CLIENTS} clients of tests/bench/ws_echo.py (websockets on uvloop, pinned with wrk) "
            f"send {ws_load.MESSAGE_SIZE}-byte text messages and wait for each echo; req/s is messages/s and CPU "
            "µs/req is per message. The Python client is usually the bottleneck: compare CPU per message."
            if ws_load.available() else "tests/bench/ws_echo.py is absent: no WebSocket rows.")
    if "granian" in families and granian_path() is None:
        notes.append("granian is not installed: its rows are absent (`pip install granian` adds them).")
    if "gunicorn" not in families:
        pass
    elif gunicorn_has_asgi():
        notes.append("gunicorn rows are gunicorn's own ASGI worker (`-k asgi`), master and workers counted.")
    else:
        notes.append("gunicorn with its asgi worker (`-k asgi`) is not installed: its rows are absent.")
    if "h2" in settings["scenarios"]:
        if h2load.h2load_path() is None:
            notes.append("h2load is not installed (Debian: nghttp2-client): no HTTP/2 rows.")
        elif not zttp_installed():
            notes.append("zttp is not installed (corral[http2], CPython ≥ 3.11): no HTTP/2 rows.")
        else:
            requests = settings["h2_requests"]
            size = (f"-n{requests}` per run (hypercorn: -n{max(settings['h2_clients'], requests // 4)}; zttp 0.0.35 "
                    "closes an HTTP/2 connection after 4096 streams, so a timed run would stop early)"
                    if requests else f"-D{settings['duration_s']:g}` per run")
            notes.append(
                f"h2 rows: `h2load -t1 -c{settings['h2_clients']} -m{settings['h2_streams']} {size}, cleartext with "
                "prior knowledge, on wrk's core; corral and uvicorn run `--http zttp --http2`, granian `--http 2`, "
                "hypercorn `-k uvloop`. × uvicorn compares with uvicorn `--http zttp --http2`; p50/p99 come from "
                "h2load's per-request log.")
    if "hypercorn" in families and "h2" in settings["scenarios"] and not hypercorn_installed():
        notes.append("hypercorn is not installed: its HTTP/2 row is absent (`pip install hypercorn` adds it).")
    if "zttp" in settings["http"] and not zttp_installed():
        notes.append("zttp is not installed: no `--http zttp` rows.")
    if not shutil.which("taskset"):
        notes.append("taskset is not installed: nothing was pinned, figures are noisier.")
    return notes


def _interrupt_on_term(signum: int, frame: FrameType | None) -> None:
    """SIGTERM behaves as Ctrl-C: servers are stopped by their ``finally`` and a partial report is written."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print and write the report. Exit 0 even when a server fails (it is reported)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt_on_term)
    try:
        wrk.wrk_path()
    except wrk.WrkError as exc:
        print(f"tests.bench.run: {exc}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Every server starts from compiled bytecode, as an installed package does (pip compiles
    # at install). A source file edited since, under PYTHONDONTWRITEBYTECODE, would otherwise
    # be compiled again at every start of corral only (the others are installed), which the
    # start-up probe would bill to corral.
    for package in ("daemon", "server_core", "tests"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    workdir = RESULTS / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    pin_notes: list[str] = []
    server_cpus, multi_cpus = _cpus(args.server_cpus, pin_notes), _cpus(args.multi_cpus, pin_notes)
    load = LoadSettings(duration_s=args.duration, warmup_s=args.warmup, connections=args.connections,
                        wrk_cpus=_cpus(args.wrk_cpus, pin_notes), h2_clients=args.h2_clients,
                        h2_streams=args.h2_streams, h2_requests=args.h2_requests)
    scenarios = [SCENARIOS[name] for name in args.only.split(",") if name]
    families = [f for f in args.servers.split(",") if f]
    parsers = [p for p in args.http.split(",") if p]
    load_before = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "meta": report.machine(),
        "settings": {"quick": args.quick, "repeat": args.repeat, "duration_s": args.duration,
                     "warmup_s": args.warmup, "connections": args.connections, "server_cpus": server_cpus,
                     "multi_cpus": multi_cpus, "wrk_cpus": load.wrk_cpus, "scenarios": [s.name for s in scenarios],
                     "servers": families, "http": parsers, "h2_clients": load.h2_clients,
                     "h2_streams": load.h2_streams, "h2_requests": load.h2_requests},
        "runs": [], "summary": [], "startup": [], "memory": [], "sections": [], "targets": [],
    }
    try:
        if not args.no_load:
            cases = plan(scenarios, families, server_cpus=server_cpus, multi_cpus=multi_cpus, parsers=parsers)
            run_load(cases, load, args.repeat, workdir, results["runs"])
            results["summary"] = report.summarize(results["runs"])
        if not args.no_startup:
            for workers in (1, PROBE_WORKERS):
                for spec in probe_specs(families, workers, server_cpus if workers == 1 else multi_cpus):
                    _progress(f"startup {spec.label} ×{args.startup_runs} …")
                    results["startup"].append(probes.startup(spec, args.startup_runs, workdir))
        if not args.no_memory:
            for spec in probe_specs(families, PROBE_WORKERS, multi_cpus):
                _progress(f"memory {spec.label} …")
                results["memory"].append(probes.memory(spec, load, workdir))
        if not args.no_sections:
            for name in sections.OPTIONAL:
                _progress(f"section {name} …")
                results["sections"].append(
                    sections.run_section(name, quick=args.quick, workdir=workdir,
                                         timeout_s=600 if args.quick else 1800))
    except KeyboardInterrupt:
        _progress("interrupted: reporting what was measured")
        results["interrupted"] = True
        results["summary"] = report.summarize(results["runs"])
    results["targets"] = report.targets(results["summary"], results["memory"], results["startup"])
    results["notes"] = _notes(results["settings"], families, load_before, os.getloadavg()[0]) + pin_notes
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    load_after = os.getloadavg()[0]
    if max(load_before, load_after) > cpus / 2:
        results["busy"] = (f"load average {load_before:.1f} before, {load_after:.1f} after on {cpus} CPUs — "
                           "other work shared the machine: trust CPU µs/req and ratios, not req/s or latency")
    text = report.markdown(results)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(text)
    _progress(f"written {args.markdown} and {args.json} in {results['elapsed_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
