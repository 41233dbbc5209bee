"""register: turn this host's announcements into /services and /skydns keys (SPEC §5).

One loop: mirrors of ``/announce`` and ``/frontends`` wake it; it derives the keys it
should hold from their snapshots (``register.transform``), and applies the difference to
the keys it holds, every write guarded by a lease comparison so it never touches another
node's keys. All its keys live under one lease, which a restarted register adopts.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Gauge

from discovery.backoff import Backoff
from discovery.daemon import Stopper
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.lease import LeaseKeeper
from discovery.metrics import Metrics
from discovery.rejects import RejectLog
from discovery.watch import PrefixMirror
from register import transform as t
from register.runtime import Runtime
from register.settings import RegisterSettings

log = logging.getLogger(__name__)


class Register:
    def __init__(
        self,
        settings: RegisterSettings,
        session: EtcdSession,
        runtime: Runtime,
        metrics: Metrics,
        stop: Stopper,
    ) -> None:
        self.settings = settings
        self.layout = settings.layout
        self.session = session
        self.runtime = runtime
        self.metrics = metrics
        self.stop = stop
        self.wake = threading.Event()
        stop.link(self.wake)
        self.dns = t.DnsConfig(
            settings.dns_domain, settings.ttl, settings.frontend_ip, settings.frontend_port
        )
        self.rejects = RejectLog(metrics)
        self.announces = PrefixMirror(
            session.fork(), self.layout.announce, on_change=self.wake.set, metrics=metrics
        )
        self.frontends = PrefixMirror(
            session.fork(), self.layout.frontends, on_change=self.wake.set, metrics=metrics
        )
        self.lease = LeaseKeeper(
            session,
            settings.ttl,
            interval=settings.ttl / 3,
            write=self._on_new_lease,
            metrics=metrics,
            name="register",
        )
        # The keys we hold (None: unknown, list them again) and keys held by other
        # nodes' leases that we must leave alone, with when to look at them again.
        self.actual: dict[str, KV] | None = None
        self.foreign: dict[str, float] = {}
        self.adopted = False
        self.instances = Gauge(
            "haroute_register_instances",
            "instances registered by this register, per service path",
            ["service"],
            registry=metrics.registry,
        )
        self.keys_held = Gauge(
            "haroute_register_keys",
            "keys held under this register's lease",
            registry=metrics.registry,
        )
        self._reported_services: set[str] = set()

    def _on_new_lease(self, lease_id: int) -> None:
        # Keys under a lost lease are gone: find out what is left and write everything.
        self.actual = None
        self.wake.set()

    def _resync(self) -> None:
        """List /services and /skydns: which keys are ours (held by our node's leases)."""
        services, _ = self.session.get_prefix(self.layout.services + "/")
        skydns, _ = self.session.get_prefix(self.layout.skydns + "/")
        leases = t.own_leases(services, self.layout, self.settings.node_name)
        if not self.adopted:
            self.adopted = True
            for lease_id in sorted(leases):
                if self.lease.adopt(lease_id):
                    break
        if self.lease.lease_id is not None:
            leases.add(self.lease.lease_id)
        self.actual = {kv.key: kv for kv in (*services, *skydns) if kv.lease in leases}
        log.info(
            "[register] holding %d keys under lease(s) %s",
            len(self.actual),
            ",".join(f"{lease:x}" for lease in sorted(leases)) or "-",
        )
        self.wake.set()

    def _reconcile(self, actual: dict[str, KV], lease_id: int) -> None:
        announce_items = self.announces.snapshot().items
        frontend_items = self.frontends.snapshot().items
        announces, rejected = t.parse_announcements(announce_items.values(), self.layout)
        frontends, rejected_frontends = t.parse_frontends(frontend_items.values(), self.layout)
        self.metrics.records.labels("valid").set(len(announces))
        self.metrics.records.labels("invalid").set(len(rejected))
        for bad in (*rejected, *rejected_frontends):
            self.rejects.reject(bad.key, bad.mod_revision, bad.error)
        self.rejects.forget_missing((*announce_items, *frontend_items))
        try:
            placements = self.runtime.place(announces)
        except t.PlacementUnknown:
            return  # change nothing rather than drop every key; the runtime logs why
        desired = t.desired_keys(
            announces,
            placements,
            frontends,
            node=self.settings.node_name,
            layout=self.layout,
            dns=self.dns,
        )
        now = time.monotonic()
        for key in [k for k, retry_at in self.foreign.items() if retry_at <= now]:
            del self.foreign[key]
        for op in t.plan(desired, actual, lease_id):
            if op.key in self.foreign:
                continue
            self._apply(op, actual, lease_id)
        self._report(actual)

    def _report(self, actual: dict[str, KV]) -> None:
        """Registered instances per service path (a bounded label: never per instance)."""
        counts: dict[str, int] = {}
        prefix = self.layout.services
        for key in actual:
            if key.startswith(prefix + "/"):
                service = key[len(prefix) :].rpartition("/")[0]
                counts[service] = counts.get(service, 0) + 1
        for gone in self._reported_services - counts.keys():
            self.instances.remove(gone)
        for service, count in counts.items():
            self.instances.labels(service).set(count)
        self._reported_services = set(counts)
        self.keys_held.set(len(actual))

    def _apply(self, op: t.Op, actual: dict[str, KV], lease_id: int) -> None:
        if isinstance(op, t.Put):
            ok = self.session.put_if_lease(
                op.key, op.value, expect_lease=op.expect_lease, lease=lease_id
            )
            if ok:
                actual[op.key] = KV(op.key, op.value.encode(), 0, 0, lease_id)
                log.info("[register] put %s = %s", op.key, op.value, extra={"key": op.key})
        else:
            ok = self.session.delete_if_lease(op.key, expect_lease=op.expect_lease)
            if ok:
                actual.pop(op.key, None)
                log.info("[register] deleted %s", op.key, extra={"key": op.key})
        if not ok:
            current = self.session.get(op.key)
            if current is None or current.lease in (lease_id, op.expect_lease):
                self.actual = None  # our view was stale: list again
            else:
                log.warning(
                    "[register] %s is held by another node's lease %x; leaving it alone",
                    op.key,
                    current.lease,
                    extra={"key": op.key},
                )
                actual.pop(op.key, None)
                self.foreign[op.key] = time.monotonic() + self.settings.ttl

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
        backoff = Backoff(0.1, 2.0)
        while not self.stop.is_set():
            self.wake.clear()
            try:
                if self.actual is None:
                    self._resync()
                delay = self.lease.tick()
                actual, lease_id = self.actual, self.lease.lease_id
                synced = self.announces.synced and self.frontends.synced
                if actual is not None and lease_id is not None and synced:
                    self._reconcile(actual, lease_id)
                if backoff.failing:
                    log.info("[register] etcd reachable again")
                backoff.reset()
            except EtcdUnavailable as exc:
                if not backoff.failing:
                    log.warning("[register] etcd unavailable (%s); retrying with back-off", exc)
                self.metrics.etcd_errors.inc()
                delay = backoff.next()
            except Exception:
                log.exception("[register] unexpected error, please report it as a bug")
                delay = backoff.next()
            if self.actual is None:
                delay = min(delay, 0.1)
            self.wake.wait(delay)
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
