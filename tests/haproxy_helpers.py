"""A real HAProxy for the integration tests, and small HTTP backends for it to route to.

HAProxy runs in master-worker mode (``-W``, in the foreground as our child) on loopback
with a temporary directory, and is stopped by pid: the master gets SIGTERM (SIGKILL
after a grace), and the test waits until the master and its workers are gone. Every
instance started is remembered, so a test session can prove that none is left behind.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.servers import free_port, wait_for

HAPROXY_BIN = shutil.which("haproxy") or "/usr/sbin/haproxy"
_started: list[HAProxy] = []


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, even between open and read (ProcessLookupError)
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def socket_answers(path: Path, command: bytes = b"show info\n") -> bytes | None:
    """Raw request on a CLI socket (no client code under test); ``None`` if it fails."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(command)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
            return b"".join(chunks)
    except OSError:
        return None


class HAProxy:
    """One HAProxy (master-worker) whose files live in ``workdir``: ``haproxy.cfg``,
    ``admin.sock`` (stats socket), ``master.sock``, ``haproxy.pid``, ``haproxy.log``."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.workdir = workdir
        self.config = config
        self.cfg_path = workdir / "haproxy.cfg"
        self.admin_sock = workdir / "admin.sock"
        self.master_sock = workdir / "master.sock"
        self.pid_path = workdir / "haproxy.pid"
        self.log_path = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: set[int] = set()

    @property
    def master_pid(self) -> int:
        return int(self.pid_path.read_text().split()[0])

    def start(self) -> HAProxy:
        self.cfg_path.write_text(self.config)
        check = subprocess.run(
            [HAPROXY_BIN, "-c", "-f", str(self.cfg_path)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(
            [
                HAPROXY_BIN,
                "-W",
                "-S",
                f"{self.master_sock},level,admin",
                "-f",
                str(self.cfg_path),
                "-p",
                str(self.pid_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
            start_new_session=True,
        )
        _started.append(self)
        self.pids.add(self.proc.pid)
        wait_for(self._ready, 15, 0.05, "haproxy admin socket")
        self.pids |= {self.master_pid} | children(self.master_pid)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.log()[-2000:]}")
        return self.pid_path.exists() and bool(socket_answers(self.admin_sock))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive_pids(self) -> set[int]:
        return {pid for pid in self.pids if pid_alive(pid)}

    def stop(self, grace: float = 10) -> None:
        """SIGTERM the master (from the pid file), SIGKILL what is left after ``grace``;
        returns once the master and every worker it had are gone."""
        if self.proc is None:
            return
        if self.pid_path.exists() and pid_alive(self.master_pid):
            self.pids |= children(self.master_pid)
        for pid in self.alive_pids():
            if pid in (self.master_pid, self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive_pids() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.05)
        for pid in self.alive_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        wait_for(lambda: not self.alive_pids(), 10, what="haproxy pids gone")


def leftover_pids() -> set[int]:
    """Pids of every HAProxy started by these helpers that still runs."""
    return {pid for h in _started for pid in h.alive_pids()}


@contextlib.contextmanager
def haproxy(workdir: Path, config: str) -> Iterator[HAProxy]:
    proxy = HAProxy(workdir, config)
    try:
        yield proxy.start()
    finally:
        proxy.stop()


class Backend:
    """A small HTTP server on ``ip`` (a free port) answering ``200 <name>``. While
    ``hold`` is cleared, requests wait for it (to keep sessions open)."""

    def __init__(self, name: str, ip: str = "127.0.0.1") -> None:
        self.name = name
        self.ip = ip
        self.port = free_port(ip)
        self.hold = threading.Event()
        self.hold.set()
        self.requests = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                backend.requests += 1
                backend.hold.wait(30)
                body = backend.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> Backend:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def http_get(port: int, host: str, timeout: float = 10) -> tuple[int, str]:
    """GET / on 127.0.0.1:``port`` with the Host header ``host``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()
