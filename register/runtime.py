"""Where an announced instance runs, and at which address the world reaches it (SPEC §5).

A runtime decides which announcements are local to this host and their placement (host
address and published port). ``host`` is for processes outside containers; ``docker``
asks the local Docker engine (a later issue).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from discovery.records import AnnounceRecord
from register.transform import Placement


class Runtime(Protocol):
    name: str

    def place(self, announces: Mapping[str, AnnounceRecord]) -> dict[str, Placement]:
        """The placement of every local announcement, by announce key; others are absent."""
        ...


class HostRuntime:
    """Processes on this host that set ``ANNOUNCE_HOST`` to our ``NODE_NAME``."""

    name = "host"

    def __init__(self, node_name: str, host_ip: str) -> None:
        self.node_name = node_name
        self.host_ip = host_ip

    def place(self, announces: Mapping[str, AnnounceRecord]) -> dict[str, Placement]:
        return {
            key: Placement(ip=self.host_ip, ext_port=record.port)
            for key, record in announces.items()
            if record.host == self.node_name
        }


class RuntimeUnavailable(Exception):
    """The configured runtime cannot run here; the message says what to do instead."""


def make_runtime(name: str, *, node_name: str, host_ip: str) -> Runtime:
    if name == "host":
        return HostRuntime(node_name, host_ip)
    raise RuntimeUnavailable(
        "RUNTIME=docker is not built yet (it arrives with the Docker runtime issue); "
        "use RUNTIME=host with ANNOUNCE_HOST set to NODE_NAME in each announce"
    )
