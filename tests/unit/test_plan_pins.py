"""lb/plan.py: behaviours the older plan tests let a bug-like change through on."""

from __future__ import annotations

import json

import pytest

from discovery.keys import Layout
from discovery.kv import KV
from lb.desired import Desired, desired_state, parse_records
from lb.plan import Applied, Backend, Plan, Slot, Timers, plan

MAP = "/run/haroute/hosts.map"
TIMERS = Timers(initial_slots=2, drain_timeout=10, gc_after=300)
API = "/internal/app1/dev/api"  # be_internal_app1_dev_api sorts before the others
WEB = "/internal/app1/dev/web"
SIT = "/internal/app1/sit/web"
DB = "/internal/app1/dev/db"
API_BE = "be_internal_app1_dev_api"
WEB_BE = "be_internal_app1_dev_web"
SIT_BE = "be_internal_app1_sit_web"
DB_BE = "tcp_internal_app1_dev_db"
WEB_HOST = "default.web.dev.app1.internal.skydns.local"


def kv(path: str, iid: str, port: int, type_: str = "HTTP") -> KV:
    _, scope, app, env, service = path.split("/")
    value = {
        "ID": iid,
        "APP": app,
        "ENV": env,
        "SERVICE": service,
        "NAME": "",
        "PORT": port,
        "TYPE": type_,
        "IP": "10.0.0.2",
        "EXT_PORT": port,
        "NODE": "hosta",
    }
    assert scope == "internal"
    return KV(f"/services{path}/{iid}", json.dumps(value).encode(), 5, 5, 1)


def desired(*kvs: KV) -> Desired:
    records, rejected = parse_records(kvs, Layout(), ("/services/internal",))
    assert not rejected
    return desired_state(records, domain="skydns.local", http=True, tcp=True)


def run(d: Desired, applied: Applied, now: float = 0.0) -> Plan:
    return plan(d, applied, now=now, timers=TIMERS, map_path=MAP)


def installed(d: Desired) -> Applied:
    """What HAProxy runs after the reload that installs ``d`` from nothing."""
    p = run(d, Applied())
    assert p.reload == "new_backend"
    return p.target


def web(n: int) -> list[KV]:
    return [kv(WEB, f"w{i}", 8080 + i) for i in range(n)]


# --- the reason of a reload with several ------------------------------------------------


def test_new_backend_is_reported_before_slots_exhausted() -> None:
    """A plan that both grows a backend (sorted first) and adds one reports new_backend."""
    applied = installed(desired(*web(1)))
    p = run(desired(*web(5), kv(SIT, "s1", 80)), applied)
    assert p.reload == "new_backend"
    assert p.target.backends[WEB_BE].slots == 7 and SIT_BE in p.target.backends


def test_new_backend_is_reported_before_backend_removed() -> None:
    """A backend past BACKEND_GC_AFTER (sorted first) and a new one: new_backend."""
    applied = installed(desired(kv(API, "a1", 80)))
    emptied = run(Desired(), applied, now=0.0).target  # empty since 0, drained at once
    emptied = run(Desired(), emptied, now=20.0).target
    assert API_BE in emptied.backends and emptied.empty_since[API_BE] == 0.0
    p = run(desired(*web(1)), emptied, now=400.0)
    assert p.reload == "new_backend"
    assert set(p.target.backends) == {WEB_BE}


def test_slots_exhausted_is_reported_before_backend_removed() -> None:
    """Without a new backend, a growing one outranks a removed one."""
    applied = installed(desired(kv(API, "a1", 80), *web(1)))
    emptied = run(desired(*web(1)), applied, now=0.0).target
    emptied = run(desired(*web(1)), emptied, now=20.0).target
    assert emptied.empty_since[API_BE] == 0.0
    p = run(desired(*web(3)), emptied, now=400.0)
    assert p.reload == "slots_exhausted"
    assert API_BE not in p.target.backends


def test_tcp_port_change_is_reported_as_new_backend_before_slots_exhausted() -> None:
    """A listen whose port changes needs a new bind: that outranks a growing backend."""
    applied = installed(desired(kv(DB, "d1", 5432, "TCP"), *web(1)))
    p = run(desired(kv(DB, "d1", 5440, "TCP"), *web(5)), applied)
    assert p.reload == "new_backend"
    assert p.target.backends[DB_BE].port == 5440


# --- the Host map of an adopted HAProxy -------------------------------------------------------


def adopted(hosts: dict[str, str]) -> Applied:
    """A running HAProxy read back at adoption: one backend serving w0, the given map."""
    return Applied(
        {WEB_BE: Backend(WEB_BE, "http", 2, WEB_HOST)},
        {WEB_BE: (Slot("10.0.0.2", 8080, "ready"), Slot())},
        hosts,
    )


def test_stray_host_in_an_adopted_map_is_deleted() -> None:
    """A Host in the running map that no backend serves gets a `del map`, no reload."""
    p = run(desired(*web(1)), adopted({WEB_HOST: WEB_BE, "stray.example": "be_gone"}))
    assert p.reload is None
    assert list(p.commands) == [f"del map {MAP} stray.example"]
    assert p.target.hosts == {WEB_HOST: WEB_BE}


def test_host_pointing_at_the_wrong_backend_is_set() -> None:
    """A Host the running map sends elsewhere is corrected with `set map`."""
    p = run(desired(*web(1)), adopted({WEB_HOST: "be_other"}))
    assert list(p.commands) == [f"set map {MAP} {WEB_HOST} {WEB_BE}"]


def test_adopted_map_that_is_right_needs_nothing() -> None:
    """A running map equal to the desired one gives no map command."""
    assert run(desired(*web(1)), adopted({WEB_HOST: WEB_BE})).empty


# --- what a reload installs ---------------------------------------------------------------------


def test_reload_renders_draining_slots_free() -> None:
    """A reload while a server drains renders its slot free (disabled): the new worker
    never sends it traffic, the old worker finishes its connections."""
    applied = installed(desired(*web(2)))
    draining = run(desired(*web(1)), applied, now=0.0)
    assert draining.target.slots[WEB_BE][1].state == "drain"
    p = run(desired(*web(1), kv(SIT, "s1", 80)), draining.target, now=1.0)
    assert p.reload == "new_backend"
    assert p.target.slots[WEB_BE][1] == Slot()
    assert p.interim_target is not None
    assert p.interim_target.slots[WEB_BE][1].state == "drain"


@pytest.mark.parametrize("sessions", [None, {}])
def test_unknown_sessions_are_not_idle(sessions: dict[tuple[str, str], int] | None) -> None:
    """Without a session count for a draining server, it drains until DRAIN_TIMEOUT; it
    is not taken for idle."""
    applied = installed(desired(*web(2)))
    p = plan(desired(*web(1)), applied, now=0.0, timers=TIMERS, map_path=MAP, sessions=sessions)
    assert list(p.commands) == [f"set server {WEB_BE}/s2 state drain"]
    later = plan(desired(*web(1)), p.target, now=9.0, timers=TIMERS, map_path=MAP)
    assert later.empty


@pytest.mark.parametrize(("now", "reason"), [(299.99, None), (300.0, "backend_removed")])
def test_empty_backend_goes_once_gc_after_has_passed(now: float, reason: str | None) -> None:
    """A backend empty since t=0 is kept until BACKEND_GC_AFTER (300 s), removed at 300."""
    applied = installed(desired(kv(API, "a1", 80)))
    emptied = run(Desired(), applied, now=0.0).target
    emptied = run(Desired(), emptied, now=20.0).target
    assert emptied.empty_since[API_BE] == 0.0
    assert run(Desired(), emptied, now=now).reload == reason
