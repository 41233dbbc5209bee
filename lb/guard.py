"""The mass-removal guard (SPEC §6). Pure: the clock is an argument.

When more than half of all the servers the lb routes to (and at least ``minimum``)
disappear within one TTL, it is what an etcd freeze or partition does when many leases
expire at once while the containers are fine: those servers are kept (health checks
still take dead ones out) until their records return or ``grace`` passes.

What counts is the *net* loss within the window: servers that went minus servers that
came. A rolling replacement (a new instance up, then the old one removed) loses nothing
and is never held, however fast it goes; a freeze loses everything and gains nothing.
"""

from __future__ import annotations

from dataclasses import replace

from lb.desired import Desired, Instance, Service

Key = tuple[str, str]  # (service name, instance ID)


class MassRemovalGuard:
    def __init__(self, *, window: float, grace: float, minimum: int = 3) -> None:
        self.window = window
        self.grace = grace
        self.minimum = minimum
        self.known: dict[Key, tuple[Service, Instance]] = {}
        self.removed: dict[Key, float] = {}  # recent removals and when they happened
        self.added: dict[Key, float] = {}  # recent arrivals and when they happened
        self.held: dict[Key, float] = {}  # held servers and since when
        self.kept = 0  # servers actually put back into the desired state
        self.newly_held: list[Key] = []  # held by the last call (for the caller's log)

    @property
    def held_count(self) -> int:
        return self.kept

    def filter(self, desired: Desired, now: float) -> Desired:
        current = {
            (name, inst.id): (svc, inst)
            for name, svc in desired.services.items()
            for inst in svc.instances
        }
        for key in [k for k in self.held if k in current]:
            del self.held[key]  # it came back
        for key in current:
            if self.known and key not in self.known:
                self.added[key] = now
        for key in self.known:
            if key not in current and key not in self.held and key not in self.removed:
                self.removed[key] = now
        self.removed = {
            k: t for k, t in self.removed.items() if now - t <= self.window and k not in current
        }
        self.added = {k: t for k, t in self.added.items() if now - t <= self.window}
        net = len(self.removed) - len(self.added)
        before = len(current) + net
        self.newly_held = []
        if self.grace > 0 and net >= self.minimum and net * 2 > before:
            for key in self.removed:
                # Only what is still known can be kept: removals let through earlier in
                # the window count towards the loss but are gone already.
                if key not in self.held and key in self.known:
                    self.held[key] = now
                    self.newly_held.append(key)
        self.held = {k: t for k, t in self.held.items() if now - t < self.grace}
        kept = {k: self.known[k] for k in self.held if k in self.known}
        self.kept = len(kept)
        self.known = {**current, **kept}
        if not kept:
            return desired
        services = dict(desired.services)
        for (name, _), (svc, inst) in kept.items():
            base = services.get(name, replace(svc, instances=()))
            services[name] = replace(base, instances=tuple(sorted({*base.instances, inst})))
        return replace(desired, services=services)
