"""lb with a real etcd, a real HAProxy and real backends (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tests.helpers import announce_env, register_env
from tests.lb_helpers import (
    EchoServer,
    LbStack,
    external_haproxy,
    host_of,
    lb_stack,
    record,
    request_loop,
)
from tests.servers import Etcd, Stack, free_port, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SIT = "/internal/app1/sit/web/ghost.example"
DB = "/internal/app1/dev/db/ghost.example"


def counted(lb: LbStack, name: str, at_least: float, **labels: str) -> None:
    """The lb counts after HAProxy acknowledged: wait for the count, do not race it."""
    wait_for(lambda: lb.metric(name, **labels) >= at_least, 5, what=f"{name}{labels}")


def serves(lb: LbStack, path: str, names: set[str], timeout: float = 10) -> None:
    wait_for(lambda: lb.answers(host_of(path)) == names, timeout, 0.05, f"{path} -> {names}")


def test_add_remove_move_without_reload(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """Requests follow add, remove and move of instances with 0 reloads, as counted by
    HAProxy's master (`show proc`)."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2, b3 = lb.backend("b1"), lb.backend("b2"), lb.backend("b3")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        reloads = lb.haproxy_reloads()
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        lb.delete(WEB, "w1")
        serves(lb, WEB, {"b2"})
        lb.put(WEB, "w2", b3.port)  # w2 moves to b3's port
        serves(lb, WEB, {"b3"})
        assert lb.haproxy_reloads() == reloads
        counted(lb, "haroute_runtime_commands_total", 4, result="ok")
        status, _ = lb.get("nothing.example")
        assert status == 503


def test_new_environments_reload_once_and_coalesce(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Without spare backends (SPARE_BACKENDS=0, or a pool that ran out) a new
    environment costs exactly 1 reload; 20 new ones inside one RELOAD_MIN_INTERVAL cost
    at most 2."""
    with lb_stack(servers, etcd, tmp_path, RELOAD_MIN_INTERVAL="2", SPARE_BACKENDS="0") as lb:
        b = lb.backend("b")
        lb.start()
        start = lb.haproxy_reloads()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        assert lb.haproxy_reloads() == start + 1
        time.sleep(2.1)
        before = lb.haproxy_reloads()
        paths = [f"/internal/app1/dev/web/env{i}" for i in range(20)]
        for i, path in enumerate(paths):
            lb.put(path, f"i{i}", b.port)
        for path in paths:
            serves(lb, path, {"b"})
        assert lb.haproxy_reloads() - before <= 2


def test_slots_exhausted_adds_servers_without_reload(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """3x SLOTS instances in one backend: the ones beyond the rendered slots are added with
    `add server` (0 reloads, by HAProxy's own count) and serve; a later reload renders
    them as ordinary slots and every instance still serves."""
    with lb_stack(servers, etcd, tmp_path, SLOTS="2", SPARE_BACKENDS="0") as lb:
        backends = [lb.backend(f"b{i}") for i in range(6)]
        lb.start()
        lb.put(WEB, "w0", backends[0].port)
        serves(lb, WEB, {"b0"})
        reloads = lb.haproxy_reloads()
        for i, b in enumerate(backends[1:], start=1):
            lb.put(WEB, f"w{i}", b.port)
        names = {b.name for b in backends}
        wait_for(
            lambda: lb.answers(host_of(WEB)) | lb.answers(host_of(WEB)) == names,
            15,
            0.1,
            "all six serve",
        )
        assert lb.haproxy_reloads() == reloads
        assert "server s6 " not in lb.config()
        wait_for(lambda: lb.metric("haroute_dynamic_servers") >= 1, 5, what="dynamic servers")
        assert lb.metric("haroute_reloads_total", reason="slots_exhausted", result="ok") == 0
        # Any later reload (a new environment) renders them: nothing is lost.
        lb.put(SIT, "s1", backends[0].port)
        serves(lb, SIT, {"b0"})
        assert lb.haproxy_reloads() == reloads + 1
        assert "server s6 " in lb.config()
        wait_for(
            lambda: lb.answers(host_of(WEB)) | lb.answers(host_of(WEB)) == names,
            15,
            0.1,
            "all six serve after the reload",
        )
        wait_for(lambda: lb.metric("haroute_dynamic_servers") == 0, 5, what="none dynamic")


def test_no_failed_request_during_changes_and_reloads(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A bounded request loop during 100 instance changes and 5 reloads sees 0 failures."""
    with lb_stack(servers, etcd, tmp_path, DRAIN_TIMEOUT="0.5", SPARE_BACKENDS="0") as lb:
        backends = [lb.backend(f"b{i}") for i in range(4)]
        lb.start()
        lb.put(WEB, "w0", backends[0].port)
        lb.put(WEB, "w1", backends[1].port)
        serves(lb, WEB, {"b0", "b1"})
        stop, results = threading.Event(), []  # type: ignore[var-annotated]
        loops = [
            threading.Thread(target=request_loop, args=(lb, host_of(WEB), stop, results))
            for _ in range(4)
        ]
        for t in loops:
            t.start()
        try:
            reloads = lb.haproxy_reloads()
            for change in range(100):
                # w0 stays; w1..w3 come and go, so there is always a live server.
                i = 1 + change % 3
                if change % 2 == 0:
                    lb.put(WEB, f"w{i}", backends[i].port)
                else:
                    lb.delete(WEB, f"w{i}")
                if change % 20 == 10:
                    lb.put(f"/internal/app1/dev/web/new{change}", "x", backends[0].port)
                time.sleep(0.03)
            wait_for(lambda: lb.haproxy_reloads() >= reloads + 5, 10, what="5 reloads")
            time.sleep(1)
        finally:
            stop.set()
            for t in loops:
                t.join(30)
        assert len(results) > 200
        assert [r for r in results if r != 200] == []


def test_template_hot_reload(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """An edited template is re-rendered, checked and reloaded (reason template_changed);
    an edit that fails `haproxy -c` is never installed: the old config keeps serving and
    the failure is counted."""
    templates = tmp_path / "templates"
    templates.mkdir()
    source = Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg.j2"
    (templates / "haproxy.cfg.j2").write_text(source.read_text())
    with lb_stack(servers, etcd, tmp_path, TEMPLATE_DIR=str(templates)) as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        edited = source.read_text().replace("timeout client 60s", "timeout client 61s")
        (templates / "haproxy.cfg.j2").write_text(edited)
        counted(lb, "haroute_reloads_total", 1, reason="template_changed", result="ok")
        assert "timeout client 61s" in lb.config()
        serves(lb, WEB, {"b"})
        good = lb.config()
        (templates / "haproxy.cfg.j2").write_text(edited + "\nthis is not haproxy\n")
        wait_for(
            lambda: lb.metric("haroute_config_check_failures_total") >= 1,
            10,
            what="check failure counted",
        )
        assert lb.config() == good
        serves(lb, WEB, {"b"})
        counted(lb, "haroute_reloads_total", 1, reason="template_changed", result="failed")
        assert lb.lb is not None and "config check failed" in lb.lb.log()
        # A refused template does not freeze server changes of the running backends.
        b2 = lb.backend("b2")
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b", "b2"})
        assert lb.config() == good


def test_tcp_sidecar_and_port_held_elsewhere(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """A TCP service listens on its port; one whose port another process holds is
    reported and left out, later changes still reload, and once the port is free the
    service gets it."""
    echo = EchoServer()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    held_port = blocker.getsockname()[1]
    try:
        with lb_stack(servers, etcd, tmp_path) as lb:
            b = lb.backend("b")
            lb.start()
            free = free_port()
            lb.put(DB, "db1", echo.port, type_="TCP", announce_port=free)
            wait_for(lambda: _echo(free) == b"ping", 10, 0.1, "echo through the sidecar")
            lb.put("/internal/app1/sit/db", "db2", echo.port, type_="TCP", announce_port=held_port)
            wait_for(
                lambda: lb.lb is not None and "held by another process" in lb.lb.log(),
                15,
                0.1,
                "port clash reported",
            )
            lb.put(SIT, "s1", b.port)
            serves(lb, SIT, {"b"})
            assert _echo(free) == b"ping"
            blocker.close()
            wait_for(lambda: _echo(held_port) == b"ping", 10, 0.1, "the freed port taken")
    finally:
        blocker.close()
        echo.close()


def _echo(port: int) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"ping")
            return sock.recv(16)
    except OSError:
        return None


def test_haproxy_killed_is_restored(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """HAProxy's worker killed (the master goes with it): the lb starts it again with the
    current servers, runtime changes included."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        lb.put(WEB, "w2", b2.port)  # a runtime change, not yet in any rendered file
        serves(lb, WEB, {"b1", "b2"})
        info = lb.master("show proc")
        worker = int(
            next(line.split()[0] for line in info.splitlines() if " worker " in f" {line} ")
        )
        os.kill(worker, signal.SIGKILL)
        serves(lb, WEB, {"b1", "b2"}, timeout=10)
        counted(lb, "haroute_reloads_total", 1, reason="haproxy_restarted", result="ok")


def test_lb_sigkill_and_restart_adopts_with_no_reload(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """lb killed with SIGKILL: HAProxy keeps serving; a new lb adopts it with 0 reloads."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        first = lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        reloads = lb.haproxy_reloads()
        first.stop(signal.SIGKILL)
        serves(lb, WEB, {"b1", "b2"})  # HAProxy outlives its lb
        second = lb.start()
        time.sleep(2)
        assert lb.haproxy_reloads() == reloads
        assert "adopted the running HAProxy" in second.log()
        lb.delete(WEB, "w1")
        serves(lb, WEB, {"b2"})
        assert lb.haproxy_reloads() == reloads


def test_sigterm_soft_stops_haproxy(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """SIGTERM to the lb soft-stops its HAProxy and the lb exits 0."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        d = lb.start()
        pid = lb.haproxy_pid()
        assert pid is not None
        assert d.stop(signal.SIGTERM) == 0
        wait_for(lambda: lb.haproxy_pid() is None, 10, what="HAProxy stopped")


def test_etcd_restart_during_traffic(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """etcd killed and restarted during traffic: 0 failed requests, then new changes
    converge without a reload."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        reloads = lb.haproxy_reloads()
        stop, results = threading.Event(), []  # type: ignore[var-annotated]
        loop = threading.Thread(target=request_loop, args=(lb, host_of(WEB), stop, results))
        loop.start()
        try:
            etcd.kill()
            time.sleep(2)
            etcd.start()
            from tests.helpers import session

            lb.session = session(etcd)
            lb.put(WEB, "w2", b2.port)
            serves(lb, WEB, {"b1", "b2"}, timeout=15)
        finally:
            stop.set()
            loop.join(30)
        assert results and [r for r in results if r != 200] == []
        assert lb.haproxy_reloads() == reloads


def test_frozen_etcd_does_not_empty_the_backend(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """etcd frozen longer than the records' TTL: when their leases expire at once, the
    mass-removal guard keeps the servers."""
    with lb_stack(servers, etcd, tmp_path, MASS_REMOVAL_GRACE="30") as lb:
        backends = [lb.backend(f"b{i}") for i in range(4)]
        lb.start()
        lease, _ = lb.session.grant(3)
        for i, b in enumerate(backends):
            lb.session.put(
                f"/services{WEB}/w{i}", record(WEB, f"w{i}", "127.0.0.2", b.port), lease=lease
            )
        names = {b.name for b in backends}
        serves(lb, WEB, names)
        etcd.freeze()
        time.sleep(6)
        etcd.thaw()
        wait_for(
            lambda: not lb.session.get_prefix(f"/services{WEB}/")[0], 10, 0.2, "leases expired"
        )
        time.sleep(1.5)
        assert lb.answers(host_of(WEB)) == names
        counted(lb, "haroute_mass_removal_held_servers", 4)


def test_hostile_service_records_never_reach_haproxy(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Values aimed at HAProxy (newline, ;, #, spaces in IP, port, name) never appear in
    haproxy.cfg or hosts.map, and the good routes keep working."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        evil = {
            "ID": "e",
            "APP": "app1",
            "ENV": "dev",
            "SERVICE": "web",
            "NAME": "ghost.example",
            "PORT": 80,
            "TYPE": "HTTP",
            "IP": "127.0.0.1",
            "EXT_PORT": 80,
            "NODE": "n",
        }
        hostile = [
            ("IP", "127.0.0.1\n    server evil 127.0.0.9:80"),
            ("IP", "127.0.0.1;x"),
            ("IP", "127.0.0.1 #"),
            ("EXT_PORT", "80;"),
            ("EXT_PORT", 99999),
            ("NAME", "ghost example"),
            ("ID", "e;f"),
        ]
        for n, (field, value) in enumerate(hostile):
            lb.session.put(
                f"/services{WEB}/e{n}",
                json.dumps({**evil, "ID": f"e{n}", field: value}),
                lease=lb.lease,
            )
        lb.session.put("/services/internal/app1/dev/web/evil;x/e", json.dumps(evil), lease=lb.lease)
        wait_for(
            lambda: (
                lb.metric("haroute_invalid_records_total", reason="bad_field")
                + lb.metric("haroute_invalid_records_total", reason="path_mismatch")
                + lb.metric("haroute_invalid_records_total", reason="bad_key")
                >= 8
            ),
            10,
            what="all rejected",
        )
        text = lb.config() + (lb.dir / "hosts.map").read_text()
        for needle in ("evil", "127.0.0.9", ";", "99999"):
            assert needle not in text
        serves(lb, WEB, {"b"})


def test_end_to_end_with_announce_and_register(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """announce → register → lb: a web instance announced on one host is reached through
    HAProxy by its DNS name, and the lb's /frontends record points DNS at the lb; an lb
    that stops revokes it, and DNS falls back."""
    with lb_stack(servers, etcd, tmp_path, ADVERTISE_IP="127.0.0.1", FRONTEND_PORT="8080") as lb:
        b = lb.backend("web1")
        d = lb.start()
        servers.daemon("register", register_env(etcd))
        servers.daemon("announce", announce_env(etcd, WEB, b.port, ANNOUNCE_ID="web1"))
        serves(lb, WEB, {"web1"})
        dns = "/skydns/local/skydns/internal/app1/dev/web/example/ghost/web1-lb1"
        wait_for(lambda: lb.session.get(dns), 10, what="DNS record pointing at the lb")
        value = json.loads(lb.session.get(dns).value)  # type: ignore[union-attr]
        assert (value["host"], value["port"]) == ("127.0.0.1", 8080)
        assert d.stop() == 0
        assert lb.session.get("/frontends/lb1") is None  # revoked, not left to expire
        wait_for(lambda: lb.session.get(dns) is None, 5, what="DNS record of the lb gone")


def test_failed_runtime_command_reloads_the_full_state(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """HAProxy diverged behind the lb's back (reloaded by hand with one slot): the next
    runtime command fails, and the lb reloads the complete desired state. With
    LOG_FORMAT=json every log line is one JSON object, and the failure and the reload name
    their backend, server and reason."""
    with lb_stack(servers, etcd, tmp_path, LOG_FORMAT="json", SPARE_BACKENDS="0") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        cfg = lb.dir / "haproxy.cfg"
        trimmed = [
            line
            for line in cfg.read_text().splitlines()
            if not (line.strip().startswith("server s") and "disabled" in line)
        ]
        cfg.write_text("\n".join(trimmed) + "\n")
        before = lb.haproxy_reloads()
        lb.master("reload")
        wait_for(lambda: lb.haproxy_reloads() > before, 10, what="manual reload")
        assert "server s2" not in lb.config()
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        counted(lb, "haroute_runtime_commands_total", 1, result="failed")
        counted(lb, "haroute_reloads_total", 1, reason="runtime_failed", result="ok")
        assert "server s2" in lb.config()
        assert lb.lb is not None
        lines = [json.loads(line) for line in lb.lb.log().splitlines() if line.strip()]
        backend = "be_internal_app1_dev_web_ghost_example"
        failure = next(
            e for e in lines if e["message"].startswith("[runtime]") and e["level"] == "ERROR"
        )
        assert (failure["backend"], failure["server"]) == (backend, "s2")
        reloads = [
            e
            for e in lines
            if e["logger"] == "lb.controller" and e["message"].startswith("[reload] reloaded")
        ]
        assert reloads[0]["reason"] == "new_backend" and reloads[0]["backends"] == [backend]
        assert reloads[-1]["reason"] == "runtime_failed"


def test_external_haproxy_is_driven_through_its_reload_command(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """HAPROXY_MANAGE=external: HAProxy is started by someone else (here the test, as
    systemd would); the lb reloads it only through HAPROXY_RELOAD_CMD and changes servers
    through HAPROXY_SOCKET, and leaves it running when it exits."""
    with (
        external_haproxy(tmp_path) as haproxy,
        lb_stack(servers, etcd, tmp_path, **haproxy.env) as lb,
    ):
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        d = lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        reloads = lb.haproxy_reloads()
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        assert lb.haproxy_reloads() == reloads
        pid = lb.haproxy_pid()
        assert d.stop() == 0
        assert lb.haproxy_pid() == pid  # not ours to stop


def test_empty_backend_removed_after_gc_delay(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """A backend whose instances all went stays (no reload) until BACKEND_GC_AFTER, then
    a reload with reason backend_removed takes it and its Host out."""
    with lb_stack(
        servers, etcd, tmp_path, BACKEND_GC_AFTER="2", DRAIN_TIMEOUT="0", SPARE_BACKENDS="0"
    ) as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        reloads = lb.haproxy_reloads()
        lb.delete(WEB, "w1")
        wait_for(lambda: lb.get(host_of(WEB))[0] == 503, 5, 0.05, "no server left")
        assert lb.haproxy_reloads() == reloads
        assert "be_internal_app1_dev_web_ghost_example" in lb.config()
        counted(lb, "haroute_reloads_total", 1, reason="backend_removed", result="ok")
        assert "be_internal_app1_dev_web_ghost_example" not in lb.config()
        assert host_of(WEB) not in (lb.dir / "hosts.map").read_text()
        assert lb.get(host_of(WEB)) == (503, "no service for this host")
