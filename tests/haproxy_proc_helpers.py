"""Helpers for the tests of ``lb/process.py`` against a real HAProxy: a minimal config,
a small HTTP backend on loopback, plain HTTP requests, and cleanup by pid of every
HAProxy started from a test directory."""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lb.procfs import pid_alive
from tests.servers import wait_for

HAPROXY_BIN = shutil.which("haproxy") or "/usr/sbin/haproxy"


def haproxy_config(
    directory: Path | str,
    http_port: int,
    *,
    backend_port: int | None = None,
    extra: str = "",
    comment: str = "",
) -> str:
    """A small master-worker config like the template's: the admin stats socket in
    ``directory``, one HTTP frontend on loopback (answering itself, or through one
    backend server), then ``extra`` sections."""
    if backend_port is None:
        route = "    http-request return status 200 content-type text/plain string ok\n"
        backend = ""
    else:
        route = "    default_backend be_app\n"
        backend = f"backend be_app\n    server s1 127.0.0.1:{backend_port}\n"
    return (
        f"# {comment}\n"
        "global\n"
        "    master-worker\n"
        f"    stats socket {directory}/admin.sock mode 600 level admin expose-fd listeners\n"
        "    maxconn 1000\n"
        "    hard-stop-after 15s\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 2s\n"
        "    timeout client 10s\n"
        "    timeout server 10s\n"
        "frontend fe_main\n"
        f"    bind 127.0.0.1:{http_port}\n"
        f"{route}"
        f"{backend}"
        f"{extra}"
    )


def write_atomic(path: Path | str, text: str) -> None:
    """Write next to ``path`` and rename, as the lb installs a checked config."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def http_get(port: int, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    """One request on a new connection (``Connection: close``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def answers(port: int) -> bool:
    try:
        return http_get(port, timeout=2)[0] == 200
    except OSError:
        return False


class Backend:
    """An HTTP server on a free loopback port: ``/`` answers ``ok``; ``/slow`` answers
    after ``slow_seconds`` and sets :attr:`slow_started` when it begins."""

    def __init__(self, slow_seconds: float = 1.5) -> None:
        self.slow_seconds = slow_seconds
        self.slow_started = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/slow":
                    outer.slow_started.set()
                    time.sleep(outer.slow_seconds)
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def haproxy_pids_in(directory: Path | str) -> list[int]:
    """Live haproxy processes whose command line names ``directory`` (ours, by construction:
    each test has its own directory)."""
    needle = os.fsencode(str(directory))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if comm == "haproxy" and needle in cmdline and pid_alive(int(entry)):
            pids.append(int(entry))
    return sorted(pids)


def kill_haproxies_in(directory: Path | str) -> None:
    """SIGKILL, by pid, every HAProxy started from ``directory``; wait until all are gone."""
    pids = haproxy_pids_in(directory)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        wait_for(functools.partial(_gone, pid), 10, 0.05, f"haproxy {pid} gone")


def _gone(pid: int) -> bool:
    return not pid_alive(pid)
