"""Where an announced instance runs, and at which address the world reaches it (SPEC §5).

A runtime decides which announcements are local to this host and their placement (host
address and published port). ``host`` is for processes outside containers; ``docker``
asks the local Docker engine (``register.docker_runtime``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import docker.errors

from discovery.records import AnnounceRecord
from register.docker_runtime import DockerRuntime, connector
from register.transform import Placement


class Runtime(Protocol):
    name: str

    @property
    def interval(self) -> float | None:
        """Call :meth:`refresh` at least this often (None: only when :meth:`watch` wakes
        the loop)."""
        ...

    def refresh(self) -> bool:
        """Bring the view of this host's workloads up to date (cheap when nothing is
        due); True when it changed since the last call, so that every announcement must
        be placed again. Raises ``PlacementUnknown`` while it cannot tell yet."""
        ...

    def place(self, key: str, record: AnnounceRecord) -> Placement | None:
        """Where the announcement under ``key`` runs, if on this host (as of the last
        :meth:`refresh`); None when it is not local."""
        ...

    def watch(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Run in a thread of its own until ``stop``: call ``wake`` when placements may
        have changed outside etcd (a container started or exited). May return at once."""
        ...


class HostRuntime:
    """Processes on this host that set ``ANNOUNCE_HOST`` to our ``NODE_NAME``."""

    name = "host"
    interval = None

    def __init__(self, node_name: str, host_ip: str) -> None:
        self.node_name = node_name
        self.host_ip = host_ip

    def refresh(self) -> bool:
        """Placements depend on the announcements alone: nothing else to look at."""
        return False

    def place(self, key: str, record: AnnounceRecord) -> Placement | None:
        if record.host != self.node_name:
            return None
        return Placement(ip=self.host_ip, ext_port=record.port)

    def watch(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Placements change only with the announcements: nothing to watch."""


class RuntimeUnavailable(Exception):
    """The configured runtime cannot run here; the message says what to do instead."""


def make_runtime(
    name: str, *, node_name: str, host_ip: str, docker_host: str | None = None
) -> Runtime:
    """The runtime named by ``RUNTIME``. The Docker engine need not be up yet (it is
    waited for), but a malformed ``DOCKER_HOST`` fails here."""
    if name == "host":
        return HostRuntime(node_name, host_ip)
    try:
        connect = connector(docker_host)
    except docker.errors.DockerException as exc:
        raise RuntimeUnavailable(f"bad setting DOCKER_HOST={docker_host!r}: {exc}") from None
    return DockerRuntime(connect, host_ip)
