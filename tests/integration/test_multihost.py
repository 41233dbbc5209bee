"""Three hosts as network namespaces, a register and web instances on each, and a
frontend lb in a fourth namespace routing to them by their host addresses (SPEC §5, §6)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lb.runtime import admin_word
from tests.haproxy_helpers import socket_answers
from tests.lb_helpers import host_of, mapped_backend
from tests.netns import Lab, NsDaemon, NsEtcd, lab, parse_requests, stop_pid
from tests.servers import pid_gone, stop_process, wait_for

ADDRESSES = {
    "etcd": "198.18.0.2",
    "h1": "198.18.0.11",
    "h2": "198.18.0.12",
    "h3": "198.18.0.13",
    "fe": "198.18.0.20",
}
HOSTS = ("h1", "h2", "h3")
PORTS = (8001, 8002)
TTL = 3
LB_PORT = 8080
WEB = "/internal/app1/dev/web/ghost.example"
SVC = f"/services{WEB}/"
DNS = "/skydns/local/skydns/internal/app1/dev/web/example/ghost/"
BACKEND = "be_internal_app1_dev_web_ghost_example"
HOST = host_of(WEB)


@dataclass
class Hosts:
    net: Lab
    etcd: NsEtcd
    registers: dict[str, NsDaemon]
    webs: dict[str, list[subprocess.Popen[bytes]]]
    lb: NsDaemon
    haproxy_dir: Path

    def services(self) -> set[str]:
        return set(self.etcd.get_prefix(SVC)[0])

    def admin(self, command: str) -> str:
        """One command on HAProxy's admin socket (a Unix socket the root namespace
        reaches); empty if it does not answer."""
        raw = socket_answers(self.haproxy_dir / "admin.sock", f"{command}\n".encode())
        return (raw or b"").decode()

    def backend(self) -> str:
        """The backend serving the web Host now: its own, or the spare backend it took at
        runtime if the lb saw the environment appear after its start (``show map``)."""
        show_map = self.admin(f"show map {self.haproxy_dir / 'hosts.map'}")
        return mapped_backend(show_map, HOST) or BACKEND

    def servers(self) -> list[dict[str, str]] | None:
        """HAProxy's ``show servers state`` of the web backend, one dict per slot;
        ``None`` if it does not answer."""
        lines = self.admin(f"show servers state {self.backend()}").splitlines()
        if len(lines) < 2 or not lines[1].startswith("# "):
            return None
        header = lines[1][2:].split()
        return [dict(zip(header, line.split(), strict=False)) for line in lines[2:] if line]

    def routed(self) -> set[str] | None:
        """``addr:port`` of every slot taking new requests (admin state ready)."""
        servers = self.servers()
        if servers is None:
            return None
        return {
            f"{s['srv_addr']}:{s['srv_port']}"
            for s in servers
            if admin_word(int(s["srv_admin_state"])) == "ready"  # CMAINT is a marker only
        }

    def in_maintenance(self, slots: set[str]) -> bool:
        """Whether every slot at one of these addresses is in maintenance."""
        servers = self.servers()
        return servers is not None and all(
            admin_word(int(s["srv_admin_state"])) == "maint"
            for s in servers
            if f"{s['srv_addr']}:{s['srv_port']}" in slots
        )

    def _requests(self, *args: str) -> list[str]:
        """argv of the bounded request loop of ``tests.netns``, sent to fe's lb."""
        fe = [ADDRESSES["fe"], str(LB_PORT), HOST]
        return [sys.executable, "-m", "tests.netns", "requests", *fe, *args]

    def request_loop(self, stop_file: Path) -> subprocess.Popen[bytes]:
        """Requests from inside fe until ``stop_file`` exists; one line each in
        ``requests.out``."""
        argv = self._requests("--stop-file", str(stop_file), "--seconds", "90")
        return self.net.popen("fe", argv, log="requests")

    def answers(self) -> set[str]:
        """Which instances answer 18 requests from inside fe (round robin)."""
        out = self.net.run("fe", self._requests("--limit", "18"))
        return {body for _, status, body in parse_requests(out) if status == 200}


def _haproxy_pid(directory: Path) -> int | None:
    try:
        return int((directory / "haproxy.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """etcd, h1-h3 (a register, two web servers and their announces each) and fe (an lb)."""
    with lab(tmp_path, ADDRESSES) as net:
        etcd = NsEtcd(net, "etcd").start()
        wait_for(lambda: etcd.healthy("fe"), 20, 0.1, "etcd reachable from fe")
        common = {"ETCD_ENDPOINTS": etcd.endpoint}
        registers, webs = {}, {}
        for h in HOSTS:
            registers[h] = net.daemon(
                h,
                "register",
                {
                    **common,
                    "RUNTIME": "host",
                    "NODE_NAME": h,
                    "HOST_IP": ADDRESSES[h],
                    "REGISTER_TTL": str(TTL),
                },
            )
            webs[h] = []
            for i, port in enumerate(PORTS, 1):
                webs[h].append(net.web(h, f"{h}-web{i}", port))
                net.daemon(
                    h,
                    "announce",
                    {
                        **common,
                        "ANNOUNCE_PATH": WEB,
                        "PORT": str(port),
                        "TYPE": "HTTP",
                        "ANNOUNCE_HOST": h,
                        "ANNOUNCE_TTL": str(TTL),
                        "ANNOUNCE_INTERVAL": "1",
                    },
                )
        haproxy_dir = tmp_path / "haproxy"
        lb = net.daemon(
            "fe",
            "lb",
            {
                **common,
                "LISTEN_PATH": "/services/internal/app1/dev",
                "HAPROXY_DIR": str(haproxy_dir),
                "HTTP_BIND": f"{ADDRESSES['fe']}:{LB_PORT}",
                "TCP_BIND_ADDR": "",
                "SLOTS": "8",
                "RELOAD_MIN_INTERVAL": "0.2",
                "DRAIN_TIMEOUT": "1",
                "LB_ID": "fe",
                "LB_TTL": str(TTL),
                "ADVERTISE_IP": ADDRESSES["fe"],
                "FRONTEND_PORT": str(LB_PORT),
            },
        )
        try:
            yield Hosts(net, etcd, registers, webs, lb, haproxy_dir)
        finally:
            lb.stop()
            pid = _haproxy_pid(haproxy_dir)
            if pid is not None and not pid_gone(pid):
                stop_pid(pid)


def test_killed_register_removes_exactly_its_hosts_instances(hosts: Hosts, tmp_path: Path) -> None:
    """SIGKILL of h2's register: only h2's keys go within TTL + 1 s; requests succeed on h1/h3."""
    ids = {h: {f"{h}-{port}" for port in PORTS} for h in HOSTS}
    every = {SVC + i for h in HOSTS for i in ids[h]}
    wait_for(lambda: hosts.services() == every, 20, 0.2, "six instances registered")
    records = {k: json.loads(v) for k, v in hosts.etcd.values(SVC).items()}
    assert {(r["NODE"], r["IP"], r["EXT_PORT"]) for r in records.values()} == {
        (h, ADDRESSES[h], p) for h in HOSTS for p in PORTS
    }
    names = {f"{h}-web{i}" for h in HOSTS for i in (1, 2)}
    wait_for(lambda: hosts.answers() == names, 20, 0.2, "all six answer through fe")
    all_slots = {f"{ADDRESSES[h]}:{p}" for h in HOSTS for p in PORTS}
    wait_for(lambda: hosts.routed() == all_slots, 10, 0.1, "HAProxy routes by host address")
    h2_dns = {DNS + f"{i}-fe" for i in ids["h2"]}
    dns = {DNS + f"{i}-fe" for h in HOSTS for i in ids[h]}
    assert set(hosts.etcd.get_prefix(DNS)[0]) == dns

    before, revision = hosts.etcd.get_prefix("/")
    watch = hosts.etcd.watch("/", revision + 1)
    stop_file = tmp_path / "stop-requests"
    out = tmp_path / "requests.out"
    loop = hosts.request_loop(stop_file)
    wait_for(lambda: out.read_text().count("\n") > 20, 10, 0.05, "request loop running")

    killed_at = time.monotonic()
    hosts.registers["h2"].stop(signal.SIGKILL)
    h2 = {SVC + i for i in ids["h2"]}
    h2_slots = {f"{ADDRESSES['h2']}:{p}" for p in PORTS}
    wait_for(
        lambda: (routed := hosts.routed()) is not None and not routed & h2_slots,
        15,
        0.02,
        "HAProxy stops sending new requests to h2",
    )
    unrouted_at = time.monotonic()
    wait_for(lambda: hosts.services() == every - h2, 15, 0.05, "h2's instances removed")
    wait_for(lambda: hosts.in_maintenance(h2_slots), 10, 0.05, "h2's slots in maintenance")
    # Now h2 the host goes away: nothing may be sent there any more.
    for web in hosts.webs["h2"]:
        stop_process(web, signal.SIGKILL)
    count = out.read_text().count("\n")
    wait_for(lambda: out.read_text().count("\n") > count + 100, 20, 0.05, "100 more requests")
    stop_file.touch()
    loop.wait(15)
    wait_for(lambda: h2 | h2_dns <= watch.deleted().keys(), 10, 0.1, "the deletes watched")
    watch.stop()
    removed_after = max(watch.deleted()[k] for k in h2) - killed_at
    print(
        f"h2's /services keys gone {removed_after:.2f} s (etcd watch) and out of HAProxy "
        f"{unrouted_at - killed_at:.2f} s (socket polled) after SIGKILL of its register"
    )
    assert removed_after <= TTL + 1
    # Exactly h2's keys were deleted; h1's and h3's were never rewritten.
    assert watch.deleted().keys() == h2 | h2_dns
    after, _ = hosts.etcd.get_prefix("/")
    for key in (every - h2) | (dns - h2_dns):
        assert after[key] == before[key], key
    assert hosts.routed() == all_slots - h2_slots

    results = parse_requests(out.read_text())
    failed = [r for r in results if r[1] != 200]
    assert failed == [], f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert {body for t, _, body in results if t < killed_at} == names
    late = {body for t, _, body in results if t > unrouted_at}
    assert late == {"h1-web1", "h1-web2", "h3-web1", "h3-web2"}
    assert hosts.lb.alive()
