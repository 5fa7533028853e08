"""The design's import directions hold (docs/DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SANS_IO = ["server_core/control.py", "server_core/state.py", "server_core/proxy.py", "daemon/workers.py",
           "daemon/options.py", "server_core/http/head.py", "server_core/http/chunked.py",
           "server_core/http/reader.py", "server_core/http/events.py", "server_core/http/response.py"]
SANS_IO += [str(p.relative_to(ROOT)) for p in (ROOT / "server_core" / "http").glob("parse_*.py")]
SANS_IO += [str(p.relative_to(ROOT)) for p in (ROOT / "server_core" / "websocket").glob("engine_*.py")]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # Imports under `if TYPE_CHECKING:` never run.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_server_core_never_imports_daemon() -> None:
    for path in (ROOT / "server_core").rglob("*.py"):
        bad = {m for m in imports_of(path) if m == "daemon" or m.startswith("daemon.")}
        assert not bad, f"{path} imports {bad}"


def test_sans_io_modules_import_no_io() -> None:
    for rel in SANS_IO:
        path = ROOT / rel
        if path.exists():
            bad = {m for m in imports_of(path) if m.split(".")[0] in ("asyncio", "socket", "selectors")}
            assert not bad, f"{rel} imports {bad}"


def test_master_modules_do_not_load_the_serving_stack() -> None:
    """Importing the master (CLI, config, arbiter) loads neither uvloop, httptools nor the protocols."""
    code = (
        "import sys, daemon, daemon.cli, daemon.config\n"
        "try:\n    import daemon.arbiter\nexcept ImportError:\n    pass\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('uvloop', 'httptools', 'h11', 'websockets', "
        "'wsproto') or m.startswith(('server_core.http', 'server_core.websocket', 'server_core.worker'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
