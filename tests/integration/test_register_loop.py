"""register's loop turned by hand against a real etcd: each cycle says in one sentence
what it did (discovery.daemon.Turn), and a change costs what it changed (issue 9)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest

from discovery.daemon import Stopper, Turn
from discovery.metrics import Metrics
from discovery.settings import load
from register.app import Register
from register.runtime import HostRuntime
from register.settings import RegisterSettings
from tests.helpers import SHORT_TTL, session
from tests.servers import Etcd, wait_for

WEB = "/internal/app1/dev/web/ghost.example"


def record(instance_id: str, host: str, port: int = 8080) -> str:
    return json.dumps(
        {
            "ID": instance_id,
            "APP": "app1",
            "ENV": "dev",
            "SERVICE": "web",
            "NAME": "ghost.example",
            "PORT": port,
            "TYPE": "TCP",
            "HOST": host,
        }
    )


@pytest.fixture
def register(etcd: Etcd) -> Iterator[Register]:
    """A register of node hosta, its mirrors running in threads, its loop not."""
    env = {
        "ETCD_ENDPOINTS": etcd.endpoint,
        "NODE_NAME": "hosta",
        "HOST_IP": "127.0.0.2",
        "RUNTIME": "host",
        "REGISTER_TTL": str(SHORT_TTL),
    }
    settings = load(RegisterSettings, [], env, "test")
    stop = Stopper()
    s = session(etcd)
    reg = Register(settings, s, HostRuntime("hosta", "127.0.0.2"), Metrics(), stop)
    threads = [
        threading.Thread(target=m.run, args=(stop.event,), daemon=True)
        for m in (reg.announces, reg.frontends)
    ]
    for thread in threads:
        thread.start()
    try:
        yield reg
    finally:
        stop.event.set()
        for thread in threads:
            thread.join(5)
        reg.lease.revoke()


def turn_until(reg: Register, want: str, timeout: float = 10) -> Turn:
    """Turn the loop (as the daemon would, after a wake-up) until a cycle says ``want``."""

    def one() -> Turn | None:
        turn = reg.cycle()
        return turn if want in turn.did else None

    return wait_for(one, timeout, 0.02, f"a cycle that {want!r}")


def turn_while(reg: Register, busy: Callable[[], bool], timeout: float = 10) -> None:
    """Turn the loop until ``busy`` says it is done."""

    def one() -> bool:
        reg.cycle()
        return not busy()

    wait_for(one, timeout, 0.02, "the register to catch up")


def test_a_foreign_announcement_costs_no_derivation(register: Register, etcd: Etcd) -> None:
    """Another host's announcement is parsed and indexed: the cycle says it followed one
    change, derives no key and writes nothing; a local one derives its path and writes
    its keys."""
    s = session(etcd)
    for i in range(50):
        s.put(f"/announce{WEB}/other{i}", record(f"other{i}", f"host{i}"))
    turn_while(register, lambda: len(register.state.index) < 50)
    before = register.state.derivations

    s.put(f"/announce{WEB}/otherx", record("otherx", "hostx"))
    turn = turn_until(register, "followed 1 announcement change(s)")
    assert turn.did == "followed 1 announcement change(s)"
    assert register.state.derivations == before
    assert len(register.state.index) == 51

    s.put(f"/announce{WEB}/mine", record("mine", "hosta"))
    turn = turn_until(register, "followed 1 announcement change(s)")
    assert turn.did == "followed 1 announcement change(s); put 2, deleted 0 key(s)"
    assert register.state.derivations == before + 1
    assert s.get(f"/services{WEB}/mine") is not None
