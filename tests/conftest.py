"""Shared fixtures: a work directory per test and the real servers started in it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers import Etcd, Stack, stack  # noqa: E402


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Stack]:
    """Every server and daemon a test starts; all stopped by pid when it ends."""
    with stack(tmp_path) as s:
        yield s


@pytest.fixture
def etcd(servers: Stack) -> Etcd:
    """A fresh single-member etcd on free loopback ports."""
    return servers.etcd()
