"""The shipped container files (Dockerfile, etc/kubernetes/) and the corralctl systemd drop-in.

No docker or cluster here: the files are parsed and what they reference (ports, probe paths,
options, the app, metric names, timeouts) is checked against corral's own command line,
options and defaults, so an edit on either side that breaks them fails here. The drop-in's
ExecReload command is run for real against a live corral.
"""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.cli import parse_config
from daemon.options import BY_NAME
from daemon.pool import kill_delay
from tests.support import APPS, FACTOR, ROOT, Corral

KUBE = ROOT / "etc" / "kubernetes"


def _docs(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBE / name).read_text()) if doc]


def _deployment() -> dict[str, Any]:
    (deployment,) = [d for d in _docs("deployment.yaml") if d["kind"] == "Deployment"]
    return deployment


def _container() -> dict[str, Any]:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def _container_config() -> Any:
    """The Config corral builds from the Deployment's args and env (WEB_CONCURRENCY = the CPU limit)."""
    container = _container()
    cpu = container["resources"]["limits"]["cpu"]
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref["containerName"] == container["name"]
            env[item["name"]] = str(int(cpu))
    import os

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return parse_config(container["args"])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_deployment_runs_corral_with_options_it_has() -> None:
    config = _container_config()  # raises on an unknown option or a bad value
    assert config.app == "examples.hello:app"
    assert (ROOT / "examples" / "hello.py").exists()
    container = _container()
    # Workers from the CPU limit, through the variable --workers really falls back to.
    assert "WEB_CONCURRENCY" in BY_NAME["workers"].env_fallback
    assert config.workers == int(container["resources"]["limits"]["cpu"])
    assert config.sources["workers"] == "WEB_CONCURRENCY"
    # The control socket variable is the option's own, which corralctl reads too.
    assert "CORRAL_CONTROL_SOCKET" in BY_NAME["control-socket"].env_names()
    assert config.control_socket.startswith("/tmp/")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # writable under readOnlyRootFilesystem


def test_ports_and_probes_match_the_listeners() -> None:
    config = _container_config()
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.port and config.host == "0.0.0.0"
    host, _, metrics_port = config.metrics_bind.rpartition(":")
    assert host == "0.0.0.0" and ports["metrics"] == int(metrics_port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] > config.timeout_worker_boot
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics_port and annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_covers_the_delay_and_corrals_own_stop() -> None:
    config = _container_config()
    assert config.shutdown_delay > 0
    grace = _deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # corral kills a worker still draining after kill_delay(graceful); the kubelet must not be first.
    assert grace > config.shutdown_delay + kill_delay(config.timeout_graceful_shutdown)
    # The readiness probe notices the 503 well within the delay.
    probe = _container()["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < config.shutdown_delay / 2


def test_the_service_and_the_autoscaler_point_at_the_deployment() -> None:
    deployment = _deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = _docs("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in _container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    (hpa,) = _docs("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == "corral_listen_backlog"
    assert f'"{metric}"' in (ROOT / "daemon" / "metrics.py").read_text()


def test_the_dockerfile() -> None:
    steps = _dockerfile()
    base = next(args for kind, args in steps if kind == "FROM")
    assert base.startswith("python:") and base.endswith("-slim")
    user = [args for kind, args in steps if kind == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    # The pod's runAsUser is the image's user.
    assert _deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.split(":")[0])
    entrypoint = json.loads(next(args for kind, args in steps if kind == "ENTRYPOINT"))
    assert entrypoint == ["corral"]  # exec form: corral is PID 1 and gets the TERM
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["corral"] == "daemon.cli:main" and scripts["corralctl"] == "daemon.ctl:main"
    cmd = json.loads(next(args for kind, args in steps if kind == "CMD"))
    config = parse_config(cmd)
    assert config.app == _container_config().app
    exposed = {int(p) for kind, args in steps if kind == "EXPOSE" for p in args.split()}
    assert exposed == {config.port, int(config.metrics_bind.rpartition(":")[2])}
    copied = [args.split()[0] for kind, args in steps if kind == "COPY"]
    for path in copied:
        assert (ROOT / path).exists(), path
    assert {"daemon", "server_core", "examples"} <= set(copied)


# -- the corralctl reload drop-in ----------------------------------------------------------------


def _dropin() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / "corral.service.d" / "corralctl-reload.conf")
    return parser


def test_the_dropin_reload_command_fails_when_the_reload_does(corral: Callable[..., Corral],
                                                             tmp_path: Path) -> None:
    service = _dropin()["Service"]
    name, _, value = service["Environment"].partition("=")
    assert name in BY_NAME["control-socket"].env_names()
    assert value.startswith(f"/run/{service['RuntimeDirectory']}/")
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.read(ROOT / "systemd" / "corral.service")
    start_timeout = float(unit["Service"]["TimeoutStartSec"])
    argv = shlex.split(service["ExecReload"])
    assert argv[0] == "/usr/local/bin/corralctl" and argv[-1] == "reload"
    assert float(argv[argv.index("--timeout") + 1]) < start_timeout

    # Run it as systemd would: the unit's variable in both corral's and the command's environment.
    sock = tmp_path / "control.sock"
    conf = tmp_path / "corral.toml"
    conf.write_text("timeout-keep-alive = 5\n")
    env = {name: str(sock)}
    proc = corral("master_app:app", "--workers", "1", "--config", str(conf), "--app-dir", str(APPS),
                  app_dir=False, env=env)
    proc.wait_log("worker_ready")
    script = Path(sys.executable).parent / "corralctl"
    command = [str(script) if script.exists() else sys.executable, *argv[1:]]
    if not script.exists():
        command[1:1] = ["-m", "daemon.ctl"]
    import os

    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120 * FACTOR)
    assert done.returncode == 0, done.stderr
    conf.write_text("timeout-keep-alive = [\n")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120 * FACTOR)
    assert done.returncode == 1 and "reload refused" in done.stderr, (done.stdout, done.stderr)
    if proc.popen.poll() is not None:
        pytest.fail(proc.output())
