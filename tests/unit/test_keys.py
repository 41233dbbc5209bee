"""The etcd key layout of SPEC §3 and §5, with and without a root (HAROUTE_PREFIX)."""

from __future__ import annotations

import hashlib

import pytest

from discovery.keys import Layout, dns_child, dns_children
from discovery.records import InvalidRecord, Reason, ServicePath

DOMAIN = "skydns.local"


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


DB = ServicePath.parse("/internal/app1/dev/db/ghost.example")
WEB = ServicePath.parse("/internal/app1/dev/web/ghost.example")
UNNAMED = ServicePath.parse("/internal/app1/dev/web")


@pytest.mark.parametrize(
    ("instance_id", "child"),
    [
        ("0ce60d000eac", "0ce60d000eac"),
        ("7874ghGD121s", "7874ghgd121s"),  # only the case changed: no hash
        ("web-1", "web-1"),
        # More than the case changed: the first 8 hex digits of the ID's SHA-256 follow.
        ("web.1", "web-1-f2059589"),
        ("web_1", "web-1-c703c3ba"),
        ("Host_A.example-8080", "host-a-example-8080-85e548fe"),
        ("a..b__c", "a--b--c-b2da043e"),
    ],
)
def test_dns_child(instance_id: str, child: str) -> None:
    """A SkyDNS child key is the ID lower-cased with '.' and '_' turned into '-', and
    hashed when that changed more than the case (SPEC §5): web.1 and web_1 differ."""
    assert dns_child(instance_id) == child


@pytest.mark.parametrize(
    ("ids", "children"),
    [
        (["web1"], ["web1"]),
        (["Web1"], ["web1"]),
        # IDs of one name that differ only in case: both hashed.
        (["web1", "Web1"], ["web1-659a7fb2", "web1-fbb6f4c5"]),
        (["web.1", "web_1", "web-1"], ["web-1-f2059589", "web-1-c703c3ba", "web-1"]),
        # An ID made to look like another's hashed child is hashed in turn.
        (
            ["web.1", "web-1-f2059589"],
            ["web-1-f2059589", "web-1-f2059589-" + sha8("web-1-f2059589")],
        ),
    ],
)
def test_dns_children_of_one_name(ids: list[str], children: list[str]) -> None:
    """Within one name, two different IDs never share a child (SPEC §5)."""
    got = dns_children(ids)
    assert [got[i] for i in ids] == children
    assert len(set(got.values())) == len(ids)


@pytest.mark.parametrize(
    ("root", "announce", "services", "skydns", "frontends"),
    [
        ("", "/announce", "/services", "/skydns", "/frontends"),
        (
            "/haroute",
            "/haroute/announce",
            "/haroute/services",
            "/haroute/skydns",
            "/haroute/frontends",
        ),
        ("/a/b", "/a/b/announce", "/a/b/services", "/a/b/skydns", "/a/b/frontends"),
    ],
)
def test_layout_prefixes(
    root: str, announce: str, services: str, skydns: str, frontends: str
) -> None:
    """Every kind of key lives under the root; no root means the original design's paths."""
    layout = Layout(root)
    assert (layout.announce, layout.services, layout.skydns, layout.frontends) == (
        announce,
        services,
        skydns,
        frontends,
    )


def test_original_design_database_example() -> None:
    """The PostgreSQL example of the original design lands on the documented keys."""
    layout = Layout()
    assert layout.announce_key(DB, "0ce60d000eac") == (
        "/announce/internal/app1/dev/db/ghost.example/0ce60d000eac"
    )
    assert layout.service_key(DB, "0ce60d000eac") == (
        "/services/internal/app1/dev/db/ghost.example/0ce60d000eac"
    )
    assert DB.dns_name(DOMAIN) == "ghost.example.db.dev.app1.internal.skydns.local"
    assert (
        layout.skydns_dir(DB, DOMAIN) == "/skydns/local/skydns/internal/app1/dev/db/example/ghost"
    )
    assert layout.skydns_key(DB, DOMAIN, dns_child("0ce60d000eac")) == (
        "/skydns/local/skydns/internal/app1/dev/db/example/ghost/0ce60d000eac"
    )


def test_web_example_under_a_root() -> None:
    """The Django example under HAROUTE_PREFIX=/haroute keeps the whole layout below the root."""
    layout = Layout("/haroute")
    assert layout.announce_key(WEB, "0ce60d000eac") == (
        "/haroute/announce/internal/app1/dev/web/ghost.example/0ce60d000eac"
    )
    assert layout.service_key(WEB, "0ce60d000eac") == (
        "/haroute/services/internal/app1/dev/web/ghost.example/0ce60d000eac"
    )
    assert WEB.dns_name(DOMAIN) == "ghost.example.web.dev.app1.internal.skydns.local"
    assert layout.skydns_key(WEB, DOMAIN, "0ce60d000eac-lb1") == (
        "/haroute/skydns/local/skydns/internal/app1/dev/web/example/ghost/0ce60d000eac-lb1"
    )
    assert layout.frontend_key("lb1") == "/haroute/frontends/lb1"
    assert layout.listen_key("/services/internal/app1/dev") == "/haroute/services/internal/app1/dev"


@pytest.mark.parametrize(
    ("path", "domain", "expected"),
    [
        (UNNAMED, DOMAIN, "/skydns/local/skydns/internal/app1/dev/web/default"),
        (WEB, "example.com", "/skydns/com/example/internal/app1/dev/web/example/ghost"),
        (
            ServicePath.parse("/s/a/e/svc/x.y.z"),
            "d",
            "/skydns/d/s/a/e/svc/z/y/x",
        ),
    ],
)
def test_skydns_dir_reverses_labels(path: ServicePath, domain: str, expected: str) -> None:
    """The name's key is its labels reversed; an unnamed environment ends in 'default'."""
    assert Layout().skydns_dir(path, domain) == expected


def test_named_and_unnamed_environments_do_not_nest() -> None:
    """The unnamed environment's DNS key is not a prefix of a named environment's key."""
    layout = Layout()
    unnamed = layout.skydns_dir(UNNAMED, DOMAIN) + "/"
    assert not layout.skydns_key(WEB, DOMAIN, "x").startswith(unnamed)


@pytest.mark.parametrize("root", ["", "/haroute"])
@pytest.mark.parametrize("path", [DB, WEB, UNNAMED])
@pytest.mark.parametrize("instance_id", ["0ce60d000eac", "Web_1.a-B", "a" * 128])
def test_split_instance_key_inverts_the_key(root: str, path: ServicePath, instance_id: str) -> None:
    """split_instance_key gives back the path and ID that announce_key/service_key joined."""
    layout = Layout(root)
    for base, key in (
        (layout.announce, layout.announce_key(path, instance_id)),
        (layout.services, layout.service_key(path, instance_id)),
    ):
        assert layout.split_instance_key(base, key) == (path, instance_id)


def test_split_instance_key_lower_cases_the_path_not_the_id() -> None:
    """Path components are lower-cased on read; the ID keeps its case."""
    key = "/announce/Internal/APP1/dev/Web/Ghost.Example/AbC"
    assert Layout().split_instance_key("/announce", key) == (WEB, "AbC")


@pytest.mark.parametrize(
    ("root", "key"),
    [
        ("", "/services/internal/app1/dev/web/x"),
        ("", "/announcex/internal/app1/dev/web/x"),
        ("", "announce/internal/app1/dev/web/x"),
        ("", "/announce"),
        ("", "/announce/"),
        ("", "/announce/internal/app1/dev/web"),
        ("", "/announce/internal/app1/dev/web/"),
        ("", "/announce/internal/app1/dev/web/ghost.example/x/y"),
        ("", "/announce/internal/app1/dev/web/a b"),
        ("", "/announce/internal/app1/dev/web/x\n"),
        ("", "/announce/internal/app1/dev/web/x;y"),
        ("", "/announce/internal/app1/dev/web/-x"),
        ("", "/announce/internal/app1/dev/web/" + "a" * 129),
        ("", "/announce/internal/app1/dev/web/default/x"),
        ("", "/announce/in ternal/app1/dev/web/x"),
        ("", "/announce/internal/app1/dev/web/\udcff"),
        ("", "/haroute/announce/internal/app1/dev/web/x"),
        ("/haroute", "/announce/internal/app1/dev/web/x"),
        ("/haroute", "/harouteannounce/internal/app1/dev/web/x"),
    ],
)
def test_split_instance_key_rejects(root: str, key: str) -> None:
    """A key outside the base, with a bad path or a bad ID, is a bad key."""
    layout = Layout(root)
    with pytest.raises(InvalidRecord) as exc:
        layout.split_instance_key(layout.announce, key)
    assert exc.value.reason is Reason.BAD_KEY


@pytest.mark.parametrize(
    ("root", "key", "lb_id"),
    [
        ("", "/frontends/lb1", "lb1"),
        ("", "/frontends/LB_1.a", "LB_1.a"),
        ("/haroute", "/haroute/frontends/lb1", "lb1"),
    ],
)
def test_split_frontend_key(root: str, key: str, lb_id: str) -> None:
    """A /frontends/<LB_ID> key gives its LB_ID back."""
    layout = Layout(root)
    assert layout.split_frontend_key(key) == lb_id
    assert layout.frontend_key(lb_id) == key


@pytest.mark.parametrize(
    ("root", "key"),
    [
        ("", "/frontends/"),
        ("", "/frontends"),
        ("", "/frontends/lb1/x"),
        ("", "/frontends/lb 1"),
        ("", "/frontends/lb1\n"),
        ("", "/services/lb1"),
        ("", "/haroute/frontends/lb1"),
        ("/haroute", "/frontends/lb1"),
    ],
)
def test_split_frontend_key_rejects(root: str, key: str) -> None:
    """Anything but <root>/frontends/<valid ID> is a bad key."""
    with pytest.raises(InvalidRecord) as exc:
        Layout(root).split_frontend_key(key)
    assert exc.value.reason is Reason.BAD_KEY
