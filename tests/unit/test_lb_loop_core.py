"""The pure parts of the lb's loop: the incremental catalog (always what the whole
derivation gives), the cycle's decision as a table, the fd budget, the install path's
files, HAProxy's ALERT lines, and adoption with dynamic servers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.keys import Layout
from discovery.kv import KV
from lb import budget, haproxylog
from lb.catalog import Catalog
from lb.decide import RETRY_CAP, Gate, decide
from lb.desired import desired_state, parse_records
from lb.files import HAProxyFiles
from lb.install import Candidate, Installer
from lb.plan import Applied, Backend, Plan, Slot
from lb.state import adopted_state, layout_text, load_budget

LISTEN = ("/services/internal",)
PATHS = [
    "/internal/app1/dev/web",
    "/internal/app1/dev/web/a",
    "/internal/app1/dev/web/a.b",
    "/internal/app1/sit/db",
    "/internal/app2/dev/db",
    "/other/app1/dev/web",
]


def record(path: str, iid: str, port: int, type_: str, ext: int) -> bytes:
    p = path.split("/")
    return json.dumps(
        {
            "ID": iid,
            "APP": p[2],
            "ENV": p[3],
            "SERVICE": p[4],
            "NAME": p[5] if len(p) > 5 else "",
            "PORT": port,
            "TYPE": type_,
            "IP": "127.0.0.2",
            "EXT_PORT": ext,
            "NODE": "h",
        }
    ).encode()


# --- catalog ---------------------------------------------------------------------------

change = st.tuples(
    st.sampled_from(PATHS),
    st.sampled_from(["i1", "i2", "i3"]),
    st.one_of(
        st.none(),  # delete
        st.tuples(
            st.sampled_from([5432, 5433, 80]),  # announced PORT (TCP ports clash)
            st.sampled_from(["HTTP", "TCP", "bogus"]),
            st.integers(1000, 1003),
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(change, max_size=40), st.sampled_from([frozenset(), frozenset({80})]))
def test_the_incremental_catalog_equals_the_whole_derivation(
    changes: list[tuple[str, str, tuple[int, str, int] | None]], reserved: frozenset[int]
) -> None:
    """Whatever the order of puts and deletes (TCP port clashes, invalid records, paths
    outside LISTEN_PATH, reserved ports), a view kept as the lb keeps it — only the
    backends each put or delete says it touched are looked at again — ends with exactly
    the services and problems of the whole derivation over the same records."""
    catalog = Catalog(
        Layout(), LISTEN, domain="skydns.local", http=True, tcp=True, reserved_ports=reserved
    )
    view: dict[str, object] = {}
    problems: dict[str, list[object]] = {}

    def look(touched: set[str]) -> None:
        for name in touched:
            service, found = catalog.service(name)
            problems[name] = found
            if service is None:
                view.pop(name, None)
            else:
                view[name] = service

    items: dict[str, KV] = {}
    for revision, (path, iid, value) in enumerate(changes, start=1):
        key = f"/services{path}/{iid}"
        if value is None:
            items.pop(key, None)
            look(catalog.put(key, None)[0])
            continue
        port, type_, ext = value
        old = items.get(key)
        kv = KV(
            key,
            record(path, iid, port, type_, ext),
            old.create_revision if old else revision,
            revision,
            1,
        )
        items[key] = kv
        look(catalog.put(key, kv)[0])
    records, _ = parse_records(items.values(), Layout(), LISTEN)
    whole = desired_state(
        records, domain="skydns.local", http=True, tcp=True, reserved_ports=reserved
    )
    assert view == whole.services
    mine = [p for found in problems.values() for p in found]
    assert sorted(mine, key=repr) == sorted(whole.problems, key=repr)


def test_the_listen_that_binds_a_port_keeps_it_through_a_rolling_replacement() -> None:
    """Two TCP services on one port: the one HAProxy binds keeps it while it has
    instances, even when its instances are replaced by newer ones (SPEC §6)."""
    catalog = Catalog(Layout(), LISTEN, domain="d", http=True, tcp=True)
    a, b = "/internal/app1/sit/db", "/internal/app2/dev/db"
    catalog.put(
        f"/services{a}/a1", KV(f"/services{a}/a1", record(a, "a1", 5432, "TCP", 1), 1, 1, 1)
    )
    catalog.put(
        f"/services{b}/b1", KV(f"/services{b}/b1", record(b, "b1", 5432, "TCP", 1), 2, 2, 1)
    )
    bound = {5432: "tcp_internal_app1_sit_db"}.get
    # a's instance replaced by a newer one: a is now the younger service by create revision
    catalog.put(
        f"/services{a}/a2", KV(f"/services{a}/a2", record(a, "a2", 5432, "TCP", 1), 3, 3, 1)
    )
    catalog.put(f"/services{a}/a1", None)
    owner, _ = catalog.service("tcp_internal_app1_sit_db", bound)
    other, problems = catalog.service("tcp_internal_app2_dev_db", bound)
    assert owner is not None and other is None
    assert [p.kind for p in problems] == ["port_clash"]
    # Unbound (an lb that starts), the first created wins as before.
    assert catalog.service("tcp_internal_app2_dev_db")[0] is not None


# --- decide ------------------------------------------------------------------------------

TARGET = Applied()
RUNNING = Applied(backends={"be_x": Backend("be_x", "http", 2)})


def _plan(
    commands: tuple[str, ...] = (), reasons: tuple[str, ...] = (), interim: tuple[str, ...] = ()
) -> Plan:
    return Plan(
        TARGET,
        commands if not reasons else (),
        reasons[0] if reasons else None,
        interim,
        RUNNING if interim else None,
        reasons,
        frozenset({"be_new"}) if reasons else frozenset(),
    )


GATE = Gate(1.0, last=10.0)


@pytest.mark.parametrize(
    (
        "name",
        "plan",
        "now",
        "forced",
        "gate",
        "diverged",
        "refused",
        "action",
        "commands",
        "wait",
        "says",
    ),
    [
        ("idle", _plan(), 20.0, (), GATE, False, False, "idle", (), math.inf, ""),
        (
            "runtime",
            _plan(("set a",)),
            20.0,
            (),
            GATE,
            False,
            False,
            "apply",
            ("set a",),
            math.inf,
            "applied 1 command",
        ),
        (
            "reload now",
            _plan(reasons=("new_backend",)),
            20.0,
            (),
            GATE,
            False,
            False,
            "reload",
            (),
            math.inf,
            "reload (new_backend) now",
        ),
        (
            "coalesced",
            _plan(reasons=("new_backend",), interim=("set b",)),
            10.4,
            (),
            GATE,
            False,
            False,
            "wait",
            ("set b",),
            0.6,
            "RELOAD_MIN_INTERVAL",
        ),
        (
            "forced too",
            _plan(reasons=("new_backend",)),
            20.0,
            ("template_changed",),
            GATE,
            False,
            False,
            "reload",
            (),
            math.inf,
            "new_backend, template_changed",
        ),
        (
            "forced only",
            _plan(("set a",)),
            20.0,
            ("runtime_failed",),
            GATE,
            True,
            False,
            "reload",
            (),
            math.inf,
            "runtime_failed",
        ),
        (
            "diverged waits without commands",
            _plan(reasons=("new_backend",), interim=("set b",)),
            10.4,
            ("runtime_failed",),
            GATE,
            True,
            False,
            "wait",
            (),
            0.6,
            "reload (new_backend, runtime_failed)",
        ),
        (
            "refused keeps runtime going",
            _plan(reasons=("new_backend",), interim=("set b",)),
            20.0,
            (),
            GATE,
            False,
            True,
            "wait",
            ("set b",),
            math.inf,
            "refused",
        ),
        (
            "back-off",
            _plan(reasons=("new_backend",), interim=("set b",)),
            20.0,
            (),
            Gate(1.0, last=19.0, retry_at=23.0, failures=2),
            False,
            False,
            "wait",
            ("set b",),
            3.0,
            "back-off",
        ),
    ],
)
def test_the_cycle_decides_one_action(
    name: str,
    plan: Plan,
    now: float,
    forced: tuple[str, ...],
    gate: Gate,
    diverged: bool,
    refused: bool,
    action: str,
    commands: tuple[str, ...],
    wait: float,
    says: str,
) -> None:
    """The cycle's decision as a table: apply, reload, wait (with the commands valid on
    the running layout, unless HAProxy diverged) or idle, and one sentence saying so."""
    d = decide(plan, now=now, forced=forced, gate=gate, diverged=diverged, refused=refused)
    assert d.action == action, name
    assert d.commands == commands, name
    assert d.wait == pytest.approx(wait), name
    assert says in d.account, (name, d.account)


def test_reload_back_off_grows_and_is_capped() -> None:
    """A reload HAProxy rejects for no reason the lb can find is retried after 1, 2, 4 ...
    seconds, never more than RETRY_CAP; a good reload resets it."""
    gate = Gate(1.0)
    delays = []
    for _ in range(9):
        gate = gate.failed(100.0)
        delays.append(gate.retry_at - 100.0)
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == RETRY_CAP
    assert gate.reloaded(200.0).allowed_at() == 201.0


# --- budget ------------------------------------------------------------------------------


def test_a_config_within_the_limit_is_untouched() -> None:
    """Nothing is cut when the wanted slots and maxconn fit the limit."""
    fitted = budget.fit({"a": 10}, {"a": 13}, limit=20000, maxconn=None, binds=2)
    assert fitted.fits and fitted.slots == {"a": 13} and fitted.maxconn == budget.MAXCONN_AUTO
    assert fitted.need == 2 * 4000 + 13 + 2 + budget.BASE
    assert fitted.room == 20000 - fitted.need


def test_spare_slots_shrink_evenly_before_maxconn() -> None:
    """1000 backends x 10 live wanting 13 slots do not fit 20000 with maxconn 4000: the
    headroom is cut evenly (every backend keeps its live servers) and maxconn stays."""
    live = {f"b{i}": 10 for i in range(1000)}
    wanted = {f"b{i}": 13 for i in range(1000)}
    fitted = budget.fit(live, wanted, limit=20000, maxconn=None, binds=2)
    assert fitted.fits and fitted.maxconn == 4000 and fitted.maxconn_cut == 0
    assert all(10 <= s <= 13 for s in fitted.slots.values())
    assert max(fitted.slots.values()) - min(fitted.slots.values()) <= 1
    assert fitted.need + budget.reserve(20000) <= 20000
    assert fitted.spare_cut == 13000 - sum(fitted.slots.values()) > 0


def test_auto_maxconn_is_lowered_when_live_servers_alone_do_not_fit() -> None:
    """Live servers that leave less than 2 x 4000 descriptors: maxconn=auto goes down."""
    fitted = budget.fit({"a": 15000}, {"a": 16000}, limit=20000, maxconn=None, binds=1)
    assert fitted.fits and fitted.slots == {"a": 15000}
    assert budget.MAXCONN_FLOOR <= fitted.maxconn < 4000
    assert fitted.maxconn_cut == 4000 - fitted.maxconn
    assert fitted.need <= 20000


@pytest.mark.parametrize("maxconn", [None, 3000])
def test_a_config_that_cannot_fit_is_over_budget(maxconn: int | None) -> None:
    """More live servers than the limit leaves room for: over budget, whatever maxconn."""
    fitted = budget.fit({"a": 19900}, {"a": 19900}, limit=20000, maxconn=maxconn, binds=1)
    assert not fitted.fits
    assert "over budget" in fitted.account()


def test_the_budget_travels_with_the_layout_file(tmp_path: Path) -> None:
    """A restarted lb reads the fd budget of the config HAProxy runs from its layout file."""
    fitted = budget.fit({"a": 1}, {"a": 2}, limit=2000, maxconn=100, binds=1)
    path = tmp_path / "layout.json"
    path.write_text(layout_text(Applied(), fitted))
    again = load_budget(str(path))
    assert again is not None and (again.limit, again.maxconn, again.need) == (
        2000,
        100,
        fitted.need,
    )


# --- install -----------------------------------------------------------------------------


def _candidate(tag: str) -> Candidate:
    return Candidate(f"# {tag}\n", f"host.{tag} be\n", f'{{"{tag}": 1}}\n')


def test_a_refused_config_is_kept_beside_the_live_one_and_not_installed(tmp_path: Path) -> None:
    """`haproxy -c` refuses a config: the live files stay, the refused one is kept as
    haproxy.cfg.new-failed with HAProxy's message returned."""
    files = HAProxyFiles(str(tmp_path))
    installer = Installer(files, "haproxy")
    installer.commit(Candidate("global\n", "", "{}\n"))
    bad = Candidate("global\n    nonsense-keyword\n", "", "{}\n")
    result = installer.check(bad)
    assert not result.ok and "nonsense-keyword" in result.message
    assert Path(files.refused(files.cfg)).read_text() == bad.config
    assert Path(files.cfg).read_text() == "global\n"
    assert not Path(files.staged(files.cfg)).exists()


def test_a_rollback_restores_config_map_and_layout_together(tmp_path: Path) -> None:
    """After a reload HAProxy rejected, all three files are what they were."""
    files = HAProxyFiles(str(tmp_path))
    installer = Installer(files, "haproxy")
    installer.commit(_candidate("old"))
    installer.settle()
    installed = installer.commit(_candidate("new"))
    assert Path(files.map).read_text() == "host.new be\n"
    installer.rollback(installed)
    assert Path(files.cfg).read_text() == "# old\n"
    assert Path(files.map).read_text() == "host.old be\n"
    assert Path(files.layout).read_text() == '{"old": 1}\n'


def test_settle_forgets_the_previous_files(tmp_path: Path) -> None:
    """Once a reload is confirmed, the kept versions go: a later rollback cannot reach
    back past a confirmed config."""
    files = HAProxyFiles(str(tmp_path))
    installer = Installer(files, "haproxy")
    installer.commit(_candidate("a"))
    installer.settle()
    installer.commit(_candidate("b"))
    installer.settle()
    assert not Path(files.previous(files.cfg)).exists()


# --- HAProxy's words ---------------------------------------------------------------------


def test_the_proxy_an_alert_names_is_found() -> None:
    """The listen an ALERT line blames is read from HAProxy's own words (2.6.12)."""
    alerts = [
        "[ALERT] (19976) : Binding [haproxy.cfg:18] for proxy tcp_internal_app1_dev_db: "
        "cannot bind socket (Permission denied) for [127.0.0.1:81]",
        "[ALERT] (19976) : [haproxy.main()] Some protocols failed to start their listeners! "
        "Exiting.",
    ]
    assert haproxylog.proxies_named(alerts) == {"tcp_internal_app1_dev_db"}


def test_alerts_are_read_from_an_offset_and_survive_a_trim(tmp_path: Path) -> None:
    """Only the ALERT lines written after the offset are returned; a file cut back
    meanwhile is read from its start."""
    log = tmp_path / "haproxy.log"
    log.write_text("[ALERT] (1) : old\n")
    offset = haproxylog.size(str(log))
    with log.open("a") as f:
        f.write("[NOTICE] (1) : fine\n[ALERT] (1) : new one\n")
    assert haproxylog.alerts_since(str(log), offset) == ["[ALERT] (1) : new one"]
    log.write_text("[ALERT] (2) : after a cut\n")
    assert haproxylog.alerts_since(str(log), 10_000) == ["[ALERT] (2) : after a cut"]


# --- adoption ------------------------------------------------------------------------------


def test_dynamic_servers_are_adopted_beyond_the_rendered_slots() -> None:
    """Servers past the layout's rendered slots are dynamic ones (added with add
    server); a hole among them is a deleted one."""
    layout = {"be": Backend("be", "http", 2, "h")}
    servers = [
        ("be", "s1", "10.0.0.1", 80, "ready"),
        ("be", "s2", "10.0.0.2", 80, "ready"),
        ("be", "s4", "10.0.0.4", 80, "ready"),
    ]
    adopted = adopted_state(layout, servers, {"h": "be"}, now=0.0)
    assert adopted is not None
    table = adopted.slots["be"]
    assert [s.state for s in table] == ["ready", "ready", "gone", "ready"]
    assert [s.dynamic for s in table] == [False, False, True, True]
    assert adopted.dynamic_count() == 1
    assert adopted_state(layout, servers[:1], {}, now=0.0) is None  # s2 missing


def test_what_the_lb_knows_is_kept_where_haproxy_agrees() -> None:
    """A read-back keeps the lb's own table (instance IDs, drain start) where HAProxy runs
    exactly that, and takes HAProxy's word where it differs."""
    layout = {"be": Backend("be", "http", 2, "h")}
    known = Applied(
        layout,
        {"be": (Slot("10.0.0.1", 80, "ready", "i1"), Slot("10.0.0.2", 80, "drain", "i2", 5.0))},
        {"h": "be"},
    )
    same = [("be", "s1", "10.0.0.1", 80, "ready"), ("be", "s2", "10.0.0.2", 80, "drain")]
    adopted = adopted_state(layout, same, {"h": "be"}, now=9.0, known=known)
    assert adopted is not None and adopted.slots["be"] is known.slots["be"]
    moved = [("be", "s1", "10.0.0.1", 80, "ready"), ("be", "s2", "10.0.0.2", 80, "maint")]
    adopted = adopted_state(layout, moved, {"h": "be"}, now=9.0, known=known)
    assert adopted is not None
    assert adopted.slots["be"][0].instance == "i1" and adopted.slots["be"][1].free
