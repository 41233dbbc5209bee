"""The lb's loop: snapshot → desired → plan → apply (SPEC §6).

Mirrors of the listened prefixes wake the loop; each cycle derives the desired state from
their snapshots, plans against what HAProxy runs, and applies the plan: runtime commands
on the admin socket (the normal case), or a checked, coalesced reload (a layout change).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from discovery.daemon import Stopper
from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.lease import LeaseKeeper
from discovery.records import FrontendRecord
from discovery.rejects import RejectLog
from discovery.watch import PrefixMirror
from lb import process, state
from lb.desired import Desired, from_snapshot
from lb.guard import MassRemovalGuard
from lb.metrics import LbMetrics
from lb.plan import Applied, plan
from lb.reload import ReloadGate
from lb.render import render_config, render_map
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable
from lb.settings import LbSettings
from lb.templates_watch import TemplateWatch

log = logging.getLogger(__name__)

TEMPLATE = "haproxy.cfg.j2"
IDLE_CYCLE = 0.5


class Controller:
    def __init__(
        self,
        settings: LbSettings,
        session: EtcdSession,
        haproxy: process.SpawnedHAProxy | process.ExternalHAProxy,
        metrics: LbMetrics,
        stop: Stopper,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.session = session
        self.haproxy = haproxy
        self.runtime = RuntimeClient(settings.admin_socket)
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        self.wake = threading.Event()
        stop.link(self.wake)
        self.mirrors = [
            PrefixMirror(
                session.fork(),
                settings.layout.listen_key(p),
                on_change=self._changed,
                metrics=metrics,
            )
            for p in settings.listen_path
        ]
        self.gate = ReloadGate(settings.reload_min_interval)
        self.guard = MassRemovalGuard(window=float(settings.ttl), grace=settings.mass_removal_grace)
        self.timers = settings.timers
        self.rejects = RejectLog(metrics)
        self.ctx = settings.render_context()
        self.applied = Applied()
        self.changed_at: float | None = None
        self.force_reload: str | None = None
        self.excluded_ports: set[int] = set()
        self.failed_config: str | None = None
        self.template_digest = ""
        self.templates = TemplateWatch(settings.template_dir, self.wake)
        self._reported: dict[str, str] = {}
        self._derived: tuple[object, Desired] | None = None
        self.frontend: LeaseKeeper | None = None
        if settings.http_bind is not None and settings.advertise_ip is not None:
            self.frontend = LeaseKeeper(
                session,
                settings.ttl,
                interval=settings.ttl / 3,
                write=self._write_frontend,
                metrics=metrics,
                name="frontend",
            )

    # --- the loop ---------------------------------------------------------------

    def run(self) -> int:
        threads = [
            threading.Thread(
                target=m.run, args=(self.stop.event,), daemon=True, name=f"mirror{m.prefix}"
            )
            for m in self.mirrors
        ]
        for thread in threads:
            thread.start()
        self.template_digest = self._digest()
        self.templates.start()
        self._start()
        while not self.stop.is_set():
            try:
                timeout = self.cycle()
            except Exception:
                log.exception("[lb] unexpected error, please report it as a bug")
                timeout = 1.0
            self.wake.wait(timeout)
            self.wake.clear()
        self.templates.stop()
        self._shutdown()
        for thread in threads:
            thread.join(2)
        return 0

    def cycle(self) -> float:
        now = self.clock()
        self._tick_frontend()
        if not self.haproxy.alive():
            self._restart_haproxy()
            return IDLE_CYCLE
        self._check_template()
        if not all(m.synced for m in self.mirrors):
            return IDLE_CYCLE
        desired = self.guard.filter(self._desired(), now)
        self.metrics.held.set(self.guard.held_count)
        if self.guard.newly_held:
            log.warning(
                "[guard] %d servers vanished at once (an etcd freeze?); keeping them for "
                "up to %.0f s: %s",
                len(self.guard.newly_held),
                self.s.mass_removal_grace,
                " ".join(f"{b}/{i}" for b, i in self.guard.newly_held),
                extra={"reason": "mass_removal"},
            )
        p = plan(
            desired,
            self.applied,
            now=now,
            timers=self.timers,
            map_path=self.s.map_path,
            sessions=state.draining_sessions(self.applied, self.runtime),
        )
        reason = p.reload or self.force_reload
        if reason is not None:
            self.gate.request(reason)
            wait = self.gate.wait(now)
            if wait <= 0:
                reasons = self.gate.take(now)
                if self._reload(p.target, reasons[0], reasons):
                    self.force_reload = None
                    self._converged()
                    self._report()
                    return IDLE_CYCLE
                if self.force_reload == "template_changed":
                    # The edited template is refused; the running config stays, and so
                    # does the lb's: the next edit is looked at again.
                    self.force_reload = None
            # The reload waits or failed: changes of the running backends go on (unless
            # HAProxy diverged from what we believe it runs: then only a reload helps).
            diverged = self.force_reload == "runtime_failed"
            if p.interim and p.interim_target is not None and not diverged:
                self._apply(p.interim, p.interim_target)
            self._report()
            return min(max(wait, 0.05), IDLE_CYCLE)
        if p.commands:
            self._apply(p.commands, p.target)
        else:
            self.applied = p.target
            self._converged()
        self._report()
        return IDLE_CYCLE

    # --- desired state ---------------------------------------------------------------

    def _desired(self) -> Desired:
        """Desired state from the mirrors' snapshots; derived again only when a snapshot
        moved on (the idle cycle would otherwise parse every record twice a second)."""
        snapshots = [m.snapshot() for m in self.mirrors]
        self._retry_excluded_ports()
        key = (tuple(snap.revision for snap in snapshots), frozenset(self.excluded_ports))
        if self._derived is not None and self._derived[0] == key:
            return self._derived[1]
        items: dict[str, KV] = {}
        for snap in snapshots:
            items.update(snap.items)
        desired, rejected = from_snapshot(
            items.values(),
            self.s.layout,
            self.s.listen_path,
            domain=self.s.dns_domain,
            http=self.s.http_bind is not None,
            tcp=self.s.tcp_bind_addr is not None,
            excluded_ports=frozenset(self.excluded_ports),
        )
        for bad in rejected:
            self.rejects.reject(bad.key, bad.mod_revision, bad.error)
        self.rejects.forget_missing(items)
        self.metrics.records.labels("valid").set(len(items) - len(rejected))
        self.metrics.records.labels("invalid").set(len(rejected))
        for problem in desired.problems:
            if self._reported.get(problem.key) != problem.detail:
                self._reported[problem.key] = problem.detail
                log.warning(
                    "[lb] %s %s: %s",
                    problem.kind,
                    problem.key,
                    problem.detail,
                    extra={"key": problem.key, "reason": problem.kind},
                )
        kinds = [p.kind for p in desired.problems]
        for kind in ("port_clash", "port_mismatch"):
            self.metrics.problems.labels(kind).set(kinds.count(kind))
        self._derived = (key, desired)
        return desired

    # --- applying ------------------------------------------------------------------------

    def _apply(self, commands: tuple[str, ...], target: Applied) -> None:
        try:
            self.runtime.execute(list(commands))
        except (RuntimeCommandError, ValueError) as exc:
            self.metrics.runtime_commands.labels("failed").inc()
            log.error(
                "[runtime] %s; reloading the full desired state",
                exc,
                extra={"reason": "runtime_failed", **_subject(getattr(exc, "command", ""))},
            )
            self.force_reload = "runtime_failed"
            self.wake.set()
            return
        except RuntimeUnavailable as exc:
            # It may have failed part-way through a batch: HAProxy's state is unknown.
            log.warning("[runtime] admin socket unavailable (%s); reloading", exc)
            self.force_reload = "runtime_failed"
            return
        self.metrics.runtime_commands.labels("ok").inc(len(commands))
        for command in commands:
            log.info("[runtime] %s", command, extra=_subject(command))
        self.applied = target
        self._converged()

    def _converged(self) -> None:
        if self.changed_at is not None:
            self.metrics.convergence.observe(max(0.0, self.clock() - self.changed_at))
            self.changed_at = None

    def _reload(self, target: Applied, reason: str, reasons: list[str]) -> bool:
        """Render, check, install and reload; ``False`` leaves the running config alone."""
        text = render_config(self._template(), target, self.ctx, TEMPLATE)
        if text == self.failed_config:
            return False  # the same config failed its check already
        cfg, map_path = Path(self.s.cfg_path), Path(self.s.map_path)
        staged_cfg, staged_map = (
            cfg.with_name(cfg.name + ".new"),
            map_path.with_name(map_path.name + ".new"),
        )
        staged_cfg.write_text(text)
        staged_map.write_text(render_map(target))
        if not map_path.exists():  # `haproxy -c` opens the map the config names
            map_path.write_text("")
        check = process.check_config(self.s.haproxy_bin, str(staged_cfg))
        if not check.ok:
            self.failed_config = text
            self.metrics.config_check_failures.inc()
            self.metrics.reloads.labels(reason, "failed").inc()
            log.error(
                "[reload] config check failed (%s); the running config stays: %s",
                reason,
                check.message.strip(),
                extra={"reason": reason},
            )
            return False
        previous = cfg.read_text() if cfg.exists() else None
        os.replace(staged_map, map_path)
        os.replace(staged_cfg, cfg)
        result = self.haproxy.reload()
        if not result.ok:
            self.metrics.reloads.labels(reason, "failed").inc()
            log.error(
                "[reload] HAProxy refused the reload (%s): %s",
                reason,
                result.detail,
                extra={"reason": reason},
            )
            if previous is not None:
                cfg.write_text(previous)
            self._exclude_unbindable(target)
            self.wake.set()
            return False
        self.failed_config = None
        changed = sorted(
            name
            for name in set(target.backends) | set(self.applied.backends)
            if target.backends.get(name) != self.applied.backends.get(name)
        )
        self.applied = target
        state.save_layout(self.s.haproxy_dir, target)
        self.metrics.reloads.labels(reason, "ok").inc()
        self.metrics.last_reload.set(time.time())
        log.info(
            "[reload] reloaded (%s): %s",
            ", ".join(reasons),
            " ".join(changed) or "-",
            extra={"reason": reason, "backends": changed},
        )
        return True

    def _template(self) -> str:
        return (Path(self.s.template_dir) / TEMPLATE).read_text()

    def _digest(self) -> str:
        try:
            return hashlib.sha256(self._template().encode()).hexdigest()
        except OSError:
            return ""

    def _check_template(self) -> None:
        """A template edited on disk (watchdog woke us) is re-rendered, checked and
        reloaded; one that fails the check is refused and the running config stays."""
        if not self.templates.take():
            return
        digest = self._digest()
        if digest and digest != self.template_digest:
            log.info("[reload] template %s changed", TEMPLATE, extra={"reason": "template_changed"})
            self.force_reload = self.force_reload or "template_changed"
            self.template_digest = digest

    # --- TCP ports another process holds (haproxy -c passes, the reload fails) --------

    def _exclude_unbindable(self, target: Applied) -> None:
        for backend in target.backends.values():
            old = self.applied.backends.get(backend.name)
            new_port = backend.mode == "tcp" and (old is None or old.port != backend.port)
            if new_port and not _bindable(self.s.tcp_bind_addr or "127.0.0.1", backend.port):
                log.error(
                    "[reload] port %d of %s is held by another process; leaving it out",
                    backend.port,
                    backend.name,
                    extra={"backend": backend.name, "reason": "port_in_use"},
                )
                self.excluded_ports.add(backend.port)

    def _retry_excluded_ports(self) -> None:
        for port in list(self.excluded_ports):
            if _bindable(self.s.tcp_bind_addr or "127.0.0.1", port):
                self.excluded_ports.discard(port)

    # --- HAProxy process ------------------------------------------------------------------

    def _start(self) -> None:
        process.prepare_directory(self.s.haproxy_dir)
        if self.haproxy.adopt() and self._adopt():
            return
        if isinstance(self.haproxy, process.SpawnedHAProxy) and not self.haproxy.alive():
            self._cold_start("haproxy_restarted" if Path(self.s.cfg_path).exists() else None)

    def _adopt(self) -> bool:
        try:
            adopted = state.read_applied(
                self.s.haproxy_dir,
                self.runtime,
                self.s.adopt_map_path,
                self.clock(),
            )
        except (RuntimeUnavailable, RuntimeCommandError) as exc:
            log.warning("[lb] cannot read the running HAProxy (%s); not adopting it", exc)
            return False
        if adopted is None:
            log.info("[lb] the running HAProxy does not match its layout file; reloading")
            return False
        self.applied = adopted
        log.info("[lb] adopted the running HAProxy (%d backends)", len(adopted.backends))
        return True

    def _cold_start(self, reason: str | None) -> None:
        """(Re)start HAProxy from the state we believe it should run."""
        Path(self.s.cfg_path).write_text(
            render_config(self._template(), self.applied, self.ctx, TEMPLATE)
        )
        Path(self.s.map_path).write_text(render_map(self.applied))
        assert isinstance(self.haproxy, process.SpawnedHAProxy)
        self.haproxy.start()
        state.save_layout(self.s.haproxy_dir, self.applied)
        if reason is not None:
            self.metrics.reloads.labels(reason, "ok").inc()
        log.info("[lb] HAProxy started")

    def _restart_haproxy(self) -> None:
        if not isinstance(self.haproxy, process.SpawnedHAProxy):
            log.warning("[lb] the external HAProxy does not answer on %s", self.s.admin_socket)
            return
        log.error("[lb] HAProxy is gone; starting it again with the current state")
        # Draining slots restart disabled: the connections they drained died with HAProxy.
        slots = {
            n: tuple(
                s if s.state != "drain" else replace(s, state="maint", instance=None) for s in t
            )
            for n, t in self.applied.slots.items()
        }
        self.applied = replace(self.applied, slots=slots)
        try:
            self._cold_start("haproxy_restarted")
        except Exception:
            self.metrics.reloads.labels("haproxy_restarted", "failed").inc()
            log.exception("[lb] HAProxy failed to start")

    def _shutdown(self) -> None:
        if self.frontend is not None:
            with contextlib.suppress(EtcdUnavailable):
                self.frontend.revoke()
        if isinstance(self.haproxy, process.SpawnedHAProxy):
            log.info("[lb] stopping HAProxy softly")
            self.haproxy.stop(soft=True)

    # --- /frontends and metrics ----------------------------------------------------------

    def _write_frontend(self, lease_id: int) -> None:
        assert self.s.advertise_ip is not None
        record = FrontendRecord(
            self.s.lb_id, self.s.advertise_ip, self.s.frontend_port, self.s.listen_path
        )
        self.session.put(self.s.layout.frontend_key(self.s.lb_id), record.to_json(), lease=lease_id)

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

    def _report(self) -> None:
        self.metrics.slots.clear()
        drains = 0
        for name, table in self.applied.slots.items():
            used = sum(1 for s in table if not s.free)
            drains += sum(1 for s in table if s.state == "drain")
            self.metrics.slots.labels(name, "used").set(used)
            self.metrics.slots.labels(name, "free").set(len(table) - used)
        self.metrics.drains.set(drains)


def _subject(command: str) -> dict[str, str]:
    """The backend and server a runtime command is about, for structured logs."""
    words = command.split()
    if words[:2] == ["set", "server"] and len(words) > 2:
        backend, _, server = words[2].partition("/")
        return {"backend": backend, "server": server, "command": command}
    if len(words) > 3 and words[1] == "map":
        return {"backend": words[-1], "command": command}
    return {"command": command} if command else {}


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True
