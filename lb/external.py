"""``HAPROXY_MANAGE=external``: a HAProxy run by systemd or another supervisor. The lb
reloads it with the operator's ``HAPROXY_RELOAD_CMD`` and never starts or stops it.

A supervisor may restart HAProxy at any time (a crash, ``systemctl restart``, someone's
reload), and every runtime change not in the files is then gone. :meth:`identity` is how
the lb notices: the serving process's pid and start time, from ``show info`` and
``/proc``; it changes with every new worker, and the lb re-applies its state when it
changed without a reload of its own (SPEC §6 "Resilience").
"""

from __future__ import annotations

import logging
import subprocess

from lb import procfs
from lb.install import clip
from lb.process import Ensured, Identity, ReloadResult
from lb.runtime import RuntimeClient, RuntimeCommandError, RuntimeUnavailable

log = logging.getLogger(__name__)


class ExternalHAProxy:
    def __init__(self, reload_cmd: str, admin_socket: str, *, socket_timeout: float = 2.0) -> None:
        self.reload_cmd = reload_cmd
        self._admin_socket = admin_socket
        self.runtime = RuntimeClient(admin_socket, timeout=socket_timeout)

    @property
    def admin_socket(self) -> str:
        return self._admin_socket

    def adopt(self) -> bool:
        return self.alive()

    def ensure_running(self) -> Ensured:
        return Ensured.RUNNING if self.alive() else Ensured.ABSENT

    def shutdown(self) -> bool:
        """Nothing to stop: the supervisor owns HAProxy."""
        return False

    def alive(self) -> bool:
        """The runtime socket answers ``show info``."""
        return self.runtime.ping()

    def identity(self) -> Identity | None:
        """The serving worker's pid (``show info``) and, where ``/proc`` shows it, its
        master's pid and start time; ``None`` when the socket is down."""
        try:
            info = self.runtime.info()
        except (RuntimeUnavailable, RuntimeCommandError):
            return None
        pid = int(info["Pid"]) if info.get("Pid", "").isdigit() else 0
        parent = procfs.parent_pid(pid) if pid else None
        if parent is not None and procfs.is_haproxy(parent):
            return Identity((parent, procfs.start_ticks(parent)), pid)
        return Identity(None, pid)

    def reload(self, timeout: float = 10) -> ReloadResult:
        """Run ``HAPROXY_RELOAD_CMD`` with the shell; ok when it exits 0."""
        try:
            # The operator's command line, from a setting: shell syntax is the point.
            out = subprocess.run(  # noqa: S602
                self.reload_cmd,
                shell=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            detail = f"HAPROXY_RELOAD_CMD did not finish within {timeout} s"
            log.error("[reload] %s", detail)
            return ReloadResult(False, detail, unknown=True)
        except OSError as exc:
            return ReloadResult(False, f"cannot run HAPROXY_RELOAD_CMD: {exc}")
        stderr = clip(out.stderr.strip())
        alerts = tuple(line for line in stderr.splitlines() if "[ALERT]" in line)
        if out.returncode != 0:
            detail = f"HAPROXY_RELOAD_CMD exited with {out.returncode}: {stderr or 'no stderr'}"
            log.error("[reload] %s", detail)
            return ReloadResult(False, detail, alerts=alerts)
        detail = "HAPROXY_RELOAD_CMD exited with 0" + (f": {stderr}" if stderr else "")
        log.info("[reload] %s", detail)
        return ReloadResult(True, detail)
