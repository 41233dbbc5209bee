"""announce settings (SPEC §2): the original design's ANNOUNCE_PATH, PORT and TYPE."""

from __future__ import annotations

from dataclasses import dataclass

from discovery import settings as s
from discovery.records import ServicePath, ServiceType
from discovery.settings import CommonSettings, SettingError, setting


@dataclass(frozen=True)
class AnnounceSettings(CommonSettings):
    """Keep this service's record alive in etcd under /announce."""

    path: ServicePath = setting(
        "ANNOUNCE_PATH", s.service_path, None, "/<scope>/<app>/<env>/<service>[/<name>]"
    )
    port: int = setting("PORT", s.port, None, "the service port inside the container")
    type: str = setting("TYPE", s.choice("http", "tcp"), None, "HTTP or TCP")
    announce_id: str | None = setting(
        "ANNOUNCE_ID",
        s.optional(s.node_id),
        "",
        "instance ID (default: the hostname; with ANNOUNCE_HOST: <host>-<PORT>)",
    )
    host: str | None = setting(
        "ANNOUNCE_HOST", s.optional(s.node_id), "", "node name, for processes outside containers"
    )
    ttl: int = setting("ANNOUNCE_TTL", s.ttl, "15", "lease TTL, whole seconds")
    interval: float = setting(
        "ANNOUNCE_INTERVAL", s.positive_duration, "5", "keepalive interval, seconds"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.interval >= self.ttl:
            raise SettingError(
                "ANNOUNCE_INTERVAL", str(self.interval), f"must be below ANNOUNCE_TTL ({self.ttl})"
            )

    @property
    def service_type(self) -> ServiceType:
        return "HTTP" if self.type == "http" else "TCP"

    @property
    def instance_id(self) -> str:
        if self.announce_id is not None:
            return self.announce_id
        if self.host is not None:
            return f"{self.host}-{self.port}"
        return s.node_id(s.hostname())
