"""Desired state + what HAProxy runs now → runtime commands, or a reload with a reason.
Pure: no I/O, the clock and the session counts are arguments (SPEC §6).

Every backend has a fixed number of server *slots* ``s1..sN``. A new instance takes a
free slot (``set server B/sK addr IP port P``, then ``state ready``); a gone one drains
(``state drain``), then is put in maintenance once it has no sessions or ``DRAIN_TIMEOUT``
has passed, which frees its slot; a moved one (same ID, new address) is re-addressed in
place. Only a change of *layout* needs a reload: a new service path, a backend out of
slots (slots double), a backend empty for ``BACKEND_GC_AFTER``, a TCP port that changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from lb.desired import Desired, Instance

FREE_ADDR = "127.0.0.1"
FREE_PORT = 1


@dataclass(frozen=True)
class Slot:
    """One server slot as HAProxy has it. ``instance`` is the instance ID it serves."""

    addr: str = FREE_ADDR
    port: int = FREE_PORT
    state: str = "maint"  # "ready" | "drain" | "maint"
    instance: str | None = None
    since: float = 0.0  # when it started draining

    @property
    def free(self) -> bool:
        return self.state == "maint"


@dataclass(frozen=True)
class Backend:
    """One backend or listen of the running config."""

    name: str
    mode: str
    slots: int
    host: str = ""
    port: int = 0


@dataclass(frozen=True)
class Applied:
    """What HAProxy runs: the layout of its config, its slots, its Host map."""

    backends: Mapping[str, Backend] = field(default_factory=dict)
    slots: Mapping[str, tuple[Slot, ...]] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)
    empty_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What to do: ``commands`` on the runtime socket when ``reload`` is ``None``;
    otherwise a reload installing ``target`` (which then needs no commands).

    ``interim`` are the commands that are valid on the *running* layout, and
    ``interim_target`` the state they lead to: what the lb applies while a reload has to
    wait (``RELOAD_MIN_INTERVAL``) or cannot happen (a template that fails its check), so
    server changes of the existing backends never wait for a layout change."""

    target: Applied
    commands: tuple[str, ...] = ()
    reload: str | None = None
    interim: tuple[str, ...] = ()
    interim_target: Applied | None = None

    @property
    def empty(self) -> bool:
        return not self.commands and self.reload is None


@dataclass(frozen=True)
class Timers:
    initial_slots: int
    drain_timeout: float
    gc_after: float


def plan(
    desired: Desired,
    applied: Applied,
    *,
    now: float,
    timers: Timers,
    map_path: str,
    sessions: Mapping[tuple[str, str], int] | None = None,
) -> Plan:
    sessions = sessions or {}
    reasons: list[str] = []
    backends: dict[str, Backend] = {}
    slots: dict[str, tuple[Slot, ...]] = {}
    empty_since: dict[str, float] = {}
    commands: list[str] = []
    interim: list[str] = []
    interim_slots: dict[str, tuple[Slot, ...]] = {}

    for name in sorted(set(desired.services) | set(applied.backends)):
        service = desired.services.get(name)
        old = applied.backends.get(name)
        current = applied.slots.get(name, ())
        instances = service.instances if service else ()
        table, cmds = _assign(
            name, current, instances, now=now, drain_timeout=timers.drain_timeout, sessions=sessions
        )
        if old is not None:
            interim += cmds
            interim_slots[name] = table
        if service is None:
            assert old is not None
            since = applied.empty_since.get(name, now)
            if any(not s.free for s in table) or now - since < timers.gc_after:
                backends[name], slots[name], empty_since[name] = old, table, since
                commands += cmds
            else:
                reasons.append("backend_removed")
            continue
        count = old.slots if old else timers.initial_slots
        needed = sum(1 for s in table if not s.free) + _unplaced(table, instances)
        while count < needed:
            count *= 2
        if old is None:
            reasons.append("new_backend")
        elif count > old.slots:
            reasons.append("slots_exhausted")
        elif old.port != service.port or old.host != service.host:
            reasons.append("new_backend")
        backends[name] = Backend(name, service.mode, count, service.host, service.port)
        if old is None or count > old.slots:
            table, cmds = _assign(
                name,
                _pad(table, count),
                instances,
                now=now,
                drain_timeout=timers.drain_timeout,
                sessions=sessions,
            )
        slots[name] = table
        commands += cmds

    hosts = {b.host: b.name for b in backends.values() if b.mode == "http" and b.host}
    target = Applied(backends, slots, hosts, empty_since)
    if reasons:
        # A reload installs the whole target; draining slots start the new worker
        # disabled (the old worker finishes their connections).
        rendered = {
            n: tuple(_free() if s.state == "drain" else s for s in t) for n, t in slots.items()
        }
        running = Applied(
            applied.backends,
            {**applied.slots, **interim_slots},
            applied.hosts,
            {**applied.empty_since, **empty_since},
        )
        return Plan(
            replace(target, slots=rendered),
            reload=_first(reasons),
            interim=tuple(interim),
            interim_target=running,
        )
    commands += _map_commands(applied.hosts, hosts, map_path)
    return Plan(target, tuple(commands), interim=tuple(commands), interim_target=target)


_REASON_ORDER = ("new_backend", "slots_exhausted", "backend_removed")


def _first(reasons: list[str]) -> str:
    return min(reasons, key=_REASON_ORDER.index)


def _free() -> Slot:
    return Slot()


def _pad(table: tuple[Slot, ...], count: int) -> tuple[Slot, ...]:
    return table + tuple(_free() for _ in range(count - len(table)))


def _unplaced(table: tuple[Slot, ...], instances: tuple[Instance, ...]) -> int:
    placed = {s.instance for s in table if s.state == "ready"}
    return sum(1 for i in instances if i.id not in placed)


def _assign(  # noqa: PLR0912 - three passes over one table read best together
    backend: str,
    current: tuple[Slot, ...],
    instances: tuple[Instance, ...],
    *,
    now: float,
    drain_timeout: float,
    sessions: Mapping[tuple[str, str], int],
) -> tuple[tuple[Slot, ...], list[str]]:
    """The slot table serving ``instances``, and the commands that make ``current`` it.
    Instances that find no free slot are left out (the caller then adds slots)."""
    table = list(current)
    cmds: list[str] = []
    wanted = {i.id: i for i in instances}
    by_addr = {i.address: i for i in instances}
    placed: set[str] = set()

    def server(k: int) -> str:
        return f"{backend}/s{k + 1}"

    # 1. Slots that serve a wanted instance keep it (matched by ID, else by address for
    #    slots adopted from a running HAProxy, whose IDs we do not know).
    for k, slot in enumerate(table):
        if slot.free:
            continue
        inst = wanted.get(slot.instance) if slot.instance else None
        if inst is None and slot.instance is None:
            inst = by_addr.get((slot.addr, slot.port))
        if inst is None or inst.id in placed:
            continue
        placed.add(inst.id)
        if inst.address != (slot.addr, slot.port):
            cmds.append(f"set server {server(k)} addr {inst.ip} port {inst.port}")
        if slot.state != "ready":
            cmds.append(f"set server {server(k)} state ready")
        table[k] = Slot(inst.ip, inst.port, "ready", inst.id)

    # 2. Slots whose instance is gone drain, then go to maintenance.
    for k, slot in enumerate(table):
        if slot.free or slot.instance in placed:
            continue
        if slot.state == "ready":
            if drain_timeout <= 0:
                cmds.append(f"set server {server(k)} state maint")
                table[k] = _free()
                continue
            cmds.append(f"set server {server(k)} state drain")
            table[k] = replace(slot, state="drain", since=now)
        draining = table[k]
        idle = sessions.get((backend, f"s{k + 1}"), 1) == 0
        if draining.state == "drain" and (idle or now - draining.since >= drain_timeout):
            cmds.append(f"set server {server(k)} state maint")
            table[k] = _free()

    # 3. New instances take free slots.
    free = [k for k, slot in enumerate(table) if slot.free]
    for inst in instances:
        if inst.id in placed or not free:
            continue
        k = free.pop(0)
        cmds.append(f"set server {server(k)} addr {inst.ip} port {inst.port}")
        cmds.append(f"set server {server(k)} state ready")
        table[k] = Slot(inst.ip, inst.port, "ready", inst.id)
        placed.add(inst.id)
    return tuple(table), cmds


def _map_commands(old: Mapping[str, str], new: Mapping[str, str], map_path: str) -> list[str]:
    cmds = [f"del map {map_path} {host}" for host in sorted(old) if host not in new]
    for host, backend in sorted(new.items()):
        if host not in old:
            cmds.append(f"add map {map_path} {host} {backend}")
        elif old[host] != backend:
            cmds.append(f"set map {map_path} {host} {backend}")
    return cmds
