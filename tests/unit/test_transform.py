"""register's pure decisions (SPEC §5): announcements → service and DNS keys → plan."""

from __future__ import annotations

import hashlib
import json

import pytest

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import (
    AnnounceRecord,
    FrontendRecord,
    Reason,
    ServicePath,
    ServiceRecord,
)
from register.runtime import HostRuntime
from register.transform import (
    Delete,
    DnsConfig,
    NameClaim,
    Op,
    Placement,
    Put,
    desired_keys,
    dns_records,
    dns_winners,
    own_leases,
    parse_announcements,
    parse_frontends,
    plan,
)

LAYOUT = Layout()
DNS = DnsConfig(domain="skydns.local", ttl=15, frontend_ip=None, frontend_port=80)
DNS_FALLBACK = DnsConfig(
    domain="skydns.local", ttl=15, frontend_ip="198.51.100.1", frontend_port=8080
)

DB = ServicePath.parse("/internal/app1/dev/db/ghost.example")
WEB = ServicePath.parse("/internal/app1/dev/web/ghost.example")
WEB_UNNAMED = ServicePath.parse("/internal/app1/dev/web")
DEVELOPMENT = ServicePath.parse("/internal/app1/development/web")

DB_SKYDNS = "/skydns/local/skydns/internal/app1/dev/db/example/ghost"
WEB_SKYDNS = "/skydns/local/skydns/internal/app1/dev/web/example/ghost"

LB1 = FrontendRecord("lb1", "192.0.2.10", 80, ("/services/internal/app1/dev",))
LB2 = FrontendRecord("LB_2.b", "192.0.2.20", 8080, ("/services/internal/app1/dev/web",))
LB_SIT = FrontendRecord("lb-sit", "192.0.2.30", 80, ("/services/internal/app1/sit",))
LB_ALL = FrontendRecord("lb-all", "192.0.2.40", 80, ("/services",))
LB2_CHILD = "lb-2-b-" + hashlib.sha256(b"LB_2.b").hexdigest()[:8]


def kv(key: str, value: bytes | str, *, lease: int = 0, rev: int = 1) -> KV:
    raw = value.encode() if isinstance(value, str) else value
    return KV(key=key, value=raw, create_revision=rev, mod_revision=rev, lease=lease)


def service(
    path: ServicePath, instance_id: str, kind: str, *, ip: str = "10.0.0.5", ext_port: int = 32768
) -> ServiceRecord:
    port = 5432 if kind == "TCP" else 80
    announce = AnnounceRecord(path, instance_id, port, "TCP" if kind == "TCP" else "HTTP")
    return ServiceRecord(announce, ip, ext_port, "hosta")


def dns(host: str, port: int, ttl: int = 15) -> dict[str, object]:
    return {"host": host, "port": port, "ttl": ttl}


def decoded(records: dict[str, str]) -> dict[str, object]:
    return {key: json.loads(value) for key, value in records.items()}


# --- parsing snapshots ----------------------------------------------------------------


def test_parse_announcements_splits_good_and_bad() -> None:
    """Valid announcements are keyed by key; the rest are rejected with revision and reason."""
    good = AnnounceRecord(DB, "0ce60d000eac", 5432, "TCP")
    good_key = LAYOUT.announce_key(DB, "0ce60d000eac")
    items = [
        kv(good_key, good.to_json(), rev=3),
        kv("/announce/internal/app1/dev/db/ghost.example/a b", good.to_json(), rev=4),
        kv("/announce/internal/app1/dev/db/ghost.example/other", good.to_json(), rev=5),
        kv("/announce/internal/app1/dev/db/ghost.example/x", b"\xff", rev=6),
        kv("/announce/internal/app1/dev/db/ghost.example/y", b"x" * 70_000, rev=7),
    ]
    records, rejected = parse_announcements(items, LAYOUT)
    assert records == {good_key: good}
    assert [(r.key, r.mod_revision, r.error.reason) for r in rejected] == [
        (items[1].key, 4, Reason.BAD_KEY),
        (items[2].key, 5, Reason.PATH_MISMATCH),
        (items[3].key, 6, Reason.BAD_JSON),
        (items[4].key, 7, Reason.TOO_LARGE),
    ]


def test_parse_announcements_under_a_root() -> None:
    """Under a root only keys below <root>/announce are read; others are bad keys."""
    layout = Layout("/haroute")
    record = AnnounceRecord(WEB, "0ce60d000eac", 80, "HTTP")
    inside = layout.announce_key(WEB, "0ce60d000eac")
    outside = LAYOUT.announce_key(WEB, "0ce60d000eac")
    records, rejected = parse_announcements(
        [kv(inside, record.to_json()), kv(outside, record.to_json())], layout
    )
    assert records == {inside: record}
    assert [(r.key, r.error.reason) for r in rejected] == [(outside, Reason.BAD_KEY)]


def test_parse_frontends_sorted_and_rejected() -> None:
    """Frontends come back sorted by ID; a frontend whose key and ID disagree is rejected."""
    items = [
        kv("/frontends/lb2", FrontendRecord("lb2", "192.0.2.2", 80, ()).to_json()),
        kv("/frontends/lb1", LB1.to_json()),
        kv("/frontends/lb3", LB1.to_json(), rev=9),
        kv("/frontends/lb 4", LB1.to_json()),
        kv("/frontends/lb5", b'{"ID": "lb5", "IP": "192.0.2.5", "PORT": 80}'),
    ]
    frontends, rejected = parse_frontends(items, LAYOUT)
    assert [f.id for f in frontends] == ["lb1", "lb2"]
    assert frontends[0] == LB1
    assert [(r.key, r.error.reason) for r in rejected] == [
        ("/frontends/lb3", Reason.PATH_MISMATCH),
        ("/frontends/lb 4", Reason.BAD_KEY),
        ("/frontends/lb5", Reason.MISSING_FIELD),
    ]
    assert rejected[0].mod_revision == 9


# --- DNS records ----------------------------------------------------------------------


def test_tcp_record_goes_straight_to_the_instance() -> None:
    """The original design's database: A/SRV straight to the host's address and published port."""
    records = dns_records(service(DB, "0ce60d000eac", "TCP"), [LB1, LB2], LAYOUT, DNS_FALLBACK)
    assert decoded(records) == {f"{DB_SKYDNS}/0ce60d000eac": dns("10.0.0.5", 32768)}


@pytest.mark.parametrize(
    ("frontends", "config", "expected"),
    [
        (
            [LB1],
            DNS,
            {f"{WEB_SKYDNS}/0ce60d000eac-lb1": dns("192.0.2.10", 80)},
        ),
        (
            [LB1, LB2],
            DNS_FALLBACK,
            {
                f"{WEB_SKYDNS}/0ce60d000eac-lb1": dns("192.0.2.10", 80),
                f"{WEB_SKYDNS}/0ce60d000eac-{LB2_CHILD}": dns("192.0.2.20", 8080),
            },
        ),
        (
            [LB1, LB_SIT, LB_ALL],
            DNS,
            {
                f"{WEB_SKYDNS}/0ce60d000eac-lb1": dns("192.0.2.10", 80),
                f"{WEB_SKYDNS}/0ce60d000eac-lb-all": dns("192.0.2.40", 80),
            },
        ),
        ([LB_SIT], DNS_FALLBACK, {f"{WEB_SKYDNS}/0ce60d000eac": dns("198.51.100.1", 8080)}),
        ([], DNS_FALLBACK, {f"{WEB_SKYDNS}/0ce60d000eac": dns("198.51.100.1", 8080)}),
        ([LB_SIT], DNS, {}),
        ([], DNS, {}),
    ],
)
def test_http_records(
    frontends: list[FrontendRecord], config: DnsConfig, expected: dict[str, object]
) -> None:
    """HTTP names point at every covering frontend, else at FRONTEND_IP, else nowhere."""
    records = dns_records(service(WEB, "0ce60d000eac", "HTTP"), frontends, LAYOUT, config)
    assert decoded(records) == expected


def test_http_frontend_covers_by_whole_components() -> None:
    """A frontend listening on /dev does not serve /development."""
    records = dns_records(service(DEVELOPMENT, "abc", "HTTP"), [LB1], LAYOUT, DNS_FALLBACK)
    assert decoded(records) == {
        "/skydns/local/skydns/internal/app1/development/web/default/abc": dns("198.51.100.1", 8080)
    }


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    ("instance_id", "child"),
    [
        ("Web_1.Host-A", "web-1-host-a-" + sha8("Web_1.Host-A")),
        ("ABC", "abc"),
        ("a.b_c", "a-b-c-" + sha8("a.b_c")),
    ],
)
@pytest.mark.parametrize("kind", ["TCP", "HTTP"])
def test_child_names_are_lower_case_with_dashes(instance_id: str, child: str, kind: str) -> None:
    """IDs with '.', '_' or upper case become lower-case '-' child keys, hashed when more
    than the case changed (SPEC §5); so do frontend IDs in HTTP records."""
    frontends = [FrontendRecord("LB_1.X", "192.0.2.1", 80, ("/services",))]
    records = dns_records(service(WEB, instance_id, kind), frontends, LAYOUT, DNS)
    expected_child = child if kind == "TCP" else f"{child}-lb-1-x-{sha8('LB_1.X')}"
    assert list(records) == [f"{WEB_SKYDNS}/{expected_child}"]


@pytest.mark.parametrize("kind", ["TCP", "HTTP"])
def test_unnamed_environment_uses_default_label(kind: str) -> None:
    """An environment without a name is published under the reserved 'default' label."""
    records = dns_records(service(WEB_UNNAMED, "abc", kind), [LB1], LAYOUT, DNS)
    child = "abc" if kind == "TCP" else "abc-lb1"
    assert list(records) == [f"/skydns/local/skydns/internal/app1/dev/web/default/{child}"]


def test_dns_records_under_a_root_and_ttl() -> None:
    """Under HAROUTE_PREFIX the records live below <root>/skydns and carry the configured TTL."""
    config = DnsConfig(domain="example.com", ttl=30, frontend_ip=None, frontend_port=80)
    records = dns_records(service(DB, "0ce60d000eac", "TCP"), [], Layout("/haroute"), config)
    assert decoded(records) == {
        "/haroute/skydns/com/example/internal/app1/dev/db/example/ghost/0ce60d000eac": dns(
            "10.0.0.5", 32768, 30
        )
    }


def test_name_too_long_for_dns_gets_no_record() -> None:
    """A service whose DNS name would exceed 253 characters gets no DNS record at all."""
    long_name = ".".join(["a" * 61] * 3)  # 185 characters, a valid name on its own
    path = ServicePath("s" * 20, "a" * 20, "e" * 20, "w" * 20, long_name)
    assert len(path.dns_name("skydns.local")) > 253
    assert dns_records(service(path, "abc", "TCP"), [], LAYOUT, DNS_FALLBACK) == {}
    assert dns_records(service(path, "abc", "HTTP"), [], LAYOUT, DNS_FALLBACK) == {}


# --- desired keys ---------------------------------------------------------------------


def test_desired_keys_only_for_placed_records() -> None:
    """Only announcements this host placed become /services and /skydns keys."""
    here = AnnounceRecord(DB, "0ce60d000eac", 5432, "TCP", host="hosta")
    elsewhere = AnnounceRecord(DB, "7874ghGD121s", 5432, "TCP", host="hostb")
    announces = {
        LAYOUT.announce_key(DB, here.id): here,
        LAYOUT.announce_key(DB, elsewhere.id): elsewhere,
    }
    placements = {LAYOUT.announce_key(DB, here.id): Placement("10.0.0.5", 32768)}
    out = desired_keys(announces, placements, [], node="hosta", layout=LAYOUT, dns=DNS)
    service_key = "/services/internal/app1/dev/db/ghost.example/0ce60d000eac"
    assert sorted(out) == [service_key, f"{DB_SKYDNS}/0ce60d000eac"]
    assert json.loads(out[service_key]) == {
        "ID": "0ce60d000eac",
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "db",
        "NAME": "ghost.example",
        "PORT": 5432,
        "TYPE": "TCP",
        "HOST": "hosta",
        "IP": "10.0.0.5",
        "EXT_PORT": 32768,
        "NODE": "hosta",
    }
    assert json.loads(out[f"{DB_SKYDNS}/0ce60d000eac"]) == dns("10.0.0.5", 32768)


def test_desired_keys_http_with_frontends_under_a_root() -> None:
    """An HTTP service gets its /services key and one DNS key per covering frontend."""
    layout = Layout("/haroute")
    web = AnnounceRecord(WEB, "0ce60d000eac", 80, "HTTP")
    key = layout.announce_key(WEB, web.id)
    out = desired_keys(
        {key: web},
        {key: Placement("10.0.0.5", 32769)},
        [LB1, LB2, LB_SIT],
        node="hosta",
        layout=layout,
        dns=DNS,
    )
    assert sorted(out) == [
        "/haroute/services/internal/app1/dev/web/ghost.example/0ce60d000eac",
        f"/haroute{WEB_SKYDNS}/0ce60d000eac-{LB2_CHILD}",
        f"/haroute{WEB_SKYDNS}/0ce60d000eac-lb1",
    ]


def test_desired_keys_empty_without_placements() -> None:
    """Nothing placed, nothing desired."""
    web = AnnounceRecord(WEB, "abc", 80, "HTTP")
    out = desired_keys(
        {LAYOUT.announce_key(WEB, "abc"): web}, {}, [LB1], node="hosta", layout=LAYOUT, dns=DNS
    )
    assert out == {}


def test_host_runtime_places_records_of_its_node() -> None:
    """The host runtime places the records whose HOST is its node name, EXT_PORT = PORT."""
    mine = AnnounceRecord(WEB, "hosta-80", 80, "HTTP", host="hosta")
    other = AnnounceRecord(WEB, "hostb-80", 80, "HTTP", host="hostb")
    docker = AnnounceRecord(WEB, "0ce60d000eac", 80, "HTTP")
    upper = AnnounceRecord(WEB, "HOSTA-80", 80, "HTTP", host="HOSTA")
    runtime = HostRuntime("hosta", "10.0.0.5")
    assert runtime.place("k1", mine) == Placement("10.0.0.5", 80)
    assert [runtime.place("k", r) for r in (other, docker, upper)] == [None, None, None]
    assert runtime.refresh() is False


# --- own leases -----------------------------------------------------------------------


def _service_kv(node: str, lease: int, instance_id: str = "abc") -> KV:
    record = ServiceRecord(AnnounceRecord(WEB, instance_id, 80, "HTTP"), "10.0.0.5", 80, node)
    return kv(LAYOUT.service_key(WEB, instance_id), record.to_json(), lease=lease)


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        ([], set()),
        ([_service_kv("hosta", 7)], {7}),
        ([_service_kv("hosta", 7, "a"), _service_kv("hosta", 8, "b")], {7, 8}),
        ([_service_kv("hostb", 9)], set()),
        ([_service_kv("HOSTA", 9)], set()),
        ([_service_kv("hosta", 0)], set()),
        ([_service_kv("hosta", 7), _service_kv("hostb", 9, "b")], {7}),
        ([kv(LAYOUT.service_key(WEB, "abc"), b'{"NODE": "hosta"}', lease=5)], set()),
        ([kv(LAYOUT.service_key(WEB, "abc"), b"\xff", lease=5)], set()),
        ([kv("/services/bad key", _service_kv("hosta", 5).value, lease=5)], set()),
        ([kv(LAYOUT.service_key(WEB, "other"), _service_kv("hosta", 5).value, lease=5)], set()),
    ],
)
def test_own_leases(services: list[KV], expected: set[int]) -> None:
    """A restarted register finds the leases of valid records whose NODE is its own, only."""
    assert own_leases(services, LAYOUT, "hosta") == expected


# --- plan -----------------------------------------------------------------------------

OUR_LEASE = 100


@pytest.mark.parametrize(
    ("desired", "actual", "expected"),
    [
        ({}, {}, []),
        ({"/a": "1"}, {"/a": kv("/a", "1", lease=OUR_LEASE)}, []),
        ({"/a": "1"}, {}, [Put("/a", "1", expect_lease=0)]),
        (
            {"/a": "2"},
            {"/a": kv("/a", "1", lease=OUR_LEASE)},
            [Put("/a", "2", expect_lease=OUR_LEASE)],
        ),
        ({"/a": "1"}, {"/a": kv("/a", "1", lease=42)}, [Put("/a", "1", expect_lease=42)]),
        ({"/a": "1"}, {"/a": kv("/a", "1", lease=0)}, [Put("/a", "1", expect_lease=0)]),
        ({}, {"/a": kv("/a", "1", lease=42)}, [Delete("/a", expect_lease=42)]),
        (
            {"/c": "3", "/a": "1"},
            {
                "/d": kv("/d", "4", lease=OUR_LEASE),
                "/b": kv("/b", "2", lease=42),
                "/a": kv("/a", "0", lease=OUR_LEASE),
            },
            [
                Put("/a", "1", expect_lease=OUR_LEASE),
                Put("/c", "3", expect_lease=0),
                Delete("/b", expect_lease=42),
                Delete("/d", expect_lease=OUR_LEASE),
            ],
        ),
    ],
    ids=["empty", "equal", "new", "changed", "other lease", "no lease", "gone", "mixed"],
)
def test_plan(desired: dict[str, str], actual: dict[str, KV], expected: list[Op]) -> None:
    """Puts for new, changed or foreign-lease keys (expecting the current lease), deletes last."""
    assert plan(desired, actual, OUR_LEASE) == expected


def test_plan_replaced_key_puts_before_deleting() -> None:
    """A key replaced by another is written before the old one goes, whatever their order."""
    old = "/services/internal/app1/dev/web/zzz"
    new = "/services/internal/app1/dev/web/aaa"
    ops = plan({new: "v"}, {old: kv(old, "v", lease=OUR_LEASE)}, OUR_LEASE)
    assert ops == [Put(new, "v", expect_lease=0), Delete(old, expect_lease=OUR_LEASE)]
    ops = plan({old: "v"}, {new: kv(new, "v", lease=OUR_LEASE)}, OUR_LEASE)
    assert ops == [Put(old, "v", expect_lease=0), Delete(new, expect_lease=OUR_LEASE)]


def test_plan_compares_encoded_values() -> None:
    """Non-ASCII values are compared as UTF-8 bytes: an equal value needs no write."""
    ops = plan({"/a": "é"}, {"/a": kv("/a", "é".encode(), lease=OUR_LEASE)}, OUR_LEASE)
    assert ops == []


def test_plan_applied_reaches_desired() -> None:
    """Applying the plan to the actual keys yields exactly the desired keys under our lease."""
    desired = {"/a": "1", "/b": "2", "/c": "3"}
    actual = {
        "/b": kv("/b", "old", lease=OUR_LEASE),
        "/c": kv("/c", "3", lease=7),
        "/x": kv("/x", "9", lease=OUR_LEASE),
    }
    state = {key: (item.value.decode(), item.lease) for key, item in actual.items()}
    for op in plan(desired, actual, OUR_LEASE):
        assert state.get(op.key, (None, 0))[1] == op.expect_lease
        if isinstance(op, Put):
            state[op.key] = (op.value, OUR_LEASE)
        else:
            del state[op.key]
    assert state == {key: (value, OUR_LEASE) for key, value in desired.items()}


# --- DNS nesting (SPEC §5) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "winners"),
    [
        ({}, set()),
        ({"": NameClaim(5), "example": NameClaim(7)}, {"", "example"}),
        # example created first: ghost.example gets no DNS records.
        ({"example": NameClaim(3), "ghost.example": NameClaim(4)}, {"example"}),
        ({"example": NameClaim(4), "ghost.example": NameClaim(3)}, {"ghost.example"}),
        # A name that holds records keeps them against one created earlier.
        (
            {"example": NameClaim(4, holds=True), "ghost.example": NameClaim(3)},
            {"example"},
        ),
        # Both hold (written before this rule, or a race): the first created wins.
        (
            {"example": NameClaim(4, holds=True), "ghost.example": NameClaim(3, holds=True)},
            {"ghost.example"},
        ),
        # Not a dot-suffix: no nesting (ample is not a label of example).
        ({"example": NameClaim(3), "ample": NameClaim(4)}, {"example", "ample"}),
        # Siblings below one name both win once the shorter one lost.
        (
            {"x.a": NameClaim(1), "y.a": NameClaim(2), "a": NameClaim(3)},
            {"x.a", "y.a"},
        ),
        ({"a": NameClaim(1), "x.a": NameClaim(2), "y.x.a": NameClaim(3)}, {"a"}),
        # A chain: a loses to b.a, so c.b.a... still nests with b.a and loses too.
        ({"b.a": NameClaim(1), "a": NameClaim(2), "c.b.a": NameClaim(3)}, {"b.a"}),
        # Same revision (one transaction): the first by text.
        ({"example": NameClaim(3), "ghost.example": NameClaim(3)}, {"example"}),
    ],
)
def test_dns_winners(claims: dict[str, NameClaim], winners: set[str]) -> None:
    """Of two names of one service that nest, the one holding records, else the one
    created first, keeps DNS records; the other gets none (SPEC §5)."""
    assert dns_winners(claims) == winners


def test_desired_keys_keep_nesting_names_out_of_dns() -> None:
    """The whole derivation: the later of two nesting names gets its service record but
    no DNS record; DNS children of one name never collide."""
    example = ServicePath.parse("/internal/app1/dev/db/example")
    records = {
        "k1": AnnounceRecord(example, "web.1", 5432, "TCP", host="hosta"),
        "k2": AnnounceRecord(DB, "web_1", 5432, "TCP", host="hosta"),
        "k3": AnnounceRecord(example, "web_1", 5433, "TCP", host="hostb"),
    }
    placements = {"k1": Placement("10.0.0.5", 1), "k2": Placement("10.0.0.5", 2)}
    out = desired_keys(
        records,
        placements,
        [],
        node="hosta",
        layout=LAYOUT,
        dns=DNS,
        revisions={"k1": 7, "k2": 5, "k3": 9},
    )
    assert sorted(out) == [
        "/services/internal/app1/dev/db/example/web.1",
        "/services/internal/app1/dev/db/ghost.example/web_1",
        f"{DB_SKYDNS}/web-1-{sha8('web_1')}",
    ]
