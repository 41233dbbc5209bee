"""register settings (SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass

from discovery import settings as s
from discovery.settings import CommonSettings, setting


@dataclass(frozen=True)
class RegisterSettings(CommonSettings):
    """Register the announced containers of this host in /services and /skydns."""

    host_ip: str = setting(
        "HOST_IP", s.ip_address, s.default_route_ip, "address other hosts reach this one at"
    )
    node_name: str = setting("NODE_NAME", s.node_id, s.hostname, "this host's node name")
    runtime: str = setting("RUNTIME", s.choice("docker", "host"), "docker", "docker or host")
    docker_host: str | None = setting(
        "DOCKER_HOST", s.optional(s.text), "", "Docker engine address (docker runtime)"
    )
    dns_domain: str = setting("DNS_DOMAIN", s.domain, "skydns.local", "DNS domain of the names")
    frontend_ip: str | None = setting(
        "FRONTEND_IP",
        s.optional(s.ip_address),
        "",
        "address for HTTP DNS records while no frontend has announced itself",
    )
    frontend_port: int = setting("FRONTEND_PORT", s.port, "80", "port for FRONTEND_IP records")
    ttl: int = setting("REGISTER_TTL", s.ttl, "15", "lease TTL of all this register's keys")
    revoke_on_exit: bool = setting(
        "REGISTER_REVOKE_ON_EXIT", s.flag, "0", "revoke the lease on exit (host leaving service)"
    )
