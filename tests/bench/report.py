"""Turning raw runs into the report: machine header, medians and ranges, ratios, targets.

The report opens with issue 16's two tables: corral, uvicorn and granian per HTTP/1.1 scenario
(CPU per request, paired ratios, p99), titled with the CPU model that gave the figures, and the
4-worker memory with the times to first 200.

Every figure is summarised as the median of the repetitions with the min–max beside it. Ratios
compare medians from the same invocation, so both sides saw the same machine at the same time:
"× uvicorn" divides a configuration's CPU µs per request by uvicorn's in the same scenario,
with the same parser, worker count and access-log setting (lower is better).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


# --------------------------------------------------------------------------- machine header

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _command(argv: Sequence[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, cwd=ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def machine() -> dict[str, Any]:
    """Date, CPU, kernel, Python, package versions and the git commit of this run."""
    dirty = _command(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "executable": sys.executable,
        "git": (_command(["git", "rev-parse", "--short", "HEAD"]) or "?") + (" (modified)" if dirty else ""),
        "wrk": (_command(["wrk", "-v"]) or "").split(" Copyright")[0] or None,
        "h2load": _command(["h2load", "--version"]),
        "versions": {name: _version(name) for name in
                     ("corral", "uvicorn", "uvloop", "httptools", "h11", "zttp", "websockets", "granian", "gunicorn",
                      "hypercorn", "psutil")},
    }


# --------------------------------------------------------------------------- summaries

def _stats(values: Iterable[float | None]) -> dict[str, float] | None:
    clean = [v for v in values if v is not None]
    if not clean:
        return None
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean), "n": len(clean)}


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, server) in first-seen order: medians, ranges, errors, ratios."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["server"]), []).append(run)
    rows: list[dict[str, Any]] = []
    for (scenario, server), group in groups.items():
        good = [r for r in group if r["ok"]]
        first = group[0]
        rows.append({
            "scenario": scenario, "server": server, "label": first["label"], "family": first["family"],
            "http": first["http"], "h2": first.get("h2", False), "workers": first["workers"], "access_log": first["access_log"],
            "ws": first.get("ws"), "reference": first["reference"], "runs": len(group), "ok_runs": len(good),
            "errors": sum(r.get("errors", 0) or 0 for r in group),
            "failure": next((r["error"] for r in group if not r["ok"]), None),
            # A wrong answer (tests.bench.measure.check_answer) or failed requests: figures kept, flagged.
            "flag": next((r["error"] for r in group if r["ok"] and r.get("error")), None),
            "cpu_us_per_req": _stats(r.get("cpu_us_per_req") for r in good),
            "rps": _stats(r.get("rps") for r in good),
            "p50_ms": _stats(r.get("p50_ms") for r in good),
            "p99_ms": _stats(r.get("p99_ms") for r in good),
            "cpu_util": _stats(r.get("cpu_util") for r in good),
        })
    by_key = {(r["scenario"], r["server"]): r for r in rows}
    for row in rows:
        ref = by_key.get((row["scenario"], row["reference"]))
        row["vs_uvicorn"] = _ratio(row, ref, "cpu_us_per_req")
        row["rps_vs_uvicorn"] = _ratio(row, ref, "rps")
        row["p99_vs_uvicorn"] = _ratio(row, ref, "p99_ms")
        row["vs_uvicorn_per_rep"] = _stats(paired_ratios(runs, row["scenario"], row["server"], row["reference"]))
    return rows


def paired_ratios(runs: Sequence[dict[str, Any]], scenario: str, server: str, reference: str,
                  field: str = "cpu_us_per_req") -> list[float]:
    """``field`` (CPU µs/req by default) of ``server`` over ``reference``'s, one ratio per repetition
    (the two runs of a repetition are minutes apart at most, so their ratio cancels a slow phase of
    the machine): the spread of these ratios is how noisy a comparison was."""
    def by_rep(key: str) -> dict[int, float]:
        return {r["rep"]: r[field] for r in runs
                if r["scenario"] == scenario and r["server"] == key and r["ok"] and r.get(field)}
    mine, theirs = by_rep(server), by_rep(reference)
    return [mine[rep] / theirs[rep] for rep in sorted(mine) if theirs.get(rep)]


def _ratio(row: dict[str, Any], ref: dict[str, Any] | None, field: str) -> float | None:
    if ref is None or row[field] is None or ref[field] is None or not ref[field]["median"]:
        return None
    return float(row[field]["median"]) / float(ref[field]["median"])


def _median(summary: Sequence[dict[str, Any]], scenario: str, server: str, field: str) -> float | None:
    for row in summary:
        if row["scenario"] == scenario and row["server"] == server and row[field]:
            median: float = row[field]["median"]
            return median
    return None


# --------------------------------------------------------------------------- issue 7, 11 and 16 targets

def _target(name: str, value: float | None, limit: float, unit: str = "×") -> dict[str, Any]:
    status = "n/a" if value is None else ("met" if value <= limit else "not met")
    return {"target": name, "value": value, "limit": limit, "unit": unit, "status": status}


HTTP1_SCENARIOS = ("hello", "json", "echo", "stream", "headers")
"""The HTTP/1.1 scenarios of the headline table, in its order."""


def memory_row(memory: Sequence[dict[str, Any]], family: str, workers: int | None = None) -> dict[str, Any] | None:
    """The summary (tests.bench.probes.summarize_memory) of ``family``'s memory probe, if it ran."""
    for row in memory:
        if row["family"] == family and row["ok"] and (workers is None or row["workers"] == workers):
            summary: dict[str, Any] | None = row.get("summary")
            return summary
    return None


def startup_median(startup: Sequence[dict[str, Any]], family: str, workers: int,
                   field: str = "median_s") -> float | None:
    for row in startup:
        if row["family"] == family and row.get("workers", 1) == workers and row["runs_s"]:
            value: float | None = row.get(field)
            return value
    return None


def targets(summary: Sequence[dict[str, Any]], memory: Sequence[dict[str, Any]],
            startup: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Issue 16's targets, then issue 7's and 11's, checked against this run (informational: never
    an assertion). A target whose figures were not measured is ``n/a``."""

    def ratio(scenario: str, a: str, b: str, field: str = "cpu_us_per_req") -> float | None:
        x, y = _median(summary, scenario, a, field), _median(summary, scenario, b, field)
        return x / y if x is not None and y else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def mem(row: dict[str, Any] | None, key: str) -> float | None:
        """A memory summary's figure in bytes (a median for the per-worker ones), or None."""
        value = None if row is None else row.get(key)
        if isinstance(value, dict):
            value = value.get("median")
        return None if value is None else float(value)

    out = [
        _target("#16 hello: CPU/req ≤ granian", ratio("hello", "corral", "granian"), 1.0),
        _target("#16 small JSON: CPU/req ≤ granian", ratio("json", "corral", "granian"), 1.0),
        _target("#16 headers: CPU/req ≤ 0.75 × uvicorn", ratio("headers", "corral", "uvicorn"), 0.75),
    ]
    corral4, granian4 = memory_row(memory, "corral"), memory_row(memory, "granian")
    out.append(_target("#16 4 workers: total PSS ≤ granian's",
                       div(mem(corral4, "total_pss"), mem(granian4, "total_pss")), 1.0))
    out.append(_target("#16 4 workers: worker USS (median) ≤ 6 MiB", div(mem(corral4, "worker_uss"), MIB), 6.0, "MiB"))
    out.append(_target("#16 time to first 200, 1 worker: ≤ uvicorn's",
                       div(startup_median(startup, "corral", 1), startup_median(startup, "uvicorn", 1)), 1.0))
    out.append(_target("#16 time to first 200, 4 workers: ≤ granian's",
                       div(startup_median(startup, "corral", 4), startup_median(startup, "granian", 4)), 1.0))
    for scenario in HTTP1_SCENARIOS:
        out.append(_target(f"#16 {scenario}: p99 ≤ granian's", ratio(scenario, "corral", "granian", "p99_ms"), 1.0))

    out += [
        _target("hello, 1 worker: CPU/req ≤ 0.75 × uvicorn", ratio("hello", "corral", "uvicorn"), 0.75),
        _target("hello, 1 worker: CPU/req ≤ 2 × ceiling", ratio("hello", "corral", "ceiling"), 2.0),
    ]
    for scenario in ("json", "stream", "echo"):
        out.append(_target(f"{scenario}: CPU/req ≤ 0.8 × uvicorn", ratio(scenario, "corral", "uvicorn"), 0.8))
    for scenario in ("hello", "json", "stream", "echo"):
        out.append(_target(f"{scenario}, h11: CPU/req ≤ 0.9 × uvicorn h11",
                           ratio(scenario, "corral-h11", "uvicorn-h11"), 0.9))
    worst_p99: float | None = None
    worst_where = ""
    for row in summary:
        if row["family"] == "corral" and row["p99_vs_uvicorn"] is not None:
            if worst_p99 is None or row["p99_vs_uvicorn"] > worst_p99:
                worst_p99, worst_where = row["p99_vs_uvicorn"], f"{row['scenario']} / {row['label']}"
    p99 = _target("p99 ≤ uvicorn's in every scenario (worst ratio)", worst_p99, 1.0)
    p99["where"] = worst_where
    out.append(p99)
    out.append(_target("access log on ≤ 1.15 × off (hello CPU/req)", ratio("hello", "corral-log", "corral"), 1.15))
    out.append(_target("#11 HTTP/2 hello (h2load): CPU/req ≤ 0.6 × uvicorn --http zttp --http2",
                       ratio("h2", "corral-zttp-h2", "uvicorn-zttp-h2"), 0.6))
    for scenario in HTTP1_SCENARIOS:
        out.append(_target(f"#11 {scenario}, zttp: CPU/req ≤ 0.8 × uvicorn --http zttp",
                           ratio(scenario, "corral-zttp", "uvicorn-zttp"), 0.8))
    uvicorn4 = memory_row(memory, "uvicorn")
    out.append(_target("4 workers: worker RSS (median) ≤ uvicorn's worker RSS",
                       div(mem(corral4, "worker_rss"), mem(uvicorn4, "worker_rss")), 1.0))
    out.append(_target("master RSS ≤ 30 MiB", div(mem(corral4, "master_rss"), MIB), 30.0, "MiB"))
    return out


# --------------------------------------------------------------------------- markdown

def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _cell(stats: dict[str, float] | None, digits: int = 1, show_range: bool = True) -> str:
    if stats is None:
        return "–"
    text = _fmt(stats["median"], digits)
    if show_range and stats["n"] > 1:
        text += f" ({_fmt(stats['min'], digits)}–{_fmt(stats['max'], digits)})"
    return text


def _ratio_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _first_line(text: str | None, width: int = 160) -> str:
    if not text:
        return ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return (line[: width - 1] + "…" if len(line) > width else line).replace("|", "\\|")


def _row(summary: Sequence[dict[str, Any]], scenario: str, server: str) -> dict[str, Any] | None:
    return next((r for r in summary if r["scenario"] == scenario and r["server"] == server), None)


def headline(results: dict[str, Any]) -> list[str]:
    """Issue 16's table: corral, uvicorn and granian per HTTP/1.1 scenario (1 worker), CPU per
    request with the paired ratios, and p99 at the run's connection count; the CPU model that
    gave the figures in the title. Then the other references (ceiling, gunicorn, parsers)."""
    summary, runs, meta = results["summary"], results["runs"], results["meta"]
    connections = results["settings"].get("connections", 64)
    scenarios = [sc for sc in dict.fromkeys(row["scenario"] for row in summary if not row.get("h2") and not row.get("ws"))
                 if sc != "ws"]
    if not any(_median(summary, sc, "corral", "cpu_us_per_req") for sc in scenarios):
        return []

    def med(scenario: str, server: str, field: str = "cpu_us_per_req") -> float | None:
        return _median(summary, scenario, server, field)

    def cpu(scenario: str, server: str) -> str:
        row = _row(summary, scenario, server)
        if row is None:
            return "–"
        if row["ok_runs"] == 0:
            return "**failed**"
        return _fmt(med(scenario, server)) + (" ⚠" if row["flag"] or row["errors"] else "")

    def div(a: float | None, b: float | None) -> str:
        return "–" if a is None or not b else f"{a / b:.2f}"

    flagged = False
    out = ["", f"## Summary: CPU µs per request, 1 worker, on {meta['cpu']} ({meta['cpus']} CPUs)", "",
           f"Lower is better. Figures from **{meta['cpu']}**; another CPU model gives other figures and other "
           "ratios. Ratios: of the medians, then (min–max) of the same ratio taken per repetition. "
           f"p99: wrk's, at {connections} connections, in ms.", "",
           "| scenario | corral | uvicorn | granian | corral / uvicorn | corral / granian | p99 corral | p99 granian "
           "| p99 corral / granian |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for sc in scenarios:
        cells = [cpu(sc, "corral"), cpu(sc, "uvicorn"), cpu(sc, "granian")]
        flagged = flagged or any("⚠" in c for c in cells)
        out.append(
            f"| {sc} | {' | '.join(cells)} | {_pair(runs, summary, sc, 'corral', 'uvicorn')} | "
            f"{_pair(runs, summary, sc, 'corral', 'granian')} | {_fmt(med(sc, 'corral', 'p99_ms'), 2)} | "
            f"{_fmt(med(sc, 'granian', 'p99_ms'), 2)} | {_pair(runs, summary, sc, 'corral', 'granian', 'p99_ms')} |")
    if flagged:
        out += ["", "⚠: failed requests or a wrong answer in this row's runs (see the errors column of the full table)."]
    others = [sc for sc in scenarios if any(_row(summary, sc, key) for key in
                                            ("ceiling", "gunicorn", "corral-h11", "corral-zttp"))]
    if others:
        out += ["", "Other references (CPU µs per request, 1 worker; ratios of the medians):", "",
                "| scenario | ceiling | gunicorn -k asgi | corral h11 / uvicorn h11 | corral zttp / uvicorn zttp "
                "| p99 corral / uvicorn |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for sc in others:
            out.append(
                f"| {sc} | {_fmt(med(sc, 'ceiling'))} | {_fmt(med(sc, 'gunicorn'))} | "
                f"{div(med(sc, 'corral-h11'), med(sc, 'uvicorn-h11'))} | "
                f"{div(med(sc, 'corral-zttp'), med(sc, 'uvicorn-zttp'))} | "
                f"{div(med(sc, 'corral', 'p99_ms'), med(sc, 'uvicorn', 'p99_ms'))} |")
    return out


def workers_table(results: dict[str, Any]) -> list[str]:
    """Issue 16's second table: per server, the 4-worker tree's total PSS, the median worker USS
    and the time to first 200 with 1 and with 4 workers."""
    memory, startup = results.get("memory", []), results.get("startup", [])
    families = list(dict.fromkeys([row["family"] for row in memory] + [row["family"] for row in startup]))
    if not families:
        return []
    workers = next((row["workers"] for row in memory), None) or max(
        (row.get("workers", 1) for row in startup), default=4)
    meta = results["meta"]
    out = ["", f"## Summary: {workers} workers (memory) and time to first 200, on {meta['cpu']} ({meta['cpus']} CPUs)", "",
           f"Memory after {memory[0]['requests']} requests and {memory[0]['rest_s']:g} s of rest (total PSS: "
           "every process of the tree; worker USS: median over the workers); time to first 200: median of "
           "the start-ups, spawn to the first answer on the port." if memory else
           "Time to first 200: median of the start-ups, spawn to the first answer on the port.", "",
           f"| server | total PSS MiB | worker USS MiB | master PSS MiB | time to first 200 s (1 worker / {workers}) |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for family in families:
        mem_run = next((row for row in memory if row["family"] == family), None)
        if mem_run is not None and not mem_run["ok"]:
            total = uss = master = "**failed**"
        else:
            mem = memory_row(memory, family)
            total = _mib(mem["total_pss"] if mem else None)
            uss = _mib(mem["worker_uss"]["median"]) if mem and mem["worker_uss"] else "–"
            master = _mib(mem["master_pss"] if mem else None)
        one, many = startup_median(startup, family, 1), startup_median(startup, family, workers)
        name = "gunicorn -k asgi" if family == "gunicorn" else family
        out.append(f"| {name} | {total} | {uss} | {master} | {_fmt(one, 3)} / {_fmt(many, 3)} |")
    return out


def _pair(runs: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], scenario: str, a: str,
          b: str, field: str = "cpu_us_per_req") -> str:
    """``0.62 (0.58–0.66)``: the ratio of the medians, then the min–max of the per-repetition ratios."""
    x, y = _median(summary, scenario, a, field), _median(summary, scenario, b, field)
    if x is None or not y:
        return "–"
    spread = paired_ratios(runs, scenario, a, b, field)
    text = f"{x / y:.2f}"
    if len(spread) > 1:
        text += f" ({min(spread):.2f}–{max(spread):.2f})"
    return text


def http2_table(results: dict[str, Any]) -> list[str]:
    """The HTTP/2 rows (h2load): each server's CPU per request, corral's ratio to each."""
    summary, runs = results["summary"], results["runs"]
    rows = [row for row in summary if row.get("h2")]
    if not rows:
        return []
    settings = results["settings"]
    out = ["", f"## HTTP/2: hello world, h2load -t1 -c{settings.get('h2_clients', 16)} "
           f"-m{settings.get('h2_streams', 10)}, 1 worker (lower is better)", "",
           "corral / this: corral's CPU µs/req median over this row's, then the min–max of the same ratio "
           "taken per repetition (how noisy the comparison was).", "",
           "| server | CPU µs/req | corral / this | req/s | core used | p50 ms | p99 ms | errors |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        if row["ok_runs"] == 0:
            out.append(f"| {row['label']} | **failed**: {_first_line(row['failure'])} | | | | | | |")
            continue
        vs = "–" if row["server"] == "corral-zttp-h2" else _pair(runs, summary, row["scenario"], "corral-zttp-h2",
                                                                  row["server"])
        out.append(f"| {row['label']} | {_cell(row['cpu_us_per_req'])} | {vs} | {_cell(row['rps'], 0)} | "
                   f"{_percent(row['cpu_util'])} | {_cell(row['p50_ms'], 2, False)} | {_cell(row['p99_ms'], 2)} | "
                   f"{row['errors']} |")
    return out


def zttp_table(results: dict[str, Any]) -> list[str]:
    """HTTP/1.1 on zttp beside httptools: corral and uvicorn per scenario (1 worker)."""
    summary, runs = results["summary"], results["runs"]
    scenarios = list(dict.fromkeys(row["scenario"] for row in summary if row["server"] == "corral-zttp"))
    if not scenarios:
        return []
    out = ["", "## HTTP/1.1 on zttp (`--http zttp`) beside httptools: CPU µs per request, 1 worker", "",
           "Ratios: medians, then the min–max of the ratio taken per repetition.", "",
           "| scenario | corral zttp | uvicorn zttp | corral zttp / uvicorn zttp | corral httptools | uvicorn httptools "
           "| corral zttp / corral httptools |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for sc in scenarios:
        def cell(server: str, scenario: str = sc) -> str:
            row = next((r for r in summary if r["scenario"] == scenario and r["server"] == server), None)
            return "–" if row is None else _cell(row["cpu_us_per_req"])
        out.append(f"| {sc} | {cell('corral-zttp')} | {cell('uvicorn-zttp')} | "
                   f"{_pair(runs, summary, sc, 'corral-zttp', 'uvicorn-zttp')} | {cell('corral')} | {cell('uvicorn')} | "
                   f"{_pair(runs, summary, sc, 'corral-zttp', 'corral')} |")
    return out


def markdown(results: dict[str, Any]) -> str:
    """The whole report as markdown."""
    meta, settings = results["meta"], results["settings"]
    out: list[str] = ["# corral benchmarks", ""]
    out.append(f"- **date** {meta['date']} · **git** {meta['git']}")
    out.append(f"- **machine** {meta['cpu']} ({meta['cpus']} CPUs) · {meta['kernel']} · {meta['python']}")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    out.append(f"- **versions** {versions}" + (f" · {meta['wrk']}" if meta.get("wrk") else "")
               + (f" · {meta['h2load']}" if meta.get("h2load") else ""))
    out.append(
        f"- **load** wrk -t1 -c{settings['connections']} -d{settings['duration_s']:g}s on CPU "
        f"{settings['wrk_cpus']}, server on CPU {settings['server_cpus']}, {settings['repeat']} run(s) each, "
        f"{settings['warmup_s']:g}s warm-up; figures are median (min–max)"
        + (" · **quick run**" if settings.get("quick") else "")
    )
    if results.get("busy"):
        out.append(f"- **busy machine**: {results['busy']}")
    out += headline(results)
    out += workers_table(results)
    out += http2_table(results)
    out += zttp_table(results)
    out += [] if not results["summary"] else ["", "## Throughput and CPU cost", "",
            "CPU µs/req is the server's whole process tree (master and workers); × uvicorn compares it "
            "with uvicorn's in the same scenario and configuration (lower is better). *core used* is the "
            "server's CPU time over the run's wall time: well under 100 % for a single-core server means "
            "it was waiting for its core (a busy machine), so its req/s and latency say more about the "
            "machine than about the server.", "",
            "| scenario | server | CPU µs/req | × uvicorn | req/s | × uvicorn | core used | p50 ms | p99 ms | errors |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in results["summary"]:
        if row["ok_runs"] == 0:
            out.append(f"| {row['scenario']} | {row['label']} | **failed**: {_first_line(row['failure'])} "
                       "| | | | | | | |")
            continue
        errors = str(row["errors"]) + ("" if row["ok_runs"] == row["runs"] else
                                       f" ({row['runs'] - row['ok_runs']} run(s) failed)")
        if row["flag"] and "wrong answer" in row["flag"]:
            errors += f" · {_first_line(row['flag'], 100)}"
        out.append(
            f"| {row['scenario']} | {row['label']} | {_cell(row['cpu_us_per_req'])} | "
            f"{_ratio_cell(row['vs_uvicorn'])} | {_cell(row['rps'], 0)} | {_ratio_cell(row['rps_vs_uvicorn'])} | "
            f"{_percent(row['cpu_util'])} | {_cell(row['p50_ms'], 2, False)} | {_cell(row['p99_ms'], 2)} | {errors} |"
        )
    if any(t["status"] != "n/a" for t in results.get("targets", [])):
        out += ["", "## Targets of issues 16, 7 and 11 (this run)", "",
                "Value: a ratio (corral / the other) or MiB; met when value ≤ limit. Informational, never a gate.", "",
                "| target | value | limit | status |", "| --- | ---: | ---: | --- |"]
        for target in results["targets"]:
            unit = " MiB" if target["unit"] == "MiB" else "×"
            value = "–" if target["value"] is None else f"{target['value']:.2f}{unit}"
            where = f" ({target['where']})" if target.get("where") else ""
            status = f"**{target['status']}**" if target["status"] == "not met" else target["status"]
            out.append(f"| {target['target']}{where} | {value} | {target['limit']:g}{unit} | {status} |")
    if results.get("startup"):
        poll = results["startup"][0].get("poll_s")
        out += ["", "## Startup: spawn to first 200", "",
                "From the `Popen` call to the first `GET /` answered 200 on the port"
                + (f", polled every {poll * 1e3:g} ms" if poll else "") + ". With several workers: the first answer, "
                "whichever worker gave it; *workers spawned*: when the tree first held all its worker processes "
                "(they may still be importing).", "",
                "| server | workers | median s | min–max s | workers spawned s | runs |",
                "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in results["startup"]:
            if not row["ok"] and not row["runs_s"]:
                out.append(f"| {row['label']} | {row.get('workers', 1)} | **failed**: {_first_line(row['error'])} | | | |")
                continue
            out.append(f"| {row['label']} | {row.get('workers', 1)} | {_fmt(row['median_s'], 3)} | {_fmt(row['min_s'], 3)}–"
                       f"{_fmt(row['max_s'], 3)} | {_fmt(row.get('workers_spawned_median_s'), 3)} | "
                       f"{len(row['runs_s'])} |")
    if results.get("memory"):
        first = results["memory"][0]
        out += ["", f"## Memory after {first.get('requests', '?')} requests and {first.get('rest_s', 1):g} s of rest", "",
                "Per server: the tree's totals, the master, the median worker (min–max over the workers) and any "
                "helper process (uvicorn's multiprocessing resource tracker). PSS splits shared pages among the "
                "processes sharing them (summed: the tree's footprint); USS is what only that process holds.", "",
                "| server | processes | total PSS MiB | total RSS MiB | master PSS / USS MiB | worker USS MiB "
                "| worker PSS MiB | helpers (PSS MiB) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for row in results["memory"]:
            if not row["ok"]:
                out.append(f"| {row['label']} | **failed**: {_first_line(row['error'])} | | | | | | |")
                continue
            m = row["summary"]
            helpers = ", ".join(m["helpers"]) + f" ({_mib(m['helpers_pss'])})" if m["helpers"] else "none"
            out.append(
                f"| {row['label']} | {m['processes']} | {_mib(m['total_pss'])} | {_mib(m['total_rss'])} | "
                f"{_mib(m['master_pss'])} / {_mib(m['master_uss'])} | {_mib_stats(m['worker_uss'])} | "
                f"{_mib_stats(m['worker_pss'])} | {helpers} |"
                + (f" ⚠ {row['error']}" if row.get("error") else ""))
        out += ["", "Each process (CPU ms: what it spent while the requests ran, in the kernel's 10 ms ticks: which "
                "workers served):", "",
                "| server | process | pid | RSS MiB | PSS MiB | USS MiB | CPU ms |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in results["memory"]:
            for proc in row["processes"]:
                out.append(
                    f"| {row['label']} | {proc['role']} | {proc['pid']} | {_mib(proc['rss'])} | "
                    f"{_mib(proc['pss'])} | {_mib(proc['uss'])} | {_fmt(proc.get('cpu_ms_during_requests'))} |"
                )
    for section in results.get("sections", []):
        if section["status"] == "absent":
            continue
        out += ["", f"## {section['title']}", ""]
        if section["status"] != "ok":
            out.append(f"**failed** ({' '.join(section.get('argv', [])[2:])}): "
                       f"{_first_line(section.get('error'), 200)}")
        if section["markdown"]:
            out.append(_as_markdown(section["markdown"]))
    if results.get("notes"):
        out += ["", "## Notes", ""] + [f"- {note}" for note in results["notes"]]
    return "\n".join(out) + "\n"


def _percent(stats: dict[str, float] | None) -> str:
    return "–" if stats is None else f"{stats['median'] * 100:.0f} %"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:.1f}"


def _mib_stats(stats: dict[str, float] | None) -> str:
    """``5.7 (5.5–6.0)``: a median in MiB with the min–max."""
    if stats is None:
        return "–"
    text = _mib(stats["median"])
    return text + (f" ({_mib(stats['min'])}–{_mib(stats['max'])})" if stats["n"] > 1 else "")


def _as_markdown(text: str) -> str:
    """A section's output: markdown kept (headings nested under ours), plain text fenced."""
    if not any(line.lstrip().startswith(("|", "#", "- ")) for line in text.splitlines()):
        return "```text\n" + text.rstrip() + "\n```"
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = "##" + line
        lines.append(line)
    return "\n".join(lines)
