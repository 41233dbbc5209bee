"""The lb's pure core: records → desired → plan, the guard, the reload gate, rendering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import ServicePath
from discovery.settings import Address
from lb.desired import Desired, Instance, Service, backend_name, desired_state, parse_records
from lb.guard import MassRemovalGuard
from lb.plan import Applied, Backend, Slot, Timers, plan
from lb.reload import ReloadGate
from lb.render import RenderContext, UnsafeValue, check_safe, render_config, render_map

ROOT = Path(__file__).resolve().parent.parent.parent
GOLDEN = ROOT / "tests" / "golden"
MAP = "/run/haroute/hosts.map"
TIMERS = Timers(initial_slots=2, drain_timeout=10, gc_after=300)
WEB = "/internal/app1/dev/web/ghost.example"
SIT = "/internal/app1/sit/web/ghost.example"
DB = "/internal/app1/dev/db/ghost.example"


def kv(
    path: str,
    iid: str,
    port: int,
    type_: str = "HTTP",
    ip: str = "127.0.0.2",
    create: int = 5,
    ext: int | None = None,
) -> KV:
    p = path.split("/")
    value = {
        "ID": iid,
        "APP": p[2],
        "ENV": p[3],
        "SERVICE": p[4],
        "NAME": p[5] if len(p) > 5 else "",
        "PORT": port,
        "TYPE": type_,
        "IP": ip,
        "EXT_PORT": ext or port,
        "NODE": "hosta",
    }
    return KV(f"/services{path}/{iid}", json.dumps(value).encode(), create, create, 1)


def desired(*kvs: KV, listen: tuple[str, ...] = ("/services/internal",)) -> Desired:
    records, rejected = parse_records(kvs, Layout(), listen)
    assert not rejected
    return desired_state(records, domain="skydns.local", http=True, tcp=True)


def apply(
    d: Desired, applied: Applied, now: float = 0.0, **kw: object
) -> tuple[Applied, list[str], str | None]:
    p = plan(d, applied, now=now, timers=TIMERS, map_path=MAP, **kw)  # type: ignore[arg-type]
    return p.target, list(p.commands), p.reload


# --- desired ---------------------------------------------------------------------------


def test_backend_names_follow_the_spec() -> None:
    """be_/tcp_ + scope_app_env_service[_name], dots as underscores."""
    path = ServicePath.parse(WEB)
    assert backend_name(path, "http") == "be_internal_app1_dev_web_ghost_example"
    assert (
        backend_name(ServicePath.parse("/internal/app1/dev/db"), "tcp")
        == "tcp_internal_app1_dev_db"
    )


def test_desired_groups_by_path_with_host_names() -> None:
    """HTTP instances of one path form one backend routed by the service's DNS name."""
    d = desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081), kv(DB, "db1", 5432, "TCP"))
    web = d.services["be_internal_app1_dev_web_ghost_example"]
    assert web.host == "ghost.example.web.dev.app1.internal.skydns.local"
    assert [i.id for i in web.instances] == ["w1", "w2"]
    assert d.services["tcp_internal_app1_dev_db_ghost_example"].port == 5432
    assert d.hosts == {web.host: web.name}


def test_listen_path_covers_whole_components_only() -> None:
    """/services/internal/app1/dev does not cover /internal/app1/development."""
    d = desired(
        kv("/internal/app1/development/web", "x", 80),
        kv(WEB, "w1", 8080),
        listen=("/services/internal/app1/dev",),
    )
    assert list(d.services) == ["be_internal_app1_dev_web_ghost_example"]


def test_tcp_port_clash_first_created_wins() -> None:
    """Two TCP services on one port: the lower create revision keeps it, the other is a
    problem."""
    d = desired(
        kv("/internal/app1/dev/db", "a", 5432, "TCP", create=9),
        kv("/internal/app1/sit/db", "b", 5432, "TCP", create=3),
    )
    assert list(d.services) == ["tcp_internal_app1_sit_db"]
    assert [p.kind for p in d.problems] == ["port_clash"]


def test_tcp_instance_with_other_port_is_left_out() -> None:
    """An instance announcing another PORT than its path listens on is reported, not used."""
    d = desired(kv(DB, "a", 5432, "TCP", create=1), kv(DB, "b", 5433, "TCP", create=2))
    assert [i.id for i in d.services["tcp_internal_app1_dev_db_ghost_example"].instances] == ["a"]
    assert d.problems[0].kind == "port_mismatch"


def test_hostile_service_records_are_rejected() -> None:
    """A service record with an address aimed at HAProxy never reaches desired state."""
    bad = KV(
        f"/services{WEB}/x",
        json.dumps(
            {
                "ID": "x",
                "APP": "app1",
                "ENV": "dev",
                "SERVICE": "web",
                "NAME": "ghost.example",
                "PORT": 80,
                "TYPE": "HTTP",
                "IP": "127.0.0.1\nserver evil 1.2.3.4:80",
                "EXT_PORT": 80,
                "NODE": "n",
            }
        ).encode(),
        1,
        1,
        1,
    )
    records, rejected = parse_records([bad], Layout(), ("/services",))
    assert records == [] and rejected[0].error.reason.value == "bad_field"


# --- plan -----------------------------------------------------------------------------


def test_new_backend_needs_a_reload_with_servers_in_the_config() -> None:
    """A new service path is a reload; the target already holds its servers in slots."""
    target, cmds, reason = apply(desired(kv(WEB, "w1", 8080)), Applied())
    assert reason == "new_backend" and cmds == []
    name = "be_internal_app1_dev_web_ghost_example"
    assert target.backends[name].slots == 2
    assert target.slots[name][0] == Slot("127.0.0.2", 8080, "ready", "w1")
    assert target.slots[name][1].free


def test_add_remove_move_are_runtime_commands() -> None:
    """Add takes a free slot, removal drains, a move re-addresses in place: no reload."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    applied, cmds, reason = apply(desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081)), applied)
    assert reason is None
    assert cmds == [
        f"set server {name}/s2 addr 127.0.0.2 port 8081",
        f"set server {name}/s2 state ready",
    ]
    applied, cmds, _ = apply(desired(kv(WEB, "w1", 9090), kv(WEB, "w2", 8081)), applied)
    assert cmds == [f"set server {name}/s1 addr 127.0.0.2 port 9090"]
    applied, cmds, _ = apply(desired(kv(WEB, "w1", 9090)), applied, now=1.0)
    assert cmds == [f"set server {name}/s2 state drain"]
    assert applied.slots[name][1].state == "drain"


def test_drain_ends_on_timeout_or_when_idle() -> None:
    """A draining slot goes to maint after DRAIN_TIMEOUT, or as soon as it has no
    sessions; then it is free again."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081)), Applied())
    one = desired(kv(WEB, "w1", 8080))
    drained, _, _ = apply(one, applied, now=0.0)
    same, cmds, _ = apply(one, drained, now=5.0, sessions={(name, "s2"): 3})
    assert cmds == [] and same.slots[name][1].state == "drain"
    _, cmds, _ = apply(one, drained, now=10.0, sessions={(name, "s2"): 3})
    assert cmds == [f"set server {name}/s2 state maint"]
    freed, cmds, _ = apply(one, drained, now=1.0, sessions={(name, "s2"): 0})
    assert cmds == [f"set server {name}/s2 state maint"] and freed.slots[name][1].free


def test_no_drain_when_timeout_is_zero() -> None:
    """DRAIN_TIMEOUT=0 takes a removed server straight to maintenance."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081)), Applied())
    p = plan(desired(kv(WEB, "w1", 8080)), applied, now=0, timers=Timers(2, 0, 300), map_path=MAP)
    assert list(p.commands) == [f"set server {name}/s2 state maint"]


def test_returning_instance_leaves_drain() -> None:
    """An instance that comes back while draining is made ready again in its slot."""
    name = "be_internal_app1_dev_web_ghost_example"
    both = desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081))
    applied, _, _ = apply(both, Applied())
    drained, _, _ = apply(desired(kv(WEB, "w1", 8080)), applied)
    _, cmds, _ = apply(both, drained, now=1.0)
    assert cmds == [f"set server {name}/s2 state ready"]


def test_out_of_slots_without_room_reloads_with_slots_that_follow_use() -> None:
    """A backend that needs more slots than it has, with no room left for dynamic
    servers, is reloaded with its live servers plus a quarter of headroom."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    target, _cmds, reason = apply(desired(*(kv(WEB, f"w{i}", 8080 + i) for i in range(5))), applied)
    assert reason == "slots_exhausted" and target.backends[name].slots == 7
    assert sum(1 for s in target.slots[name] if s.state == "ready") == 5


def test_out_of_slots_with_room_adds_dynamic_servers() -> None:
    """With room in the fd budget, the servers that find no slot are added at runtime
    (add server, health checks on, ready): no reload."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    three = desired(*(kv(WEB, f"w{i}", 8079 + i) for i in range(1, 4)))
    target, cmds, reason = apply(three, applied, dynamic_room=5)
    assert reason is None
    assert cmds == [
        f"set server {name}/s2 addr 127.0.0.2 port 8081",
        f"set server {name}/s2 state ready",
        f"add server {name}/s3 127.0.0.2:8082 check inter 2000ms fall 2 rise 1",
        f"enable health {name}/s3",
        f"set server {name}/s3 state ready",
    ]
    assert target.slots[name][2] == Slot("127.0.0.2", 8082, "ready", "w3", dynamic=True)
    assert target.dynamic_count() == 1
    # Only as many as the room allows; the rest waits for a reload.
    _, _, reason = apply(
        desired(*(kv(WEB, f"w{i}", 8079 + i) for i in range(1, 6))), applied, dynamic_room=2
    )
    assert reason == "slots_exhausted"


def test_a_drained_dynamic_server_is_deleted_once_idle() -> None:
    """A dynamic slot whose instance went drains, then goes to maint and is deleted with
    del server once it has no sessions; the table drops it."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    three = desired(*(kv(WEB, f"w{i}", 8079 + i) for i in range(1, 4)))
    applied, _, _ = apply(three, applied, dynamic_room=5)
    two = desired(*(kv(WEB, f"w{i}", 8079 + i) for i in range(1, 3)))
    drained, cmds, _ = apply(two, applied, now=1.0)
    assert cmds == [f"set server {name}/s3 state drain"]
    gone, cmds, _ = apply(two, drained, now=2.0, sessions={(name, "s3"): 0})
    assert cmds == [f"set server {name}/s3 state maint", f"del server {name}/s3"]
    assert len(gone.slots[name]) == 2 and gone.dynamic_count() == 0


def test_interim_commands_while_a_reload_waits() -> None:
    """With a new environment pending, the plan still carries the commands for the running
    backends (and none for the new one), and the state they lead to."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    p = plan(
        desired(kv(WEB, "w1", 8080), kv(WEB, "w2", 8081), kv(SIT, "s1", 80)),
        applied,
        now=0,
        timers=TIMERS,
        map_path=MAP,
    )
    assert p.reload == "new_backend"
    assert list(p.interim) == [
        f"set server {name}/s2 addr 127.0.0.2 port 8081",
        f"set server {name}/s2 state ready",
    ]
    assert p.interim_target is not None
    assert set(p.interim_target.backends) == {name}
    assert p.interim_target.slots[name][1].instance == "w2"


def test_interim_places_what_fits_when_slots_run_out() -> None:
    """A backend out of slots fills what it has before the reload that doubles them."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    p = plan(
        desired(*(kv(WEB, f"w{i + 1}", 8080 + i) for i in range(4))),
        applied,
        now=0,
        timers=TIMERS,
        map_path=MAP,
    )
    assert p.reload == "slots_exhausted"
    assert list(p.interim) == [
        f"set server {name}/s2 addr 127.0.0.2 port 8081",
        f"set server {name}/s2 state ready",
    ]


def test_empty_backend_is_kept_until_gc() -> None:
    """A backend whose instances all went stays (no reload) until BACKEND_GC_AFTER."""
    name = "be_internal_app1_dev_web_ghost_example"
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    empty = Desired()
    applied, _, reason = apply(empty, applied, now=0.0, sessions={(name, "s1"): 0})
    assert reason is None and name in applied.backends
    applied, _, reason = apply(empty, applied, now=299.0)
    assert reason is None
    target, _, reason = apply(empty, applied, now=301.0)
    assert reason == "backend_removed" and name not in target.backends


def test_adopted_slots_match_by_address() -> None:
    """Slots read back from a running HAProxy (no IDs) are matched by address: nothing to do."""
    name = "be_internal_app1_dev_web_ghost_example"
    host = "ghost.example.web.dev.app1.internal.skydns.local"
    adopted = Applied(
        {name: Backend(name, "http", 2, host)},
        {name: (Slot("127.0.0.2", 8080, "ready"), Slot())},
        {host: name},
    )
    target, cmds, reason = apply(desired(kv(WEB, "w1", 8080)), adopted)
    assert (cmds, reason) == ([], None)
    assert target.slots[name][0].instance == "w1"


def test_map_entries_follow_backends() -> None:
    """A host map that lost an entry at runtime gets it back with add map."""
    applied, _, _ = apply(desired(kv(WEB, "w1", 8080)), Applied())
    broken = Applied(applied.backends, applied.slots, {}, {})
    _, cmds, _ = apply(desired(kv(WEB, "w1", 8080)), broken)
    assert cmds == [
        f"add map {MAP} ghost.example.web.dev.app1.internal.skydns.local "
        "be_internal_app1_dev_web_ghost_example"
    ]


def test_tcp_port_change_is_a_reload() -> None:
    """A TCP service whose port changes needs a new bind: a reload."""
    applied, _, _ = apply(desired(kv(DB, "a", 5432, "TCP")), Applied())
    _, _, reason = apply(desired(kv(DB, "a", 5440, "TCP")), applied)
    assert reason == "new_backend"


# --- guard ----------------------------------------------------------------------------


def svc(name: str, *ids: str) -> Service:
    return Service(
        name,
        "http",
        ServicePath.parse(WEB),
        tuple(Instance(i, "127.0.0.2", 8000 + n) for n, i in enumerate(ids)),
    )


def test_guard_holds_a_mass_removal() -> None:
    """More than half of all servers (>= 3) vanishing within one TTL are kept for the grace."""
    guard = MassRemovalGuard(window=15, grace=30)
    full = Desired({"a": svc("a", "1", "2", "3"), "b": svc("b", "4", "5")})
    guard.filter(full, 0)
    kept = guard.filter(Desired({"b": svc("b", "4", "5")}), 1)
    assert [i.id for i in kept.services["a"].instances] == ["1", "2", "3"]
    assert guard.held_count == 3
    assert "a" not in guard.filter(Desired({"b": svc("b", "4", "5")}), 32).services


def test_guard_lets_ordinary_removals_through() -> None:
    """Removing a minority of servers goes through at once."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(Desired({"a": svc("a", "1", "2", "3", "4", "5", "6", "7")}), 0)
    out = guard.filter(Desired({"a": svc("a", "1", "2", "3", "4")}), 1)
    assert [i.id for i in out.services["a"].instances] == ["1", "2", "3", "4"]


def test_guard_never_holds_a_rolling_replacement() -> None:
    """New instance up, old one removed, many times within one TTL: no net loss, nothing
    held (SPEC §6: removals one instance at a time are never held back)."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(Desired({"a": svc("a", "v0")}), 0)
    for n in range(1, 6):
        guard.filter(Desired({"a": svc("a", f"v{n - 1}", f"v{n}")}), n)
        out = guard.filter(Desired({"a": svc("a", f"v{n}")}), n + 0.5)
        assert [i.id for i in out.services["a"].instances] == [f"v{n}"]
    assert guard.held_count == 0


def test_guard_counts_only_servers_it_keeps() -> None:
    """The held gauge is the number of servers actually kept, logged once when held."""
    guard = MassRemovalGuard(window=15, grace=30)
    guard.filter(Desired({"a": svc("a", "1", "2", "3", "4")}), 0)
    guard.filter(Desired(), 1)
    assert guard.held_count == 4 and len(guard.newly_held) == 4
    guard.filter(Desired(), 2)
    assert guard.held_count == 4 and guard.newly_held == []


def test_guard_releases_servers_that_come_back() -> None:
    """A held server whose record returns is no longer held."""
    guard = MassRemovalGuard(window=15, grace=30)
    full = Desired({"a": svc("a", "1", "2", "3", "4")})
    guard.filter(full, 0)
    guard.filter(Desired(), 1)
    assert guard.held_count == 4
    guard.filter(full, 2)
    assert guard.held_count == 0


# --- reload gate ------------------------------------------------------------------------


def test_gate_coalesces_reloads() -> None:
    """At most one reload per interval; reasons asked meanwhile run together next."""
    gate = ReloadGate(1.0)
    assert gate.wait(0) == float("inf")
    gate.request("new_backend")
    assert gate.wait(0) == 0
    assert gate.take(0) == ["new_backend"]
    gate.request("new_backend")
    gate.request("slots_exhausted")
    assert gate.wait(0.4) == pytest.approx(0.6)
    assert gate.take(1.0) == ["new_backend", "slots_exhausted"]


# --- render ---------------------------------------------------------------------------

CTX = RenderContext(
    "lb1",
    "/run/haroute/admin.sock",
    MAP,
    Address("0.0.0.0", 80),
    "127.0.0.1",
    Address("127.0.0.1", 8404),
)


def golden_target() -> Applied:
    target, _, _ = apply(
        desired(
            kv(WEB, "w1", 8080),
            kv(WEB, "w2", 8081, ip="127.0.0.3"),
            kv("/internal/app1/sit/web", "s1", 80),
            kv(DB, "0ce60d000eac", 5432, "TCP"),
        ),
        Applied(),
    )
    return target


@pytest.mark.parametrize("name", ["haproxy.cfg", "hosts.map"])
def test_golden_rendering(name: str) -> None:
    """The rendered config and map equal the reviewed golden files (set
    HAROUTE_UPDATE_GOLDEN=1 to rewrite them after a deliberate change)."""
    template = (ROOT / "haproxy" / "haproxy.cfg.j2").read_text()
    text = (
        render_config(template, golden_target(), CTX, "haproxy.cfg.j2")
        if name == "haproxy.cfg"
        else render_map(golden_target())
    )
    path = GOLDEN / name
    if os.environ.get("HAROUTE_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("value", ["a b", "x\ny", "a;b", "a#b", "'q'", '"q"', "", "é"])
def test_render_refuses_unsafe_values(value: str) -> None:
    """Nothing with a space, newline, ;, #, quote or non-ASCII can be rendered."""
    with pytest.raises(UnsafeValue):
        check_safe(value)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("relative/dir", "absolute"),
        ("/tmp/with space", "only letters"),
        ("/tmp/x;y", "only letters"),
        ("/" + "d" * 100, "too long"),
    ],
)
def test_haproxy_dir_fails_fast(raw: str, problem: str) -> None:
    """HAPROXY_DIR goes into haproxy.cfg and holds Unix sockets: a path that cannot is a
    bad setting at start, not an error at every reload."""
    from discovery.settings import SettingError, load
    from lb.settings import LbSettings

    env = {"LISTEN_PATH": "/services/internal", "HAPROXY_DIR": raw, "LB_ID": "lb1"}
    with pytest.raises(SettingError, match=problem):
        load(LbSettings, [], env, "haroute-lb")


def test_spares_are_taken_meanwhile_when_another_environment_needs_a_reload() -> None:
    """Two new environments and one spare: the plan reloads for the second, and while the
    reload waits the first takes the spare (its servers, then its Host) on the running
    layout, so it never waits for the reload."""
    timers = Timers(2, 10, 300, spare_backends=1)
    applied = Applied(
        {"pool_http_0": Backend("pool_http_0", "pool", 2)},
        {"pool_http_0": (Slot(), Slot())},
    )
    p = plan(
        desired(kv(WEB, "w1", 8080), kv(SIT, "s1", 80)), applied, now=0, timers=timers, map_path=MAP
    )
    assert p.reload == "new_backend"
    sit, web = "be_internal_app1_sit_web_ghost_example", "be_internal_app1_dev_web_ghost_example"
    bound = next(n for n in (web, sit) if p.interim_target and n in p.interim_target.backends)
    host = p.interim_target.backends[bound].host if p.interim_target else ""
    assert list(p.interim)[-1] == f"add map {MAP} {host} pool_http_0"
    assert "set server pool_http_0/s1 state ready" in p.interim
    # The reload renders both under their own names and the spare free again.
    assert p.target.backends["pool_http_0"].mode == "pool"
    assert p.target.hosts[host] == bound
