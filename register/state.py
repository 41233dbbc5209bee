"""What this register should hold, kept up to date change by change. Pure: no I/O.

Every register sees every announcement of the cluster (the ``/announce`` key says nothing
of the host), and most are other hosts'. So the state is kept incrementally: a foreign
announcement costs a parse and a few dictionary updates (:class:`AnnounceIndex`), and the
keys of a service path are derived again only when something they depend on changed:

- a local instance of the path came, went or changed (or its placement did);
- another instance of the path got or lost a DNS child that one of ours shares (``Web1``
  beside ``web1``: both get a hash, SPEC §5);
- the names of the service changed so that which of two nesting names keeps DNS records
  may have changed (SPEC §5): the register settles that from etcd (:meth:`unsettled`,
  :meth:`RegisterState.settle`) — which names hold DNS records now is read there;
- the frontends changed (HTTP DNS records follow them).

:func:`register.transform.desired_keys` derives the same keys from a whole snapshot in
one go; the tests hold the two to the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from discovery.keys import Layout, dns_child, dns_hashed
from discovery.kv import KV
from discovery.records import AnnounceRecord, FrontendRecord, InvalidRecord, Rejected, ServicePath
from register.transform import (
    DnsConfig,
    NameClaim,
    Placement,
    base_of,
    dns_name_fits,
    dns_winners,
    instance_keys,
    parse_announce_kv,
    shadowed_by,
    suffixes,
)

#: Where a runtime places one announcement (None: not on this host).
Place = Callable[[str, AnnounceRecord], Placement | None]


@dataclass(frozen=True)
class Change:
    """What an announcement's put or delete changed in the index."""

    path: ServicePath
    #: The DNS child group (``dns_child`` of the ID) that gained or lost an ID, if any.
    group: str | None = None
    #: The service's live names, or when one of them was created, changed.
    names: bool = False


@dataclass
class _Name:
    """The live announcements of one name: key → create revision, and the lowest."""

    keys: dict[str, int] = field(default_factory=dict)
    first: int = 0


class AnnounceIndex:
    """Every valid announcement of the cluster, indexed by what the derivation asks:
    the IDs of a path (DNS children) and the names of a service (DNS nesting)."""

    def __init__(self) -> None:
        self.records: dict[str, AnnounceRecord] = {}
        self.revisions: dict[str, int] = {}
        self._ids: dict[ServicePath, dict[str, set[str]]] = {}  # path → ID → keys
        self._groups: dict[ServicePath, dict[str, set[str]]] = {}  # path → child → IDs
        self._names: dict[ServicePath, dict[str, _Name]] = {}  # service → name → keys

    def __len__(self) -> int:
        return len(self.records)

    def put(self, key: str, record: AnnounceRecord, revision: int) -> Change:
        old = self.records.get(key)
        if old is not None and self.revisions[key] == revision:
            self.records[key] = record  # same key, same path and ID: a new value only
            return Change(record.path)
        change = self.delete(key) if old is not None else None
        self.records[key] = record
        self.revisions[key] = revision
        path = record.path
        ids = self._ids.setdefault(path, {})
        group = None
        if record.id not in ids:
            group = dns_child(record.id)
            self._groups.setdefault(path, {}).setdefault(group, set()).add(record.id)
        ids.setdefault(record.id, set()).add(key)
        names = self._names.setdefault(base_of(path), {})
        name = names.get(path.name)
        if name is None:
            name = names[path.name] = _Name(first=revision)
            new_name = True
        else:
            new_name = revision < name.first
            name.first = min(name.first, revision)
        name.keys[key] = revision
        if change is not None:  # deleted and created again: both changes count
            group = group or change.group
            new_name = new_name or change.names
        return Change(path, group, new_name)

    def delete(self, key: str) -> Change | None:
        record = self.records.pop(key, None)
        if record is None:
            return None
        revision = self.revisions.pop(key)
        path = record.path
        ids = self._ids[path]
        keys = ids[record.id]
        keys.discard(key)
        group = None
        if not keys:
            del ids[record.id]
            group = dns_child(record.id)
            groups = self._groups[path]
            groups[group].discard(record.id)
            if not groups[group]:
                del groups[group]
            if not ids:
                del self._ids[path], self._groups[path]
        base = base_of(path)
        names = self._names[base]
        name = names[path.name]
        del name.keys[key]
        changed = False
        if not name.keys:
            del names[path.name]
            if not names:
                del self._names[base]
            changed = True
        elif revision == name.first:
            name.first = min(name.keys.values())
            changed = name.first != revision
        return Change(path, group, changed)

    def child(self, path: ServicePath, instance_id: str) -> str:
        """The DNS child of an instance among the IDs of its name (SPEC §5), as
        :func:`discovery.keys.dns_children` gives it for the whole name."""
        group = dns_child(instance_id)
        sharing = self._groups.get(path, {}).get(group, ())
        return dns_hashed(instance_id) if len(sharing) > 1 else group

    def claims(self, base: ServicePath, dns: DnsConfig) -> dict[str, NameClaim]:
        """The live names of a service that could have DNS records, and their age."""
        return {
            name: NameClaim(entry.first)
            for name, entry in self._names.get(base, {}).items()
            if dns_name_fits(ServicePath(base.scope, base.app, base.env, base.service, name), dns)
        }


def conflicted(names: Collection[str]) -> bool:
    """Do any two of these names of one service nest?"""
    present = set(names)
    return any(s in present for name in present if name for s in suffixes(name))


class RegisterState:
    """The keys this register should hold (:attr:`desired`), kept up to date with the
    announcements, the placements, the frontends and the DNS nesting rule."""

    def __init__(self, *, node: str, layout: Layout, dns: DnsConfig) -> None:
        self.node = node
        self.layout = layout
        self.dns = dns
        self.index = AnnounceIndex()
        self.frontends: list[FrontendRecord] = []
        self.placed: dict[str, Placement] = {}  # local announcement key → placement
        self.local: dict[ServicePath, set[str]] = {}  # path → its local announcement keys
        self._where: dict[str, ServicePath] = {}  # local announcement key → its path
        #: Local paths kept out of DNS, with the names that keep them out.
        self.shadowed: dict[ServicePath, list[str]] = {}
        self.desired: dict[str, str] = {}
        self._keys: dict[ServicePath, dict[str, str]] = {}  # local path → its keys
        self._dirty: set[ServicePath] = set()
        self._unsettled: set[ServicePath] = set()  # services to settle (nesting)
        self._local_services: dict[ServicePath, set[ServicePath]] = {}  # service → paths
        #: How many times a path's keys were derived (what a change cost).
        self.derivations = 0

    # --- announcements -----------------------------------------------------------------

    def load(self, items: Iterable[KV], place: Place) -> list[Rejected]:
        """Forget everything and take a whole snapshot of ``/announce``."""
        dropped = set(self.local)
        self.index = AnnounceIndex()
        self.placed.clear()
        self.local.clear()
        self._where.clear()
        self._local_services.clear()
        rejected = []
        for kv in items:
            bad = self.update(kv.key, kv, place)
            if bad is not None:
                rejected.append(bad)
        self._dirty |= dropped
        self._unsettled = set(self._local_services)
        self.shadowed = {p: by for p, by in self.shadowed.items() if p in self.local}
        return rejected

    def update(self, key: str, kv: KV | None, place: Place) -> Rejected | None:
        """One announcement put (``kv``) or deleted (None)."""
        record, rejected = None, None
        if kv is not None:
            try:
                record = parse_announce_kv(kv, self.layout)
            except InvalidRecord as exc:
                rejected = Rejected(key, kv.mod_revision, exc)
        if record is None:
            change = self.index.delete(key)
        else:
            assert kv is not None
            change = self.index.put(key, record, kv.create_revision)
        self._locate(key, record, place)
        if change is not None:
            self._note(change)
        return rejected

    def replace_placements(self, place: Place) -> None:
        """The runtime's view changed (a container started or went): place every
        announcement again. Costs a lookup per announcement; only a local change does it."""
        for key, record in self.index.records.items():
            self._locate(key, record, place)
        for key in [k for k in self.placed if k not in self.index.records]:
            self._locate(key, None, place)

    def _locate(self, key: str, record: AnnounceRecord | None, place: Place) -> None:
        where = place(key, record) if record is not None else None
        was = self.placed.get(key)
        if where is None:
            if was is None:
                return
            del self.placed[key]
            path = self._where.pop(key)
            self.local[path].discard(key)
            if not self.local[path]:
                del self.local[path]
                self._drop_local_path(path)
            self._dirty.add(path)
            return
        assert record is not None
        self.placed[key] = where
        path = self._where[key] = record.path
        if path not in self.local:  # a new local path: is its name kept out of DNS?
            self.local[path] = set()
            base = base_of(path)
            self._unsettled.add(base)
            self._local_services.setdefault(base, set()).add(path)
        self.local[path].add(key)
        self._dirty.add(path)

    def _drop_local_path(self, path: ServicePath) -> None:
        base = base_of(path)
        paths = self._local_services[base]
        paths.discard(path)
        if not paths:
            del self._local_services[base]
            self._unsettled.discard(base)
        self.shadowed.pop(path, None)

    def _note(self, change: Change) -> None:
        path = change.path
        if change.names and base_of(path) in self._local_services:
            self._unsettled.add(base_of(path))
        if change.group is not None and path in self.local:
            ids = (self.index.records.get(k) for k in self.local[path])
            if any(r is not None and dns_child(r.id) == change.group for r in ids):
                self._dirty.add(path)

    # --- frontends and DNS nesting -----------------------------------------------------

    def set_frontends(self, frontends: list[FrontendRecord]) -> None:
        if frontends != self.frontends:
            self.frontends = frontends
            self._dirty |= set(self.local)

    def unsettled(self) -> dict[ServicePath, bool]:
        """Services of local instances whose DNS nesting must be settled again, each with
        whether two of its names nest (then :meth:`settle` needs to know which names hold
        DNS records now)."""
        return {base: conflicted(self.index.claims(base, self.dns)) for base in self._unsettled}

    def settle(self, base: ServicePath, holding: Collection[ServicePath] = ()) -> None:
        """Decide which local paths of ``base`` keep DNS records (SPEC §5); ``holding``:
        the paths of ``base`` with DNS records in etcd now."""
        self._unsettled.discard(base)
        claims = self.index.claims(base, self.dns)
        for name, claim in claims.items():
            if replace_path(base, name) in holding:
                claims[name] = NameClaim(claim.create_revision, holds=True)
        winners = dns_winners(claims)
        for path in self._local_services.get(base, ()):
            by = shadowed_by(path.name, winners) if path.name not in winners else []
            if path.name not in claims:
                by = []  # no DNS name to nest (too long): nothing to report
            if by != self.shadowed.get(path, []):
                self._dirty.add(path)
            if by:
                self.shadowed[path] = by
            else:
                self.shadowed.pop(path, None)

    # --- keys --------------------------------------------------------------------------

    def flush(self) -> set[str]:
        """Derive the keys of every path that needs it; the keys whose desired value
        changed (new, changed or no longer desired)."""
        changed: set[str] = set()
        dirty, self._dirty = self._dirty, set()
        for path in dirty:
            old = self._keys.pop(path, {})
            new = self._derive(path)
            if new:
                self._keys[path] = new
            for key in old.keys() - new.keys():
                del self.desired[key]
                changed.add(key)
            for key, value in new.items():
                if old.get(key) != value:
                    self.desired[key] = value
                    changed.add(key)
        return changed

    def _derive(self, path: ServicePath) -> dict[str, str]:
        self.derivations += 1
        out: dict[str, str] = {}
        in_dns = path not in self.shadowed
        for key in sorted(self.local.get(path, ())):
            record = self.index.records[key]
            child = self.index.child(path, record.id) if in_dns else None
            out.update(
                instance_keys(
                    record,
                    self.placed[key],
                    self.frontends,
                    child=child,
                    node=self.node,
                    layout=self.layout,
                    dns=self.dns,
                )
            )
        return out

    def dirty_all(self) -> None:
        """Derive every local path again at the next :meth:`flush`."""
        self._dirty |= set(self.local)
        self._unsettled |= set(self._local_services)


def replace_path(base: ServicePath, name: str) -> ServicePath:
    return ServicePath(base.scope, base.app, base.env, base.service, name)
