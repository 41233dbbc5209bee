"""Prometheus metrics every daemon has, one registry per daemon, and the HTTP server
that serves them with ``/healthz`` and ``/readyz`` at ``METRICS_ADDR`` (SPEC §7)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

from discovery.health import Health, Heartbeat
from discovery.records import Reason
from discovery.settings import Address

log = logging.getLogger(__name__)


class Metrics:
    """The discovery metrics; daemons add their own to :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Beaten by the daemon's loop after every turn (``/healthz``).
        self.heartbeat = Heartbeat()
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


# --- the HTTP server ------------------------------------------------------------------------

# A client that sends no complete request within this many seconds is dropped.
REQUEST_TIMEOUT = 10.0
HEALTH_HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]


def make_app(registry: CollectorRegistry, health: Health) -> WSGIApplication:
    """``/healthz`` and ``/readyz`` (200 or 503, one line saying why); every other
    request goes to prometheus_client's own app, as ``start_http_server`` serves it."""
    metrics: WSGIApplication = make_wsgi_app(registry)
    checks = {"/healthz": health.alive, "/readyz": health.ready}

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        check = checks.get(environ.get("PATH_INFO", ""))
        if check is None:
            return metrics(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        ok, why = check()
        body = f"{why}\n".encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [*HEALTH_HEADERS, ("Content-Length", str(len(body)))])
        return [b""] if method == "HEAD" else [body]

    return app


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """No access log (as prometheus_client's server)."""


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow client holds only its own thread, never the
    daemon's loop or another client."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("[metrics] request from %s failed", client_address, exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(addr: Address | None, registry: CollectorRegistry, health: Health) -> WSGIServer | None:
    """Serve ``registry`` and ``health`` at ``addr`` (off when ``None``) in a daemon
    thread; returns the server or ``None``."""
    if addr is None:
        return None
    server_class = _Server6 if ":" in addr.host else _Server
    server = make_server(
        addr.host,
        addr.port,
        make_app(registry, health),
        server_class=server_class,
        handler_class=_Handler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("[metrics] serving on http://%s/metrics, /healthz and /readyz", addr)
    return server
