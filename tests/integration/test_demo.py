"""The README's demo works as a person would run it."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def test_demo_check_passes() -> None:
    """`scripts/demo.py --check` brings up etcd, register and the example services on
    loopback, verifies the keys and the instances, and stops everything it started."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo: check passed" in out.stdout
    assert "/skydns/local/skydns/internal/app1/dev/db/example/ghost/0ce60d000eac" in out.stdout
