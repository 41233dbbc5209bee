"""register against a real etcd, with real announce processes (SPEC §5)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from discovery.etcd import EtcdSession
from tests.helpers import (
    SHORT_TTL,
    DeleteRecorder,
    EventRecorder,
    announce_env,
    keys,
    register_env,
    session,
)
from tests.servers import Etcd, Stack, wait_for

DB = "/internal/app1/dev/db/ghost.example"
WEB = "/internal/app1/dev/web/ghost.example"
SVC_DB = "/services/internal/app1/dev/db/ghost.example/0ce60d000eac"
DNS_DB = "/skydns/local/skydns/internal/app1/dev/db/example/ghost/0ce60d000eac"


def test_original_example(servers: Stack, etcd: Etcd) -> None:
    """ORIGIN.md's database: the announce record, the service record with IP/EXT_PORT and
    the SkyDNS record, exactly as SPEC §3 and §5 lay them out."""
    s = session(etcd)
    servers.daemon("register", register_env(etcd, "hosta", "127.0.0.2"))
    servers.daemon(
        "announce",
        announce_env(etcd, DB, 5432, type_="TCP", ANNOUNCE_ID="0ce60d000eac"),
    )
    wait_for(lambda: s.get(DNS_DB), 5, what="skydns record")
    announce = {
        "ID": "0ce60d000eac",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "db",
        "NAME": "ghost.example",
        "PORT": 5432,
        "TYPE": "TCP",
        "HOST": "hosta",
    }
    got = keys(s, "/")
    assert got["/announce/internal/app1/dev/db/ghost.example/0ce60d000eac"] == announce
    assert got[SVC_DB] == {**announce, "IP": "127.0.0.2", "EXT_PORT": 5432, "NODE": "hosta"}
    assert got[DNS_DB] == {"host": "127.0.0.2", "port": 5432, "ttl": SHORT_TTL}


def test_follows_add_remove_and_move(servers: Stack, etcd: Etcd) -> None:
    """Instances added, removed and moved (same ID, new port) are followed, and a move
    rewrites the key in place (no delete)."""
    s = session(etcd)
    servers.daemon("register", register_env(etcd, FRONTEND_IP="127.0.0.9"))
    a = servers.daemon("announce", announce_env(etcd, WEB, 8080, ANNOUNCE_ID="w1"))
    servers.daemon("announce", announce_env(etcd, WEB, 8081, ANNOUNCE_ID="w2"))
    svc = "/services/internal/app1/dev/web/ghost.example/"
    wait_for(lambda: set(keys(s, svc)) == {svc + "w1", svc + "w2"}, 5, what="two instances")
    dns_dir = "/skydns/local/skydns/internal/app1/dev/web/example/ghost/"
    wait_for(lambda: len(keys(s, dns_dir)) == 2, 5, what="two DNS records")
    assert {v["host"] for v in keys(s, dns_dir).values()} == {"127.0.0.9"}

    a.send(signal.SIGTERM)
    wait_for(lambda: set(keys(s, svc)) == {svc + "w2"}, 5, what="w1 removed")

    # A move: the announcement of w2 changes port under the same key.
    recorder = DeleteRecorder(s, "/services/")
    ann_key = "/announce/internal/app1/dev/web/ghost.example/w2"
    current = s.get(ann_key)
    assert current is not None
    moved = {**json.loads(current.value), "PORT": 9090}
    s.put(ann_key, json.dumps(moved), lease=current.lease)
    wait_for(lambda: keys(s, svc).get(svc + "w2", {}).get("EXT_PORT") == 9090, 5, what="move")
    assert recorder.stop() == []


def test_restart_removes_no_key_at_any_moment(servers: Stack, etcd: Etcd) -> None:
    """SIGTERM then start: the new register adopts the keys and their lease; no /services
    or /skydns key is deleted at any moment."""
    s = session(etcd)
    env = register_env(etcd, FRONTEND_IP="127.0.0.9")
    r = servers.daemon("register", env)
    for i in range(3):
        servers.daemon("announce", announce_env(etcd, WEB, 8080 + i))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    wait_for(lambda: len(keys(s, "/services/")) == 4, 5, what="4 services")
    wait_for(lambda: len(keys(s, "/skydns/")) == 4, 5, what="4 dns records")
    before = {kv.key: kv.lease for kv in s.get_prefix("/services/")[0]}

    deletes_services = DeleteRecorder(s, "/services/")
    deletes_dns = DeleteRecorder(s, "/skydns/")
    r.send(signal.SIGTERM)
    assert r.proc is not None and r.proc.wait(5) == 0
    servers.daemon("register", env)
    time.sleep(SHORT_TTL * 2 + 1)  # past the old TTL: the lease is kept by the new one
    assert deletes_services.stop() == []
    assert deletes_dns.stop() == []
    after = {kv.key: kv.lease for kv in s.get_prefix("/services/")[0]}
    assert after == before


def test_killed_register_loses_its_keys_within_ttl(servers: Stack, etcd: Etcd) -> None:
    """A register killed and never restarted: its keys expire within TTL + 1 s."""
    s = session(etcd)
    r = servers.daemon("register", register_env(etcd))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    wait_for(lambda: keys(s, "/skydns/"), 5, what="registered")
    time.sleep(1.5)
    r.send(signal.SIGKILL)
    wait_for(
        lambda: not keys(s, "/services/") and not keys(s, "/skydns/"),
        SHORT_TTL + 1,
        0.05,
        "keys expired",
    )
    assert keys(s, "/announce/")  # the announcement itself is untouched


def test_revoke_on_exit(servers: Stack, etcd: Etcd) -> None:
    """REGISTER_REVOKE_ON_EXIT=1: SIGTERM revokes the lease and the keys go at once."""
    s = session(etcd)
    r = servers.daemon("register", register_env(etcd, REGISTER_REVOKE_ON_EXIT="1"))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    wait_for(lambda: keys(s, "/skydns/"), 5, what="registered")
    r.send(signal.SIGTERM)
    wait_for(lambda: not keys(s, "/services/"), 1, 0.01, "keys revoked")


def test_two_nodes_never_touch_each_others_keys(servers: Stack, etcd: Etcd) -> None:
    """Two registers with different NODE_NAME: each registers only its own host's
    instances, under its own lease; killing one removes exactly its keys."""
    s = session(etcd)
    ra = servers.daemon("register", register_env(etcd, "hosta", "127.0.0.2"))
    servers.daemon("register", register_env(etcd, "hostb", "127.0.0.3"))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP", host="hosta"))
    servers.daemon("announce", announce_env(etcd, DB, 5433, type_="TCP", host="hostb"))
    svc = "/services/internal/app1/dev/db/ghost.example/"
    wait_for(
        lambda: len(keys(s, svc)) == 2 and len(keys(s, "/skydns/")) == 2, 5, what="both registered"
    )
    got = keys(s, svc)
    assert got[svc + "hosta-5432"]["IP"] == "127.0.0.2"
    assert got[svc + "hosta-5432"]["NODE"] == "hosta"
    assert got[svc + "hostb-5433"]["IP"] == "127.0.0.3"
    leases = {kv.key: kv.lease for kv in s.get_prefix("/")[0] if kv.key.startswith(svc)}
    assert leases[svc + "hosta-5432"] != leases[svc + "hostb-5433"]

    deletes = DeleteRecorder(s, "/services/")
    ra.send(signal.SIGKILL)
    wait_for(
        lambda: set(keys(s, svc)) == {svc + "hostb-5433"},
        SHORT_TTL + 1,
        0.05,
        "only hosta's key expired",
    )
    time.sleep(1)
    assert deletes.stop() == [svc + "hosta-5432"]


def test_foreign_key_is_left_alone(servers: Stack, etcd: Etcd) -> None:
    """A key for the same instance held by another node's lease is neither overwritten nor
    deleted."""
    s = session(etcd)
    lease, _ = s.grant(30)
    foreign = {
        "ID": "hosta-5432",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "db",
        "NAME": "ghost.example",
        "PORT": 5432,
        "TYPE": "TCP",
        "HOST": "hosta",
        "IP": "127.0.0.77",
        "EXT_PORT": 5432,
        "NODE": "elsewhere",
    }
    key = "/services/internal/app1/dev/db/ghost.example/hosta-5432"
    s.put(key, json.dumps(foreign), lease=lease)
    r = servers.daemon("register", register_env(etcd))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    wait_for(lambda: keys(s, "/skydns/"), 5, what="dns record written")
    wait_for(lambda: "conflict: " + key in r.log(), 5, what="conflict logged")
    kv = s.get(key)
    assert kv is not None and kv.lease == lease and json.loads(kv.value) == foreign


def test_http_dns_follows_frontends(servers: Stack, etcd: Etcd) -> None:
    """HTTP DNS records point at every live frontend covering the service, then fall back
    to FRONTEND_IP when the frontends go."""
    s = session(etcd)
    dns_dir = "/skydns/local/skydns/internal/app1/dev/web/example/ghost/"
    servers.daemon("register", register_env(etcd, FRONTEND_IP="127.0.0.9", FRONTEND_PORT="8000"))
    servers.daemon("announce", announce_env(etcd, WEB, 8080, ANNOUNCE_ID="w1"))
    wait_for(
        lambda: (
            keys(s, dns_dir)
            == {dns_dir + "w1": {"host": "127.0.0.9", "port": 8000, "ttl": SHORT_TTL}}
        ),
        5,
        what="fallback record",
    )
    lease, _ = s.grant(30)
    s.put(
        "/frontends/lb-1",
        json.dumps(
            {
                "ID": "lb-1",
                "IP": "127.0.0.5",
                "PORT": 80,
                "LISTEN_PATH": ["/services/internal/app1/dev"],
            }
        ),
        lease=lease,
    )
    s.put(
        "/frontends/lb2",
        json.dumps(
            {
                "ID": "lb2",
                "IP": "127.0.0.6",
                "PORT": 81,
                "LISTEN_PATH": ["/services/internal/app1/sit"],
            }
        ),
        lease=lease,
    )
    wait_for(
        lambda: (
            keys(s, dns_dir)
            == {dns_dir + "w1-lb-1": {"host": "127.0.0.5", "port": 80, "ttl": SHORT_TTL}}
        ),
        5,
        what="frontend record",
    )
    s.revoke(lease)
    wait_for(lambda: set(keys(s, dns_dir)) == {dns_dir + "w1"}, 5, what="fallback again")


def test_docker_runtime_bad_docker_host_fails_fast(servers: Stack, etcd: Etcd) -> None:
    """RUNTIME=docker with a malformed DOCKER_HOST: one line naming it, exit 2."""
    env = register_env(etcd, RUNTIME="docker", DOCKER_HOST="bogus://nowhere")
    r = servers.daemon("register", env)
    assert r.proc is not None and r.proc.wait(10) == 2
    assert "bad setting DOCKER_HOST='bogus://nowhere'" in r.log()


def test_unnamed_environment_uses_default_label(servers: Stack, etcd: Etcd) -> None:
    """An environment without a name registers under the reserved `default` DNS label."""
    s = session(etcd)
    servers.daemon("register", register_env(etcd))
    servers.daemon("announce", announce_env(etcd, "/internal/app1/dev/db", 5432, type_="TCP"))
    wait_for(
        lambda: keys(s, "/skydns/local/skydns/internal/app1/dev/db/default/"),
        5,
        what="default label",
    )


def test_metrics_per_service_and_records(servers: Stack, etcd: Etcd) -> None:
    """register exports instances per service path (a bounded label), the keys it holds
    and records by state; a service whose instances all went leaves no stale series."""
    from tests.helpers import metric_value, scrape
    from tests.servers import free_port

    s = session(etcd)
    port = free_port()
    servers.daemon("register", register_env(etcd, FRONTEND_IP="127.0.0.9", METRICS_ADDR=str(port)))
    web = [servers.daemon("announce", announce_env(etcd, WEB, 8080 + i)) for i in range(2)]
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    s.put("/announce/internal/app1/dev/web/ghost.example/bad", b"{not json")

    def value(name: str, **labels: str) -> float:
        try:
            return metric_value(scrape(port), name, **labels)
        except OSError:
            return -1

    wait_for(lambda: value("haroute_register_instances", service=WEB) == 2, 10, what="2 web")
    assert value("haroute_register_instances", service=DB) == 1
    assert value("haroute_register_keys") == 6  # 3 services + 3 DNS records
    assert value("haroute_records", state="valid") == 3
    assert value("haroute_records", state="invalid") == 1
    for d in web:
        d.send(signal.SIGTERM)
    wait_for(lambda: f'service="{WEB}"' not in scrape(port), 10, what="web series removed")


# --- issue 8 item 3: a register converges on what etcd really holds ----------------------


def _announce_record(path: str, instance_id: str, port: int, host: str = "hosta") -> str:
    _scope, app, env, service, *name = path.strip("/").split("/")
    return json.dumps(
        {
            "ID": instance_id,
            "APP": app,
            "ENV": env,
            "SERVICE": service,
            "NAME": name[0] if name else "",
            "PORT": port,
            "TYPE": "TCP",
            "HOST": host,
        }
    )


def test_keys_deleted_or_changed_by_hand_come_back_within_one_ttl(
    servers: Stack, etcd: Etcd
) -> None:
    """A /services or /skydns key deleted by hand, or overwritten without our lease, is
    written again within one TTL (issue 8 item 3): the register reads its keys back."""
    s = session(etcd)
    servers.daemon("register", register_env(etcd))
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP"))
    svc = "/services/internal/app1/dev/db/ghost.example/hosta-5432"
    dns = "/skydns/local/skydns/internal/app1/dev/db/example/ghost/hosta-5432"
    wait_for(lambda: s.get(svc) and s.get(dns), 10, what="registered")
    want = {svc: keys(s, svc)[svc], dns: keys(s, dns)[dns]}
    lease = s.get(svc).lease  # type: ignore[union-attr]
    time.sleep(SHORT_TTL)  # well past the first cycles: nothing is pending any more

    s.delete(svc)
    s.put(dns, json.dumps({"host": "192.0.2.66", "port": 1, "ttl": 1}))  # no lease
    for key, value in want.items():
        wait_for(
            lambda k=key, v=value: (
                (kv := s.get(k)) is not None and json.loads(kv.value) == v and kv.lease == lease
            ),
            SHORT_TTL + 2,
            0.05,
            f"{key} written again under the register's lease",
        )


def test_keys_lost_in_an_etcd_snapshot_restore_come_back(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """etcd restored from a snapshot: leases survive, keys written after the snapshot do
    not. The register writes the keys it lost, without being restarted (issue 8 item 3).
    Here the lost keys are those of an announcement the snapshot has but the register
    had not registered yet when it was taken."""
    s = session(etcd)
    lease, _ = s.grant(120)  # the announcements' lease: granted before the snapshot
    svc = "/services/internal/app1/dev/db/ghost.example/"
    r = servers.daemon("register", register_env(etcd))
    s.put(f"/announce{DB}/kept", _announce_record(DB, "kept", 5432), lease=lease)
    wait_for(lambda: set(keys(s, svc)) == {svc + "kept"}, 10, what="registered")

    r.send(signal.SIGSTOP)  # the register has not seen "late" when the snapshot is taken
    try:
        s.put(f"/announce{DB}/late", _announce_record(DB, "late", 5434), lease=lease)
        snapshot = tmp_path / "snap.db"
        etcd.ctl("snapshot", "save", str(snapshot))
    finally:
        r.send(signal.SIGCONT)
    wait_for(lambda: svc + "late" in keys(s, svc), 10, what="late registered")
    expected = {k: v for k, v in keys(s, "/").items() if not k.startswith("/announce/")}
    assert len(expected) == 4  # two service records, two DNS records

    etcd.stop()
    restore(etcd, snapshot)
    etcd.start()
    s = session(etcd)
    assert svc + "late" not in keys(s, svc), "the restore did not lose the key"
    wait_for(
        lambda: (
            {k: v for k, v in keys(s, "/").items() if not k.startswith("/announce/")} == expected
        ),
        SHORT_TTL * 3,
        0.1,
        "the register's keys as before the restore",
    )


def restore(etcd: Etcd, snapshot: Path) -> None:
    """Replace ``etcd``'s data directory with ``snapshot`` restored (etcdctl, v3)."""
    import shutil
    import subprocess

    shutil.rmtree(etcd.data_dir)
    subprocess.run(
        [
            "etcdctl",
            "snapshot",
            "restore",
            str(snapshot),
            "--data-dir",
            str(etcd.data_dir),
            "--name",
            etcd.name,
            "--initial-cluster",
            f"{etcd.name}={etcd.peer_url}",
            "--initial-advertise-peer-urls",
            etcd.peer_url,
        ],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        check=True,
        timeout=30,
    )


# --- issue 8 item 4: DNS names never nest, DNS children never shared ---------------------

DB_EXAMPLE = "/internal/app1/dev/db/example"
DNS_EXAMPLE = "/skydns/local/skydns/internal/app1/dev/db/example/"
DNS_GHOST = "/skydns/local/skydns/internal/app1/dev/db/example/ghost/"


def _direct(s: EtcdSession, directory: str) -> dict[str, Any]:
    """The DNS records of one name: the keys right below its directory."""
    return {k: v for k, v in keys(s, directory).items() if "/" not in k[len(directory) :]}


def test_nesting_names_the_first_keeps_dns_until_it_goes(servers: Stack, etcd: Etcd) -> None:
    """NAME=example then NAME=ghost.example of one service, on two hosts: example keeps
    its DNS records, ghost.example gets none and is reported (log + metric), also while
    example's instances are replaced one by one; once example is gone, ghost.example gets
    its records (SPEC §5, issue 8 item 4)."""
    from tests.helpers import metric_value, scrape
    from tests.servers import free_port

    s = session(etcd)
    port_b = free_port()
    servers.daemon("register", register_env(etcd, "hosta", "127.0.0.2"))
    rb = servers.daemon(
        "register", register_env(etcd, "hostb", "127.0.0.3", METRICS_ADDR=str(port_b))
    )
    first = servers.daemon(
        "announce", announce_env(etcd, DB_EXAMPLE, 5432, type_="TCP", host="hosta")
    )
    wait_for(lambda: _direct(s, DNS_EXAMPLE), 10, what="example's DNS record")
    servers.daemon("announce", announce_env(etcd, DB, 5432, type_="TCP", host="hostb"))
    wait_for(lambda: "/services" + DB + "/hostb-5432" in keys(s, "/services/"), 10, what="ghost")

    def shadowed() -> float:
        try:
            return metric_value(scrape(port_b), "haroute_register_dns_shadowed", service=DB)
        except OSError:
            return -1

    time.sleep(1)  # the register of hostb has long written ghost.example's records, if any
    assert keys(s, DNS_GHOST) == {}, "ghost.example's records nest below example's"
    wait_for(lambda: shadowed() == 1, 10, what="ghost.example reported")
    assert f"[dns] {DB} would nest with {DB_EXAMPLE}" in rb.log()

    # example's instance replaced by another (started first, then the old one stops):
    # example still holds its DNS records, ghost.example still none.
    second = servers.daemon(
        "announce", announce_env(etcd, DB_EXAMPLE, 5433, type_="TCP", host="hosta")
    )
    wait_for(lambda: len(_direct(s, DNS_EXAMPLE)) == 2, 10, what="second example instance")
    first.send(signal.SIGTERM)
    wait_for(lambda: set(_direct(s, DNS_EXAMPLE)) == {DNS_EXAMPLE + "hosta-5433"}, 10)
    time.sleep(1)
    assert keys(s, DNS_GHOST) == {}
    assert shadowed() == 1

    second.send(signal.SIGTERM)  # example is gone: ghost.example gets its records
    wait_for(lambda: set(keys(s, DNS_GHOST)) == {DNS_GHOST + "hostb-5432"}, 10, what="ghost")
    assert _direct(s, DNS_EXAMPLE) == {}
    series = f'haroute_register_dns_shadowed{{service="{DB}"}}'
    wait_for(lambda: series not in scrape(port_b), 10, what="report cleared")


def test_ids_differing_in_punctuation_or_case_get_their_own_dns_records(
    servers: Stack, etcd: Etcd
) -> None:
    """web.1 and web_1, Web1 and web1: four instances of one name, four DNS records, none
    replacing another (SPEC §5, issue 8 item 4)."""
    s = session(etcd)
    servers.daemon("register", register_env(etcd))
    ids = ["web.1", "web_1", "Web1", "web1"]
    for i, instance_id in enumerate(ids):
        servers.daemon(
            "announce", announce_env(etcd, DB, 6000 + i, type_="TCP", ANNOUNCE_ID=instance_id)
        )
    dns_dir = "/skydns/local/skydns/internal/app1/dev/db/example/ghost/"
    wait_for(lambda: len(keys(s, "/services/")) == 4, 10, what="four service records")
    wait_for(lambda: len(keys(s, dns_dir)) == 4, 10, what="four DNS records")
    assert sorted(v["port"] for v in keys(s, dns_dir).values()) == [6000, 6001, 6002, 6003]


# --- issue 8 item 8: conflicts are reported, never fought over ---------------------------


def test_two_registers_with_one_node_name_never_fight(servers: Stack, etcd: Etcd) -> None:
    """A second register with the NODE_NAME of a live one (another host, misconfigured)
    does not adopt the first one's lease, never overwrites or deletes its keys, and
    reports the conflict (log + metric) (issue 8 item 8). REGISTER_TTL=6: a live
    register's lease never reads below 4 s, which tells it from a dead predecessor's."""
    from tests.helpers import metric_value, scrape
    from tests.servers import free_port

    s = session(etcd)
    ttl = "6"
    servers.daemon(
        "register",
        register_env(etcd, "hosta", "127.0.0.2", REGISTER_TTL=ttl, FRONTEND_IP="127.0.0.9"),
    )
    servers.daemon("announce", announce_env(etcd, WEB, 8080, ANNOUNCE_ID="w1"))
    svc = "/services/internal/app1/dev/web/ghost.example/w1"
    dns = "/skydns/local/skydns/internal/app1/dev/web/example/ghost/w1"
    wait_for(lambda: s.get(svc) and s.get(dns), 10, what="registered by the first")
    before = {kv.key: (kv.value, kv.lease) for kv in s.get_prefix("/")[0] if kv.lease}
    before = {k: v for k, v in before.items() if not k.startswith("/announce/")}
    deletes = EventRecorder(s, "/services/")
    dns_deletes = EventRecorder(s, "/skydns/")
    puts = EventRecorder(s, "/", deletes=False)

    port = free_port()
    twin = servers.daemon(
        "register",
        register_env(etcd, "hosta", "127.0.0.3", REGISTER_TTL=ttl, METRICS_ADDR=str(port)),
    )

    def conflicts(kind: str) -> float:
        try:
            return metric_value(scrape(port), "haroute_register_conflicts", kind=kind)
        except OSError:
            return -1

    wait_for(lambda: conflicts("node_name") == 1, 20, 0.1, "the NODE_NAME conflict reported")
    wait_for(lambda: conflicts("instance") == 1, 20, 0.1, "the instance conflict reported")
    assert "another live register has NODE_NAME=hosta" in twin.log()
    time.sleep(int(ttl))  # a TTL more: a register that fought would have by now
    after = {kv.key: (kv.value, kv.lease) for kv in s.get_prefix("/")[0] if kv.lease}
    after = {k: v for k, v in after.items() if not k.startswith("/announce/")}
    assert after == before
    assert deletes.stop() == [] and dns_deletes.stop() == []
    assert [k for k in puts.stop() if not k.startswith("/announce/")] == []
    assert twin.log().count(f"conflict: {svc}") == 1, "reported once, not every retry"
