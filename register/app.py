"""register: turn this host's announcements into /services and /skydns keys (SPEC §5).

One loop (``discovery.daemon.Loop``) turns :meth:`Register.cycle`. The mirrors of
``/announce`` and ``/frontends`` hand it their changes; it keeps what it should hold up to
date change by change (``register.state``: a foreign announcement costs a parse), and
applies the difference to the keys it holds, every write guarded by a lease comparison so
it never touches another node's keys. All its keys live under one lease, which a
restarted register adopts once it has seen that nobody else keeps it alive
(``register.adopt``). Every ``TTL/2`` it reads its keys back from etcd and repairs what
it finds (a key deleted by hand, a value restored from an old snapshot), and after a
relist of ``/announce`` (etcd restored, compacted) it lists its keys again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from discovery.daemon import Stopper, Turn, run_loop
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.keys import Layout
from discovery.kv import KV, WatchBatch
from discovery.lease import LeaseKeeper
from discovery.metrics import Metrics
from discovery.records import InvalidRecord, Rejected, ServicePath, parse_service
from discovery.rejects import RejectLog
from discovery.watch import PrefixMirror
from register import transform as t
from register.adopt import Candidates, Sample
from register.runtime import Runtime
from register.settings import RegisterSettings
from register.state import RegisterState, replace_path

log = logging.getLogger(__name__)

# How often a register reads its keys back, as a share of its TTL: a key lost in etcd
# comes back within one TTL (issue 8). Jittered so that many hosts spread their reads.
RECONCILE_SHARE = 0.5
# While watching candidate leases before adoption, ask etcd about them this often.
ADOPT_POLL = 0.25
# A key whose write was refused because our view of it was stale is planned again after.
PENDING_RETRY = 0.05


@dataclass
class Foreign:
    """A key we should write that another lease holds: left alone until ``retry_at``."""

    retry_at: float
    lease: int
    node: str | None  # the holder's NODE, for service records


class Register:
    """One register: its mirrors, its state, the keys it holds and its loop."""

    def __init__(
        self,
        settings: RegisterSettings,
        session: EtcdSession,
        runtime: Runtime,
        metrics: Metrics,
        stop: Stopper,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.layout = settings.layout
        self.session = session
        self.runtime = runtime
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        self.wake = threading.Event()
        self.dns = t.DnsConfig(
            settings.dns_domain, settings.ttl, settings.frontend_ip, settings.frontend_port
        )
        self.rejects = RejectLog(metrics)
        self.state = RegisterState(node=settings.node_name, layout=self.layout, dns=self.dns)
        # Filled by the /announce mirror's thread: its batches, None for "listed again".
        self._inbox_lock = threading.Lock()
        self._inbox: list[WatchBatch | None] = []
        self._relisted = False
        self._lists = 0
        self._frontends_changed = True
        # Both mirrors watch through one session: one gRPC stream and one pyetcd watch
        # thread instead of two. gRPC's blocking stream iterator wakes ten times a
        # second; a second stream was half of an idle register's CPU (bench/README.md).
        watches = session.fork()
        self.announces = PrefixMirror(
            watches,
            self.layout.announce,
            on_change=self.wake.set,
            metrics=metrics,
            on_events=self._on_announce_events,
        )
        self.frontends = PrefixMirror(
            watches, self.layout.frontends, on_change=self._on_frontends, metrics=metrics
        )
        self.lease = LeaseKeeper(
            session,
            settings.ttl,
            interval=settings.ttl / 3,
            write=self._on_new_lease,
            metrics=metrics,
            name="register",
        )
        # The keys we hold (None: unknown, list them again), the keys to plan again, and
        # keys held by other leases that we must leave alone for a while.
        self.actual: dict[str, KV] | None = None
        self.pending: set[str] = set()
        self.foreign: dict[str, Foreign] = {}
        # Start-up: the leases of our node's records being watched before adoption; the
        # dead ones (ours: their keys are ours to keep or delete); the live ones, kept
        # alive by another register that has our NODE_NAME.
        self.started = False
        self.candidates: Candidates | None = None
        self.owned: set[int] = set()
        self.twins: set[int] = set()
        self.next_reconcile = 0.0
        self._rng = random.Random()  # noqa: S311 - jitter
        self._invalid: set[str] = set()
        self._reported_services: set[str] = set()
        self._reported_shadows: set[ServicePath] = set()
        r = metrics.registry
        self.instances = Gauge(
            "haroute_register_instances",
            "instances registered by this register, per service path",
            ["service"],
            registry=r,
        )
        self.keys_held = Gauge(
            "haroute_register_keys", "keys held under this register's lease", registry=r
        )
        self.conflicts = Gauge(
            "haroute_register_conflicts",
            "conflicts left alone: local instances whose keys another register holds "
            "(instance), live registers with this NODE_NAME (node_name)",
            ["kind"],
            registry=r,
        )
        for kind in ("instance", "node_name"):
            self.conflicts.labels(kind)
        self.shadowed = Gauge(
            "haroute_register_dns_shadowed",
            "local service paths without DNS records: their name nests with one created "
            "earlier (SPEC §5)",
            ["service"],
            registry=r,
        )

    # --- the mirrors' threads ---------------------------------------------------------

    def _on_announce_events(self, batch: WatchBatch | None) -> None:
        with self._inbox_lock:
            self._inbox.append(batch)
            if batch is None:
                self._lists += 1
                # Listed again: etcd may have been restored from a snapshot (its revision
                # went backwards) or compacted past us: list our own keys again too.
                self._relisted = self._lists > 1

    def _on_frontends(self) -> None:
        self._frontends_changed = True
        self.wake.set()

    def _on_new_lease(self, lease_id: int) -> None:
        # Keys under a lost lease are gone: find out what is left and write everything.
        self.actual = None

    # --- the loop ---------------------------------------------------------------------

    def cycle(self) -> Turn:
        """One turn: settle the lease, follow the changes, write the difference; one
        sentence of what it did."""
        now = self.clock()
        if not self.started:
            watching = self._adopt(now)
            if watching is not None:
                return watching
        delay = self.lease.tick()
        lease_id = self.lease.lease_id
        did: list[str] = []
        with self._inbox_lock:
            relisted, self._relisted = self._relisted, False
        if relisted:
            self.actual = None
        if self.actual is None:
            did.append(self._resync())
        if lease_id is None or self.actual is None:
            return Turn(min(delay, 0.1), "; ".join(did))
        if not (self.announces.synced and self.frontends.synced):
            return Turn(min(delay, 0.1), "; ".join(did))
        try:
            runtime_changed = self.runtime.refresh()
        except t.PlacementUnknown:
            # Change nothing rather than drop every key; the runtime logs why.
            return Turn(min(delay, 0.5), "; ".join(did))
        did.extend(self._follow(runtime_changed))
        if now >= self.next_reconcile:
            did.append(self._reconcile(now))
        did.extend(self._apply_pending(lease_id, now))
        waits = [delay, self.next_reconcile - now, *self._retry_waits(now)]
        if self.runtime.interval is not None:
            waits.append(self.runtime.interval)
        if self.pending:
            waits.append(PENDING_RETRY)  # a write refused on a stale view: soon again
        return Turn(max(0.0, min(waits)), "; ".join(d for d in did if d))

    def _retry_waits(self, now: float) -> list[float]:
        return [f.retry_at - now for f in self.foreign.values()]

    # --- start-up: adopt our predecessor's lease, never a live twin's -----------------

    def _adopt(self, now: float) -> Turn | None:
        """Watch the leases of our node's records until each is known dead or live;
        a Turn while watching, None once done."""
        if self.candidates is None:
            services, _ = self.session.get_prefix(self.layout.services + "/")
            leases = t.own_leases(services, self.layout, self.settings.node_name)
            if not leases:
                self.started = True
                return None
            self.candidates = Candidates(leases, ttl=self.settings.ttl, started=now)
            log.info(
                "[register] found lease(s) %s of NODE_NAME=%s; adopting once nobody else "
                "keeps them alive",
                _hex(leases),
                self.settings.node_name,
            )
        candidates = self.candidates
        for lease in candidates.watching(now):
            sent = self.clock()
            ttl = self.session.time_to_live(lease)
            candidates.add(lease, Sample(sent, self.clock(), ttl))
            if candidates.dying(lease) and self.lease.lease_id is None:
                self._take(lease)  # it would expire before the watch is over
        if candidates.watching(self.clock()):
            if self.lease.lease_id is not None:
                self.lease.tick()  # the dying one we adopted meanwhile
            return Turn(ADOPT_POLL, "watching our node's leases before adopting one")
        dead, live = candidates.outcome(self.clock())
        for lease in dead:
            if self.lease.lease_id is None:
                self._take(lease)
        self.owned = set(dead)
        self.twins = set(live)
        for lease in live:
            log.error(
                "[register] another live register has NODE_NAME=%s: it keeps lease %x "
                "alive. Its keys are left alone and conflicts are reported; give every "
                "host its own NODE_NAME",
                self.settings.node_name,
                lease,
            )
        self.conflicts.labels("node_name").set(len(self.twins))
        self.started = True
        self.candidates = None
        return None

    def _take(self, lease: int) -> None:
        if self.lease.adopt(lease):
            self.actual = None

    # --- what we hold -------------------------------------------------------------------

    def _resync(self) -> str:
        """List /services and /skydns: which keys are ours (held by our lease, or by a
        dead predecessor's)."""
        services, _ = self.session.get_prefix(self.layout.services + "/")
        skydns, _ = self.session.get_prefix(self.layout.skydns + "/")
        leases = set(self.owned)
        if self.lease.lease_id is not None:
            leases.add(self.lease.lease_id)
        self.actual = {kv.key: kv for kv in (*services, *skydns) if kv.lease in leases}
        self.pending |= set(self.actual) | set(self.state.desired)
        log.info("[register] holding %d keys under lease(s) %s", len(self.actual), _hex(leases))
        return f"listed our keys: {len(self.actual)}"

    def _follow(self, runtime_changed: bool) -> list[str]:
        """Take the mirrors' changes into the state; the keys whose desired value
        changed become pending."""
        did = []
        with self._inbox_lock:
            inbox, self._inbox = self._inbox, []
        place = self.runtime.place
        if None in inbox:  # the mirror listed (first, or again): take the whole snapshot
            snapshot = self.announces.snapshot()
            self._invalid.clear()
            self._rejected(self.state.load(snapshot.items.values(), place))
            self.rejects.forget_missing((*snapshot.items, *self.frontends.snapshot().items))
            did.append(f"derived all {len(snapshot.items)} announcements")
        elif inbox:
            events = 0
            for batch in inbox:
                assert batch is not None
                for event in batch.events:
                    kv = None if event.deleted else event.kv
                    bad = self.state.update(event.kv.key, kv, place)
                    self._invalid.discard(event.kv.key)
                    if bad is not None:
                        self._rejected([bad])
                    events += 1
            did.append(f"followed {events} announcement change(s)")
        if runtime_changed:
            self.state.replace_placements(place)
            did.append(f"{self.runtime.name} runtime changed: placed again")
        if self._frontends_changed:
            self._frontends_changed = False
            items = self.frontends.snapshot().items
            frontends, bad_frontends = t.parse_frontends(items.values(), self.layout)
            self._rejected(bad_frontends)
            self.state.set_frontends(frontends)
        self._settle()
        changed = self.state.flush()
        self.pending |= changed
        self.metrics.records.labels("valid").set(len(self.state.index))
        self.metrics.records.labels("invalid").set(len(self._invalid))
        return did

    def _rejected(self, rejected: list[Rejected]) -> None:
        for bad in rejected:
            if bad.key.startswith(self.layout.announce + "/"):
                self._invalid.add(bad.key)
            self.rejects.reject(bad.key, bad.mod_revision, bad.error)

    def _settle(self) -> None:
        """Settle the DNS nesting of the services that need it (SPEC §5), reading which
        of their names hold DNS records where two of them nest."""
        for base, nesting in self.state.unsettled().items():
            self.state.settle(base, self._holding(base) if nesting else ())
        shadowed = self.state.shadowed
        for path in self._reported_shadows - shadowed.keys():
            log.info("[dns] %s no longer nests with another name: DNS records again", path.text)
            self.shadowed.remove(path.text)
        for path in shadowed.keys() - self._reported_shadows:
            log.warning(
                "[dns] %s would nest with %s (created first): no DNS records for it while "
                "that name lives; HTTP routing is not affected",
                path.text,
                ", ".join(replace_path(path, n).text for n in shadowed[path]),
            )
            self.shadowed.labels(path.text).set(1)
        self._reported_shadows = set(shadowed)

    def _holding(self, base: ServicePath) -> set[ServicePath]:
        """The paths of service ``base`` whose DNS names have records in etcd now."""
        dirs = {
            self.layout.skydns_dir(replace_path(base, name), self.dns.domain): name
            for name in self.state.index.claims(base, self.dns)
        }
        service_dir = self.layout.skydns_dir(base, self.dns.domain).rpartition("/")[0]
        kvs, _ = self.session.get_prefix(service_dir + "/")
        held = {dirs[d] for kv in kvs if (d := kv.key.rpartition("/")[0]) in dirs}
        return {replace_path(base, name) for name in held}

    # --- reconcile: etcd is what counts -----------------------------------------------

    def _reconcile(self, now: float) -> str:
        """Read our keys back from etcd and repair what differs (a key deleted by hand,
        an old value restored), check on live twins, and plan every key again."""
        assert self.actual is not None
        interval = self.settings.ttl * RECONCILE_SHARE
        self.next_reconcile = now + interval * self._rng.uniform(0.8, 1.0)
        mine = {self.lease.lease_id, *self.owned}
        repaired = 0
        for key, believed in list(self.actual.items()):
            kv = self.session.get(key)
            if kv is None or kv.lease not in mine:
                del self.actual[key]
            elif kv.value != believed.value or kv.lease != believed.lease:
                self.actual[key] = kv
            else:
                continue
            repaired += 1
            log.warning(
                "[register] %s was %s in etcd; writing it again",
                key,
                "missing" if kv is None else "changed",
                extra={"key": key},
            )
        for lease in sorted(self.twins):
            if self.session.time_to_live(lease) < 0:
                self.twins.discard(lease)
                log.info(
                    "[register] lease %x of the other NODE_NAME=%s register is gone",
                    lease,
                    self.settings.node_name,
                )
        self.conflicts.labels("node_name").set(len(self.twins))
        self.state.dirty_all()
        self._settle()
        self.pending |= self.state.flush() | set(self.state.desired) | set(self.actual)
        return f"repaired {repaired} key(s) that etcd had lost or changed" if repaired else ""

    # --- writes -----------------------------------------------------------------------

    def _apply_pending(self, lease_id: int, now: float) -> list[str]:
        assert self.actual is not None
        actual = self.actual
        gone = [key for key in self.foreign if key not in self.state.desired]
        for key in gone:
            del self.foreign[key]  # a conflict over a key we no longer want is over
        self.pending |= {key for key, f in self.foreign.items() if f.retry_at <= now}
        if not self.pending:
            if gone:
                self._report()
            return []
        keys, self.pending = self.pending, set()  # a refused write plans its key again
        desired = {k: self.state.desired[k] for k in keys if k in self.state.desired}
        current = {k: actual[k] for k in keys if k in actual}
        ops = [
            op
            for op in t.plan(desired, current, lease_id)
            if op.key not in self.foreign or self.foreign[op.key].retry_at <= now
        ]
        puts = deletes = done = 0
        try:
            for op in ops:
                if self._apply(op, lease_id):
                    puts += isinstance(op, t.Put)
                    deletes += isinstance(op, t.Delete)
                done += 1
        except Exception:
            self.pending |= {op.key for op in ops[done:]}  # etcd went away: next time
            raise
        finally:
            self._report()
        return [f"put {puts}, deleted {deletes} key(s)"] if puts or deletes else []

    def _apply(self, op: t.Op, lease_id: int) -> bool:
        """Apply one operation; on a refused transaction, find out why and either plan
        the key again (our view was stale) or leave it to its holder (another lease)."""
        assert self.actual is not None
        if isinstance(op, t.Put):
            ok = self.session.put_if_lease(
                op.key, op.value, expect_lease=op.expect_lease, lease=lease_id
            )
            if ok:
                self.actual[op.key] = KV(op.key, op.value.encode(), 0, 0, lease_id)
                log.info("[register] put %s = %s", op.key, op.value, extra={"key": op.key})
        else:
            ok = self.session.delete_if_lease(op.key, expect_lease=op.expect_lease)
            if ok:
                self.actual.pop(op.key, None)
                log.info("[register] deleted %s", op.key, extra={"key": op.key})
        if ok:
            held = self.foreign.pop(op.key, None)
            if held is not None:
                log.info("[register] %s is ours now", op.key, extra={"key": op.key})
            return True
        current = self.session.get(op.key)
        if current is None or current.lease in (lease_id, *self.owned):
            # Our view was stale: take what etcd holds and plan the key again.
            if current is None:
                self.actual.pop(op.key, None)
            else:
                self.actual[op.key] = current
            self.pending.add(op.key)
            return False
        self.actual.pop(op.key, None)
        self._leave(op.key, current)
        return False

    def _leave(self, key: str, current: KV) -> None:
        """Leave a key another lease holds; report it once (per holder)."""
        node = _node_of(current, self.layout)
        before = self.foreign.get(key)
        self.foreign[key] = Foreign(self.clock() + self.settings.ttl, current.lease, node)
        if before is not None and before.lease == current.lease:
            return
        if node == self.settings.node_name:
            why = f"another register with NODE_NAME={node} holds it"
        elif node is not None:
            why = f"node {node} registered the same instance (one ID placed on two hosts?)"
        else:
            why = "another register holds it"
        log.warning(
            "[register] conflict: %s is held by lease %x: %s; left alone, retried every TTL",
            key,
            current.lease,
            why,
            extra={"key": key},
        )

    def _report(self) -> None:
        """Registered instances per service path (a bounded label: never per instance)."""
        assert self.actual is not None
        counts: dict[str, int] = {}
        prefix = self.layout.services
        for key in self.actual:
            if key.startswith(prefix + "/"):
                service = key[len(prefix) :].rpartition("/")[0]
                counts[service] = counts.get(service, 0) + 1
        for gone in self._reported_services - counts.keys():
            self.instances.remove(gone)
        for service, count in counts.items():
            self.instances.labels(service).set(count)
        self._reported_services = set(counts)
        self.keys_held.set(len(self.actual))
        services = self.layout.services + "/"
        self.conflicts.labels("instance").set(
            sum(1 for k in self.foreign if k.startswith(services))
        )

    # --- run ----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: both mirrors listed and watching (connected to etcd and synced),
        our predecessor's lease adopted or given up, and our keys written under a live
        lease. Read from the HTTP server's thread."""
        for mirror in (self.announces, self.frontends):
            if not mirror.synced:
                return False, f"not synced: {mirror.prefix} is not listed yet"
            if not mirror.connected:
                return False, f"not connected to etcd: the watch of {mirror.prefix} is down"
        if not self.started:
            return False, "watching our node's leases before adopting one"
        lease, actual = self.lease.lease_id, self.actual
        if lease is None or not self.lease.written or actual is None:
            return False, "our keys are not written under a live lease yet"
        return True, f"synced: {len(actual)} key(s) held under lease {lease:x}"

    def run(self) -> int:
        threads = [
            threading.Thread(
                target=m.run, args=(self.stop.event,), name=f"mirror{m.prefix}", daemon=True
            )
            for m in (self.announces, self.frontends)
        ]
        threads.append(
            threading.Thread(
                target=self.runtime.watch,
                args=(self.wake.set, self.stop.event),
                name=f"runtime-{self.runtime.name}",
                daemon=True,
            )
        )
        for thread in threads:
            thread.start()
        run_loop("register", self.cycle, stop=self.stop, wake=self.wake, metrics=self.metrics)
        self._exit()
        for thread in threads:
            thread.join(2)
        return 0

    def _exit(self) -> None:
        if not self.settings.revoke_on_exit:
            log.info("[register] exiting; keys stay for their TTL for the next register")
            return
        try:
            self.lease.revoke()
        except EtcdUnavailable as exc:
            log.warning("[register] could not revoke the lease (%s); it expires by itself", exc)


def _node_of(kv: KV, layout: Layout) -> str | None:
    """The ``NODE`` of a service record (None for other keys)."""
    try:
        path, instance_id = layout.split_instance_key(layout.services, kv.key)
        return parse_service(path, instance_id, kv.value).node
    except InvalidRecord:
        return None


def _hex(leases: set[int]) -> str:
    return ",".join(f"{lease:x}" for lease in sorted(leases)) or "-"
