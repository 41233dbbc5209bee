"""TLS certificates at the edge (SPEC §10): watch ``CERT_DIR``, keep the copies HAProxy
loads, and apply changes through the runtime API.

HAProxy does not load ``CERT_DIR`` itself. Its crt-list names copies in a staging
directory of the lb's own (``<HAPROXY_DIR>/certs``, mode 700, files 600): a file of
``CERT_DIR`` that turns bad is refused and its last good copy stays there, so a reload for
any other reason still starts (a crt-list pointing into ``CERT_DIR`` would make every
later reload fail on the bad file — octavia's rule: keep the last good file beside the
refused one). A copy is written only after HAProxy took its content at runtime, so the
staging directory and the crt-list file always say what HAProxy serves, and a reload
changes nothing; a change that needs a reload is staged first and reported.

:class:`CertSync` is what the lb loop calls (one sentence per call, patroni-style):

- :meth:`CertSync.prepare` once before the first render: stages ``CERT_DIR`` (falling back
  to the copies of an earlier run for refused files) and writes the crt-list;
  :attr:`CertSync.has_certs` then says whether the ``bind ... ssl crt-list`` can be
  rendered (HAProxy 2.6 refuses an ssl bind with an empty crt-list); an adopted HAProxy
  is reloaded when the report names a reason (the files changed since it loaded them);
- :meth:`CertSync.sync` when :class:`CertWatch` woke the loop (and on the periodic
  reconcile: a watch is a signal, the directory is the state): runtime steps, or a
  report whose ``reload`` names the reason;
- :meth:`CertSync.reloaded` after every successful reload or restart of HAProxy (it has
  read the staged files), :meth:`CertSync.reload_failed` after a refused one (the staged
  files go back to what the running HAProxy serves).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from lb.certs import (
    MAX_PEM,
    RELOAD_REASON,
    CertFile,
    CrtList,
    Op,
    Refused,
    Step,
    abort_op,
    build_crt_list,
    delete_op,
    merge,
    plan_changes,
    read_cert_dir,
)
from lb.runtime import (
    Reply,
    RuntimeCommandError,
    RuntimeProtocolError,
    RuntimeUnavailable,
    SslCerts,
)

log = logging.getLogger(__name__)

#: Reload reason when a runtime change failed half-way (``lb/plan.py`` has the same).
RUNTIME_FAILED = "runtime_failed"
STAGE_DIR_MODE = 0o700
STAGE_FILE_MODE = 0o600


class CertRuntime(Protocol):
    """What :class:`CertSync` needs of ``lb.runtime.RuntimeClient``."""

    def execute_payload(self, command: str, payload: str, *, expect: str) -> Reply: ...

    def execute_one(self, command: str, *, expect: str) -> Reply: ...

    def ssl_certs(self) -> SslCerts: ...


@dataclass(frozen=True)
class CertPaths:
    """Where the certificates are read and where HAProxy loads them from."""

    #: ``CERT_DIR``: the operator's PEM files, only read.
    cert_dir: str
    #: The copies HAProxy loads, one per valid file, same name.
    stage_dir: str
    #: The crt-list file named on the ``bind`` line.
    crt_list: str

    @classmethod
    def in_haproxy_dir(cls, cert_dir: str, haproxy_dir: str) -> CertPaths:
        """``<HAPROXY_DIR>/certs`` and ``<HAPROXY_DIR>/crt-list`` (HAPROXY_DIR is already
        checked to be ``[A-Za-z0-9_./-]``)."""
        base = os.path.abspath(haproxy_dir)
        return cls(cert_dir, os.path.join(base, "certs"), os.path.join(base, "crt-list"))


@dataclass(frozen=True)
class CertReport:
    """What one call did, and what the lb must do next."""

    #: One sentence for the log.
    sentence: str
    #: A reload reason (``config_changed`` or ``runtime_failed``), or ``None``.
    reload: str | None = None
    #: Every file not served as it is now (refused, or kept at its last good version).
    refused: tuple[Refused, ...] = ()
    #: Names lost to another file, SANs that are not SNI names, expired certificates.
    warnings: tuple[str, ...] = ()
    #: Certificates changed at runtime by this call.
    applied: tuple[str, ...] = ()


class _StepFailed(Exception):
    def __init__(self, op: Op, error: RuntimeCommandError | RuntimeUnavailable) -> None:
        self.op = op
        self.error = error
        super().__init__(f"{op.command}: {error}")


class CertSync:
    """The certificates HAProxy serves, kept equal to ``CERT_DIR`` (see the module).
    ``now`` is the clock for expiry warnings."""

    def __init__(
        self,
        paths: CertPaths,
        *,
        max_pem: int = MAX_PEM,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.paths = paths
        self.max_pem = max_pem
        self.now = now
        #: What the running HAProxy serves (the staged files say the same, unless a
        #: reload is pending).
        self.applied = CrtList()
        #: Content HAProxy refused at runtime: name → (digest, its reply).
        self.rejected: dict[str, tuple[str, str]] = {}
        self._pending: CrtList | None = None
        self._staged: dict[str, str] = {}  # name → digest of the staged copy
        self._crt_list_text: str | None = None
        self._reported: set[tuple[str, str]] = set()

    @property
    def serving(self) -> int:
        """Certificates in the staged crt-list (what HAProxy serves or will after a reload)."""
        return len((self._pending or self.applied).entries)

    @property
    def has_certs(self) -> bool:
        """Whether the staged crt-list has a certificate (else render no TLS bind)."""
        return bool((self._pending or self.applied).entries)

    # -- the calls --------------------------------------------------------------------

    def prepare(self) -> CertReport:
        """Stage ``CERT_DIR`` and write the crt-list, before HAProxy starts from the files.
        A refused file falls back to its copy from an earlier run.

        The report's ``reload`` is set when the staged files changed since that run: an
        adopted HAProxy (already running) serves the earlier files and must be reloaded;
        one about to be started needs nothing more.
        """
        os.makedirs(self.paths.stage_dir, mode=STAGE_DIR_MODE, exist_ok=True)
        os.chmod(self.paths.stage_dir, STAGE_DIR_MODE)
        previous = read_cert_dir(self.paths.stage_dir, max_pem=self.max_pem)
        self._staged = {name: cert.digest for name, cert in previous.certs.items()}
        try:
            with open(self.paths.crt_list, encoding="ascii") as handle:
                self._crt_list_text = handle.read()
        except (OSError, UnicodeDecodeError):
            self._crt_list_text = None
        before = (dict(self._staged), self._crt_list_text)
        wanted, refused, warnings = self._wanted(previous.certs)
        self._install(wanted)
        self.applied, self._pending = wanted, None
        changed = before != (self._staged, self._crt_list_text)
        return self._report(
            f"staged {len(wanted.entries)} certificate(s)"
            + (f", default {wanted.default.cert.name}" if wanted.default else "")
            + (", changed since the last run" if changed else ""),
            reload=RELOAD_REASON if changed else None,
            refused=refused,
            warnings=warnings,
        )

    def sync(self, client: CertRuntime) -> CertReport:
        """Bring HAProxy to ``CERT_DIR``: runtime steps when it can, else stage the change
        and return a reload reason. Never raises for HAProxy's or the files' faults."""
        base = self._pending or self.applied
        wanted, refused, warnings = self._wanted(base.certs())
        plan = plan_changes(base, wanted, self.paths.crt_list)
        if plan.reload:
            self._install(wanted)
            self._pending = wanted
            return self._report(
                f"certificates need a reload: {plan.why}",
                reload=plan.reload,
                refused=refused,
                warnings=warnings,
            )
        if self._pending is not None and not plan.steps:
            return self._report(
                "certificates staged, waiting for a reload",
                reload=RELOAD_REASON,
                refused=refused,
                warnings=warnings,
            )
        if not plan.steps:
            return self._report("certificates unchanged", refused=refused, warnings=warnings)
        if self._pending is not None:
            # Runtime changes on top of a reload still to come: the reload will load them.
            self._install(wanted)
            self._pending = wanted
            return self._report(
                f"certificates staged for the pending reload: {plan.summary()}",
                reload=RELOAD_REASON,
                refused=refused,
                warnings=warnings,
            )
        return self._apply(client, plan.steps, refused, warnings)

    def reloaded(self) -> None:
        """HAProxy (re)started from the staged files: they are what it serves."""
        if self._pending is not None:
            self.applied, self._pending = self._pending, None

    def reload_failed(self) -> None:
        """A reload was refused; the running HAProxy serves :attr:`applied`: stage it back
        so that the next reload starts from what serves now."""
        if self._pending is not None:
            self._pending = None
            self._install(self.applied)

    # -- deciding ---------------------------------------------------------------------

    def _wanted(
        self, serving: Mapping[str, CertFile]
    ) -> tuple[CrtList, tuple[Refused, ...], tuple[str, ...]]:
        scan = read_cert_dir(self.paths.cert_dir, max_pem=self.max_pem)
        for name in [n for n in self.rejected if n not in scan.certs]:
            del self.rejected[name]
        certs, refused = merge(scan, serving, self.rejected)
        built = build_crt_list(certs, self.paths.stage_dir)
        now = self.now()
        expired = tuple(
            f"{e.cert.name}: expired on {e.cert.not_after:%Y-%m-%d %H:%M} UTC"
            for e in built.crt_list.entries
            if e.cert.not_after <= now
        )
        return built.crt_list, refused + built.refused, built.warnings + expired

    # -- acting -----------------------------------------------------------------------

    def _apply(
        self,
        client: CertRuntime,
        steps: tuple[Step, ...],
        refused: tuple[Refused, ...],
        warnings: tuple[str, ...],
    ) -> CertReport:
        done: list[str] = []
        try:
            if any(step.kind in ("add", "update") for step in steps):
                self._clear_transaction(client)
            for step in steps:
                try:
                    self._run(client, step)
                except _StepFailed as failed:
                    self._clean_up(client, step)
                    if not self._content_refused(step, failed):
                        raise
                    assert step.entry is not None
                    reply = getattr(failed.error, "reply", str(failed.error)).strip()
                    digest = step.entry.cert.digest
                    self.rejected[step.name] = (digest, reply)
                    refused += (Refused(step.name, f"HAProxy refused it: {reply}", digest),)
                    continue
                self._staged_step(step)
                done.append(f"{step.kind} {step.name}")
        except (_StepFailed, RuntimeCommandError, RuntimeUnavailable) as exc:
            self._write_crt_list(self.applied)
            return self._report(
                f"certificate change failed at runtime ({exc}); "
                f"applied before it: {', '.join(done) or 'nothing'}",
                reload=RUNTIME_FAILED,
                refused=refused,
                warnings=warnings,
                applied=tuple(done),
            )
        self._write_crt_list(self.applied)
        return self._report(
            f"certificates applied at runtime: {', '.join(done) or 'none'}",
            refused=refused,
            warnings=warnings,
            applied=tuple(done),
        )

    def _run(self, client: CertRuntime, step: Step) -> None:
        for op in step.ops:
            try:
                if op.payload is None:
                    client.execute_one(op.command, expect=op.expect)
                else:
                    client.execute_payload(op.command, op.payload, expect=op.expect)
            except ValueError as exc:  # not sent: the payload cannot be framed
                reply = Reply(op.command, f"not sent: {exc}", 3)
                error = RuntimeCommandError(op.command, reply.output, replies=[reply])
                raise _StepFailed(op, error) from exc
            except (RuntimeCommandError, RuntimeUnavailable) as exc:
                raise _StepFailed(op, exc) from exc

    @staticmethod
    def _content_refused(step: Step, failed: _StepFailed) -> bool:
        """HAProxy refused new content: an error (severity 3) to ``set``/``commit``, or
        the "Failed!" with which ``commit ssl cert`` and ``add ssl crt-list`` end when the
        certificate does not load into an SSL context (2.6.12 commits a new, unused store
        without building one, so ``add`` is where that shows). The content is then refused
        until the file changes. Anything else (no answer, "Operations on certificates are
        currently locked!", a reply about another transaction) is a runtime failure."""
        error = failed.error
        if isinstance(error, RuntimeUnavailable | RuntimeProtocolError) or not error.replies:
            return False
        if step.kind not in ("add", "update") or "locked" in error.reply:
            return False
        reply = error.replies[-1]
        flagged = reply.severity is not None and reply.severity <= 3
        verb = failed.op.command.split(maxsplit=1)[0]
        if verb == "set":
            return flagged
        if verb == "commit":
            return flagged or reply.output.endswith("Failed!")
        return verb == "add" and reply.output.endswith("Failed!")

    def _clear_transaction(self, client: CertRuntime) -> None:
        """Abort an uncommitted ``set ssl cert``: 2.6.12 has one transaction for all
        certificates, and a ``set`` for another file while one is open is added to the
        open one ("Transaction updated for certificate <other>!", measured)."""
        pending = client.ssl_certs().transaction
        if pending is not None:
            log.warning("[tls] aborting an uncommitted certificate transaction for %s", pending)
            client.execute_one(abort_op(pending).command, expect=abort_op(pending).expect)

    def _clean_up(self, client: CertRuntime, step: Step) -> None:
        """After a failed step: no open transaction, and no empty store left by a new
        certificate. Best effort: a failure here is logged, the step's failure reported."""
        try:
            self._clear_transaction(client)
            path = step.entry.path if step.entry is not None else ""
            if step.kind == "add" and path in client.ssl_certs().files:
                op = delete_op(path)
                client.execute_one(op.command, expect=op.expect)
        except (RuntimeCommandError, RuntimeUnavailable) as exc:
            log.warning("[tls] cleaning up after %s %s failed: %s", step.kind, step.name, exc)

    def _staged_step(self, step: Step) -> None:
        """HAProxy took ``step``: the files and :attr:`applied` say so too."""
        if step.entry is None:
            self.applied = self.applied.without(step.name)
            self._unstage(step.name)
        else:
            self.applied = self.applied.with_entry(step.entry)
            self._stage(step.name, step.entry.cert.pem, step.entry.cert.digest)
        log.info("[tls] %s %s at runtime", step.kind, step.name)

    def _install(self, crt_list: CrtList) -> None:
        """Make the staging directory and the crt-list file say ``crt_list``."""
        for entry in crt_list.entries:
            self._stage(entry.cert.name, entry.cert.pem, entry.cert.digest)
        keep = {entry.cert.name for entry in crt_list.entries}
        for name in os.listdir(self.paths.stage_dir):
            if name not in keep:
                self._unstage(name)
        self._write_crt_list(crt_list)

    def _stage(self, name: str, pem: str, digest: str) -> None:
        if self._staged.get(name) == digest:
            return
        _write_private(os.path.join(self.paths.stage_dir, name), pem + "\n")
        self._staged[name] = digest

    def _unstage(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.paths.stage_dir, name))
        self._staged.pop(name, None)

    def _write_crt_list(self, crt_list: CrtList) -> None:
        text = crt_list.text()
        if text != self._crt_list_text:
            _write_private(self.paths.crt_list, text)
            self._crt_list_text = text

    # -- reporting --------------------------------------------------------------------

    def _report(
        self,
        sentence: str,
        *,
        reload: str | None = None,
        refused: tuple[Refused, ...] = (),
        warnings: tuple[str, ...] = (),
        applied: tuple[str, ...] = (),
    ) -> CertReport:
        """The report, logging each refusal and warning once per content."""
        serving = self.applied.certs()
        for refusal in refused:
            key = (refusal.name, f"{refusal.digest}:{refusal.reason}")
            if key not in self._reported:
                self._reported.add(key)
                kept = " (its last good version keeps serving)" if refusal.name in serving else ""
                log.warning("[tls] refused %s: %s%s", refusal.name, refusal.reason, kept)
        for warning in warnings:
            if ("", warning) not in self._reported:
                self._reported.add(("", warning))
                log.warning("[tls] %s", warning)
        return CertReport(sentence, reload, refused, warnings, applied)


def _write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (mode 600: keys) through a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STAGE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    os.replace(tmp, path)


class _Handler(FileSystemEventHandler):
    def __init__(self, changed: threading.Event, wake: threading.Event) -> None:
        self.changed = changed
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("modified", "created", "moved", "deleted", "closed"):
            self.changed.set()
            self.wake.set()


class CertWatch:
    """Sets ``changed`` and wakes the loop when anything in ``CERT_DIR`` changes (its
    files, or a symlink swapped in it as Kubernetes does for secrets)."""

    def __init__(self, directory: str, wake: threading.Event) -> None:
        self.directory = directory
        self.changed = threading.Event()
        self._wake = wake
        self._observer: Any = None

    def start(self) -> None:
        observer = Observer()
        observer.schedule(_Handler(self.changed, self._wake), self.directory, recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        log.info("[tls] watching %s for certificate changes", self.directory)

    def take(self) -> bool:
        """Whether anything changed since the last call."""
        if self.changed.is_set():
            self.changed.clear()
            return True
        return False

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(2)
