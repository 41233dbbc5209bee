"""Prometheus metrics every daemon has, one registry per daemon (SPEC §7)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from discovery.records import Reason
from discovery.settings import Address

log = logging.getLogger(__name__)


class Metrics:
    """The discovery metrics; daemons add their own to :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.etcd_connected = Gauge(
            "haroute_etcd_connected", "1 while the daemon's etcd watch or calls work", registry=r
        )
        self.etcd_errors = Counter(
            "haroute_etcd_errors_total", "etcd calls that failed (unreachable, timeout)", registry=r
        )
        self.invalid_records = Counter(
            "haroute_invalid_records_total",
            "records rejected by validation, once per key and revision",
            ["reason"],
            registry=r,
        )
        for reason in Reason:
            self.invalid_records.labels(reason.value)
        self.leases_granted = Counter(
            "haroute_leases_granted_total", "leases granted (first or after a loss)", registry=r
        )
        self.leases_regranted = Counter(
            "haroute_leases_regranted_total",
            "leases granted again after one was lost",
            registry=r,
        )
        self.records = Gauge(
            "haroute_records",
            "records in the last snapshot, by state (valid|invalid)",
            ["state"],
            registry=r,
        )
        self.leases_lost = Counter(
            "haroute_leases_lost_total", "leases found expired when refreshed", registry=r
        )
        self.watch_events = Counter(
            "haroute_watch_events_total", "watch events received", ["type"], registry=r
        )
        self.watch_restarts = Counter(
            "haroute_watch_restarts_total",
            "watch restarts: resume (from the last revision) or relist (after compaction)",
            ["kind"],
            registry=r,
        )
        self.loop_errors = Counter(
            "haroute_loop_errors_total",
            "unexpected errors in the daemon's loop (bugs: please report them)",
            registry=r,
        )
        for kind in ("resume", "relist"):
            self.watch_restarts.labels(kind)
        for kind in ("put", "delete"):
            self.watch_events.labels(kind)


def serve(addr: Address | None, registry: CollectorRegistry) -> Any:
    """Serve ``registry`` at ``addr`` (off when ``None``); returns the server or ``None``."""
    if addr is None:
        return None
    server, _thread = start_http_server(addr.port, addr=addr.host, registry=registry)
    log.info("[metrics] serving on http://%s/metrics", addr)
    return server
