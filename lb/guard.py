"""The mass-removal guard (SPEC §6). Pure: the clock is an argument.

When more than half of all the servers the lb routes to (and at least ``minimum``)
disappear within one TTL, it is what an etcd freeze or partition does when many leases
expire at once while the containers are fine: those servers are kept (health checks
still take dead ones out) until their records return or ``grace`` passes.

What counts is the *net* loss within the window: servers that went minus servers that
came. A rolling replacement (a new instance up, then the old one removed) loses nothing
and is never held, however fast it goes; a freeze loses everything and gains nothing.

It is fed change by change (:meth:`record` for each service whose instances changed, then
:meth:`settle` once per cycle), so its cost follows the change, not the number of servers.
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
        self.current: dict[str, dict[str, Instance]] = {}  # what the records say now
        self.total = 0  # servers in ``current``
        self.removed: dict[Key, tuple[float, Instance]] = {}  # recent removals
        self.added: dict[Key, float] = {}  # recent arrivals and when they happened
        self.held: dict[Key, tuple[float, Instance]] = {}  # held servers and since when
        self.newly_held: list[Key] = []  # held by the last settle (for the caller's log)
        self.started = False
        self.shapes: dict[str, Service] = {}  # the last service seen by name, for held ones
        self.fresh: set[Key] = set()  # removed since the last settle (still in HAProxy)

    @property
    def held_count(self) -> int:
        return len(self.held)

    def record(self, name: str, service: Service | None, now: float) -> None:
        """What the records make of service ``name`` now (``None``: no records)."""
        before = self.current.get(name, {})
        after = {i.id: i for i in (service.instances if service is not None else ())}
        if service is not None:
            self.shapes[name] = service
        for iid in after:
            if iid not in before:
                key = (name, iid)
                self.held.pop(key, None)  # it came back
                self.removed.pop(key, None)
                if self.started:
                    self.added[key] = now
        for iid, inst in before.items():
            key = (name, iid)
            if iid not in after and key not in self.held and key not in self.removed:
                self.removed[key] = (now, inst)
                self.fresh.add(key)
        self.total += len(after) - len(before)
        if after:
            self.current[name] = after
        else:
            self.current.pop(name, None)

    def settle(self, now: float) -> set[str]:
        """Decide what to hold after this cycle's changes; the services whose held
        servers changed (newly held, or let go after ``grace``)."""
        self.started = True
        touched: set[str] = set()
        self.removed = {k: v for k, v in self.removed.items() if now - v[0] <= self.window}
        self.added = {k: t for k, t in self.added.items() if now - t <= self.window}
        net = len(self.removed) - len(self.added)
        before = self.total + net
        self.newly_held = []
        if self.grace > 0 and net >= self.minimum and net * 2 > before:
            for key, (_, inst) in self.removed.items():
                # Only what is still in HAProxy can be kept: removals let through by an
                # earlier settle count towards the loss but are gone already.
                if key not in self.held and key in self.fresh:
                    self.held[key] = (now, inst)
                    self.newly_held.append(key)
                    touched.add(key[0])
        self.fresh.clear()
        for key, (since, _) in list(self.held.items()):
            if now - since >= self.grace:
                del self.held[key]
                touched.add(key[0])
        return touched

    def kept(self, name: str) -> tuple[Instance, ...]:
        """The servers of ``name`` held back although their records are gone."""
        return tuple(inst for (n, _), (_, inst) in self.held.items() if n == name)

    def apply(self, name: str, service: Service | None) -> Service | None:
        """``service`` with its held servers put back (a service whose records all went
        keeps its last shape while servers of it are held)."""
        kept = self.kept(name) if self.held else ()
        if not kept:
            if service is None:
                self.shapes.pop(name, None)
            return service
        base = service if service is not None else self.shapes.get(name)
        if base is None:
            return service
        instances = service.instances if service is not None else ()
        return replace(base, instances=tuple(sorted({*instances, *kept})))

    def next_expiry(self) -> float | None:
        """When the earliest hold ends (for the caller's timer)."""
        return min((since + self.grace for since, _ in self.held.values()), default=None)

    def filter(self, desired: Desired, now: float) -> Desired:
        """The whole-state form (``haroute plan``, tests): feed every service of
        ``desired``, settle, and return it with the held servers put back."""
        for name in set(self.current) | set(desired.services):
            self.record(name, desired.services.get(name), now)
        self.settle(now)
        if not self.held:
            return desired
        services = dict(desired.services)
        for name in {n for n, _ in self.held}:
            service = self.apply(name, services.get(name))
            if service is not None:
                services[name] = service
        return replace(desired, services=services)
