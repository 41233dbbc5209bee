"""The README's demo works as a person would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_demo_check_passes() -> None:
    """`scripts/demo.py --check` brings up etcd, register, a frontend lb, a sidecar lb and
    the example services on loopback, makes the requests it tells a person to make, and
    stops everything it started."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: check passed" in out.stdout
    assert "curl -H 'Host: ghost.example.web.dev.app1.internal.skydns.local'" in out.stdout
