"""register's decisions, pure: announcements → the keys this register should hold, and the
operations that take etcd from what it holds to that (SPEC §5). No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from discovery.keys import Layout, dns_child
from discovery.kv import KV
from discovery.records import (
    MAX_DNS_NAME,
    AnnounceRecord,
    DnsRecord,
    FrontendRecord,
    InvalidRecord,
    Rejected,
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


def parse_announcements(
    items: Iterable[KV], layout: Layout
) -> tuple[dict[str, AnnounceRecord], list[Rejected]]:
    good: dict[str, AnnounceRecord] = {}
    bad: list[Rejected] = []
    for kv in items:
        try:
            path, instance_id = layout.split_instance_key(layout.announce, kv.key)
            good[kv.key] = parse_announce(path, instance_id, kv.value)
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


def dns_records(
    service: ServiceRecord, frontends: Sequence[FrontendRecord], layout: Layout, dns: DnsConfig
) -> dict[str, str]:
    """The SkyDNS keys of one instance: TCP straight to it; HTTP to the frontends that
    cover it, else to ``FRONTEND_IP``, else none."""
    if len(service.path.dns_name(dns.domain)) > MAX_DNS_NAME:
        return {}
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


def desired_keys(
    announces: Mapping[str, AnnounceRecord],
    placements: Mapping[str, Placement],
    frontends: Sequence[FrontendRecord],
    *,
    node: str,
    layout: Layout,
    dns: DnsConfig,
) -> dict[str, str]:
    """Every ``/services`` and ``/skydns`` key this register should hold, with its value."""
    out: dict[str, str] = {}
    for key, announce in announces.items():
        place = placements.get(key)
        if place is None:
            continue
        service = ServiceRecord(announce, place.ip, place.ext_port, node)
        out[layout.service_key(announce.path, announce.id)] = service.to_json()
        out.update(dns_records(service, frontends, layout, dns))
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
