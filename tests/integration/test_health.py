"""/healthz and /readyz of the real daemons (SPEC §7, issue 11): each started while etcd
is frozen or stopped, then etcd comes, goes and comes back. /readyz follows it; /healthz
stays 200 throughout, since the loop keeps turning (backing off) while etcd is away."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.helpers import announce_env, probe, register_env, session
from tests.lb_helpers import host_of, lb_stack
from tests.servers import Daemon, Etcd, Stack, free_port, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
# Generous: a frozen etcd is noticed through gRPC keepalive (about 7 s), a stopped one at
# the daemon's next etcd call; the machine may be loaded.
DEADLINE = 60.0


def answers(port: int, path: str, status: int) -> Callable[[], str | None]:
    """A predicate: ``path`` answers ``status``; the body then (for the message)."""

    def check() -> str | None:
        got, body = probe(port, path)
        return body or "(empty)" if got == status else None

    return check


def wait_status(port: int, path: str, status: int, what: str, daemon: Daemon) -> str:
    try:
        return wait_for(answers(port, path, status), DEADLINE, 0.1, f"{path} {status}: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; now {probe(port, path)}\n{daemon.log()[-3000:]}") from None


def first_answer(port: int, path: str) -> tuple[int, str]:
    """The first answer once the daemon's server listens."""
    return wait_for(lambda: (r := probe(port, path))[0] != -1 and r, 30, 0.05, f"{path} listening")


def cycle_etcd_down_and_up(etcd: Etcd, port: int, daemon: Daemon, *, freeze: bool) -> None:
    """etcd goes away (frozen or stopped): /readyz 503, /healthz still 200; back: 200."""
    if freeze:
        etcd.freeze()
    else:
        etcd.stop()
    down = wait_status(port, "/readyz", 503, "etcd is down", daemon)
    assert probe(port, "/healthz")[0] == 200, "etcd down is no reason to restart a daemon"
    if freeze:
        etcd.thaw()
    else:
        etcd.start()
    wait_status(port, "/readyz", 200, "etcd is back", daemon)
    assert down.strip(), "a 503 says why"


def test_announce_readyz_follows_its_record_and_etcd(servers: Stack, etcd: Etcd) -> None:
    """announce started with etcd frozen: /readyz 503 (nothing written), /healthz 200;
    200 once its record is written; 503 while etcd is stopped, 200 when it is back."""
    port = free_port()
    etcd.freeze()
    daemon = servers.daemon("announce", announce_env(etcd, WEB, 8080, METRICS_ADDR=str(port)))
    status, body = first_answer(port, "/readyz")
    assert status == 503, body
    assert probe(port, "/healthz")[0] == 200
    etcd.thaw()
    ready = wait_status(port, "/readyz", 200, "the record written", daemon)
    assert "/announce/internal/app1/dev/web/ghost.example/hosta-8080 is written" in ready
    assert session(etcd).get("/announce/internal/app1/dev/web/ghost.example/hosta-8080")
    cycle_etcd_down_and_up(etcd, port, daemon, freeze=False)
    assert daemon.alive()


def test_register_readyz_follows_its_mirrors_and_etcd(servers: Stack, etcd: Etcd) -> None:
    """register started with etcd stopped: /readyz 503, /healthz 200; 200 once connected,
    synced and its keys written; 503 while etcd is frozen, 200 after."""
    port = free_port()
    etcd.stop()
    daemon = servers.daemon("register", register_env(etcd, METRICS_ADDR=str(port)))
    status, body = first_answer(port, "/readyz")
    assert status == 503, body
    assert probe(port, "/healthz")[0] == 200
    etcd.start()
    assert "synced" in wait_status(port, "/readyz", 200, "synced", daemon)
    cycle_etcd_down_and_up(etcd, port, daemon, freeze=True)
    assert daemon.alive()


def test_lb_readyz_follows_etcd_and_haproxy(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """lb started with etcd frozen: HAProxy runs (empty) but /readyz is 503 until the lb
    has listed its prefix; 200 once synced and converged; 503 while etcd is stopped,
    200 after; /healthz 200 throughout."""
    with lb_stack(servers, etcd, tmp_path) as s:
        etcd.freeze()  # after the stack's own lease for its records
        lb = s.start()
        status, body = first_answer(s.metrics_port, "/readyz")
        assert status == 503 and "not synced" in body, body
        assert probe(s.metrics_port, "/healthz")[0] == 200
        etcd.thaw()
        wait_status(s.metrics_port, "/readyz", 200, "synced and converged", lb)
        cycle_etcd_down_and_up(etcd, s.metrics_port, lb, freeze=False)
        assert lb.alive()


def test_lb_readyz_is_503_while_a_reload_is_due(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """An lb that has a change waiting for a reload (RELOAD_MIN_INTERVAL) is not converged:
    /readyz 503 saying so, then 200 once the reload has run and the change serves."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0", RELOAD_MIN_INTERVAL="15") as s:
        lb = s.start()
        wait_status(s.metrics_port, "/readyz", 200, "synced", lb)
        first = s.backend("one")
        s.put(WEB, "w1", first.port)  # a new backend: a reload, at once
        wait_for(lambda: s.answers(host_of(WEB)) == {"one"}, 30, 0.1, "the first service")
        other = "/internal/app1/dev/api/ghost.example"
        second = s.backend("two")
        s.put(other, "a1", second.port)  # another: its reload waits for the interval
        due = wait_status(s.metrics_port, "/readyz", 503, "a reload due", lb)
        assert "not converged: a reload is due" in due, due
        assert probe(s.metrics_port, "/healthz")[0] == 200
        wait_status(s.metrics_port, "/readyz", 200, "the reload done", lb)
        assert s.answers(host_of(other)) == {"two"}
