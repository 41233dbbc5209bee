"""The lb's loop: changes → plan → decide → act (SPEC §6).

Each cycle takes the keys the mirrors saw change, parses only those (``lb/catalog.py``),
plans only the backends they touch (``lb/plan.py``), lets :func:`lb.decide.decide` pick
one action — runtime commands, a reload, or a wait — and does it. The whole state is
derived again only at start, after a relist and at the periodic reconcile, which also
reads HAProxy back (``show servers state``) and repairs what drifted. An idle lb turns
only its timers.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path

from discovery.daemon import Stopper, Turn, run_loop
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.lease import LeaseKeeper
from discovery.opsconfig import (
    ConfigPath,
    Maintenance,
    ServiceConfig,
    effective_config,
    parse_config,
    parse_maintenance,
)
from discovery.records import FrontendRecord, InvalidRecord, ServicePath
from discovery.rejects import RejectLog
from discovery.watch import PrefixMirror
from lb import budget, haproxylog, procfs, state
from lb.catalog import Catalog
from lb.certwatch import CertPaths, CertReport, CertSync, CertWatch
from lb.decide import Decision, Gate, decide
from lb.desired import DEFAULT_SETTINGS, Problem, Service, backend_for_host, backend_name
from lb.files import HAProxyFiles, prepare_directory
from lb.guard import MassRemovalGuard
from lb.install import Candidate, Installer
from lb.metrics import PROBLEMS, LbMetrics
from lb.operator import Aliases, settings_from, with_pins
from lb.plan import Applied, Plan, for_reload, plan
from lb.process import Ensured, HAProxyError, HAProxyProcess, Identity, ReloadResult
from lb.render import render_config, render_map
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable
from lb.settings import LbSettings
from lb.status import write_status
from lb.templates_watch import TemplateWatch

log = logging.getLogger(__name__)

TEMPLATE = "haproxy.cfg.j2"
ALIVE_EVERY = 1.0  # is HAProxy there, and still the one we know?
DRAIN_POLL = 0.5  # sessions of draining servers
PORT_RETRY = 5.0  # is a port another process held free again?
FIRST_SYNC_WAIT = 5.0  # no config yet: wait this long for etcd before starting empty
MAP_VERSION_AFTER = 8  # Host changes in one plan that go in as one map version


class Controller:
    def __init__(
        self,
        settings: LbSettings,
        session: EtcdSession,
        haproxy: HAProxyProcess,
        metrics: LbMetrics,
        stop: Stopper,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.s = settings
        self.session = session
        self.haproxy = haproxy
        self.files = HAProxyFiles(settings.haproxy_dir, settings.haproxy_socket)
        self.installer = Installer(self.files, settings.haproxy_bin)
        self.runtime = RuntimeClient(settings.admin_socket)
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.wake = threading.Event()
        self.mirrors = [
            PrefixMirror(
                session.fork(),
                settings.layout.listen_key(p),
                on_change=self._changed,
                metrics=metrics,
                track_changes=True,
            )
            for p in settings.listen_path
        ]
        # What the operator said (SPEC §10): service settings and instance pins. They are
        # not needed to route, so the loop does not wait for them to be listed.
        self.ops = [
            PrefixMirror(
                session.fork(),
                prefix,
                on_change=self._changed,
                metrics=metrics,
                track_changes=True,
            )
            for prefix in (settings.layout.config, settings.layout.maintenance)
        ]
        self.configs: dict[ConfigPath, ServiceConfig] = {}
        self.pins: dict[ServicePath, dict[str, Maintenance]] = {}
        self.aliases = Aliases()
        self.catalog = Catalog(
            settings.layout,
            settings.listen_path,
            domain=settings.dns_domain,
            http=settings.http_enabled,
            tcp=settings.tcp_bind_addr is not None,
            reserved_ports=settings.reserved_ports,
        )
        self.guard = MassRemovalGuard(window=float(settings.ttl), grace=settings.mass_removal_grace)
        self.rejects = RejectLog(metrics)
        self.templates = TemplateWatch(settings.template_dir, self.wake)
        # TLS (HTTPS_BIND): the certificates HAProxy serves, kept equal to CERT_DIR.
        self.certs: CertSync | None = None
        self.certwatch: CertWatch | None = None
        if settings.https_bind is not None and settings.cert_dir is not None:
            self.certs = CertSync(CertPaths.in_haproxy_dir(settings.cert_dir, settings.haproxy_dir))
            self.certwatch = CertWatch(settings.cert_dir, self.wake)
        self.ctx = settings.render_context()
        self._init_state()
        self.frontend: LeaseKeeper | None = None
        if settings.http_enabled and settings.advertise_ip is not None:
            self.frontend = LeaseKeeper(
                session,
                settings.ttl,
                interval=settings.ttl / 3,
                write=self._write_frontend,
                metrics=metrics,
                name="frontend",
            )

    def _init_state(self) -> None:
        """What the loop remembers between cycles."""
        # What HAProxy runs, as far as the lb knows, and what it must still look at.
        self.applied = Applied()
        self.touched: set[str] = set()  # backends to plan in the next cycle
        self.full = False  # plan every backend next (start, relist, reconcile)
        self.pending: set[str] = set()  # backends waiting for a reload
        self.watch: dict[str, float] = {}  # backend -> when to look at it again
        self.forced: set[str] = set()  # reload reasons from outside the plan
        self.diverged = False  # a runtime command failed: HAProxy's state is unknown
        # The layout and reasons of a reload whose config was refused (``haproxy -c``, the
        # fd budget, the template): not tried again until one of them changes.
        self.refused: tuple[frozenset[str], frozenset[str]] | None = None
        self.planned: set[str] = set()
        self.bindings: dict[str, str] = {}  # environment -> the spare backend serving it
        self.pool_since: float | None = None  # since when a spare backend is in use
        # etcd revisions: the latest seen, the one this cycle works on, the one HAProxy
        # has acknowledged all changes up to, and the one last written to /frontends.
        self.seen_revision = 0
        self.cycle_revision = 0
        self.applied_revision = 0
        self.published_revision: int | None = None
        self.next_publish = 0.0
        self._ports: tuple[object, dict[int, str]] = (None, {})
        self.gate = Gate(self.s.reload_min_interval)
        self.excluded_ports: set[int] = set()
        self.problems: dict[str, tuple[Problem, ...]] = {}
        self.changed_at: float | None = None
        self.template_digest = ""
        self.identity: Identity | None = None  # the HAProxy the lb last looked at
        self.absent = False  # external: HAProxy did not answer at the last look
        self.expect_new_worker = False  # after a reload of ours
        self.budget = budget.Budget(None, self.s.maxconn or budget.MAXCONN_AUTO, {}, 0)
        now = self.clock()
        self.next_alive = now
        self.next_reconcile = now + self._jitter(self.s.reconcile_interval)
        self.next_port_retry = now + PORT_RETRY
        self.started_at = now

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        threads = [
            threading.Thread(
                target=m.run, args=(self.stop.event,), daemon=True, name=f"mirror{m.prefix}"
            )
            for m in (*self.mirrors, *self.ops)
        ]
        for thread in threads:
            thread.start()
        self.template_digest = self.templates.digest()
        self.templates.start()
        if self.certwatch is not None:
            self.certwatch.start()
        self._start()
        run_loop("lb", self.cycle, stop=self.stop, wake=self.wake, metrics=self.metrics)
        self.templates.stop()
        if self.certwatch is not None:
            self.certwatch.stop()
        self._shutdown()
        for thread in threads:
            thread.join(2)
        return 0

    def cycle(self) -> Turn:
        now = self.clock()
        self._tick_frontend()
        self._take_changes(now)
        if now >= self.next_alive:
            self._check_haproxy(now)
        self._check_template()
        self._check_certs()
        self._check_pool(now)
        if not all(m.synced for m in self.mirrors):
            return Turn(self._next(now), "waiting for the first list from etcd")
        if now >= self.next_reconcile:
            self._reconcile(now)
        if self.excluded_ports and now >= self.next_port_retry:
            self._retry_ports(now)
        names = self._due(now)
        if not names and not self.full and not self.forced:
            self._caught_up()
            self._publish(now)
            return Turn(self._next(now), "")
        p = self._plan(names, now)
        decision = decide(
            p,
            now=now,
            forced=self.forced,
            gate=self.gate,
            diverged=self.diverged,
            refused=self.refused == (p.layout, frozenset(self.forced)),
        )
        self._act(decision, p, now)
        self._publish(now)
        return Turn(min(self._next(now), max(0.01, decision.wait)), decision.account)

    # --- what changed ----------------------------------------------------------------------

    def _take_changes(self, now: float) -> None:
        """Apply what the mirrors saw to the catalog: only the keys they name."""
        for mirror in self.mirrors:
            changes = mirror.take_changes()
            if changes.relisted:
                prefix = mirror.prefix
                held = {k for k in self.catalog.held_keys() if k.startswith(prefix)}
                for key in held - set(changes.items):
                    self._put(key, None)
                self.full = True
            for key, kv in changes.items.items():
                self._put(key, kv)
            self.seen_revision = max(self.seen_revision, changes.revision)
        config_mirror, pin_mirror = self.ops
        configs = config_mirror.take_changes()
        if configs.relisted:
            self.configs = {}
            self.full = True
        for key, kv in configs.items.items():
            self._put_config(key, kv)
        pins = pin_mirror.take_changes()
        if pins.relisted:
            self.pins = {}
        for key, kv in pins.items.items():
            self._put_pin(key, kv)
        self.cycle_revision = self.seen_revision
        self.metrics.etcd_revision.set(self.seen_revision)
        valid, invalid = self.catalog.counts
        self.metrics.records.labels("valid").set(valid)
        self.metrics.records.labels("invalid").set(invalid)

    def _put_config(self, key: str, kv: KV | None) -> None:
        """A ``/config`` key changed: the backends it covers are planned again (a change
        of their shape is a reload, reason config_changed; of aliases, map entries)."""
        try:
            path = self.s.layout.split_config_key(key)
            parsed = parse_config(kv.value) if kv is not None else None
        except InvalidRecord as exc:
            if kv is not None:
                self.rejects.reject(key, kv.mod_revision, exc)
            return
        if parsed is None:
            self.configs.pop(path, None)
            self.rejects.forget(key)
        else:
            self.configs[path] = parsed.value
            error = parsed.error()
            if error is not None and kv is not None:
                self.rejects.reject(key, kv.mod_revision, error)
        self.touched |= {
            n for n in self.catalog.names() if (p := self.catalog.path_of(n)) and path.covers(p)
        }

    def _put_pin(self, key: str, kv: KV | None) -> None:
        """A ``/maintenance`` pin changed: the instance's backend is planned again; a pin
        for an instance that does not exist yet is kept and applies when it appears."""
        try:
            path, instance = self.s.layout.split_maintenance_key(key)
            parsed = parse_maintenance(kv.value) if kv is not None else None
        except InvalidRecord as exc:
            if kv is not None:
                self.rejects.reject(key, kv.mod_revision, exc)
            return
        pins = self.pins.setdefault(path, {})
        if parsed is None:
            pins.pop(instance, None)
            self.rejects.forget(key)
        else:
            pins[instance] = parsed.value
        if not pins:
            del self.pins[path]
        self.touched |= {backend_name(path, "http"), backend_name(path, "tcp")}

    def _operator(self, service: Service) -> tuple[Service, list[Problem], set[str]]:
        """``service`` as the operator configured it: its settings, its pinned
        instances, the aliases it gets; the problems; and the other services an alias
        change touches."""
        config = effective_config(self.configs, service.path) if self.configs else None
        settings = settings_from(config) if config is not None else DEFAULT_SETTINGS
        service = with_pins(replace(service, settings=settings), self.pins.get(service.path, {}))
        if service.mode != "http":
            return service, [], set()
        wanted = config.aliases if config is not None and config.aliases else ()
        touched = self.aliases.claim(service.name, wanted, service.created)
        granted, problems = self.aliases.granted(service, self._own_host)
        return replace(service, aliases=granted), problems, touched

    def _own_host(self, host: str) -> str | None:
        """The service whose own Host ``host`` is."""
        name = backend_for_host(host, self.s.dns_domain)
        return name if name is not None and name in self.catalog.names() else None

    def _put(self, key: str, kv: object) -> None:
        touched, rejected = self.catalog.put(key, kv)  # type: ignore[arg-type]
        if rejected is not None:
            self.rejects.reject(rejected.key, rejected.mod_revision, rejected.error)
        elif kv is None:
            self.rejects.forget(key)
        self.touched |= touched

    def _due(self, now: float) -> set[str]:
        """The backends to plan now: touched by a change, waiting for a reload, or whose
        timer (a drain, a GC delay, a held server) is due."""
        names = self.touched | self.pending
        names |= {name for name, at in self.watch.items() if at <= now}
        expiry = self.guard.next_expiry()
        if expiry is not None and expiry <= now:
            names |= self.guard.settle(now)
        self.touched = set()
        return names

    def _desired(self, names: set[str], now: float) -> dict[str, Service]:
        """The services ``names`` should be, with the mass-removal guard's held servers;
        ``names`` grows by the services whose held servers changed."""
        raw: dict[str, Service | None] = {}
        pending = list(names)
        while pending:
            name = pending.pop()
            service, problems = self.catalog.service(name, self._bound)
            if service is not None:
                service, more, touched = self._operator(service)
                problems = [*problems, *more]
                fresh = touched - names
                names |= fresh
                pending += fresh
            elif name in self.aliases.by_name:
                fresh = self.aliases.claim(name, (), 0) - names
                names |= fresh
                pending += fresh
            self._report_problems(name, tuple(problems))
            self.guard.record(name, service, now)
            raw[name] = service
        for name in self.guard.settle(now) - names:
            names.add(name)
            raw[name] = self.catalog.service(name, self._bound)[0]
        if self.guard.newly_held:
            log.warning(
                "[guard] %d servers vanished at once (an etcd freeze?); keeping them for "
                "up to %.0f s: %s",
                len(self.guard.newly_held),
                self.s.mass_removal_grace,
                " ".join(f"{b}/{i}" for b, i in self.guard.newly_held),
                extra={"reason": "mass_removal"},
            )
        self.metrics.held.set(self.guard.held_count)
        desired = {}
        for name, service in raw.items():
            kept = self.guard.apply(name, service)
            if kept is not None:
                desired[name] = kept
        return desired

    def _bound(self, port: int) -> str | None:
        """The listen that binds ``port`` in the running HAProxy (indexed once per
        layout: listens change only at reloads)."""
        backends = self.applied.backends
        if self._ports[0] is not backends:
            index = {b.port: b.name for b in backends.values() if b.mode == "tcp"}
            self._ports = (backends, index)
        return self._ports[1].get(port)

    # --- planning and acting -----------------------------------------------------------------

    def _plan(self, names: set[str], now: float) -> Plan:
        if self.full:
            names = self.catalog.names() | set(self.applied.backends)
        desired = self._desired(names, now)
        names |= set(desired)
        # A listen that binds a port another service now takes is planned too: two
        # listens never share a port (SPEC §9).
        for name, service in desired.items():
            holder = self._bound(service.port) if service.mode == "tcp" else None
            if holder is not None and holder != name and holder not in desired:
                names.add(holder)
        sessions = state.draining_sessions(self.applied, self.runtime, names)
        p = plan(
            desired,
            self.applied,
            now=now,
            timers=self.s.timers,
            map_path=self.s.map_path,
            sessions=sessions,
            names=None if self.full else names,
            dynamic_room=self._room(),
        )
        self.planned = set(names) if not self.full else set(desired) | set(self.applied.backends)
        return p

    def _room(self) -> int:
        return max(0, self.budget.room - self.applied.dynamic_count())

    def _act(self, decision: Decision, p: Plan, now: float) -> None:
        if decision.action == "reload":
            assert decision.target is not None
            self._reload(decision.target, decision.reasons, now, p.layout)
            return
        if decision.commands:
            assert decision.target is not None
            self._apply(decision.commands, decision.target, now)
        elif decision.action == "idle" and decision.target is not None:
            self._settled(decision.target, now)
        if decision.action == "wait":
            self.pending |= set(p.layout)

    def _apply(self, commands: tuple[str, ...], target: Applied, now: float) -> None:
        sent = time.perf_counter()
        try:
            self._send(commands, target)
        except (RuntimeCommandError, ValueError) as exc:
            self.metrics.runtime_commands.labels("failed").inc()
            log.error(
                "[runtime] %s; reloading the full desired state",
                exc,
                extra={"reason": "runtime_failed", **_subject(getattr(exc, "command", ""))},
            )
            self._diverge()
            return
        except RuntimeUnavailable as exc:
            # It may have failed part-way through a batch: HAProxy's state is unknown.
            log.warning("[runtime] admin socket unavailable (%s); reloading", exc)
            self._diverge()
            return
        self.metrics.runtime_seconds.observe(time.perf_counter() - sent)
        self.metrics.runtime_commands.labels("ok").inc(len(commands))
        for command in commands:
            log.info("[runtime] %s", command, extra=_subject(command))
        self._settled(target, now)

    def _send(self, commands: tuple[str, ...], target: Applied) -> None:
        """Send a plan's commands. Many Host changes at once (a burst of new environments)
        go in as one new version of the map (``prepare map``, ``add map @<v>`` of every
        entry, ``commit map``), so that they become visible together; a few go one by one
        (``add map``/``del map``)."""
        maps = [c for c in commands if c.split(" ", 2)[1:2] == ["map"]]
        if len(maps) < MAP_VERSION_AFTER:
            self.runtime.execute(list(commands))
            return
        self.runtime.execute([c for c in commands if c.split(" ", 2)[1:2] != ["map"]])
        path = self.s.map_path
        (reply,) = self.runtime.execute([f"prepare map {path}"])
        version = reply.output.rpartition(":")[2].strip()
        if not version.isdigit():
            raise RuntimeCommandError(f"prepare map {path}", reply.output, reason="no version")
        entries = sorted(target.hosts.items())
        self.runtime.execute(
            [f"add map @{version} {path} {host} {backend}" for host, backend in entries]
            + [f"commit map @{version} {path}"]
        )
        log.info(
            "[runtime] map version %s committed: %d entries, %d changed",
            version,
            len(entries),
            len(maps),
        )

    def _diverge(self) -> None:
        self.diverged = True
        self.forced.add("runtime_failed")
        self.full = True
        self.wake.set()

    def _settled(self, target: Applied, now: float) -> None:
        """HAProxy runs ``target``: remember it, and when to look at what still moves."""
        names = self.planned
        self.applied = target
        if self.full:
            # After a full derivation most objects live long: keep them out of the cyclic
            # GC's scans (10,000 records are ~100,000 objects; a full scan is tens of ms,
            # which showed as p99 spikes of single changes).
            gc.freeze()
        self.full = False
        for name in names:
            self._watch_backend(name, now)
        self._caught_up()
        self._converged()
        self._report(names)

    def _watch_backend(self, name: str, now: float) -> None:
        table = self.applied.slots.get(name)
        at = math.inf
        if table is not None:
            if any(s.state == "drain" or (s.dynamic and s.free) for s in table):
                at = now + DRAIN_POLL
            since = self.applied.empty_since.get(name)
            if since is not None:
                at = min(at, since + self.s.backend_gc_after)
        if at == math.inf:
            self.watch.pop(name, None)
        else:
            self.watch[name] = at

    # --- reloads ---------------------------------------------------------------------------

    def _reload(
        self, target: Applied, reasons: tuple[str, ...], now: float, layout: frozenset[str]
    ) -> None:
        """Fit the fd budget, render, check, install, reload (``lb/install.py``)."""
        self.pending |= layout
        reason = reasons[0]
        clock = time.perf_counter
        marks = [clock()]
        target = for_reload(target, self.s.slots, spare=self.s.timers.spare_backends)
        fitted = self._fit(target)
        if fitted is None:
            self._refuse(reasons, "over the fd budget: " + self.budget.account(), now)
            return
        target = fitted
        try:
            template = (Path(self.s.template_dir) / TEMPLATE).read_text()
            text = self._render(template, target)
        except Exception as exc:  # a template error is the operator's, and is reported
            self._refuse(reasons, f"template {TEMPLATE} does not render: {exc}", now)
            return
        candidate = Candidate(text, render_map(target), state.layout_text(target, self.budget))
        marks.append(clock())
        check = self.installer.check(candidate)
        marks.append(clock())
        if not check.ok:
            self.metrics.config_check_failures.inc()
            self._refuse(reasons, f"config check failed: {check.message.strip()}", now)
            return
        installed = self.installer.commit(candidate)
        result = self.haproxy.reload()
        marks.append(clock())
        if result.ok:
            self.installer.settle()
            self._reloaded(target, reasons, now, result)
            log.info(
                "[reload] took %.0f ms: render %.0f, haproxy -c %.0f, install and reload %.0f",
                *(
                    (marks[-1] - marks[0]) * 1000,
                    *((b - a) * 1000 for a, b in itertools.pairwise(marks)),
                ),
            )
            return
        self.metrics.reloads.labels(reason, "failed").inc()
        if result.unknown:
            # It may have loaded: look again soon instead of rolling back blindly.
            log.error("[reload] outcome unknown (%s): %s", reason, result.detail)
            self.next_reconcile = now
            self.gate = self.gate.failed(now)
        else:
            self.installer.rollback(installed)
            if self.certs is not None:
                self.certs.reload_failed()
            self._blame(target, result, now)
        write_status(self.files.status, reasons, result.ok, result.detail, result.alerts)
        self.metrics.reload_retry.set(max(0.0, self.gate.retry_at - now))
        self.wake.set()

    def _fit(self, target: Applied) -> Applied | None:
        limit = self._fd_limit()
        live = {n: sum(1 for s in t if s.state == "ready") for n, t in target.slots.items()}
        wanted = {n: len(t) for n, t in target.slots.items()}
        binds = len(self.ctx.binds()) + sum(1 for b in target.backends.values() if b.mode == "tcp")
        fitted = budget.fit(live, wanted, limit=limit, maxconn=self.s.maxconn, binds=binds)
        self.budget = fitted
        self.metrics.fd.labels("limit").set(limit or 0)
        self.metrics.fd.labels("need").set(fitted.need)
        self.metrics.over_budget.set(0 if fitted.fits else 1)
        self.metrics.budget_cut.labels("spare_slots").set(fitted.spare_cut)
        self.metrics.budget_cut.labels("maxconn").set(fitted.maxconn_cut)
        if not fitted.fits:
            return None
        if fitted.spare_cut or fitted.maxconn_cut:
            log.warning("[reload] %s", fitted.account(), extra={"reason": "fd_budget"})
        slots = {
            n: t[: fitted.slots[n]] if len(t) > fitted.slots[n] else t
            for n, t in target.slots.items()
        }
        backends = {n: replace(b, slots=len(slots[n])) for n, b in target.backends.items()}
        return Applied(backends, slots, target.hosts, target.empty_since)

    def _fd_limit(self) -> int | None:
        """The hard open-file limit HAProxy runs with: its own when it is visible, else
        ours (the lb starts it, so it inherits ours)."""
        pid = self.haproxy.identity()
        if isinstance(pid, tuple) and pid and isinstance(pid[0], int) and pid[0] > 0:
            limit = procfs.hard_nofile_limit(pid[0])
            if limit is not None:
                return limit
        return procfs.hard_nofile_limit()

    def _reloaded(
        self, target: Applied, reasons: tuple[str, ...], now: float, result: ReloadResult
    ) -> None:
        changed = sorted(
            name
            for name in set(target.backends) | set(self.applied.backends)
            if target.backends.get(name) != self.applied.backends.get(name)
        )
        self.gate = self.gate.reloaded(now)
        if self.certs is not None:
            self.certs.reloaded()
        self.forced.clear()
        self.diverged = False
        self.refused = None
        self.pending.clear()
        self.expect_new_worker = True
        self.planned = set(target.backends) | set(self.watch) | set(self.bindings)
        self._settled(target, now)
        for reason in reasons:
            self.metrics.reloads.labels(reason, "ok").inc()
        self.metrics.last_reload.set(time.time())
        self.metrics.maxconn.set(self.budget.maxconn)
        self.metrics.reload_retry.set(0)
        self.metrics.dynamic_servers.set(0)
        write_status(self.files.status, reasons, True, result.detail, ())
        log.info(
            "[reload] reloaded (%s): %s",
            ", ".join(reasons),
            " ".join(changed) or "-",
            extra={"reason": reasons[0], "backends": changed},
        )

    def _refuse(self, reasons: tuple[str, ...], why: str, now: float) -> None:
        """The config cannot be installed: the running one stays; not tried again until
        the layout, the reasons or the template change. A HAProxy that diverged from what
        the lb believes (a failed runtime command) is read back instead, so that runtime
        changes go on."""
        self.metrics.reloads.labels(reasons[0], "failed").inc()
        log.error("[reload] %s (%s); the running config stays", why, ", ".join(reasons))
        if self.certs is not None:
            self.certs.reload_failed()
        write_status(self.files.status, reasons, False, why, ())
        self.gate = self.gate.attributed(now)
        if self.diverged and self._read_back(adopting=False):
            self.diverged = False
            self.forced.discard("runtime_failed")
        self.refused = (frozenset(self.pending), frozenset(self.forced))

    def _blame(self, target: Applied, result: ReloadResult, now: float) -> None:
        """HAProxy rejected a config that passed ``haproxy -c``: leave out the part at
        fault (a listen HAProxy names, a TCP port it could not bind), or back off."""
        named = haproxylog.proxies_named(list(result.alerts)) & set(target.backends)
        ports = {target.backends[n].port for n in named if target.backends[n].mode == "tcp"}
        for backend in target.backends.values():
            old = self.applied.backends.get(backend.name)
            new_port = backend.mode == "tcp" and (old is None or old.port != backend.port)
            if new_port and not _bindable(self.s.tcp_bind_addr or "127.0.0.1", backend.port):
                ports.add(backend.port)
        ports -= self.excluded_ports
        if not ports:
            self.gate = self.gate.failed(now)
            log.error(
                "[reload] HAProxy rejected the reload and nothing could be blamed; "
                "trying again in %.0f s: %s",
                self.gate.retry_at - now,
                result.detail,
            )
            return
        for port in sorted(ports):
            log.error(
                "[reload] TCP port %d cannot be bound (held by another process, or not "
                "allowed); leaving its listen out",
                port,
                extra={"reason": "port_in_use"},
            )
        self.excluded_ports |= ports
        self.touched |= self.catalog.exclude_ports(frozenset(self.excluded_ports))
        self.gate = self.gate.attributed(now)

    # --- HAProxy: start, adopt, restart, reconcile -------------------------------------------

    def _start(self) -> None:
        prepare_directory(self.s.haproxy_dir)
        staged = self.certs.prepare() if self.certs is not None else None
        if staged is not None:
            self._certs_said(staged)
        if self.haproxy.adopt():
            self._read_back(adopting=True)
            if staged is not None and staged.reload is not None:
                self.forced.add(staged.reload)  # the files changed since it loaded them
            return
        if not Path(self.files.cfg).exists():
            self._first_config()
        try:
            if self.haproxy.ensure_running() is Ensured.STARTED:
                log.info("[lb] HAProxy started from %s", self.files.cfg)
        except HAProxyError as exc:
            log.error("[lb] HAProxy failed to start: %s", exc)
            return
        self._read_back(adopting=True)

    def _first_config(self) -> None:
        """No config on disk yet: wait a moment for etcd, then install what it says (or
        an empty config, to be reloaded once etcd answers)."""
        deadline = self.clock() + FIRST_SYNC_WAIT
        while not all(m.synced for m in self.mirrors) and self.clock() < deadline:
            if self.stop.wait(0.05):
                return
        if all(m.synced for m in self.mirrors):
            self._take_changes(self.clock())
        desired = self.catalog.desired(self._bound)
        target = for_reload(
            plan(desired, Applied(), now=self.clock(), timers=self.s.timers, map_path="").target,
            self.s.slots,
            spare=self.s.timers.spare_backends,
        )
        fitted = self._fit(target) or Applied()
        template = (Path(self.s.template_dir) / TEMPLATE).read_text()
        text = self._render(template, fitted)
        candidate = Candidate(text, render_map(fitted), state.layout_text(fitted, self.budget))
        check = self.installer.check(candidate)
        if not check.ok:
            log.error("[lb] the first config fails its check: %s", check.message)
            fitted = Applied()
            text = self._render(template, fitted)
            candidate = Candidate(text, "", state.layout_text(fitted))
        self.installer.commit(candidate)
        self.installer.settle()

    def _read_back(self, *, adopting: bool) -> bool:
        """Read what HAProxy runs; plan everything against it. ``False`` when the socket
        cannot tell."""
        try:
            running = state.read_applied(
                self.files.layout,
                self.runtime,
                self.s.adopt_map_path,
                self.clock(),
                known=None if adopting else self.applied,
                domain=self.s.dns_domain,
            )
        except (RuntimeUnavailable, RuntimeCommandError) as exc:
            log.warning("[lb] cannot read the running HAProxy back (%s)", exc)
            return False
        self.identity = self.haproxy.identity()
        self.budget = state.load_budget(self.files.layout) or self.budget
        if running is None:
            log.info("[lb] the running HAProxy does not match its layout file; reloading")
            self.applied = Applied()
        else:
            if adopting:
                log.info("[lb] adopted the running HAProxy (%d backends)", len(running.backends))
            self.applied = running
        self.full = True
        return True

    def _check_haproxy(self, now: float) -> None:
        """Restart a HAProxy that died (from the last good config) and notice one that an
        outside supervisor restarted or someone else reloaded; either way, apply the
        state again."""
        self.next_alive = now + ALIVE_EVERY
        try:
            ensured = self.haproxy.ensure_running()
        except HAProxyError as exc:
            self.metrics.reloads.labels("haproxy_restarted", "failed").inc()
            log.error("[lb] HAProxy is gone and does not start again: %s", exc)
            return
        if ensured is Ensured.ABSENT:
            if not self.absent:
                log.warning("[lb] HAProxy does not answer on %s", self.files.admin_socket)
                self.absent = True
            return
        current = self.haproxy.identity()
        why = self._restarted(ensured, current)
        self.absent = False
        self.identity = current
        if ensured is Ensured.STARTED and self.certs is not None:
            self.certs.reloaded()  # it started from the staged files
        if why:
            log.error(
                "[lb] HAProxy was restarted (%s); applying the state again",
                why,
                extra={"reason": "haproxy_restarted"},
            )
            self.metrics.reloads.labels("haproxy_restarted", "ok").inc()
            self._read_back(adopting=True)

    def _restarted(self, ensured: Ensured, current: Identity | None) -> str:
        """Why the HAProxy that serves now has lost the runtime state ("": it has not)."""
        before = self.identity
        why = ""
        if ensured is Ensured.STARTED:
            why = "by the lb, from the last good config"
        elif self.absent:
            why = "it answers again after it did not"
        elif before is None or current is None:
            why = ""
        elif current.master != before.master:
            why = "by someone else: a new master"
        elif current.worker != before.worker and not self.expect_new_worker:
            why = "someone else reloaded it: a new worker"
        if before is not None and current is not None and current.worker != before.worker:
            self.expect_new_worker = False
        return why

    def _reconcile(self, now: float) -> None:
        """Derive everything again and read HAProxy back; repair what drifted."""
        self.next_reconcile = now + self._jitter(self.s.reconcile_interval)
        for mirror in self.mirrors:
            snapshot = mirror.snapshot()
            held = {k for k in self.catalog.held_keys() if k.startswith(mirror.prefix)}
            for key in held - set(snapshot.items):
                self._put(key, None)
            for key, kv in snapshot.items.items():
                self._put(key, kv)
        try:
            running = state.read_applied(
                self.files.layout,
                self.runtime,
                self.s.adopt_map_path,
                now,
                known=self.applied,
                domain=self.s.dns_domain,
            )
        except (RuntimeUnavailable, RuntimeCommandError) as exc:
            log.warning("[reconcile] cannot read HAProxy back: %s", exc)
            return
        if running is None:
            log.error("[reconcile] HAProxy does not run the installed layout; reloading")
            self.forced.add("reconcile")
            self.applied = Applied(slots={}, hosts=self.applied.hosts)
            self.full = True
            self.metrics.reconciles.labels("repaired").inc()
            return
        # Every backend is planned again: a change the loop missed cannot stay missed
        # beyond one RECONCILE_INTERVAL; the certificate directory is looked at too.
        self.full = True
        self._check_certs(always=True)
        drifted = state.drift(self.applied, running)
        if drifted:
            log.warning(
                "[reconcile] HAProxy differs from what the lb applied in %d backends (%s); "
                "repairing",
                len(drifted),
                " ".join(drifted[:10]),
            )
            self.applied = running
            self.full = True
            self.metrics.reconciles.labels("repaired").inc()
        else:
            self.metrics.reconciles.labels("clean").inc()

    def _retry_ports(self, now: float) -> None:
        self.next_port_retry = now + PORT_RETRY
        free = {p for p in self.excluded_ports if _bindable(self.s.tcp_bind_addr or "", p)}
        if free:
            self.excluded_ports -= free
            self.touched |= self.catalog.exclude_ports(frozenset(self.excluded_ports))

    def _check_template(self) -> None:
        """A template edited on disk (watchdog woke us) is rendered, checked and reloaded;
        one that fails the check is refused and the running config stays."""
        if not self.templates.take():
            return
        digest = self.templates.digest()
        if digest and digest != self.template_digest:
            log.info("[reload] template %s changed", TEMPLATE, extra={"reason": "template_changed"})
            self.forced.add("template_changed")
            self.refused = None
            self.template_digest = digest

    def _render(self, template: str, target: Applied) -> str:
        tls = self.certs is not None and self.certs.has_certs
        return render_config(
            template, target, self.ctx, TEMPLATE, maxconn=self.budget.maxconn, tls=tls
        )

    def _check_certs(self, *, always: bool = False) -> None:
        """A certificate added, changed or removed in CERT_DIR (the watch woke us, or the
        periodic reconcile) is applied through the runtime API; what cannot be is staged
        for a reload (reason config_changed)."""
        if self.certs is None or self.certwatch is None:
            return
        if not self.certwatch.take() and not always:
            return
        report = self.certs.sync(self.runtime)
        self._certs_said(report)
        if report.reload is not None:
            self.forced.add(report.reload)

    def _certs_said(self, report: CertReport) -> None:
        log.info("[tls] %s", report.sentence)
        for refused in report.refused:
            log.error("[tls] %s", refused, extra={"reason": "certificate_refused"})
        for warning in report.warnings:
            log.warning("[tls] %s", warning)
        self.metrics.certificates.labels("refused").set(len(report.refused))
        if self.certs is not None:
            self.metrics.certificates.labels("served").set(self.certs.serving)

    def _shutdown(self) -> None:
        if self.frontend is not None:
            with contextlib.suppress(EtcdUnavailable):
                self.frontend.revoke()
        if self.haproxy.shutdown():
            self._persist()

    def _persist(self) -> None:
        """HAProxy was stopped: write what it ran into its files (checked, not reloaded),
        so that a HAProxy started from them while etcd is down serves what this one
        served, runtime changes and spare-backend environments included."""
        if not self.applied.backends:
            return
        target = self._fit(
            for_reload(self.applied, self.s.slots, spare=self.s.timers.spare_backends)
        )
        if target is None:
            return
        try:
            template = (Path(self.s.template_dir) / TEMPLATE).read_text()
            text = self._render(template, target)
        except Exception:  # a broken template: the files of the last good config stay
            log.exception("[lb] cannot render the running state into the files")
            return
        candidate = Candidate(text, render_map(target), state.layout_text(target, self.budget))
        if self.installer.check(candidate).ok:
            self.installer.commit(candidate)
            self.installer.settle()
            log.info("[lb] wrote the running state into %s for the next start", self.files.cfg)

    # --- timers, /frontends and metrics --------------------------------------------------------

    def _next(self, now: float) -> float:
        """Seconds until the next timer of any kind."""
        times = [self.next_alive, self.next_reconcile, *self.watch.values()]
        if self.pool_since is not None and "pool_refill" not in self.forced:
            times.append(self.pool_since + self.s.pool_refill_after)
        expiry = self.guard.next_expiry()
        if expiry is not None:
            times.append(expiry)
        if self.excluded_ports:
            times.append(self.next_port_retry)
        if self.frontend is not None:
            times.append(now + self.s.ttl / 3)
            if self.applied_revision != (self.published_revision or 0):
                times.append(self.next_publish)
        return max(0.01, min(times) - now)

    def _jitter(self, interval: float) -> float:
        return interval * (0.8 + 0.4 * self.rng.random())

    def _write_frontend(self, lease_id: int) -> None:
        assert self.s.advertise_ip is not None
        revision = self.applied_revision or None
        record = FrontendRecord(
            self.s.lb_id, self.s.advertise_ip, self.s.frontend_port, self.s.listen_path, revision
        )
        self.session.put(self.s.layout.frontend_key(self.s.lb_id), record.to_json(), lease=lease_id)
        self.published_revision = revision

    def _caught_up(self) -> None:
        """HAProxy runs every change up to this cycle's revision, unless a reload is
        still due (then the lb is behind, and says so)."""
        if not self.pending and not self.forced and self.cycle_revision > self.applied_revision:
            self.applied_revision = self.cycle_revision
            self.metrics.applied_revision.set(self.applied_revision)

    def _publish(self, now: float) -> None:
        """``REVISION`` in ``/frontends/<LB_ID>``, at most once a second (SPEC §7)."""
        keeper = self.frontend
        if keeper is None or keeper.lease_id is None or not keeper.written:
            return
        if self.applied_revision == (self.published_revision or 0) or now < self.next_publish:
            return
        self.next_publish = now + 1.0
        try:
            self._write_frontend(keeper.lease_id)
        except EtcdUnavailable as exc:
            log.debug("[lb] could not publish revision %d: %s", self.applied_revision, exc)

    def _tick_frontend(self) -> None:
        if self.frontend is None:
            return
        try:
            self.frontend.tick()
        except EtcdUnavailable as exc:
            log.debug("[lb] frontend lease: %s", exc)

    def _changed(self) -> None:
        if self.changed_at is None:
            self.changed_at = self.clock()
        self.wake.set()

    def _converged(self) -> None:
        if self.changed_at is not None:
            self.metrics.convergence.observe(max(0.0, self.clock() - self.changed_at))
            self.changed_at = None

    def _report_problems(self, name: str, problems: tuple[Problem, ...]) -> None:
        """Log a backend's problems when they change (a problem that goes and comes back
        is logged again), and keep the per-kind gauge."""
        before = self.problems.get(name, ())
        if problems == before:
            return
        for problem in problems:
            if problem not in before:
                log.warning(
                    "[lb] %s %s: %s",
                    problem.kind,
                    problem.key,
                    problem.detail,
                    extra={"key": problem.key, "reason": problem.kind},
                )
        if problems:
            self.problems[name] = problems
        else:
            self.problems.pop(name, None)
        kinds = [p.kind for found in self.problems.values() for p in found]
        for kind in PROBLEMS:
            self.metrics.problems.labels(kind).set(kinds.count(kind))

    def _report(self, names: Collection[str]) -> None:
        for name in names:
            table = self.applied.slots.get(name)
            if table is None:
                with contextlib.suppress(KeyError):
                    self.metrics.slots.remove(name, "used")
                    self.metrics.slots.remove(name, "free")
                continue
            used = sum(1 for s in table if s.live)
            self.metrics.slots.labels(name, "used").set(used)
            self.metrics.slots.labels(name, "free").set(sum(1 for s in table if s.free))
        drains = sum(
            1 for name in self.watch for s in self.applied.slots.get(name, ()) if s.state == "drain"
        )
        self.metrics.drains.set(drains)
        self.metrics.dynamic_servers.set(self.applied.dynamic_count())
        self._report_pool(names)

    def _report_pool(self, names: Collection[str]) -> None:
        """Which environment each spare backend serves (so HAProxy's per-backend metrics
        can be read under the environment's name), and since when the pool is in use."""
        for name in names:
            backend = self.applied.backends.get(name)
            proxy = backend.proxy if backend is not None else ""
            before = self.bindings.get(name)
            if before is not None and before != proxy:
                with contextlib.suppress(KeyError):
                    self.metrics.pool_binding.remove(before, name)
                del self.bindings[name]
            if proxy and before != proxy:
                self.bindings[name] = proxy
                self.metrics.pool_binding.labels(proxy, name).set(1)
                log.info("[pool] %s serves %s", proxy, name, extra={"backend": name})
        spare = self.s.timers.spare_backends
        self.metrics.pool.labels("bound").set(len(self.bindings))
        self.metrics.pool.labels("free").set(max(0, spare - len(self.bindings)))
        if self.bindings and self.pool_since is None:
            self.pool_since = self.clock()
        elif not self.bindings:
            self.pool_since = None

    def _check_pool(self, now: float) -> None:
        """A spare backend in use for POOL_REFILL_AFTER: a reload gives the bound
        environments their own backends and fills the pool again (coalesced)."""
        if self.pool_since is not None and now - self.pool_since >= self.s.pool_refill_after:
            self.forced.add("pool_refill")

    def readiness(self) -> tuple[bool, str]:
        """``/readyz`` (SPEC §7): every mirror listed and watching, HAProxy running, and
        converged: no reload due, for a change or a failed runtime command. Read from the
        HTTP server's thread: it only reads."""
        for mirror in self.mirrors:
            if not mirror.synced:
                return False, f"not synced: {mirror.prefix} is not listed yet"
            if not mirror.connected:
                return False, f"not connected to etcd: the watch of {mirror.prefix} is down"
        if not self.haproxy.alive():
            return False, "HAProxy is not running"
        due = sorted(self.forced)
        if self.diverged:
            due.append("a runtime command failed")
        if self.pending:
            due.append(f"{len(self.pending)} backend(s) changed")
        if due:
            return False, f"not converged: a reload is due ({', '.join(due)})"
        return True, "synced with etcd, HAProxy running and converged"


def _subject(command: str) -> dict[str, str]:
    """The backend and server a runtime command is about, for structured logs."""
    words = command.split()
    if words[:2] in (["set", "server"], ["add", "server"], ["del", "server"]) and len(words) > 2:
        backend, _, server = words[2].partition("/")
        return {"backend": backend, "server": server, "command": command}
    if len(words) > 3 and words[1] == "map":
        return {"backend": words[-1], "command": command}
    return {"command": command} if command else {}


def _bindable(host: str, port: int) -> bool:
    """Whether this process could bind ``port``: not held by another process, and
    allowed (a port below 1024 needs privileges)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "127.0.0.1", port))
        except OSError as exc:
            return exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EPERM)
    return True
