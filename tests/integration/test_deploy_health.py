"""The health checks of deploy/ (issue 11): the images' Docker HEALTHCHECK and the units'
ExecStartPost are read from the files and run as Docker and systemd would run them
(with /opt/haroute/bin as this checkout's virtualenv) against a real register and etcd."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

from tests.helpers import register_env
from tests.servers import ROOT, Etcd, Stack, free_port, wait_for

DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
HEALTHCHECK = re.compile(r"^HEALTHCHECK (.*?)\\\n\s*CMD (\[.*\])$", re.M)


def healthcheck(image: str) -> tuple[str, list[str]]:
    """The options and the command of an image's HEALTHCHECK."""
    found = HEALTHCHECK.findall((DEPLOY / "images" / f"Dockerfile.{image}").read_text())
    assert len(found) == 1, f"Dockerfile.{image}: one HEALTHCHECK ... CMD [...] expected"
    options, cmd = found[0]
    return options, list(json.loads(cmd))


def exec_start_post(unit: str) -> list[str]:
    return re.findall(r"^ExecStartPost=(.*)$", (DEPLOY / "systemd" / unit).read_text(), re.M)


def run_here(argv: list[str], metrics_addr: str, timeout: float = 60) -> tuple[int, str]:
    """Run a deploy command with /opt/haroute/bin as this checkout's virtualenv."""
    argv = [a.replace("/opt/haroute/bin/", f"{VENV_BIN}/") for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METRICS_ADDR": metrics_addr}
    out = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return out.returncode, out.stdout + out.stderr


def test_images_healthcheck_asks_healthz_where_the_daemon_listens() -> None:
    """frontend and register check /healthz (not /readyz: an etcd outage is no reason to
    restart them), with a timeout, at a METRICS_ADDR the image sets."""
    for image in ("frontend", "register"):
        options, cmd = healthcheck(image)
        assert cmd == ["/opt/haroute/bin/python", "-m", "discovery.health", "healthz"], image
        assert "--timeout=" in options and "--interval=" in options, image
        env_block = re.search(
            r"^ENV ((?:.*\\\n)*.*)$", (DEPLOY / "images" / f"Dockerfile.{image}").read_text(), re.M
        )
        assert env_block and re.search(r"METRICS_ADDR=127\.0\.0\.1:\d+", env_block.group(1))


def test_healthcheck_command_passes_while_the_daemon_runs(servers: Stack, etcd: Etcd) -> None:
    """The images' HEALTHCHECK command exits 0 while a daemon's loop turns and 1 once it
    is gone (nothing answers)."""
    _, cmd = healthcheck("register")
    port = str(free_port())
    daemon = servers.daemon("register", register_env(etcd, METRICS_ADDR=port))
    code, out = wait_for(
        lambda: (r := run_here(cmd, port))[0] == 0 and r, 30, 0.2, "the healthcheck passing"
    )
    assert "healthz: the loop turns" in out
    daemon.stop()
    code, out = run_here(cmd, port)
    assert code == 1, out


def test_units_wait_for_readyz_without_failing_the_unit(servers: Stack, etcd: Etcd) -> None:
    """haroute-lb and haroute-register wait in ExecStartPost for /readyz, at most 30 s
    (under systemd's 90 s start timeout) and never failing the unit ("-"); the external
    lb does not (haproxy.service starts after it). The command exits 0 once the register
    is ready, and 1 at the end of its wait while etcd is down."""
    commands = {}
    for unit in ("haroute-lb.service", "haroute-register.service"):
        (line,) = exec_start_post(unit)
        assert line.startswith("-"), unit
        argv = shlex.split(line[1:])
        assert argv[:4] == ["/opt/haroute/bin/python", "-m", "discovery.health", "readyz"]
        wait = float(argv[argv.index("--wait") + 1])
        assert 0 < wait < 90, unit
        commands[unit] = argv
    assert exec_start_post("haroute-lb-external.service") == []

    argv = commands["haroute-register.service"]
    port = str(free_port())
    servers.daemon("register", register_env(etcd, METRICS_ADDR=port))
    code, out = run_here(argv, port)
    assert code == 0, out
    assert out.startswith("readyz: synced"), out
    etcd.stop()
    short = [*argv[: argv.index("--wait")], "--wait", "3"]
    code, out = wait_for(
        lambda: (r := run_here(short, port))[0] == 1 and r, 60, 0.2, "readyz failing"
    )
    assert out.startswith("readyz: 503: "), out


def test_probe_is_silent_success_with_metrics_off() -> None:
    """With METRICS_ADDR empty (metrics off) the probe has nothing to ask: exit 0 at once,
    so a unit or image whose operator turned metrics off still starts and stays healthy."""
    _, cmd = healthcheck("frontend")
    code, out = run_here(cmd, "")
    assert (code, out.strip()) == (0, "METRICS_ADDR is off: nothing to ask")
