"""The hot path's instruction counts against a committed baseline: the regression guard of ``make bench-check``.

    python -m tests.bench.check [--cases hello,json,...] [--requests N] [--update] [--baseline FILE]

Each case is one ``tests.bench.instructions`` configuration (a scenario, the parser, the access log);
its figure is the same one that module prints: callgrind's instruction count of a run of 2 N requests
minus that of a run of N, over N. The runs go in parallel, one per core. A case fails when it costs
more than the baseline beyond the tolerance; one clearly cheaper is reported so that the baseline
can be lowered (``--update`` rewrites the file, in the same commit as the change that made it
cheaper). See docs/BENCH_CHECK.md for the tolerance and what it was chosen from.

The counts depend on the Python build, the versions of uvloop, httptools, zttp and h11, glibc and
valgrind: the baseline records this environment (its "fingerprint"). Where the fingerprint differs
the check still compares, with the wider ``MISMATCH_TOLERANCE``, and names every difference; it
never skips. ``--strict`` (or CORRAL_REQUIRE_ALL=1 together with CORRAL_BENCH_STRICT=1) makes a
difference a failure instead.

Exit status: 0 within tolerance, 1 a regression (or a case without a baseline figure, or a run that
failed), 2 valgrind missing or a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from tests.bench import instructions

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baseline.json")
# Same fingerprint: the figure of one case moves by < 0.1 % between runs at the default N (see
# docs/BENCH_CHECK.md); 2 % leaves room for that and flags a change costing one pass more of a
# small helper per request (~1 700 instructions on hello).
TOLERANCE = 0.02
# Another Python build, package version, glibc or CPU kind: counts move by themselves (a host
# without AVX2 moved hello by 0.5 %; other versions were not measured, so 10 % is a guess, said so in
# docs/BENCH_CHECK.md); only a regression larger than this is told apart from that.
MISMATCH_TOLERANCE = 0.10
REQUESTS = 5000
CONNECTIONS = 8


@dataclasses.dataclass(frozen=True)
class Case:
    scenario: str
    http: str = "httptools"
    access_log: bool = False
    metrics: bool = False
    # Same environment; the access log and the metrics read the clock, and their figure moved by up
    # to 1.5 % and 1.0 % between runs of the same tree (docs/BENCH_CHECK.md).
    tolerance: float = 0.0  # 0: TOLERANCE


# What a worker serves by default, the HTTP/2 path, and the options that put work on every request.
CASES: dict[str, Case] = {
    "hello": Case("hello"),
    "headers": Case("headers"),
    "echo": Case("echo"),
    "json": Case("json"),
    "h2": Case("h2"),
    "hello+access-log": Case("hello", access_log=True, tolerance=0.04),
    "hello+metrics": Case("hello", metrics=True, tolerance=0.03),
    "hello@zttp": Case("hello", http="zttp"),
    "headers@zttp": Case("headers", http="zttp"),
}


# -- the environment ------------------------------------------------------------------------------

_PACKAGES = ("uvloop", "httptools", "zttp", "h11")
# The CPU features that reach the measured program: valgrind shows it a synthetic CPU (a Haswell
# where the host has AVX2: ``valgrind ld.so --list-diagnostics``), so avx512, erms or fsrm on the
# host change nothing, but a host without AVX2 gets another CPU and glibc's SSE2 string functions.
_CPU_FLAGS = ("avx", "avx2")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return " ".join(flag for flag in _CPU_FLAGS if flag in present) or "-"
    except OSError:
        pass
    return "unknown"


def _valgrind_version(valgrind: str | None) -> str:
    if valgrind is None:
        return "missing"
    done = subprocess.run([valgrind, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def fingerprint(valgrind: str | None = None) -> dict[str, str]:
    """What the counts depend on besides corral's own code."""
    found: dict[str, str] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_build": f"{' '.join(platform.python_build())}; {platform.python_compiler()}",
        "machine": platform.machine(),
        "libc": " ".join(platform.libc_ver()) or "unknown",
        "valgrind": _valgrind_version(valgrind),
        "cpu_flags": _cpu_flags(),
    }
    for package in _PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    return found


def differences(baseline: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """``field: baseline -> now`` for every field of the fingerprint that differs."""
    return [f"{key}: {baseline.get(key, '?')} -> {now.get(key, '?')}"
            for key in sorted(set(baseline) | set(now)) if baseline.get(key) != now.get(key)]


# -- the comparison (a pure function) ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Row:
    case: str
    baseline: float | None
    now: float | None
    tolerance: float
    verdict: str  # ok | cheaper | REGRESSION | NO BASELINE | FAILED

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.now is None or not self.baseline:
            return None
        return self.now / self.baseline - 1


@dataclasses.dataclass(frozen=True)
class Verdict:
    rows: list[Row]
    differences: list[str]  # the fingerprint's, empty when the environment is the baseline's
    notes: list[str]

    @property
    def failed(self) -> bool:
        return any(row.verdict in ("REGRESSION", "NO BASELINE", "FAILED") for row in self.rows)

    @property
    def cheaper(self) -> list[str]:
        return [row.case for row in self.rows if row.verdict == "cheaper"]


def compare(baseline: Mapping[str, Any], measured: Mapping[str, float | None], environment: Mapping[str, str], *,
            tolerance: float = TOLERANCE, mismatch_tolerance: float = MISMATCH_TOLERANCE,
            strict: bool = False) -> Verdict:
    """Each measured case against the baseline: more expensive than ``baseline × (1 + tolerance)``
    is a regression, cheaper than ``baseline × (1 − tolerance)`` is worth lowering the baseline for.
    ``measured[case]`` is None for a run that failed. With another environment than the baseline's,
    ``mismatch_tolerance`` applies (or, ``strict``, every case fails)."""
    changed = differences(baseline.get("fingerprint", {}), environment)
    notes: list[str] = []
    if changed:
        limit = max(tolerance, mismatch_tolerance)
        if strict:
            notes.append("the environment differs from the baseline's and --strict forbids comparing across it")
        else:
            notes.append(f"the environment differs from the baseline's: tolerance widened to ±{limit:.0%}")
    figures = baseline.get("cases", {})
    rows = []
    for case, now in measured.items():
        before = figures.get(case)
        own = CASES[case].tolerance if case in CASES and CASES[case].tolerance else tolerance
        limit = max(own, mismatch_tolerance) if changed else own
        if now is None:
            verdict = "FAILED"
        elif before is None:
            verdict = "NO BASELINE"
        elif changed and strict:
            verdict = "FAILED"
        elif now > before * (1 + limit):
            verdict = "REGRESSION"
        elif now < before * (1 - limit):
            verdict = "cheaper"
        else:
            verdict = "ok"
        rows.append(Row(case, before, now, limit, verdict))
    return Verdict(rows, changed, notes)


def render(verdict: Verdict) -> str:
    """The table: case, baseline, now, change, tolerance, verdict; then what to do."""
    lines = [f"{'case':<18} {'baseline':>10} {'now':>10} {'change':>8} {'tolerance':>9}  verdict"]
    for row in verdict.rows:
        before = f"{row.baseline:,.0f}" if row.baseline is not None else "-"
        now = f"{row.now:,.0f}" if row.now is not None else "-"
        change = f"{row.change:+.2%}" if row.change is not None else "-"
        lines.append(f"{row.case:<18} {before:>10} {now:>10} {change:>8} {'±' + format(row.tolerance, '.0%'):>9}"
                     f"  {row.verdict}")
    lines.append("(instructions per request, counted by callgrind)")
    if verdict.differences:
        lines.append("environment differs from the baseline's:")
        lines.extend(f"  {difference}" for difference in verdict.differences)
    lines.extend(verdict.notes)
    regressions = [row.case for row in verdict.rows if row.verdict == "REGRESSION"]
    if regressions:
        lines.append(f"FAIL: more expensive than the baseline: {', '.join(regressions)} "
                     "(python -m tests.bench.instructions --scenario … shows the figure; see docs/BENCH_CHECK.md)")
    missing = [row.case for row in verdict.rows if row.verdict == "NO BASELINE"]
    if missing:
        lines.append(f"FAIL: no baseline figure for {', '.join(missing)}: python -m tests.bench.check --update")
    if any(row.verdict == "FAILED" for row in verdict.rows):
        lines.append("FAIL: a case could not be measured (above) or compared")
    if verdict.cheaper:
        where = "" if not verdict.differences else " (here, in another environment: update on the baseline's)"
        lines.append(f"cheaper than the baseline: {', '.join(verdict.cheaper)}{where}; lower it in the same "
                     "commit: python -m tests.bench.check --update")
    return "\n".join(lines)


# -- the measurement ------------------------------------------------------------------------------

def child_environment() -> dict[str, str]:
    """The measured process's environment: a fixed hash seed (the start-up of a run otherwise
    varies with it by a few hundred thousand instructions, which N does not divide away), and none
    of the PYTHON* variables that change how the interpreter runs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    return env


def warm(case: Case, env: dict[str, str]) -> None:
    """One run of the case without valgrind, so that every module it imports has its bytecode
    cached before the counted runs: two of them starting together on a changed tree would both
    compile, or one would and the other not, and a compilation under callgrind is worth hundreds
    of instructions per request at N = 1 000 (it measured 286 000 instead of 86 000 on hello)."""
    command = [sys.executable, "-m", "tests.bench.instructions", "--inner", "--scenario", case.scenario,
               "--requests", str(CONNECTIONS * instructions.H2_STREAMS), "--connections", str(CONNECTIONS), "--http", case.http]
    command += ["--access-log"] * case.access_log + ["--metrics"] * case.metrics
    done = subprocess.run(command, cwd=instructions.ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"the run without valgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")


def measure(names: Iterable[str], requests: int, valgrind: str, *, workers: int | None = None,
            counter: Callable[..., int] = instructions.count,
            warmer: Callable[[Case, dict[str, str]], None] | None = warm,
            log: Callable[[str], None] = lambda line: None) -> dict[str, float | None]:
    """Instructions per request of each case: the runs of N and 2 N requests of every case, in
    parallel over ``workers`` threads (one per core by default), each waiting on its valgrind."""
    names = list(names)
    workers = workers or len(os.sched_getaffinity(0))
    env = child_environment()
    broken: set[str] = set()
    for name in names:  # one after the other: they compile the same modules
        try:
            if warmer is not None:
                warmer(CASES[name], env)
        except SystemExit as failure:
            log(f"{name}: {failure}")
            broken.add(name)

    def run(name: str, count: int) -> int | None:
        case = CASES[name]
        try:
            return counter(case.scenario, count, valgrind=valgrind, connections=CONNECTIONS, http=case.http,
                           access_log=case.access_log, metrics=case.metrics, env=env)
        except SystemExit as failure:  # instructions.count's way of saying the run failed
            log(f"{name}: {failure}")
            return None

    # The long runs (2 N) first, so that the last to finish are short ones.
    jobs = [(name, 2 * requests) for name in names if name not in broken]
    jobs += [(name, requests) for name in names if name not in broken]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {job: pool.submit(run, *job) for job in jobs}
        counts = {job: future.result() for job, future in futures.items()}
    figures: dict[str, float | None] = {}
    for name in names:
        short, long = counts.get((name, requests)), counts.get((name, 2 * requests))
        figures[name] = None if short is None or long is None else (long - short) / requests
    return figures


def _commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=instructions.ROOT,
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def load(path: str) -> dict[str, Any]:
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError:
        return {"cases": {}, "fingerprint": {}}


def updated(old: Mapping[str, Any], measured: Mapping[str, float | None], environment: Mapping[str, str],
            requests: int, commit: str) -> dict[str, Any]:
    """The new baseline: the measured figures; the figures of cases not measured this time are kept
    only when the environment and N are the old baseline's (otherwise they would not compare)."""
    failed = [name for name, figure in measured.items() if figure is None]
    if failed:
        raise ValueError(f"not written: {', '.join(failed)} could not be measured")
    cases: dict[str, int] = {}
    if not differences(old.get("fingerprint", {}), environment) and old.get("requests") == requests:
        cases.update(old.get("cases", {}))
    elif set(old.get("cases", {})) - set(measured):
        raise ValueError("the environment or N differs from the baseline's: measure every case (no --cases)")
    cases.update({name: round(figure) for name, figure in measured.items() if figure is not None})
    return {
        "about": "instructions per request of the hot path (python -m tests.bench.check; docs/BENCH_CHECK.md)",
        "commit": commit,
        "requests": requests,
        "connections": CONNECTIONS,
        "fingerprint": dict(environment),
        "cases": {name: cases[name] for name in CASES if name in cases},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.check", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--requests", type=int, default=None,
                        help=f"N (the second run serves 2 N); default: the baseline's, else {REQUESTS}")
    parser.add_argument("--baseline", default=BASELINE, help="the baseline file (default tests/bench/baseline.json)")
    parser.add_argument("--update", action="store_true", help="write the measured figures as the new baseline")
    parser.add_argument("--strict", action="store_true",
                        default=os.environ.get("CORRAL_BENCH_STRICT") == "1",
                        help="an environment other than the baseline's fails instead of widening the tolerance")
    parser.add_argument("--jobs", type=int, default=None, help="valgrind runs at once (default: one per core)")
    args = parser.parse_args(argv)
    names = [name for name in args.cases.split(",") if name]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("bench-check: valgrind is not installed (make system-tools installs it as root; apt-get install "
              "valgrind): nothing was checked", file=sys.stderr)
        return 2
    baseline = load(args.baseline)
    requests = args.requests or baseline.get("requests") or REQUESTS
    environment = fingerprint(valgrind)
    workers = args.jobs or len(os.sched_getaffinity(0))
    print(f"bench-check: {len(names)} case(s), N = {requests:,}, "
          f"{workers} valgrind run(s) at once", flush=True)
    started = time.monotonic()
    measured = measure(names, requests, valgrind, workers=workers, log=lambda line: print(line, file=sys.stderr))
    elapsed = time.monotonic() - started
    verdict = compare(baseline, measured, environment, strict=args.strict)
    print(render(verdict))
    if baseline.get("requests") and requests != baseline["requests"]:
        print(f"note: N = {requests:,} here, {baseline['requests']:,} in the baseline "
              "(the figure per request holds across N within the noise measured in docs/BENCH_CHECK.md)")
    print(f"wall time: {elapsed:.1f} s")
    if args.update:
        try:
            new = updated(baseline, measured, environment, requests, _commit())
        except ValueError as error:
            print(f"bench-check --update: {error}", file=sys.stderr)
            return 1
        with open(args.baseline, "w") as file:
            json.dump(new, file, indent=2)
            file.write("\n")
        print(f"baseline written: {os.path.relpath(args.baseline)} (commit it with the change it measures)")
        return 0
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    sys.exit(main())
