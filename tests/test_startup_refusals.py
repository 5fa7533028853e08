"""Operator inputs corral refuses at start (status 2, one line naming the option, nothing bound), and
``--loop zuvloop``, which runs zuvloop's loop when the package is there and names it when it is not.

Each case runs the real ``corral`` command (``python -m daemon``) on a UNIX
socket path, and checks that the path was never bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import FACTOR, ROOT, Corral

FAKES = Path(__file__).resolve().parent / "fakes"


def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run corral with ``args``; assert status 2, one line on stderr, nothing bound; return the line."""
    uds = tmp_path / "s.sock"
    proc = subprocess.run([sys.executable, "-m", "daemon", "m:a", "--uds", str(uds), *args],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})},
                          timeout=30 * FACTOR)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not uds.exists()
    return lines[0]


@pytest.mark.parametrize("header", [
    "X-A: 1\r\nX-Injected: yes",   # a header of its own on every response
    "X-A: 1\nSet-Cookie: a=b",     # a bare LF, which many clients accept as a line end
    "X-A: 1\r\n\r\n<html>",        # the end of the head and a body
    "X-A: a\x01b",                 # a control character (NUL cannot be in argv: see the file test)
    "X-A: \x7f",                   # DEL
    "X(A): 1",                     # not a token
    "X-A: \u20ac",                 # not latin-1: the worker could not even encode it
])
def test_header_with_bytes_invalid_in_a_field_is_refused(tmp_path: Path, header: str) -> None:
    line = refused(tmp_path, "--header", header)
    assert line.startswith("corral: error: --header: invalid header"), line


@pytest.mark.parametrize(("escaped", "shown"), [
    ("1\\r\\nX-Injected: yes", "'\\r'"), ("\\r\\nX-Injected: yes", "'\\r'"), ("a\\u0000b", "'\\x00'")])
def test_header_from_the_config_file_is_refused_naming_file_and_key(tmp_path: Path, escaped: str,
                                                                      shown: str) -> None:
    conf = tmp_path / "corral.toml"
    conf.write_text(f'header = ["X-A: {escaped}"]\n')
    line = refused(tmp_path, "--config", str(conf))
    assert f"{conf}: key 'header'" in line and "invalid header" in line and shown in line, line


def test_valid_headers_are_still_sent(corral: Callable[..., Corral]) -> None:
    proc = corral("guard_app:app", "--header", "X-Tab: a\tb", "--header", "X-Latin: caf\u00e9")
    response = httpx.get(proc.url + "/", timeout=10 * FACTOR)
    assert response.headers["x-tab"] == "a\tb"
    assert response.headers.raw[[name for name, _ in response.headers.raw].index(b"x-latin")][1] == b"caf\xe9"


@pytest.mark.parametrize("mode", ["0o1777", "0o4755", "0o10000"])
def test_uds_mode_above_0o777_is_refused(tmp_path: Path, mode: str) -> None:
    line = refused(tmp_path, "--uds-mode", mode)
    assert "--uds-mode" in line and "0o777" in line, line


def test_loop_zuvloop_without_the_package_names_it(tmp_path: Path) -> None:
    # Missing even where it is installed: the child starts with sys.modules["zuvloop"] = None, which
    # both find_spec() (the master's check) and import (the worker's) take for "not installed".
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text('import sys\nsys.modules["zuvloop"] = None\n')
    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    line = refused(tmp_path, "--loop", "zuvloop", env={"PYTHONPATH": path})
    assert "--loop zuvloop" in line and "pip install zuvloop" in line, line
    assert "corral[standard]" not in line, "the [standard] extra does not bring zuvloop"


def test_loop_zuvloop_runs_zuvloops_new_event_loop(corral: Callable[..., Corral]) -> None:
    """With a zuvloop importable (a stand-in from tests/fakes), the worker runs on its new_event_loop."""
    path = os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
    proc = corral("guard_app:app", "--loop", "zuvloop", env={"PYTHONPATH": path})
    assert httpx.get(proc.url + "/loop", timeout=10 * FACTOR).text == "zuvloop.ZuvLoop"
