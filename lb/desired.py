"""Snapshot of /services → desired state of the lb (SPEC §6). Pure: no I/O.

An HTTP service path becomes a backend routed by its Host name (its DNS name, SPEC §5);
a TCP service path becomes a ``listen`` on its own port. Records are validated here
(everything from etcd is untrusted); rejected ones are returned for counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import (
    InvalidRecord,
    Rejected,
    ServicePath,
    ServiceRecord,
    covers,
    parse_service,
)


@dataclass(frozen=True, order=True)
class Instance:
    """One server: its instance ID and where it is reached."""

    id: str
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True)
class Service:
    """One backend (HTTP) or listen (TCP) and the instances it should route to."""

    name: str
    mode: str  # "http" | "tcp"
    path: ServicePath
    instances: tuple[Instance, ...]
    host: str = ""  # HTTP: the Host header routed here
    port: int = 0  # TCP: the port it listens on
    created: int = 0  # lowest create revision among its records


@dataclass(frozen=True)
class Problem:
    """Something reported instead of configured (a port clash, a mismatched port)."""

    kind: str
    key: str
    detail: str


@dataclass(frozen=True)
class Desired:
    services: Mapping[str, Service] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()

    @property
    def hosts(self) -> dict[str, str]:
        """The Host → backend map."""
        return {s.host: s.name for s in self.services.values() if s.mode == "http"}


def backend_name(path: ServicePath, mode: str) -> str:
    """``be_<scope>_<app>_<env>_<service>[_<name>]`` (``tcp_`` for TCP), dots as ``_``.
    Unambiguous: the four labels cannot contain ``_``."""
    parts = [path.scope, path.app, path.env, path.service]
    if path.name:
        parts.append(path.name.replace(".", "_"))
    return ("be_" if mode == "http" else "tcp_") + "_".join(parts)


def parse_records(
    items: Iterable[KV], layout: Layout, listen_paths: Iterable[str]
) -> tuple[list[tuple[KV, ServiceRecord]], list[Rejected]]:
    """Valid service records under the listened prefixes, and the rejected ones."""
    prefixes = tuple(listen_paths)
    good: list[tuple[KV, ServiceRecord]] = []
    bad: list[Rejected] = []
    for kv in items:
        try:
            path, instance_id = layout.split_instance_key(layout.services, kv.key)
            record = parse_service(path, instance_id, kv.value)
        except InvalidRecord as exc:
            bad.append(Rejected(kv.key, kv.mod_revision, exc))
            continue
        if any(covers(prefix, path) for prefix in prefixes):
            good.append((kv, record))
    return good, bad


def desired_state(
    records: Iterable[tuple[KV, ServiceRecord]], *, domain: str, http: bool, tcp: bool
) -> Desired:
    """Group records by service path; settle TCP port ownership (SPEC §6)."""
    by_path: dict[tuple[ServicePath, str], list[tuple[KV, ServiceRecord]]] = {}
    for kv, record in records:
        mode = record.announce.type.lower()
        if (mode == "http" and http) or (mode == "tcp" and tcp):
            by_path.setdefault((record.path, mode), []).append((kv, record))
    services: dict[str, Service] = {}
    problems: list[Problem] = []
    for (path, mode), entries in sorted(by_path.items(), key=lambda item: item[0][0].text):
        entries.sort(key=lambda e: (e[0].create_revision, e[0].key))
        name = backend_name(path, mode)
        created = entries[0][0].create_revision
        if mode == "http":
            instances = sorted({_instance(r) for _, r in entries})
            services[name] = Service(
                name, mode, path, tuple(instances), host=path.dns_name(domain), created=created
            )
            continue
        port = entries[0][1].announce.port
        instances = []
        for kv, record in entries:
            if record.announce.port != port:
                problems.append(
                    Problem(
                        "port_mismatch",
                        kv.key,
                        f"announces PORT {record.announce.port}, but {path.text} listens on {port}",
                    )
                )
            else:
                instances.append(_instance(record))
        services[name] = Service(
            name, mode, path, tuple(sorted(set(instances))), port=port, created=created
        )
    return Desired(_settle_ports(services, problems), tuple(problems))


def _instance(record: ServiceRecord) -> Instance:
    return Instance(record.id, record.ip, record.ext_port)


def _settle_ports(services: dict[str, Service], problems: list[Problem]) -> dict[str, Service]:
    """Two TCP services on one port: the first created keeps it (SPEC §6)."""
    owners: dict[int, Service] = {}
    for service in sorted(services.values(), key=lambda s: (s.created, s.name)):
        if service.mode != "tcp":
            continue
        owner = owners.get(service.port)
        if owner is None:
            owners[service.port] = service
        else:
            problems.append(
                Problem(
                    "port_clash",
                    service.path.text,
                    f"port {service.port} is taken by {owner.path.text}",
                )
            )
    return {name: s for name, s in services.items() if s.mode == "http" or owners.get(s.port) is s}


def from_snapshot(
    items: Iterable[KV],
    layout: Layout,
    listen_paths: Iterable[str],
    *,
    domain: str,
    http: bool,
    tcp: bool,
    excluded_ports: frozenset[int] = frozenset(),
) -> tuple[Desired, list[Rejected]]:
    """The lb's whole derivation, shared by the daemon and ``haroute plan``: records under
    the listened prefixes → desired state (TCP services on ``excluded_ports`` left out)."""
    records, rejected = parse_records(items, layout, listen_paths)
    desired = desired_state(records, domain=domain, http=http, tcp=tcp)
    if excluded_ports:
        services = {
            n: s
            for n, s in desired.services.items()
            if s.mode != "tcp" or s.port not in excluded_ports
        }
        desired = Desired(services, desired.problems)
    return desired, rejected
