"""Real servers for the integration tests: etcd and our own daemons as processes.

Every server runs on free loopback ports with a temporary directory and is stopped by
pid. Nothing here is a fake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """The process is gone, or a zombie waiting for its parent (a HAProxy the test process
    itself started, say) to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Etcd:
    """One etcd member (Debian's etcd-server) on loopback."""

    BIN = shutil.which("etcd") or "/usr/bin/etcd"

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "n1",
        extra: tuple[str, ...] = (),
        scheme: str = "http",
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / f"etcd-{name}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"etcd-{name}.log"
        # "https": pass the TLS flags in ``extra``; the client files are in workdir/tls.
        self.scheme = scheme

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def cluster_args(self) -> list[str]:
        """How this member finds its peers: alone here; a cluster member overrides it."""
        return ["--initial-cluster", f"{self.name}={self.peer_url}"]

    def launch(self) -> None:
        """Start the process without waiting for it to be healthy."""
        client = self.endpoint
        args = [
            self.BIN,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            *self.cluster_args(),
            "--log-level",
            "warn",
            *self.extra,
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=self.log_path.open("ab"), start_new_session=True
        )

    def start(self) -> Etcd:
        self.launch()
        wait_for(self.healthy, 15, 0.05, f"etcd {self.name} /health")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
        return self._health_ok()

    def _health_ok(self) -> bool:
        try:
            ctx = None
            if self.scheme == "https":
                import ssl

                ctx = ssl.create_default_context(cafile=str(self.workdir / "tls" / "ca.pem"))
                ctx.load_cert_chain(
                    str(self.workdir / "tls" / "client.pem"),
                    str(self.workdir / "tls" / "client-key.pem"),
                )
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=ctx) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, timeout=15)
            wait_for(
                lambda: pid_gone(self.proc.pid) if self.proc else True, 10, what="etcd pid gone"
            )

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def ctl(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        """Run etcdctl against this member (v3 API)."""
        full_env = {**os.environ, "ETCDCTL_API": "3", **(env or {})}
        tls: list[str] = []
        if self.scheme == "https":
            tls_dir = self.workdir / "tls"
            tls = [
                f"--cacert={tls_dir / 'ca.pem'}",
                f"--cert={tls_dir / 'client.pem'}",
                f"--key={tls_dir / 'client-key.pem'}",
            ]
        out = subprocess.run(
            ["etcdctl", f"--endpoints={self.endpoint}", *tls, *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=20,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"etcdctl {args} failed: {out.stderr}")
        return out.stdout


class Daemon:
    """One of our daemons (``python -m announce|register|lb``) as a real process."""

    def __init__(
        self, module: str, env: Mapping[str, str], log_path: Path, prefix: Sequence[str] = ()
    ) -> None:
        self.module = module
        self.env = dict(env)
        # A command the daemon runs under (e.g. prlimit, setpriv).
        self.prefix = tuple(prefix)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "ANNOUNCE"))}
        env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", self.module],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, sig, timeout)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Stack:
    """Tracks every server and daemon a test started, and stops them all at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._daemons: list[Daemon] = []
        self._etcds: list[Etcd] = []
        self._counter = 0

    def etcd(self, **kwargs: Any) -> Etcd:
        server = Etcd(self.workdir, **kwargs)
        self._etcds.append(server)
        return server.start()

    def daemon(self, module: str, env: Mapping[str, str], prefix: Sequence[str] = ()) -> Daemon:
        self._counter += 1
        d = Daemon(module, env, self.workdir / f"{module}-{self._counter}.log", prefix)
        self._daemons.append(d)
        return d.start()

    def close(self) -> None:
        for d in self._daemons:
            d.stop(signal.SIGKILL)
        for e in self._etcds:
            with contextlib.suppress(ProcessLookupError):
                e.thaw()
            e.stop(signal.SIGKILL)


@contextlib.contextmanager
def stack(workdir: Path) -> Iterator[Stack]:
    s = Stack(workdir)
    try:
        yield s
    finally:
        s.close()
