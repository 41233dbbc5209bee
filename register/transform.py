"""register's decisions, pure: announcements → the keys this register should hold, and the
operations that take etcd from what it holds to that (SPEC §5). No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from discovery.keys import Layout, dns_child, dns_children
from discovery.kv import KV
from discovery.records import (
    MAX_DNS_NAME,
    AnnounceRecord,
    DnsRecord,
    FrontendRecord,
    InvalidRecord,
    Rejected,
    ServicePath,
    ServiceRecord,
    covers,
    parse_announce,
    parse_frontend,
    parse_service,
)


@dataclass(frozen=True)
class Placement:
    """Where the world reaches an instance: the host's address and the published port."""

    ip: str
    ext_port: int


class PlacementUnknown(Exception):
    """The runtime cannot tell yet which announcements run here (its engine has never
    answered): the register changes nothing this cycle rather than drop every key."""


@dataclass(frozen=True)
class DnsConfig:
    domain: str
    ttl: int
    frontend_ip: str | None
    frontend_port: int


@dataclass(frozen=True)
class Put:
    """Write ``key`` under our lease, if etcd still holds it under ``expect_lease``."""

    key: str
    value: str
    expect_lease: int


@dataclass(frozen=True)
class Delete:
    """Delete ``key``, if etcd still holds it under ``expect_lease`` (one of ours)."""

    key: str
    expect_lease: int


Op = Put | Delete


def parse_announce_kv(kv: KV, layout: Layout) -> AnnounceRecord:
    """The announcement under one ``/announce`` key; raises ``InvalidRecord``."""
    path, instance_id = layout.split_instance_key(layout.announce, kv.key)
    return parse_announce(path, instance_id, kv.value)


def parse_announcements(
    items: Iterable[KV], layout: Layout
) -> tuple[dict[str, AnnounceRecord], list[Rejected]]:
    good: dict[str, AnnounceRecord] = {}
    bad: list[Rejected] = []
    for kv in items:
        try:
            good[kv.key] = parse_announce_kv(kv, layout)
        except InvalidRecord as exc:
            bad.append(Rejected(kv.key, kv.mod_revision, exc))
    return good, bad


def parse_frontends(
    items: Iterable[KV], layout: Layout
) -> tuple[list[FrontendRecord], list[Rejected]]:
    good: list[FrontendRecord] = []
    bad: list[Rejected] = []
    for kv in items:
        try:
            good.append(parse_frontend(layout.split_frontend_key(kv.key), kv.value))
        except InvalidRecord as exc:
            bad.append(Rejected(kv.key, kv.mod_revision, exc))
    return sorted(good, key=lambda f: f.id), bad


def base_of(path: ServicePath) -> ServicePath:
    """The service a path belongs to: the path without its name."""
    return replace(path, name="")


def nests(name: str, other: str) -> bool:
    """Would the DNS keys of two names of one service nest (one a dot-suffix of the
    other)? The unnamed environment (label ``default``) nests with none."""
    if not name or not other or name == other:
        return False
    return name.endswith("." + other) or other.endswith("." + name)


@dataclass(frozen=True)
class NameClaim:
    """A live name of one service, as the DNS nesting rule (SPEC §5) sees it."""

    #: The lowest create revision of its live announcements: when it was created.
    create_revision: int
    #: It has DNS records in etcd now: it keeps them against a name created earlier
    #: whose announcements were all replaced meanwhile (the rule is sticky).
    holds: bool = False


def suffixes(name: str) -> list[str]:
    """The proper dot-suffixes of a name: ``a.b.c`` → ``b.c``, ``c``."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


def dns_winners(claims: Mapping[str, NameClaim]) -> set[str]:
    """The names of one service that get DNS records: every name, except that of two
    names that nest, the one that holds records now, else the one created first (then
    the first by text) wins, and the other gets none (SPEC §5)."""
    order = sorted(claims, key=lambda n: (not claims[n].holds, claims[n].create_revision, n))
    won: set[str] = set()
    below_won: set[str] = set()  # every proper suffix of a winner: a name above one
    for name in order:
        if not name:
            won.add(name)  # the unnamed environment (label "default") nests with none
            continue
        above = suffixes(name)
        if name in below_won or any(s in won for s in above):
            continue
        won.add(name)
        below_won.update(above)
    return won


def shadowed_by(name: str, winners: Iterable[str]) -> list[str]:
    """The winning names that keep ``name`` out of DNS (empty: it is not shadowed)."""
    return sorted(other for other in winners if nests(name, other))


def dns_name_fits(path: ServicePath, dns: DnsConfig) -> bool:
    return len(path.dns_name(dns.domain)) <= MAX_DNS_NAME


def dns_records(
    service: ServiceRecord,
    frontends: Sequence[FrontendRecord],
    layout: Layout,
    dns: DnsConfig,
    child: str | None = None,
) -> dict[str, str]:
    """The SkyDNS keys of one instance: TCP straight to it; HTTP to the frontends that
    cover it, else to ``FRONTEND_IP``, else none. ``child`` is the instance's child key
    among the IDs of its name (:func:`discovery.keys.dns_children`)."""
    if not dns_name_fits(service.path, dns):
        return {}
    if child is None:
        child = dns_child(service.id)
    path = service.path
    if service.announce.type == "TCP":
        record = DnsRecord(service.ip, service.ext_port, dns.ttl)
        return {layout.skydns_key(path, dns.domain, child): record.to_json()}
    live = [f for f in frontends if any(covers(lp, path) for lp in f.listen_path)]
    if live:
        return {
            layout.skydns_key(path, dns.domain, f"{child}-{dns_child(f.id)}"): DnsRecord(
                f.ip, f.port, dns.ttl
            ).to_json()
            for f in live
        }
    if dns.frontend_ip is not None:
        record = DnsRecord(dns.frontend_ip, dns.frontend_port, dns.ttl)
        return {layout.skydns_key(path, dns.domain, child): record.to_json()}
    return {}


def instance_keys(
    announce: AnnounceRecord,
    place: Placement,
    frontends: Sequence[FrontendRecord],
    *,
    child: str | None,
    node: str,
    layout: Layout,
    dns: DnsConfig,
) -> dict[str, str]:
    """The keys of one placed instance: its service record, and its DNS records unless
    ``child`` is None (its name is kept out of DNS)."""
    service = ServiceRecord(announce, place.ip, place.ext_port, node)
    out = {layout.service_key(announce.path, announce.id): service.to_json()}
    if child is not None:
        out.update(dns_records(service, frontends, layout, dns, child))
    return out


def desired_keys(
    announces: Mapping[str, AnnounceRecord],
    placements: Mapping[str, Placement],
    frontends: Sequence[FrontendRecord],
    *,
    node: str,
    layout: Layout,
    dns: DnsConfig,
    revisions: Mapping[str, int] | None = None,
    holding: Iterable[ServicePath] = (),
) -> dict[str, str]:
    """Every ``/services`` and ``/skydns`` key this register should hold, with its value,
    derived at once from every announcement of the cluster (``announces``, by key; their
    create ``revisions``, 0 when not given), the local ones' ``placements`` and the paths
    whose names ``holding`` DNS records now. The register keeps the same result up to
    date event by event (``register.index``); this is the whole derivation."""
    revisions = revisions or {}
    held = set(holding)
    ids: dict[ServicePath, set[str]] = {}
    claims: dict[ServicePath, dict[str, NameClaim]] = {}
    for key, announce in announces.items():
        path = announce.path
        ids.setdefault(path, set()).add(announce.id)
        if not dns_name_fits(path, dns):
            continue
        names = claims.setdefault(base_of(path), {})
        revision = revisions.get(key, 0)
        claim = names.get(path.name)
        if claim is None or revision < claim.create_revision:
            names[path.name] = NameClaim(revision, path in held)
    winners = {base: dns_winners(names) for base, names in claims.items()}
    children = {path: dns_children(path_ids) for path, path_ids in ids.items()}
    out: dict[str, str] = {}
    for key, announce in sorted(announces.items()):
        place = placements.get(key)
        if place is None:
            continue
        path = announce.path
        in_dns = path.name in winners.get(base_of(path), ())
        child = children[path][announce.id] if in_dns else None
        keys = instance_keys(
            announce, place, frontends, child=child, node=node, layout=layout, dns=dns
        )
        out.update(keys)
    return out


def own_leases(services: Iterable[KV], layout: Layout, node: str) -> set[int]:
    """The leases of this node's service records: how a restarted register finds its keys."""
    leases = set()
    for kv in services:
        try:
            path, instance_id = layout.split_instance_key(layout.services, kv.key)
            record = parse_service(path, instance_id, kv.value)
        except InvalidRecord:
            continue
        if record.node == node and kv.lease:
            leases.add(kv.lease)
    return leases


def plan(desired: Mapping[str, str], actual: Mapping[str, KV], lease: int) -> list[Op]:
    """Operations that take our keys from ``actual`` to ``desired``, deletions last so a
    moved instance is never absent."""
    puts: list[Op] = []
    for key, value in sorted(desired.items()):
        current = actual.get(key)
        if current is None:
            puts.append(Put(key, value, expect_lease=0))
        elif current.value != value.encode() or current.lease != lease:
            puts.append(Put(key, value, expect_lease=current.lease))
    deletes: list[Op] = [
        Delete(key, expect_lease=kv.lease)
        for key, kv in sorted(actual.items())
        if key not in desired
    ]
    return puts + deletes
