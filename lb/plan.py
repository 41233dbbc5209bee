"""Desired state + what HAProxy runs now → runtime commands, or a reload with its reasons.
Pure: no I/O, the clock and the session counts are arguments (SPEC §6).

Every backend has server *slots* ``s1..sN`` rendered in its config. A new instance takes a
free slot (``set server B/sK addr IP port P``, then ``state ready``); a gone one drains
(``state drain``), then is put in maintenance once it has no sessions or ``DRAIN_TIMEOUT``
has passed, which frees its slot; a moved one (same ID, new address) is re-addressed in
place. A backend out of free slots gets more with ``add server`` (dynamic servers, as many
as the fd budget leaves room for); a dynamic slot that is free and idle is removed with
``del server``; the next reload renders them all as ordinary slots. Only a change of
*layout* needs a reload: a new service path, a TCP port that changed, a backend empty for
``BACKEND_GC_AFTER``, or slots needed beyond the room for dynamic servers.

The plan can be asked for a few backends only (``names``): an etcd event plans the
backends it touched, and every other backend stays as HAProxy runs it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from lb.desired import DEFAULT_SETTINGS, BackendSettings, Desired, Instance, Service

FREE_ADDR = "127.0.0.1"
FREE_PORT = 1
#: What every server gets, rendered (``default-server`` in the template) and given to
#: ``add server`` (dynamic servers ignore ``default-server``; FACTS.md).
CHECK_OPTIONS = "inter 2s fall 2 rise 1"
SERVER_OPTIONS = f"check {CHECK_OPTIONS}"

#: The order in which a reload names its reason when it has several.
REASON_ORDER = (
    "new_backend",
    "slots_exhausted",
    "backend_removed",
    "runtime_failed",
    "template_changed",
    "haproxy_restarted",
    "config_changed",
    "pool_refill",
    "reconcile",
)


@dataclass(frozen=True)
class Slot:
    """One server slot as HAProxy has it. ``instance`` is the instance ID it serves;
    ``dynamic`` slots were added with ``add server`` (a ``gone`` one was deleted again and
    its name is free)."""

    addr: str = FREE_ADDR
    port: int = FREE_PORT
    state: str = "maint"  # "ready" | "drain" | "maint" | "gone"
    instance: str | None = None
    since: float = 0.0  # when it started draining
    dynamic: bool = False
    weight: int | None = None  # set by a pin (None: HAProxy's default)
    pinned: bool = False  # its state is an operator's pin, not a drain of a gone instance

    @property
    def free(self) -> bool:
        return self.state == "maint" and self.instance is None

    @property
    def live(self) -> bool:
        return self.state in ("ready", "drain")


@dataclass(frozen=True)
class Backend:
    """One backend or listen of the running config; ``slots`` are the rendered ones.

    ``mode`` is ``http``, ``tcp``, or ``pool`` for a free spare backend
    (``pool_http_<n>``, SPEC §6 "Spare pool"). An HTTP environment served by a spare
    backend it took at runtime has that backend's name in ``proxy``."""

    name: str
    mode: str
    slots: int
    host: str = ""
    port: int = 0
    proxy: str = ""
    settings: BackendSettings = DEFAULT_SETTINGS
    aliases: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        """Its Host and aliases (HTTP): every map entry that points at it."""
        return ((self.host,) if self.host else ()) + self.aliases

    @property
    def haproxy(self) -> str:
        """The name HAProxy knows it by: its own, or the spare backend it is bound to."""
        return self.proxy or self.name


POOL_PREFIX = "pool_http_"


def pool_name(n: int) -> str:
    return f"{POOL_PREFIX}{n}"


@dataclass(frozen=True)
class Applied:
    """What HAProxy runs: the layout of its config, its slots (rendered ones first, then
    dynamic ones), its Host map, and since when each empty backend has been empty."""

    backends: Mapping[str, Backend] = field(default_factory=dict)
    slots: Mapping[str, tuple[Slot, ...]] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    empty_since: Mapping[str, float] = field(default_factory=dict)

    def dynamic_count(self) -> int:
        """Dynamic servers HAProxy has now (they are outside the rendered fd budget)."""
        return self._dynamic

    @cached_property
    def _dynamic(self) -> int:
        # Counted once per state; :meth:`with_backends` carries it over by difference.
        return sum(_dynamic_in(table) for table in self.slots.values())

    def with_backends(
        self,
        changed: Mapping[str, tuple[Backend, tuple[Slot, ...], float | None] | None],
        hosts: Mapping[str, str | None],
    ) -> Applied:
        """A copy with some backends replaced (``None``: removed) and Host entries set
        (``None``: deleted). Costs a dict copy, not a walk over every slot."""
        backends, slots = dict(self.backends), dict(self.slots)
        empty, host_map = dict(self.empty_since), dict(self.hosts)
        for name, entry in changed.items():
            if entry is None:
                backends.pop(name, None)
                slots.pop(name, None)
                empty.pop(name, None)
                continue
            backends[name], slots[name], since = entry
            if since is None:
                empty.pop(name, None)
            else:
                empty[name] = since
        for host, backend in hosts.items():
            if backend is None:
                host_map.pop(host, None)
            else:
                host_map[host] = backend
        result = Applied(backends, slots, host_map, empty)
        if "_dynamic" in self.__dict__:
            delta = sum(
                _dynamic_in(slots.get(name, ())) - _dynamic_in(self.slots.get(name, ()))
                for name in changed
            )
            result.__dict__["_dynamic"] = self._dynamic + delta
        return result


def _dynamic_in(table: tuple[Slot, ...]) -> int:
    return sum(1 for s in table if s.dynamic and s.state != "gone")


@dataclass(frozen=True)
class Plan:
    """What to do: ``commands`` on the runtime socket when ``reload`` is ``None``;
    otherwise a reload installing ``target`` (which then needs no commands).

    ``interim`` are the commands that are valid on the *running* layout, and
    ``interim_target`` the state they lead to: what the lb applies while a reload has to
    wait (``RELOAD_MIN_INTERVAL``) or cannot happen (a template that fails its check), so
    server changes of the existing backends never wait for a layout change.
    ``layout`` names the backends whose change needs the reload."""

    target: Applied
    commands: tuple[str, ...] = ()
    reload: str | None = None
    interim: tuple[str, ...] = ()
    interim_target: Applied | None = None
    reasons: tuple[str, ...] = ()
    layout: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.commands and self.reload is None


@dataclass(frozen=True)
class Timers:
    initial_slots: int
    drain_timeout: float
    gc_after: float
    spare_backends: int = 0


def wanted_slots(live: int, minimum: int) -> int:
    """Slots a backend should have: a small headroom over its live servers (a quarter,
    at least one), and at least ``SLOTS``. The fd budget may cut the headroom."""
    return max(minimum, live + max(1, -(-live // 4)))


Entry = tuple[Backend, tuple[Slot, ...], float | None] | None


@dataclass
class _Step:
    """What planning one backend gives: its (and maybe a spare's) new entries, the
    commands, the reload it needs, and what it looks like on the running layout."""

    entries: dict[str, Entry]
    commands: list[str]
    reason: str | None = None
    interim: list[str] = field(default_factory=list)
    interim_entries: dict[str, Entry] = field(default_factory=dict)
    room: int = 0


def plan(
    desired: Desired | Mapping[str, Service],
    applied: Applied,
    *,
    now: float,
    timers: Timers,
    map_path: str,
    sessions: Mapping[tuple[str, str], int] | None = None,
    names: Collection[str] | None = None,
    dynamic_room: int = 0,
) -> Plan:
    """Plan ``names`` (every backend when ``None``): each one's desired service (absent
    from ``desired``: none) against what ``applied`` says HAProxy runs. ``dynamic_room``
    is how many servers may still be added with ``add server``."""
    services = desired.services if isinstance(desired, Desired) else desired
    sessions = sessions or {}
    full = names is None
    todo = sorted(set(services) | set(applied.backends)) if names is None else sorted(names)
    reasons: list[str] = []
    layout: set[str] = set()
    changed: dict[str, Entry] = {}
    interim_changed: dict[str, Entry] = {}
    commands: list[str] = []
    interim: list[str] = []
    room = dynamic_room
    claimed = {s.port: n for n, s in services.items() if s.mode == "tcp"} if full else None
    spare = _free_pool(applied, timers.spare_backends)

    for name in todo:
        service = services.get(name)
        old = applied.backends.get(name)
        if (service is None and old is None) or (old is not None and old.mode == "pool"):
            continue  # nothing wanted nor running, or a free spare: nothing to plan
        port_wanted = (
            service is None
            and old is not None
            and old.mode == "tcp"
            and _port_claimed(old, services, claimed, exclude=name)
        )
        step = _plan_one(
            name,
            service,
            old,
            applied,
            spare=spare,
            port_wanted=port_wanted,
            now=now,
            timers=timers,
            sessions=sessions,
            room=room,
        )
        room = step.room
        changed.update(step.entries)
        commands += step.commands
        interim += step.interim
        interim_changed.update(step.interim_entries)
        if step.reason is not None:
            reasons.append(step.reason)
            layout.add(name)

    hosts = _host_changes(applied, changed, todo, full=full)
    target = applied.with_backends(changed, hosts)
    if reasons:
        # A reload installs the whole target; the unplaced instances get slots there.
        # Draining slots start the new worker disabled (the old worker finishes their
        # connections).
        reload_target = for_reload(
            target, timers.initial_slots, services, changed, spare=timers.spare_backends
        )
        # Meanwhile, what is valid on the running layout: server changes, spare backends
        # taken or given back, and their Host entries.
        interim_hosts = _host_changes(applied, interim_changed, sorted(interim_changed), full=False)
        interim += _map_commands(applied.hosts, interim_hosts, map_path)
        interim_target = applied.with_backends(interim_changed, interim_hosts)
        return Plan(
            reload_target,
            reload=first_reason(reasons),
            interim=tuple(interim),
            interim_target=interim_target,
            reasons=tuple(sorted(set(reasons), key=REASON_ORDER.index)),
            layout=frozenset(layout),
        )
    commands += _map_commands(applied.hosts, hosts, map_path)
    return Plan(target, tuple(commands), interim=tuple(commands), interim_target=target)


def _plan_one(
    name: str,
    service: Service | None,
    old: Backend | None,
    applied: Applied,
    *,
    spare: list[str],
    port_wanted: bool,
    now: float,
    timers: Timers,
    sessions: Mapping[tuple[str, str], int],
    room: int,
) -> _Step:
    if old is None and service is not None and service.mode == "http" and spare:
        bound = _bind(
            name, service, applied, spare, now=now, timers=timers, sessions=sessions, room=room
        )
        if bound is not None:
            return bound
    settings = service.settings if service is not None else (old.settings if old else None)
    dynamic = old is not None and settings is not None and settings.dynamic_servers
    table, cmds, left = _assign(
        old.haproxy if old is not None else name,
        applied.slots.get(name, ()),
        service.instances if service else (),
        now=now,
        drain_timeout=timers.drain_timeout,
        sessions=sessions,
        room=room if dynamic else 0,
        options=(settings or DEFAULT_SETTINGS).server_options(),
    )
    if not dynamic:
        left = room
    running: dict[str, Entry] = {name: (old, table, applied.empty_since.get(name))} if old else {}
    since = applied.empty_since.get(name, now)
    if service is None and old is not None and old.proxy:
        gone = _unbind(name, old, table, since)
        return _Step(gone, cmds, None, cmds, gone, left)
    entry, reason = _layout(
        name, service, old, table, since=since, port_wanted=port_wanted, now=now, timers=timers
    )
    keep = cmds if old is not None and reason is None else []
    return _Step({name: entry}, keep, reason, cmds if old else [], running, left)


def _bind(
    name: str,
    service: Service,
    applied: Applied,
    spare: list[str],
    *,
    now: float,
    timers: Timers,
    sessions: Mapping[tuple[str, str], int],
    room: int,
) -> _Step | None:
    """A new HTTP environment takes the first free spare backend: its servers are set
    in the spare's slots (more with ``add server`` while there is room); its Host is
    added to the map after them (map commands come last). ``None`` when its instances
    do not fit: then it needs a reload like before."""
    pool = spare[0]
    backend = applied.backends[pool]
    table, cmds, left = _assign(
        pool,
        applied.slots.get(pool, ()),
        service.instances,
        now=now,
        drain_timeout=timers.drain_timeout,
        sessions=sessions,
        room=room,
        options=backend.settings.server_options(),
    )
    if _unplaced(table, service.instances):
        return None
    spare.pop(0)
    # The spare keeps its default shape in HAProxy; the environment's own settings are
    # kept here and rendered at the next reload (SPEC §10).
    bound = Backend(
        name,
        "http",
        backend.slots,
        service.host,
        service.port,
        proxy=pool,
        settings=service.settings,
        aliases=service.aliases,
    )
    entries: dict[str, Entry] = {pool: None, name: (bound, table, None)}
    return _Step(entries, cmds, interim=cmds, interim_entries=entries, room=left)


def _unbind(name: str, old: Backend, table: tuple[Slot, ...], since: float) -> dict[str, Entry]:
    """An environment gone from a spare backend: its Host goes at once (the map
    commands), its servers drain, and once they are all out the spare is free again."""
    if any(s.live for s in table):
        return {name: (old, table, since)}
    return {name: None, old.proxy: (Backend(old.proxy, "pool", old.slots), table, None)}


def _free_pool(applied: Applied, spare: int) -> list[str]:
    """The free spare backends, lowest first (a look at ``spare`` names, not a walk)."""
    free = []
    for n in range(spare):
        backend = applied.backends.get(pool_name(n))
        if backend is not None and backend.mode == "pool":
            free.append(backend.name)
    return free


def _layout(
    name: str,
    service: Service | None,
    old: Backend | None,
    table: tuple[Slot, ...],
    *,
    since: float,
    port_wanted: bool,
    now: float,
    timers: Timers,
) -> tuple[tuple[Backend, tuple[Slot, ...], float | None] | None, str | None]:
    """One backend's entry in the target (``None``: it goes) and the reload it needs."""
    if service is None:
        assert old is not None
        # Two listens never share a port (SPEC §9): an emptied one whose port another
        # service wants goes now, not after BACKEND_GC_AFTER.
        kept = not port_wanted and (any(s.live for s in table) or now - since < timers.gc_after)
        if kept:
            return (old, table, since), None
        return None, "new_backend" if port_wanted else "backend_removed"
    if old is None:
        live = len(service.instances)
        table = tuple(Slot(i.ip, i.port, "ready", i.id) for i in service.instances)
        table += tuple(Slot() for _ in range(wanted_slots(live, timers.initial_slots) - live))
        table = (
            tuple(
                Slot(i.ip, i.port, i.state, i.id, weight=i.weight, pinned=i.state != "ready")
                for i in service.instances
            )
            + table[live:]
        )
        backend = Backend(
            name,
            service.mode,
            len(table),
            service.host,
            service.port,
            settings=service.settings,
            aliases=service.aliases,
        )
        return (backend, table, None), "new_backend"
    backend = Backend(
        name,
        service.mode,
        old.slots,
        service.host,
        service.port,
        old.proxy,
        service.settings,
        service.aliases,
    )
    reason = None
    if _unplaced(table, service.instances):
        reason = "slots_exhausted"
    elif old.port != service.port or old.host != service.host:
        reason = "new_backend"
    elif old.settings != service.settings and not old.proxy:
        # A spare-backend environment gets its own settings at the next reload anyway.
        reason = "config_changed"
    return (backend, table, None), reason


def first_reason(reasons: Collection[str]) -> str:
    """The reason a reload is named by, when it has several (``REASON_ORDER``)."""
    return min(reasons, key=REASON_ORDER.index)


def _port_claimed(
    old: Backend,
    services: Mapping[str, Service],
    claimed: Mapping[int, str] | None,
    *,
    exclude: str,
) -> bool:
    if claimed is not None:
        owner = claimed.get(old.port)
        return owner is not None and owner != exclude
    return any(s.mode == "tcp" and s.port == old.port and n != exclude for n, s in services.items())


def _host_changes(
    applied: Applied,
    changed: Mapping[str, Entry],
    names: Collection[str],
    *,
    full: bool,
) -> dict[str, str | None]:
    """Host map entries to set (or delete: ``None``), pointing at the name HAProxy knows
    each backend by; a backend's aliases are entries too. A full plan compares the whole
    map (stray entries of an adopted map go); a partial one the touched backends'."""
    hosts: dict[str, str | None] = {}
    if full:
        wanted = {
            host: entry[0].haproxy
            for entry in changed.values()
            if entry is not None and entry[0].mode == "http"
            for host in entry[0].hosts
        }
        for host in applied.hosts:
            if host not in wanted:
                hosts[host] = None
        hosts.update(wanted)
        return hosts
    for name in names:
        old = applied.backends.get(name)
        new = old
        if name in changed:
            entry = changed[name]
            new = entry[0] if entry is not None else None
        new_hosts = new.hosts if new is not None and new.mode == "http" else ()
        if old is not None and old.mode == "http":
            for host in old.hosts:
                if host not in new_hosts and applied.hosts.get(host) == old.haproxy:
                    hosts[host] = None
        if new is not None:
            for host in new_hosts:
                hosts[host] = new.haproxy
    return hosts


def for_reload(
    target: Applied,
    minimum: int,
    services: Mapping[str, Service] | None = None,
    changed: Collection[str] = (),
    *,
    spare: int = 0,
) -> Applied:
    """The state a reload installs: every desired instance in a rendered slot (dynamic and
    deleted slots folded in, draining ones free: the old worker finishes their
    connections), each backend sized by :func:`wanted_slots` over what it runs. The
    instances of ``services`` for the ``changed`` backends that found no slot get one.
    Environments served by spare backends are rendered under their own names and the pool
    is full again: ``spare`` free backends of ``minimum`` slots. The fd budget
    (``lb/budget.py``) may cut the headroom before it is rendered."""
    slots: dict[str, tuple[Slot, ...]] = {}
    backends: dict[str, Backend] = {}
    services = services or {}
    for name, backend in target.backends.items():
        if backend.mode == "pool":
            continue
        table = target.slots.get(name, ())
        service = services.get(name)
        instances = service.instances if service is not None and name in changed else ()
        # A pinned drain is rendered disabled (HAProxy's config has no drain): the new
        # worker starts it in maintenance and the next plan drains it again.
        kept = [
            s
            if s.state == "ready" and not s.dynamic and not s.since
            else replace(
                s, dynamic=False, since=0.0, state="maint" if s.state == "drain" else s.state
            )
            for s in table
            if s.state == "ready" or (s.pinned and s.instance)
        ]
        placed = {s.instance for s in kept}
        kept += [
            Slot(i.ip, i.port, i.state, i.id, weight=i.weight, pinned=i.state != "ready")
            for i in instances
            if i.id not in placed
        ]
        if backend.proxy and not kept:
            continue  # an environment that went while it was on a spare backend
        size = wanted_slots(len(kept), minimum)
        slots[name] = tuple(kept) + (_FREE,) * (size - len(kept))
        backends[name] = replace(backend, slots=size, proxy="")
    for n in range(spare):
        pool = pool_name(n)
        backends[pool] = Backend(pool, "pool", minimum)
        slots[pool] = (_FREE,) * minimum
    hosts = {h: b.name for b in backends.values() if b.mode == "http" for h in b.hosts}
    return Applied(backends, slots, hosts, target.empty_since)


_FREE = Slot()


def _unplaced(table: tuple[Slot, ...], instances: tuple[Instance, ...]) -> int:
    placed = {s.instance for s in table if s.state == "ready"}
    return sum(1 for i in instances if i.id not in placed)


def _server_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _assign(  # noqa: PLR0912, PLR0915 - four passes over one table read best together
    backend: str,
    current: tuple[Slot, ...],
    instances: tuple[Instance, ...],
    *,
    now: float,
    drain_timeout: float,
    sessions: Mapping[tuple[str, str], int],
    room: int = 0,
    options: str = SERVER_OPTIONS,
) -> tuple[tuple[Slot, ...], list[str], int]:
    """The slot table serving ``instances``, the commands that make ``current`` it, and
    the room for dynamic servers left. Instances that find no slot are left out (the
    caller then reloads with more). An instance's pin (SPEC §10) sets its slot's state
    and weight; ``options`` are the server keywords ``add server`` gets."""
    table = list(current)
    cmds: list[str] = []
    wanted = {i.id: i for i in instances}
    by_addr = {i.address: i for i in instances}
    placed: set[str] = set()

    def server(k: int) -> str:
        return f"{backend}/s{k + 1}"

    def settle(k: int, slot: Slot, inst: Instance) -> None:
        """Make slot ``k`` (now ``slot``) serve ``inst`` with its pin's state and weight."""
        if inst.address != (slot.addr, slot.port):
            cmds.append(f"set server {server(k)} addr {inst.ip} port {inst.port}")
        if (inst.weight or 1) != (slot.weight or 1):
            cmds.append(f"set server {server(k)} weight {inst.weight or 1}")
        if slot.state != inst.state:
            cmds.append(f"set server {server(k)} state {inst.state}")
        pinned = inst.state != "ready" or inst.weight is not None
        since = now if inst.state == "drain" and slot.state != "drain" else slot.since
        table[k] = Slot(
            inst.ip, inst.port, inst.state, inst.id, since, slot.dynamic, inst.weight, pinned
        )

    # 1. Slots that serve a wanted instance keep it (matched by ID, else by address for
    #    slots adopted from a running HAProxy, whose IDs we do not know).
    for k, slot in enumerate(table):
        if not slot.live and not slot.pinned:
            continue
        inst = wanted.get(slot.instance) if slot.instance else None
        if inst is None and slot.instance is None:
            inst = by_addr.get((slot.addr, slot.port))
        if inst is None or inst.id in placed:
            continue
        placed.add(inst.id)
        settle(k, slot, inst)

    # 2. Slots whose instance is gone drain, then go to maintenance (a pinned one already
    #    in maintenance is simply free again).
    for k, slot in enumerate(table):
        if slot.instance in placed or slot.free or slot.state == "gone":
            continue
        if slot.state == "maint":
            table[k] = Slot(dynamic=slot.dynamic, weight=slot.weight)
            continue
        if slot.state == "ready":
            if drain_timeout <= 0:
                cmds.append(f"set server {server(k)} state maint")
                table[k] = Slot(dynamic=slot.dynamic, weight=slot.weight)
                continue
            cmds.append(f"set server {server(k)} state drain")
            table[k] = replace(slot, state="drain", since=now, pinned=False)
        draining = table[k]
        idle = sessions.get((backend, f"s{k + 1}"), 1) == 0
        if draining.state == "drain" and (idle or now - draining.since >= drain_timeout):
            cmds.append(f"set server {server(k)} state maint")
            table[k] = Slot(dynamic=slot.dynamic, weight=slot.weight)

    # 3. New instances take free slots, then dynamic ones while there is room.
    free = [k for k, slot in enumerate(table) if slot.free]
    gone = [k for k, slot in enumerate(table) if slot.state == "gone"]
    for inst in instances:
        if inst.id in placed:
            continue
        if free:
            k = free.pop(0)
            settle(k, table[k], inst)
        elif room > 0:
            room -= 1
            if gone:
                k = gone.pop(0)
            else:
                k = len(table)
                table.append(Slot())
            address = _server_address(inst.ip, inst.port)
            cmds.append(f"add server {server(k)} {address} {options}")
            cmds.append(f"enable health {server(k)}")
            settle(k, Slot(inst.ip, inst.port, "maint", dynamic=True), inst)
        else:
            continue
        placed.add(inst.id)

    # 4. Dynamic slots that are free and idle are deleted (``del server`` needs maint and
    #    no connection); trailing deleted ones are dropped from the table.
    for k, slot in enumerate(table):
        if slot.dynamic and slot.free and sessions.get((backend, f"s{k + 1}"), 1) == 0:
            cmds.append(f"del server {server(k)}")
            table[k] = Slot(state="gone", dynamic=True)
    while table and table[-1].state == "gone":
        table.pop()
    return tuple(table), cmds, room


def _map_commands(
    old: Mapping[str, str], changes: Mapping[str, str | None], map_path: str
) -> list[str]:
    cmds = [
        f"del map {map_path} {host}"
        for host, backend in sorted(changes.items())
        if backend is None and host in old
    ]
    for host, backend in sorted(changes.items()):
        if backend is None:
            continue
        if host not in old:
            cmds.append(f"add map {map_path} {host} {backend}")
        elif old[host] != backend:
            cmds.append(f"set map {map_path} {host} {backend}")
    return cmds
