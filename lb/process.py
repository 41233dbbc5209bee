"""Who owns HAProxy: the one interface the lb's loop talks to, chosen once at start.

Kept apart from the runtime API client (``lb/runtime.py``) as kubernetes-ingress keeps
``pkg/haproxy/process`` apart from ``pkg/haproxy/api`` (STYLE.md), and chosen in one
factory (:func:`lb.owners.make_process`) so that the loop never asks which owner it has:

- ``spawn`` (``lb/spawn.py``): the lb starts a master-worker HAProxy, restarts it from the
  last good config when it dies, and soft-stops it on SIGTERM;
- ``external`` (``lb/external.py``): systemd or another supervisor owns HAProxy; the lb
  reloads it with ``HAPROXY_RELOAD_CMD`` and notices when the supervisor restarted it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from lb.master import ProcInfo


class HAProxyError(Exception):
    """HAProxy could not be started or prepared; the message says why, in HAProxy's words
    where it gave any."""


class Ensured(enum.Enum):
    """What :meth:`HAProxyProcess.ensure_running` found or did."""

    RUNNING = "running"
    #: Started now (spawn mode): the runtime state must be applied again.
    STARTED = "started"
    #: Not there, and not ours to start (external mode): wait for the supervisor.
    ABSENT = "absent"


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of a reload."""

    ok: bool
    #: Why it failed (HAProxy's or the reload command's words), or what happened.
    detail: str
    #: ``show proc`` after the reload (spawn mode); ``None`` in external mode.
    info: ProcInfo | None = None
    #: HAProxy's own ALERT lines about this reload, when it gave any.
    alerts: tuple[str, ...] = ()
    #: True when nothing confirmed the outcome either way (e.g. a confirmation that timed
    #: out): the new config may be running; do not roll back blindly.
    unknown: bool = False


@dataclass(frozen=True)
class Identity:
    """Which HAProxy serves: its master (pid and start time; a new one is a restarted
    HAProxy) and its current worker (a new one without a reload of ours: someone else
    reloaded it). Either way the runtime state not in the files is gone."""

    master: object
    worker: int


class HAProxyProcess(Protocol):
    """What the controller needs from whoever owns HAProxy."""

    @property
    def admin_socket(self) -> str:
        """The stats socket at level admin (the runtime API)."""
        ...

    def adopt(self) -> bool:
        """Take over a HAProxy already running; ``True`` when there is one."""
        ...

    def ensure_running(self) -> Ensured:
        """Running already, started now from the installed config, or absent."""
        ...

    def alive(self) -> bool:
        """HAProxy is there and serving (cheap: called on a timer)."""
        ...

    def identity(self) -> Identity | None:
        """Which HAProxy serves now (``None``: it cannot be told)."""
        ...

    def reload(self, timeout: float = 10) -> ReloadResult:
        """Make HAProxy load the installed config; confirmed, not assumed."""
        ...

    def shutdown(self) -> bool:
        """The lb exits: stop HAProxy softly if it is ours (``True``); otherwise nothing."""
        ...
