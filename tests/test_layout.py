"""The design's import directions hold (docs/DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SANS_IO = ["server_core/control.py", "server_core/state.py", "server_core/proxy.py", "daemon/workers.py",
           "daemon/master_state.py", "daemon/actions.py", "daemon/options.py", "server_core/http/head.py", "server_core/http/chunked.py",
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


def daemon_imports(rel: str) -> set[str]:
    """The ``daemon.*`` modules a daemon module imports, wherever in it (function bodies too)."""
    path = ROOT / rel
    found = {m for m in imports_of(path) if m.startswith("daemon.")}
    for node in ast.walk(ast.parse(path.read_text())):  # `from daemon import x` names modules too
        if isinstance(node, ast.ImportFrom) and node.module == "daemon":
            found.update(f"daemon.{alias.name}" for alias in node.names)
    return found


def test_the_upgrade_modules_import_one_way() -> None:
    """daemon.upgrade uses the preflight (daemon.upgrade_check); the preflight never imports the upgrader,
    and neither reaches into the arbiter: the upgrader sees the master through ``daemon.upgrade.Master``."""
    assert "daemon.upgrade" not in daemon_imports("daemon/upgrade_check.py")
    for rel in ("daemon/upgrade.py", "daemon/upgrade_check.py", "daemon/handoff.py"):
        assert "daemon.arbiter" not in daemon_imports(rel), rel


def code_strings(rel: str) -> list[str]:
    """The string literals of a module's code (docstrings and comments left out)."""
    tree = ast.parse((ROOT / rel).read_text())
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_listeners_are_prepared_in_one_module() -> None:
    """daemon.listeners decides everything about listeners and imports no other daemon module;
    systemd and the upgrade only hand it sockets, and nobody else reads an fd:// address."""
    assert daemon_imports("daemon/listeners.py") == set()
    for rel in ("daemon/systemd.py", "daemon/upgrade.py", "daemon/handoff.py", "daemon/arbiter.py", "daemon/master.py"):
        source = (ROOT / rel).read_text()
        for private in ("_adopt(", "adopt_fd(", "_bind_tcp(", "_bind_unix("):
            assert private not in source, f"{rel} calls {private!r}: listeners are prepared in daemon/listeners.py"
    for path in (ROOT / "daemon").glob("*.py"):
        if path.name != "listeners.py":
            rel = str(path.relative_to(ROOT))
            assert not [text for text in code_strings(rel) if text.startswith("fd://")], \
                f"{rel} parses fd:// itself (use daemon.listeners.parse_fd)"


def test_the_pool_knows_nothing_of_the_loop() -> None:
    """daemon.pool is driven by daemon.arbiter (which holds one) and never imports it; the pool reaches
    processes and the clock through daemon.system only."""
    assert "daemon.arbiter" not in daemon_imports("daemon/pool.py")
    assert "psutil" not in imports_of(ROOT / "daemon/pool.py")
    source = (ROOT / "daemon/pool.py").read_text()
    for call in ("os.fork(", "os.kill(", "os.waitpid(", "time.monotonic(", "psutil."):
        assert call not in source, f"daemon/pool.py calls {call!r}: go through daemon.system.System"
