"""lb settings (SPEC §2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from discovery import settings as s
from discovery.settings import Address, CommonSettings, SettingError, setting
from lb.plan import Timers
from lb.render import RenderContext


def default_template_dir() -> str:
    """the templates installed with haroute"""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "haproxy"):
        if (candidate / "haproxy.cfg.j2").is_file():
            return str(candidate)
    raise ValueError("no installed templates found")


_SAFE_PATH = re.compile(r"/[A-Za-z0-9_./-]*")
# sun_path holds 107 bytes; the longest socket we put in HAPROXY_DIR is master.sock.
_MAX_SOCKET_DIR = 107 - len("/master.sock")


def absolute_path(raw: str) -> str:
    value = raw.strip().rstrip("/") or "/"
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def directory(raw: str) -> str:
    """An absolute path that can stand in a HAProxy config and hold its sockets."""
    value = absolute_path(raw)
    if _SAFE_PATH.fullmatch(value) is None:
        raise ValueError("may contain only letters, digits and _ . / - (it goes into haproxy.cfg)")
    return value


def socket_directory(raw: str) -> str:
    value = directory(raw)
    if len(value.encode()) > _MAX_SOCKET_DIR:
        raise ValueError(f"is too long for Unix sockets in it (at most {_MAX_SOCKET_DIR} bytes)")
    return value


def maxconn(raw: str) -> int | None:
    """``auto`` (sized to the fd budget) or a number of connections."""
    if raw.strip().lower() == "auto":
        return None
    return s.positive_int(raw)


def access_log(raw: str) -> str:
    """``stdout``, an absolute file path, or ``udp://host:port`` (syslog)."""
    value = raw.strip()
    if value == "stdout" or value.startswith("/"):
        return value
    if value.startswith("udp://"):
        address = s.listen_address(value.removeprefix("udp://"))
        return f"udp://{address}"
    raise ValueError("must be stdout, an absolute file path, or udp://host:port")


def bind_address(raw: str) -> Address:
    """``host:port`` (``*`` for every address)."""
    return s.listen_address(raw if ":" in raw else f"*:{raw}")


@dataclass(frozen=True)
class LbSettings(CommonSettings):
    """Watch /services prefixes and drive a local HAProxy without reloads."""

    listen_path: tuple[str, ...] = setting(
        "LISTEN_PATH", s.listen_paths, None, "comma list of /services/... prefixes"
    )
    haproxy_bin: str = setting("HAPROXY_BIN", s.text, "haproxy", "the haproxy executable")
    haproxy_dir: str = setting(
        "HAPROXY_DIR", socket_directory, None, "where config, map, sockets and pid file live"
    )
    template_dir: str = setting(
        "TEMPLATE_DIR", absolute_path, default_template_dir, "Jinja2 templates of the config"
    )
    lb_id: str = setting("LB_ID", s.node_id, s.hostname, "this load balancer's ID")
    http_bind: Address | None = setting(
        "HTTP_BIND", s.optional(bind_address), "*:80", "HTTP frontend address (empty: none)"
    )
    https_bind: Address | None = setting(
        "HTTPS_BIND",
        s.optional(bind_address),
        "",
        "HTTPS frontend address (empty: none; needs CERT_DIR)",
    )
    cert_dir: str | None = setting(
        "CERT_DIR",
        s.optional(s.existing_dir),
        "",
        "directory of PEM files (chain and key) served on HTTPS_BIND",
    )
    tcp_bind_addr: str | None = setting(
        "TCP_BIND_ADDR",
        s.optional(s.ip_address),
        "127.0.0.1",
        "address of the TCP (sidecar) listeners (empty: none)",
    )
    slots: int = setting("SLOTS", s.positive_int, "8", "initial server slots per backend")
    reload_min_interval: float = setting(
        "RELOAD_MIN_INTERVAL", s.duration, "1", "at most one reload per this many seconds"
    )
    drain_timeout: float = setting(
        "DRAIN_TIMEOUT", s.duration, "10", "seconds a removed server drains (0: none)"
    )
    advertise_ip: str | None = setting(
        "ADVERTISE_IP", s.optional(s.ip_address), "", "address this frontend is reached at"
    )
    frontend_port: int = setting("FRONTEND_PORT", s.port, "80", "port advertised with it")
    haproxy_manage: str = setting(
        "HAPROXY_MANAGE", s.choice("spawn", "external"), "spawn", "spawn or external"
    )
    haproxy_reload_cmd: str | None = setting(
        "HAPROXY_RELOAD_CMD", s.optional(s.text), "", "reload command (external mode)"
    )
    haproxy_socket: str | None = setting(
        "HAPROXY_SOCKET", s.optional(directory), "", "admin socket (external mode)"
    )
    haproxy_metrics_addr: Address | None = setting(
        "HAPROXY_METRICS_ADDR",
        s.optional(s.listen_address),
        "",
        "HAProxy's own Prometheus exporter (empty: off)",
    )
    backend_gc_after: float = setting(
        "BACKEND_GC_AFTER", s.duration, "300", "remove a backend empty this long"
    )
    mass_removal_grace: float = setting(
        "MASS_REMOVAL_GRACE", s.duration, "30", "how long mass-removed servers are kept"
    )
    maxconn: int | None = setting(
        "MAXCONN", maxconn, "auto", "HAProxy's global maxconn (auto: sized to the fd budget)"
    )
    spare_backends: int = setting(
        "SPARE_BACKENDS",
        s.non_negative_int,
        "16",
        "HTTP backends kept ready for new environments (0: off)",
    )
    pool_refill_after: float = setting(
        "POOL_REFILL_AFTER",
        s.duration,
        "60",
        "seconds a spare backend serves before a reload gives it back (pool_refill)",
    )
    access_log: str | None = setting(
        "ACCESS_LOG",
        s.optional(access_log),
        "",
        "HAProxy's access log: stdout, a file path, or udp://host:port (empty: off)",
    )
    reconcile_interval: float = setting(
        "RECONCILE_INTERVAL",
        s.positive_duration,
        "30",
        "seconds between full read-backs of HAProxy's state (jittered)",
    )
    dns_domain: str = setting("DNS_DOMAIN", s.domain, "skydns.local", "domain of Host names")
    ttl: int = setting("LB_TTL", s.ttl, "15", "lease TTL of /frontends/<LB_ID>")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.haproxy_manage == "external" and (
            self.haproxy_reload_cmd is None or self.haproxy_socket is None
        ):
            raise SettingError(
                "HAPROXY_MANAGE", "external", "needs HAPROXY_RELOAD_CMD and HAPROXY_SOCKET"
            )
        if self.https_bind is not None and self.cert_dir is None:
            raise SettingError("HTTPS_BIND", str(self.https_bind), "needs CERT_DIR")

    @property
    def http_enabled(self) -> bool:
        """An HTTP frontend exists (plain, TLS, or both)."""
        return self.http_bind is not None or self.https_bind is not None

    @property
    def reserved_ports(self) -> frozenset[int]:
        """Ports the lb binds itself: no TCP service gets them, on any address (SPEC §9)."""
        return frozenset(
            a.port
            for a in (self.http_bind, self.https_bind, self.haproxy_metrics_addr, self.metrics_addr)
            if a is not None
        )

    @property
    def cfg_path(self) -> str:
        return f"{self.haproxy_dir}/haproxy.cfg"

    @property
    def map_path(self) -> str:
        return f"{self.haproxy_dir}/hosts.map"

    @property
    def admin_socket(self) -> str:
        return self.haproxy_socket or f"{self.haproxy_dir}/admin.sock"

    @property
    def adopt_map_path(self) -> str | None:
        """The map a running HAProxy has: only with an HTTP frontend."""
        return self.map_path if self.http_enabled else None

    @property
    def timers(self) -> Timers:
        spare = self.spare_backends if self.http_enabled else 0
        return Timers(self.slots, self.drain_timeout, self.backend_gc_after, spare)

    def render_context(self) -> RenderContext:
        return RenderContext(
            self.lb_id,
            self.admin_socket,
            self.map_path,
            self.http_bind,
            self.tcp_bind_addr,
            self.haproxy_metrics_addr,
            self.https_bind,
            f"{self.haproxy_dir}/crt-list",
            self.log_target,
        )

    @property
    def log_target(self) -> str:
        """``ACCESS_LOG`` as HAProxy's ``log`` target: a file or the lb's stdout are
        HAProxy's stdout (the lb opens them), syslog its address; "" off."""
        if self.access_log is None:
            return ""
        if self.access_log.startswith("udp://"):
            return self.access_log.removeprefix("udp://")
        return "stdout"
