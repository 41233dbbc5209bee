"""Helpers for lb integration tests: real HTTP backends and a TCP echo server on
127.0.0.x, /services records written under a lease, requests through HAProxy, and the
HAProxy an lb spawned stopped by pid."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import shlex
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from discovery.etcd import EtcdSession
from lb.files import prepare_directory
from lb.master import parse_show_proc
from lb.metrics import REASONS
from lb.spawn import SpawnedHAProxy
from tests.helpers import metric_value, scrape, session
from tests.servers import Daemon, Etcd, Stack, free_port, pid_gone, wait_for

DOMAIN = "skydns.local"


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy's TCP health checks connect and reset: not an error here


def mapped_backend(show_map: str, host: str) -> str | None:
    """The backend ``host`` goes to in the output of ``show map`` (``None``: not there)."""
    for line in show_map.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == host:
            return parts[2]
    return None


def name_handler(
    name: str, status: Callable[[str], int] | None = None
) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler that answers every GET with ``name``; ``status``, called with
    the request's path, gives the status (200 without it) and may hold the answer."""
    body = name.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200 if status is None else status(self.path))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class Backend:
    """A small HTTP server that answers with its own name."""

    def __init__(self, name: str, host: str = "127.0.0.2") -> None:
        self.name = name
        self.host = host
        self.server = QuietServer((host, 0), name_handler(name))
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class EchoServer:
    """A TCP echo server (the sidecar mode's "database")."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(4096):
                    self.request.sendall(data)

        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class WhoServer:
    """A TCP server that answers every connection with its own port (which server did a
    listen reach?)."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        port_box: list[int] = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(str(port_box[0]).encode())

        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        port_box.append(self.port)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def record(
    path: str, iid: str, ip: str, port: int, type_: str = "HTTP", announce_port: int | None = None
) -> str:
    p = path.split("/")
    return json.dumps(
        {
            "ID": iid,
            "APP": p[2],
            "ENV": p[3],
            "SERVICE": p[4],
            "NAME": p[5] if len(p) > 5 else "",
            "PORT": announce_port or port,
            "TYPE": type_,
            "IP": ip,
            "EXT_PORT": port,
            "NODE": "hosta",
        }
    )


def host_of(path: str) -> str:
    p = path.split("/")
    name = p[5] if len(p) > 5 else "default"
    return f"{name}.{p[4]}.{p[3]}.{p[2]}.{p[1]}.{DOMAIN}"


class LbStack:
    """An etcd, an lb driving its own HAProxy, and the means to poke both."""

    def __init__(self, servers: Stack, etcd: Etcd, tmp: Path, **env: str) -> None:
        self.servers = servers
        self.etcd = etcd
        self.dir = tmp / "haproxy"
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.session: EtcdSession = session(etcd)
        self.lease = self.session.grant(600)[0]
        self.backends: list[Backend] = []
        self.env = {
            "ETCD_ENDPOINTS": etcd.endpoint,
            "LISTEN_PATH": "/services/internal/app1",
            "HAPROXY_DIR": str(self.dir),
            "HTTP_BIND": f"127.0.0.1:{self.http_port}",
            "TCP_BIND_ADDR": "127.0.0.1",
            "SLOTS": "4",
            "RELOAD_MIN_INTERVAL": "0.2",
            "DRAIN_TIMEOUT": "1",
            "METRICS_ADDR": str(self.metrics_port),
            "LB_ID": "lb1",
            "LB_TTL": "3",
            **env,
        }
        self.lb: Daemon | None = None

    def start(self, prefix: tuple[str, ...] = ()) -> Daemon:
        self.lb = self.servers.daemon("lb", self.env, prefix)
        wait_for(
            lambda: self.haproxy_pid() is not None and self.metrics() is not None,
            15,
            0.05,
            "lb and HAProxy up",
        )
        return self.lb

    # --- etcd side -----------------------------------------------------------------

    def put(
        self,
        path: str,
        iid: str,
        port: int,
        ip: str = "127.0.0.2",
        type_: str = "HTTP",
        announce_port: int | None = None,
    ) -> None:
        self.session.put(
            f"/services{path}/{iid}",
            record(path, iid, ip, port, type_, announce_port),
            lease=self.lease,
        )

    def delete(self, path: str, iid: str) -> None:
        self.session.delete(f"/services{path}/{iid}")

    def backend(self, name: str, host: str = "127.0.0.2") -> Backend:
        b = Backend(name, host)
        self.backends.append(b)
        return b

    # --- HAProxy side ----------------------------------------------------------------

    def get(self, host: str, timeout: float = 5) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def answers(self, host: str) -> set[str]:
        """Which backends answer for ``host`` over a few requests (round robin)."""
        seen = set()
        for _ in range(12):
            try:
                status, body = self.get(host)
            except OSError:  # HAProxy down or restarting
                continue
            if status == 200:
                seen.add(body)
        return seen

    def haproxy_pid(self) -> int | None:
        try:
            pid = int((self.dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return None if pid_gone(pid) else pid

    def master(self, command: str) -> str:
        """One master CLI command; retried while the master is busy reloading (it
        refuses connections for a moment then)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self._master_once(command)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _master_once(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.dir / "master.sock"))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def admin(self, command: str) -> str:
        """One command on HAProxy's admin socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.dir / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def haproxy_backend(self, path: str) -> str:
        """The HAProxy backend that serves ``path``'s Host now (``show map``): its own, or
        the spare backend it took at runtime."""
        backend = mapped_backend(self.admin(f"show map {self.dir / 'hosts.map'}"), host_of(path))
        if backend is None:
            raise AssertionError(f"{host_of(path)} is not in HAProxy's map")
        return backend

    def haproxy_reloads(self) -> int:
        """The master's own reload counter (`show proc`), not ours."""
        return parse_show_proc(self.master("show proc")).reloads

    def metrics(self) -> str | None:
        try:
            return scrape(self.metrics_port)
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        text = self.metrics() or ""
        return metric_value(text, name, **labels)

    def reloads_ok(self) -> float:
        text = self.metrics() or ""
        return sum(
            metric_value(text, "haroute_reloads_total", reason=r, result="ok") for r in REASONS
        )

    def config(self) -> str:
        return (self.dir / "haproxy.cfg").read_text()

    def close(self) -> None:
        if self.lb is not None:
            self.lb.stop()
        pid = self.haproxy_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pid_gone(pid), 10, what="HAProxy gone")
        for b in self.backends:
            b.close()


@contextlib.contextmanager
def lb_stack(servers: Stack, etcd: Etcd, tmp: Path, **env: str) -> Iterator[LbStack]:
    s = LbStack(servers, etcd, tmp, **env)
    try:
        yield s
    finally:
        s.close()


@dataclasses.dataclass
class ExternalHAProxy:
    """HAProxy started by someone other than the lb (the test, as systemd would): the
    settings an lb with HAPROXY_MANAGE=external needs, and the supervisor to restart it."""

    supervisor: SpawnedHAProxy
    env: dict[str, str]


@contextlib.contextmanager
def external_haproxy(tmp: Path) -> Iterator[ExternalHAProxy]:
    directory = tmp / "haproxy"
    prepare_directory(directory)
    admin = directory / "admin.sock"
    (directory / "haproxy.cfg").write_text(
        f"global\n    master-worker\n    stats socket {admin} mode 600 level admin\n"
        "    maxconn 200\n"
    )
    supervisor = SpawnedHAProxy("haproxy", str(directory))
    supervisor.start()
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'reload\\n'); s.shutdown(socket.SHUT_WR); s.recv(100)"
    )
    reload_cmd = " ".join(
        shlex.quote(a) for a in (sys.executable, "-c", code, str(directory / "master.sock"))
    )
    env = {
        "HAPROXY_MANAGE": "external",
        "HAPROXY_SOCKET": str(admin),
        "HAPROXY_RELOAD_CMD": reload_cmd,
    }
    try:
        yield ExternalHAProxy(supervisor, env)
    finally:
        supervisor.stop(soft=False)


def request_loop(
    stack: LbStack, host: str, stop: threading.Event, results: list[int], limit: int = 20000
) -> None:
    """Requests in a bounded loop until ``stop``; each status (or -1 for an error)."""
    for _ in range(limit):
        if stop.is_set():
            return
        try:
            status, _ = stack.get(host, timeout=5)
        except OSError:
            status = -1
        results.append(status)
        time.sleep(0.002)
