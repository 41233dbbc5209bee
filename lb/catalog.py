"""The lb's records, kept key by key (SPEC §6 Scale). Pure: no I/O.

An etcd event names the keys it changed; :meth:`Catalog.put` parses only those and says
which backends they touch, and :meth:`Catalog.service` builds one backend from its own
records. A relist (:meth:`Catalog.replace_all`) compares the new snapshot with what is
held and touches only what differs. The result is always what the whole derivation of
:func:`lb.desired.desired_state` gives for the same records (a property test holds the
two together), at the cost of the change instead of the cost of the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import Rejected, ServicePath, ServiceRecord
from lb.desired import Desired, Problem, Service, backend_name, build_service, parse_records
from lb.desired import settle_port as _settle_port

Bound = Callable[[int], str | None]


def _unbound(port: int) -> str | None:
    return None


@dataclass(frozen=True)
class Built:
    """One service path's backend before TCP port ownership is settled."""

    service: Service
    problems: tuple[Problem, ...]


class Catalog:
    def __init__(
        self,
        layout: Layout,
        listen_paths: Iterable[str],
        *,
        domain: str,
        http: bool,
        tcp: bool,
        reserved_ports: frozenset[int] = frozenset(),
    ) -> None:
        self.layout = layout
        self.listen_paths = tuple(listen_paths)
        self.domain = domain
        self.http = http
        self.tcp = tcp
        self.reserved_ports = reserved_ports
        self.excluded_ports: frozenset[int] = frozenset()
        self._name_of: dict[str, str] = {}  # key -> backend name (valid, covered records)
        self._kvs: dict[str, KV] = {}  # every key held, valid or not
        self.rejected: dict[str, Rejected] = {}
        self._entries: dict[str, dict[str, tuple[KV, ServiceRecord]]] = {}
        self._paths: dict[str, tuple[ServicePath, str]] = {}
        self._built: dict[str, Built] = {}
        self._port_of: dict[str, int] = {}
        self._claims: dict[int, set[str]] = {}

    # --- changes -------------------------------------------------------------------------

    def put(self, key: str, kv: KV | None) -> tuple[set[str], Rejected | None]:
        """Key ``key`` is now ``kv`` (``None``: deleted). The backends it touches, and the
        rejection when the new value is invalid."""
        old = self._kvs.get(key)
        if kv is not None and old is not None and old.mod_revision == kv.mod_revision:
            return set(), None
        touched: set[str] = set()
        name = self._name_of.pop(key, None)
        if name is not None:
            del self._entries[name][key]
            touched.add(name)
        self.rejected.pop(key, None)
        self._kvs.pop(key, None)
        rejected = None
        if kv is not None:
            self._kvs[key] = kv
            records, bad = parse_records([kv], self.layout, self.listen_paths)
            if bad:
                rejected = self.rejected[key] = bad[0]
            for _, record in records:
                mode = record.announce.type.lower()
                if (mode == "http" and not self.http) or (mode == "tcp" and not self.tcp):
                    continue
                new = backend_name(record.path, mode)
                self._name_of[key] = new
                self._entries.setdefault(new, {})[key] = (kv, record)
                self._paths[new] = (record.path, mode)
                touched.add(new)
        for each in list(touched):
            touched |= self._rebuild(each)
        return touched, rejected

    def replace_all(self, items: Mapping[str, KV]) -> tuple[set[str], list[Rejected]]:
        """A new full snapshot (a relist): apply what differs from what is held."""
        touched: set[str] = set()
        rejected: list[Rejected] = []
        for key in [k for k in self._kvs if k not in items]:
            touched |= self.put(key, None)[0]
        for key, kv in items.items():
            names, bad = self.put(key, kv)
            touched |= names
            if bad is not None:
                rejected.append(bad)
        return touched, rejected

    def exclude_ports(self, ports: frozenset[int]) -> set[str]:
        """TCP ports another process holds (a reload could not bind them): services on
        them are left out until the port is free again. The backends this touches."""
        changed = ports ^ self.excluded_ports
        self.excluded_ports = ports
        touched: set[str] = set()
        for port in changed:
            touched |= self._claims.get(port, set())
        return touched

    def _rebuild(self, name: str) -> set[str]:
        """Build ``name`` again from its records; the TCP services its port touches."""
        touched = {name}
        entries = self._entries.get(name)
        old_port = self._port_of.pop(name, None)
        if old_port is not None:
            self._claims[old_port].discard(name)
            touched |= self._claims[old_port]
            if not self._claims[old_port]:
                del self._claims[old_port]
        if not entries:
            self._entries.pop(name, None)
            self._built.pop(name, None)
            self._paths.pop(name, None)
            return touched
        path, mode = self._paths[name]
        service, problems = build_service(path, mode, entries.values(), domain=self.domain)
        self._built[name] = Built(service, tuple(problems))
        if mode == "tcp":
            self._port_of[name] = service.port
            claims = self._claims.setdefault(service.port, set())
            claims.add(name)
            touched |= claims
        return touched

    # --- reading ---------------------------------------------------------------------------

    def held_keys(self) -> list[str]:
        """Every key held (valid or not)."""
        return list(self._kvs)

    def path_of(self, name: str) -> ServicePath | None:
        entry = self._paths.get(name)
        return entry[0] if entry is not None else None

    def names(self) -> set[str]:
        return set(self._built)

    def service(self, name: str, bound: Bound = _unbound) -> tuple[Service | None, list[Problem]]:
        """The backend ``name`` should be (``None``: none), and its problems. ``bound``
        says which listen binds a TCP port in the running HAProxy."""
        built = self._built.get(name)
        if built is None:
            return None, []
        service, problems = built.service, list(built.problems)
        if service.mode != "tcp":
            return service, problems
        if service.port in self.excluded_ports:
            return None, problems
        claimants = [self._built[n].service for n in sorted(self._claims[service.port])]
        owner, found = _settle_port(
            service.port, claimants, reserved=self.reserved_ports, bound=bound(service.port)
        )
        problems += [p for p in found if p.key == service.path.text]
        return (service if owner is service else None), problems

    def desired(self, bound: Bound = _unbound) -> Desired:
        """Every backend: the whole derivation, from the records held."""
        services: dict[str, Service] = {}
        problems: list[Problem] = []
        for name in sorted(self._built):
            service, found = self.service(name, bound)
            problems += found
            if service is not None:
                services[name] = service
        return Desired(services, tuple(problems))

    @property
    def counts(self) -> tuple[int, int]:
        """Records held: (valid, invalid)."""
        return len(self._kvs) - len(self.rejected), len(self.rejected)
