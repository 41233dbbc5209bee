"""announce and register survive etcd restarts, compaction and freezes (SPEC §4, §5, §8)."""

from __future__ import annotations

import json
import signal
import time

from tests.helpers import announce_env, keys, register_env, session
from tests.servers import Etcd, Stack, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SVC = "/services/internal/app1/dev/web/ghost.example/"
ANN = "/announce/internal/app1/dev/web/ghost.example/"


def _record(instance_id: str, port: int) -> str:
    return json.dumps(
        {
            "ID": instance_id,
            "APP": "app1",
            "ENV": "dev",
            "SERVICE": "web",
            "NAME": "ghost.example",
            "PORT": port,
            "TYPE": "HTTP",
            "HOST": "hosta",
        }
    )


def test_etcd_restart_keys_come_back_and_nothing_is_missed(servers: Stack, etcd: Etcd) -> None:
    """etcd killed and restarted under running daemons: their keys are there again, and
    announcements changed right after the restart are all registered (the watch resumed
    from its last revision)."""
    r = servers.daemon("register", register_env(etcd, FRONTEND_IP="127.0.0.9"))
    for i in range(3):
        servers.daemon("announce", announce_env(etcd, WEB, 8080 + i))
    s = session(etcd)
    wait_for(lambda: len(keys(s, SVC)) == 3, 5, what="3 registered")

    etcd.kill()
    time.sleep(1)
    etcd.start()
    s = session(etcd)
    # Changes right after the restart, while the daemons are still reconnecting.
    lease, _ = s.grant(60)
    for i in range(10):
        s.put(f"{ANN}x{i}", _record(f"x{i}", 9000 + i), lease=lease)
    s.delete(f"{ANN}x3")
    expected = {f"{SVC}hosta-{8080 + i}" for i in range(3)}
    expected |= {f"{SVC}x{i}" for i in range(10) if i != 3}
    wait_for(
        lambda: set(keys(s, SVC)) == expected and len(keys(s, "/skydns/")) == 12,
        10,
        0.1,
        "converged after restart",
    )
    assert "watching again from revision" in r.log()


def test_compacted_watch_revision_lists_again(servers: Stack, etcd: Etcd) -> None:
    """The revision a register would resume from is compacted away while it cannot
    watch: it lists again and converges."""
    r = servers.daemon("register", register_env(etcd))
    servers.daemon("announce", announce_env(etcd, WEB, 8080))
    s = session(etcd)
    wait_for(lambda: len(keys(s, SVC)) == 1, 5, what="registered")

    r.send(signal.SIGSTOP)  # its watch cannot move on while it is stopped
    etcd.kill()
    etcd.start()
    s = session(etcd)
    lease, _ = s.grant(60)
    for i in range(5):
        s.put(f"{ANN}c{i}", _record(f"c{i}", 9100 + i), lease=lease)
    s.delete(f"{ANN}c0")
    s.compact(s.revision())
    r.send(signal.SIGCONT)
    expected = {f"{SVC}hosta-8080"} | {f"{SVC}c{i}" for i in range(1, 5)}
    wait_for(lambda: set(keys(s, SVC)) == expected, 10, 0.1, "converged after compaction")
    assert "listing again" in r.log()


def test_frozen_etcd_recovers_within_10s(servers: Stack, etcd: Etcd) -> None:
    """etcd frozen (SIGSTOP) for 15 s, longer than every TTL: within 10 s of SIGCONT every
    key is back and a new announcement is registered."""
    servers.daemon("register", register_env(etcd, FRONTEND_IP="127.0.0.9"))
    announces = [servers.daemon("announce", announce_env(etcd, WEB, 8080 + i)) for i in range(3)]
    s = session(etcd)
    wait_for(lambda: len(keys(s, SVC)) == 3, 5, what="3 registered")

    etcd.freeze()
    time.sleep(15)
    etcd.thaw()
    thawed = time.monotonic()
    servers.daemon("announce", announce_env(etcd, WEB, 8090))
    expected = {f"{SVC}hosta-{p}" for p in (8080, 8081, 8082, 8090)}
    wait_for(
        lambda: set(keys(s, SVC)) == expected and len(keys(s, "/skydns/")) == 4,
        10,
        0.1,
        "every key back after the freeze",
    )
    assert len(keys(s, ANN)) == 4
    assert time.monotonic() - thawed < 10
    assert all(a.alive() for a in announces)
