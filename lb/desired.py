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
    """One server: its instance ID and where it is reached; ``state`` and ``weight``
    are an operator's pin (``/maintenance``, SPEC §10), ``ready`` and ``None`` (HAProxy's
    default weight) without one."""

    id: str
    ip: str
    port: int
    state: str = "ready"
    weight: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)


@dataclass(frozen=True)
class BackendSettings:
    """How a backend is rendered, from the operator's ``/config`` (SPEC §10); the
    defaults are what every backend had before (a TCP check every 2 s, fall 2, rise 1,
    round robin, the template's timeouts)."""

    balance: str = "roundrobin"
    check: str = "tcp"  # "tcp" | "http"
    check_path: str = "/"
    inter_ms: int = 2000
    fall: int = 2
    rise: int = 1
    timeout_connect_ms: int | None = None
    timeout_server_ms: int | None = None
    maxconn: int | None = None
    https_redirect: bool = False

    def server_options(self) -> str:
        """The keywords of every server (rendered per backend, given to ``add server``:
        dynamic servers ignore ``default-server``)."""
        options = f"check inter {self.inter_ms}ms fall {self.fall} rise {self.rise}"
        return options + (f" maxconn {self.maxconn}" if self.maxconn else "")

    @property
    def dynamic_servers(self) -> bool:
        """HAProxy 2.6 takes ``add server`` only with these balance algorithms."""
        return self.balance in ("roundrobin", "leastconn")


DEFAULT_SETTINGS = BackendSettings()


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
    settings: BackendSettings = DEFAULT_SETTINGS
    aliases: tuple[str, ...] = ()  # HTTP: more Host names routed here (SPEC §10)


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


def backend_for_host(host: str, domain: str) -> str | None:
    """The HTTP backend whose Host is ``host`` (SPEC §5 names, read backwards): how a
    restarted lb knows which environment a spare backend in the map serves. ``None`` for
    a name that is not a service's."""
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    labels = host[: -len(suffix)].split(".")
    if len(labels) < 5:
        return None
    name = ".".join(labels[:-4])
    try:
        path = ServicePath.parse(
            "/" + "/".join(reversed(labels[-4:])) + ("" if name == "default" else "/" + name)
        )
    except InvalidRecord:
        return None
    return backend_name(path, "http") if path.dns_name(domain) == host else None


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
    records: Iterable[tuple[KV, ServiceRecord]],
    *,
    domain: str,
    http: bool,
    tcp: bool,
    reserved_ports: frozenset[int] = frozenset(),
    bound: Mapping[int, str] | None = None,
) -> Desired:
    """Group records by service path; settle TCP port ownership (SPEC §6, §9).

    ``reserved_ports`` are the ports the lb binds itself (no TCP service gets them, on any
    address); ``bound`` says which listen binds each TCP port in the running HAProxy (its
    owner keeps the port while it has instances)."""
    by_path: dict[tuple[ServicePath, str], list[tuple[KV, ServiceRecord]]] = {}
    for kv, record in records:
        mode = record.announce.type.lower()
        if (mode == "http" and http) or (mode == "tcp" and tcp):
            by_path.setdefault((record.path, mode), []).append((kv, record))
    services: dict[str, Service] = {}
    problems: list[Problem] = []
    for (path, mode), entries in sorted(by_path.items(), key=lambda item: item[0][0].text):
        service, found = build_service(path, mode, entries, domain=domain)
        services[service.name] = service
        problems += found
    claims: dict[int, list[Service]] = {}
    for service in services.values():
        if service.mode == "tcp":
            claims.setdefault(service.port, []).append(service)
    for port, claimants in claims.items():
        owner, found = settle_port(
            port, claimants, reserved=reserved_ports, bound=(bound or {}).get(port)
        )
        problems += found
        for service in claimants:
            if service is not owner:
                del services[service.name]
    return Desired(services, tuple(problems))


def build_service(
    path: ServicePath, mode: str, entries: Iterable[tuple[KV, ServiceRecord]], *, domain: str
) -> tuple[Service, list[Problem]]:
    """One backend (HTTP) or listen (TCP) from the records of its path, and what is reported
    instead of configured (TCP instances announcing another ``PORT``). Pure."""
    ordered = sorted(entries, key=lambda e: (e[0].create_revision, e[0].key))
    name = backend_name(path, mode)
    created = ordered[0][0].create_revision
    if mode == "http":
        instances = sorted({_instance(r) for _, r in ordered})
        service = Service(
            name, mode, path, tuple(instances), host=path.dns_name(domain), created=created
        )
        return service, []
    port = ordered[0][1].announce.port
    problems: list[Problem] = []
    tcp_instances: list[Instance] = []
    for kv, record in ordered:
        if record.announce.port != port:
            problems.append(
                Problem(
                    "port_mismatch",
                    kv.key,
                    f"announces PORT {record.announce.port}, but {path.text} listens on {port}",
                )
            )
        else:
            tcp_instances.append(_instance(record))
    service = Service(
        name, mode, path, tuple(sorted(set(tcp_instances))), port=port, created=created
    )
    return service, problems


def _instance(record: ServiceRecord) -> Instance:
    return Instance(record.id, record.ip, record.ext_port)


def settle_port(
    port: int,
    claimants: Iterable[Service],
    *,
    reserved: frozenset[int],
    bound: str | None,
) -> tuple[Service | None, list[Problem]]:
    """Which of the TCP services announcing ``port`` gets it (SPEC §6, §9). Pure.

    A port the lb binds itself goes to none of them. Otherwise the listen that binds the
    port now keeps it while it has instances (a rolling replacement of its instances
    changes their create revisions, not its ownership); else the service created first
    (lowest create revision) takes it. Every other claimant is reported."""
    ordered = sorted(claimants, key=lambda s: (s.created, s.name))
    if port in reserved:
        return None, [
            Problem(
                "port_reserved",
                s.path.text,
                f"port {port} is one the lb binds itself (HTTP, HTTPS or metrics)",
            )
            for s in ordered
        ]
    owner = next((s for s in ordered if s.name == bound), ordered[0] if ordered else None)
    problems = [
        Problem("port_clash", s.path.text, f"port {port} is taken by {owner.path.text}")
        for s in ordered
        if owner is not None and s is not owner
    ]
    return owner, problems


def from_snapshot(
    items: Iterable[KV],
    layout: Layout,
    listen_paths: Iterable[str],
    *,
    domain: str,
    http: bool,
    tcp: bool,
    excluded_ports: frozenset[int] = frozenset(),
    reserved_ports: frozenset[int] = frozenset(),
    bound: Mapping[int, str] | None = None,
) -> tuple[Desired, list[Rejected]]:
    """The lb's whole derivation, shared by the daemon and ``haroute plan``: records under
    the listened prefixes → desired state (TCP services on ``excluded_ports`` left out)."""
    records, rejected = parse_records(items, layout, listen_paths)
    desired = desired_state(
        records, domain=domain, http=http, tcp=tcp, reserved_ports=reserved_ports, bound=bound
    )
    if excluded_ports:
        services = {
            n: s
            for n, s in desired.services.items()
            if s.mode != "tcp" or s.port not in excluded_ports
        }
        desired = Desired(services, desired.problems)
    return desired, rejected
