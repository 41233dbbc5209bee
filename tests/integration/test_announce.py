"""announce against a real etcd (SPEC §4)."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.helpers import SHORT_TTL, announce_env, session
from tests.servers import Etcd, Stack, free_port, wait_for

PATH = "/internal/app1/dev/web/ghost.example"
KEY = "/announce/internal/app1/dev/web/ghost.example/hosta-8080"


def test_record_appears_within_one_second(servers: Stack, etcd: Etcd) -> None:
    """The announce record, with the original design's fields, is in etcd within 1 s."""
    s = session(etcd)
    d = servers.daemon("announce", announce_env(etcd, PATH, 8080))
    kv = wait_for(lambda: s.get(KEY), 1.0, what="announce record")
    assert time.monotonic() - d.started_at < 1.0
    assert json.loads(kv.value) == {
        "ID": "hosta-8080",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "web",
        "NAME": "ghost.example",
        "PORT": 8080,
        "TYPE": "HTTP",
        "HOST": "hosta",
    }
    assert kv.lease != 0


def test_sigterm_revokes_at_once(servers: Stack, etcd: Etcd) -> None:
    """SIGTERM revokes the lease: the record is gone within 200 ms and announce exits 0."""
    s = session(etcd)
    d = servers.daemon("announce", announce_env(etcd, PATH, 8080))
    wait_for(lambda: s.get(KEY), 5, what="announce record")
    sent = time.monotonic()
    d.send(signal.SIGTERM)
    wait_for(lambda: s.get(KEY) is None, 0.2, 0.005, "record gone after SIGTERM")
    assert time.monotonic() - sent < 0.2
    assert d.proc is not None and d.proc.wait(5) == 0


def test_sigkill_expires_within_ttl(servers: Stack, etcd: Etcd) -> None:
    """After SIGKILL nobody keeps the lease alive: the record is gone within TTL + 1 s."""
    s = session(etcd)
    d = servers.daemon("announce", announce_env(etcd, PATH, 8080))
    wait_for(lambda: s.get(KEY), 5, what="announce record")
    time.sleep(1.5)  # past at least one keepalive, so the full TTL is in play
    d.send(signal.SIGKILL)
    wait_for(lambda: s.get(KEY) is None, SHORT_TTL + 1, 0.05, "record expired after SIGKILL")


@pytest.mark.slow
def test_default_ttl_is_15s_and_kept_alive(servers: Stack, etcd: Etcd) -> None:
    """With default timers the lease has TTL 15 s and is refreshed: alive after 20 s."""
    s = session(etcd)
    env = announce_env(etcd, PATH, 8080)
    del env["ANNOUNCE_TTL"], env["ANNOUNCE_INTERVAL"]
    servers.daemon("announce", env)
    kv = wait_for(lambda: s.get(KEY), 5, what="announce record")
    assert 13 <= s.time_to_live(kv.lease) <= 15
    time.sleep(20)
    again = s.get(KEY)
    assert again is not None and again.lease == kv.lease
    assert s.time_to_live(kv.lease) >= 15 - 5 - 1  # refreshed every 5 s


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"ANNOUNCE_PATH": "/internal/app1/dev"}, "ANNOUNCE_PATH"),
        ({"PORT": "0"}, "PORT"),
        ({"TYPE": "UDP"}, "TYPE"),
        ({"ANNOUNCE_PATH": "/internal/app1/dev/web/default"}, "ANNOUNCE_PATH"),
        ({"ANNOUNCE_TTL": "1"}, "ANNOUNCE_TTL"),
        ({"ANNOUNCE_INTERVAL": "5"}, "ANNOUNCE_INTERVAL"),
        ({"ETCD_ENDPOINTS": "ftp://x"}, "ETCD_ENDPOINTS"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    servers: Stack, etcd: Etcd, override: dict[str, str], setting: str
) -> None:
    """A bad setting gets one line naming it and exit status 2."""
    d = servers.daemon("announce", {**announce_env(etcd, PATH, 8080), **override})
    assert d.proc is not None and d.proc.wait(10) == 2
    lines = d.log().strip().splitlines()
    assert len(lines) == 1 and f"bad setting {setting}" in lines[0], lines


def test_type_is_case_insensitive(servers: Stack, etcd: Etcd) -> None:
    """TYPE=tcp is TCP."""
    s = session(etcd)
    servers.daemon("announce", announce_env(etcd, PATH, 8080, type_="tcp"))
    kv = wait_for(lambda: s.get(KEY), 5, what="announce record")
    assert json.loads(kv.value)["TYPE"] == "TCP"


def test_two_services_of_one_host_do_not_collide(servers: Stack, etcd: Etcd) -> None:
    """With ANNOUNCE_HOST, the default ID is <host>-<PORT>: two ports, two records."""
    s = session(etcd)
    servers.daemon("announce", announce_env(etcd, PATH, 8080))
    servers.daemon("announce", announce_env(etcd, PATH, 8081))
    wait_for(lambda: len(s.get_prefix("/announce/")[0]) == 2, 5, what="two records")


def test_same_id_of_a_live_process_is_refused(servers: Stack, etcd: Etcd) -> None:
    """A second live process with the same ID exits 1 naming ANNOUNCE_ID; the first keeps
    its record."""
    s = session(etcd)
    servers.daemon("announce", announce_env(etcd, PATH, 8080, ANNOUNCE_ID="web1"))
    key = "/announce/internal/app1/dev/web/ghost.example/web1"
    first = wait_for(lambda: s.get(key), 5, what="first record")
    second = servers.daemon("announce", announce_env(etcd, PATH, 9090, ANNOUNCE_ID="web1"))
    assert second.proc is not None and second.proc.wait(SHORT_TTL + 5) == 1
    assert "ANNOUNCE_ID 'web1'" in second.log()
    still = s.get(key)
    assert still is not None and still.lease == first.lease
    assert json.loads(still.value)["PORT"] == 8080


def test_restart_after_crash_takes_the_key_over(servers: Stack, etcd: Etcd) -> None:
    """A process restarted right after a crash waits out its dead predecessor's lease and
    announces, instead of failing."""
    s = session(etcd)
    env = announce_env(etcd, PATH, 8080)
    first = servers.daemon("announce", env)
    old = wait_for(lambda: s.get(KEY), 5, what="first record")
    first.send(signal.SIGKILL)
    servers.daemon("announce", env)
    new = wait_for(
        lambda: (kv := s.get(KEY)) is not None and kv.lease != old.lease and kv,
        SHORT_TTL + 4,
        what="record under a new lease",
    )
    assert json.loads(new.value)["PORT"] == 8080


def test_waits_for_unreachable_etcd_then_announces(servers: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """etcd down at start: announce waits with back-off (no crash) and announces once etcd
    is up."""
    etcd = Etcd(tmp_path)
    d = servers.daemon("announce", announce_env(etcd, PATH, 8080))
    time.sleep(2)
    assert d.alive()
    assert "etcd unavailable" in d.log()
    servers._etcds.append(etcd)
    etcd.start()
    wait_for(lambda: session(etcd).get(KEY), 5, what="record after etcd came up")


def test_lease_lost_is_regranted_and_record_rewritten(servers: Stack, etcd: Etcd) -> None:
    """If its lease disappears (revoked behind its back), announce grants a new one and
    writes its record again; the loss and the new grant are counted."""
    from tests.helpers import metric_value, scrape

    s = session(etcd)
    port = free_port()
    servers.daemon("announce", announce_env(etcd, PATH, 8080, METRICS_ADDR=str(port)))
    kv = wait_for(lambda: s.get(KEY), 5, what="record")
    wait_for(lambda: _try_scrape(port), 5, what="metrics")
    wait_for(lambda: metric_value(scrape(port), "haroute_announced") == 1, 5, what="announced")
    s.revoke(kv.lease)
    wait_for(
        lambda: (new := s.get(KEY)) is not None and new.lease != kv.lease,
        5,
        what="record under a new lease",
    )
    wait_for(
        lambda: metric_value(scrape(port), "haroute_leases_regranted_total") == 1,
        5,
        what="regrant counted",
    )
    text = scrape(port)
    assert metric_value(text, "haroute_leases_lost_total") == 1
    assert metric_value(text, "haroute_leases_granted_total") == 2


def test_metrics_endpoint(servers: Stack, etcd: Etcd) -> None:
    """METRICS_ADDR as a bare port serves Prometheus metrics on loopback."""
    from tests.helpers import metric_value, scrape

    port = free_port()
    servers.daemon("announce", announce_env(etcd, PATH, 8080, METRICS_ADDR=str(port)))
    text = wait_for(lambda: _try_scrape(port), 5, what="metrics")
    wait_for(
        lambda: metric_value(scrape(port), "haroute_leases_granted_total") == 1,
        5,
        what="lease counted",
    )
    assert "haroute_etcd_connected" in text


def _try_scrape(port: int) -> str | None:
    from tests.helpers import scrape

    try:
        return scrape(port)
    except OSError:
        return None
