"""--reload: uvicorn's patterns, the watcher thread, and the real CLI reloading code on a change."""

from __future__ import annotations

import signal
import threading
from pathlib import Path, PurePath
from types import SimpleNamespace

import httpx
import pytest

from daemon.reloader import DEFAULT_EXCLUDES, PathFilter, ReloadWatcher, resolve_patterns
from tests.support import wait_until

APP_TEMPLATE = '''
VERSION = "{version}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
'''


def test_default_patterns_are_uvicorns() -> None:
    assert resolve_patterns((), ()) == (["*.py"], [".*", ".py[cod]", ".sw.*", "~*"])


def test_user_patterns_override_the_other_sides_defaults() -> None:
    includes, excludes = resolve_patterns((".env", "*.html"), ())
    assert includes == ["*.py", ".env", "*.html"]
    assert ".env" not in excludes and excludes == list(DEFAULT_EXCLUDES)  # .env is not a default exclude
    includes, excludes = resolve_patterns((".*",), ("*.py", "tmp*"))
    assert includes == [".*"]
    assert excludes == [".py[cod]", ".sw.*", "~*", "*.py", "tmp*"]


@pytest.mark.parametrize(("path", "wanted"), [
    ("/src/app/main.py", True),
    ("/src/app/pkg/deep/mod.py", True),
    ("/src/app/.hidden.py", False),
    ("/src/app/.git/hooks/x.py", False),
    ("/src/app/main.pyc", False),
    ("/src/app/.main.py.swp", False),
    ("/src/app/~main.py", False),
    ("/src/app/notes.txt", False),
    ("/src/app/templates/index.html", False),
])
def test_path_filter_defaults(path: str, wanted: bool) -> None:
    includes, excludes = resolve_patterns((), ())
    assert PathFilter([Path("/src/app")], includes, excludes)(None, path) is wanted


def test_path_filter_user_patterns() -> None:
    includes, excludes = resolve_patterns(("templates/*.html",), ("generated*",))
    check = PathFilter([Path("/src/app")], includes, excludes)
    assert check(None, "/src/app/templates/index.html")
    assert not check(None, "/src/app/other/index.html")
    assert not check(None, "/src/app/generated_models.py")
    assert not check(None, str(PurePath("/src/app/generated/models.py")))


def test_default_excludes_catch_compiled_and_swap_files_by_suffix() -> None:
    includes, excludes = resolve_patterns(("*",), ())
    check = PathFilter([Path("/src")], includes, excludes)
    assert check(None, "/src/data.json")
    assert not check(None, "/src/app.pyc")
    assert not check(None, "/src/app.py.swp")
    includes, excludes = resolve_patterns(("*", ".py[cod]"), ())  # the user takes the default back
    assert PathFilter([Path("/src")], includes, excludes)(None, "/src/app.pyc")


def _reload_config(directory: Path, **kw: object) -> SimpleNamespace:
    values = {"reload_dir": (str(directory),), "reload_include": (), "reload_exclude": (), "reload_delay": 0.1}
    values.update(kw)
    return SimpleNamespace(**values)


def test_watcher_fires_on_a_py_change_and_not_on_excluded_files(tmp_path: Path) -> None:
    batches: list[list[str]] = []
    fired = threading.Event()

    def on_change(paths: list[str]) -> None:
        batches.append(paths)
        fired.set()

    (tmp_path / "app.py").write_text("x = 1\n")
    watcher = ReloadWatcher(_reload_config(tmp_path), on_change)  # type: ignore[arg-type]
    watcher.start()
    try:
        assert watcher.wait_started(20)
        # Excluded and not-included files first: they must never show up in a batch.
        (tmp_path / "notes.txt").write_text("hello\n")
        (tmp_path / ".hidden.py").write_text("y = 1\n")
        (tmp_path / "app.pyc").write_bytes(b"\0")
        (tmp_path / "app.py.swp").write_text("swap\n")
        (tmp_path / "app.py").write_text("x = 2\n")
        wait_until(fired.is_set, 20, "the watcher to report app.py")
        reported = {Path(p).name for batch in batches for p in batch}
        assert reported == {"app.py"}, batches
    finally:
        watcher.stop()
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_watcher_stops_promptly_when_idle(tmp_path: Path) -> None:
    watcher = ReloadWatcher(_reload_config(tmp_path), lambda paths: None)  # type: ignore[arg-type]
    watcher.start()
    assert watcher.wait_started(20)
    watcher.stop(timeout=10)
    assert watcher._thread is not None and not watcher._thread.is_alive()


def _get(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def test_reload_end_to_end(tmp_path: Path, corral) -> None:
    src = tmp_path / "src"
    src.mkdir()
    module = src / "reload_app.py"
    module.write_text(APP_TEMPLATE.format(version="one"))
    server = corral("reload_app:app", "--reload", "--reload-dir", str(src), "--reload-delay", "0.1",
                    "--app-dir", str(src), app_dir=False, cwd=src)
    assert _get(server.url) == "one"
    server.wait_log("reload_watching")

    module.write_text(APP_TEMPLATE.format(version="two"))
    wait_until(lambda: _get(server.url) == "two", 30, "the edited code to be served", alive=server.dead)

    # A syntax error: shown in the log, the running worker keeps serving the last good code.
    module.write_text(APP_TEMPLATE.format(version="three") + "\ndef broken(:\n")
    wait_until(lambda: "SyntaxError" in server.output(), 30, "the syntax error in the log", alive=server.dead)
    for _ in range(5):
        assert _get(server.url) == "two"

    module.write_text(APP_TEMPLATE.format(version="four"))
    wait_until(lambda: _get(server.url) == "four", 30, "the fixed code to be served", alive=server.dead)

    server.signal(signal.SIGINT)
    assert server.wait_exit(40) == 0


def test_reload_survives_a_syntax_error_at_first_start(tmp_path: Path, corral) -> None:
    """In reload mode a broken app at first start is shown and waited on, not exit status 3."""
    src = tmp_path / "src"
    src.mkdir()
    module = src / "reload_app.py"
    module.write_text(APP_TEMPLATE.format(version="broken") + "\ndef broken(:\n")
    server = corral("reload_app:app", "--reload", "--reload-dir", str(src), "--reload-delay", "0.1",
                    "--app-dir", str(src), app_dir=False, cwd=src, wait=False)
    wait_until(lambda: "SyntaxError" in server.output(), 30, "the syntax error in the log", alive=server.dead)
    server.wait_log("reload_watching")
    module.write_text(APP_TEMPLATE.format(version="fixed"))
    wait_until(lambda: _get(server.url) == "fixed", 30, "the fixed code to be served", alive=server.dead)
    server.signal(signal.SIGINT)
    assert server.wait_exit(40) == 0
