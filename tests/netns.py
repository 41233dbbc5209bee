"""Hosts as network namespaces for the multi-host tests (iproute2, veth + bridge).

A :class:`Lab` makes one namespace per host, each with its own address on the TEST range
198.18.0.0/24 (RFC 2544 benchmarking) and an ``eth0`` joined to a bridge that lives in a
namespace of its own (the "switch"), so the root namespace is never touched: no link,
address or route of it changes. Namespace names carry the test process' pid. Every
process is started with ``ip netns exec <ns>`` (which execs, so the pid we hold is the
process' own), is stopped by pid, and the namespaces are deleted at the end, which takes
their veth ends and the bridge with them.

The test process itself stays in the root namespace and reaches into a host with
``ip netns exec`` (``etcdctl``, and the small probes at the bottom of this file, run as
``python -m tests.netns ...``). HAProxy's admin socket is a Unix socket, reachable from
the root namespace through the file system.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import http.server
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.servers import ROOT, Daemon, Etcd, pid_gone, stop_process, wait_for

# RFC 2544 benchmarking range: never routed anywhere real. Nothing else is allowed here.
TEST_NET = ipaddress.ip_network("198.18.0.0/24")
_labs = itertools.count(1)


def ip(*args: str) -> None:
    """One iproute2 command; its stderr in the error when it fails."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)
    if out.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")


class NsDaemon(Daemon):
    """One of our daemons run inside a network namespace."""

    def __init__(self, netns: str, module: str, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(module, env, log_path)
        self.netns = netns

    def start(self) -> NsDaemon:
        # As Daemon.start, behind ``ip netns exec`` (which execs: self.pid is python's).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "ANNOUNCE"))}
        env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, "-m", self.module],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("ab"),
            start_new_session=True,
        )
        return self


class Lab:
    """Hosts as network namespaces on one bridge; every process in them tracked by pid."""

    def __init__(self, workdir: Path, hosts: Mapping[str, str]) -> None:
        """``hosts``: short host name → its address on 198.18.0.0/24."""
        for address in hosts.values():
            assert ipaddress.ip_address(address) in TEST_NET, f"{address} is not in {TEST_NET}"
        self.workdir = workdir
        self.tag = f"hrt{os.getpid()}x{next(_labs)}"
        self.switch = f"{self.tag}-switch"
        self.hosts = dict(hosts)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemons: list[NsDaemon] = []
        self._made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def addr(self, host: str) -> str:
        return self.hosts[host]

    def up(self) -> Lab:
        for name in (self.switch, *(self.ns(h) for h in self.hosts)):
            ip("netns", "add", name)
            self._made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host, address in self.hosts.items():
            # The veth is made inside the switch: its names never meet the root's.
            ip("-n", self.switch, "link", "add", host, "type", "veth", "peer", "name", "eth0")
            ip("-n", self.switch, "link", "set", "eth0", "netns", self.ns(host))
            ip("-n", self.switch, "link", "set", host, "master", "br0", "up")
            ip("-n", self.ns(host), "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", self.ns(host), "link", "set", "eth0", "up")
        return self

    # --- processes -------------------------------------------------------------------

    def popen(
        self,
        host: str,
        argv: Sequence[str],
        *,
        log: str,
        env: Mapping[str, str] | None = None,
        pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        """A long-running process in ``host``'s namespace, stopped by pid at the end; its
        output in ``<log>.out`` (or a pipe) and ``<log>.log``."""
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *argv],
            env=full_env,
            stdout=subprocess.PIPE if pipe else (self.workdir / f"{log}.out").open("ab"),
            stderr=(self.workdir / f"{log}.log").open("ab"),
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: Sequence[str], timeout: float = 30) -> str:
        """A short command in ``host``'s namespace; its stdout."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "ETCDCTL_API": "3"},
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"{argv} in {host} failed: {out.stderr.strip()[-2000:]}")
        return out.stdout

    def daemon(self, host: str, module: str, env: Mapping[str, str]) -> NsDaemon:
        d = NsDaemon(
            self.ns(host), module, env, self.workdir / f"{module}-{host}-{len(self.daemons)}.log"
        )
        self.daemons.append(d)
        return d.start()

    def web(self, host: str, name: str, port: int) -> subprocess.Popen[bytes]:
        """A small HTTP server on ``host``'s address answering with ``name``."""
        argv = [sys.executable, "-m", "tests.netns", "serve", name, self.addr(host), str(port)]
        proc = self.popen(host, argv, log=f"web-{name}")
        wait_for(lambda: self.answers_tcp(host, self.addr(host), port), 10, 0.05, f"web {name} up")
        return proc

    def answers_tcp(self, host: str, address: str, port: int) -> bool:
        try:
            self.run(host, ["bash", "-c", f"exec 3<>/dev/tcp/{address}/{port}"], timeout=5)
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        for d in self.daemons:
            d.stop(signal.SIGKILL)
        for proc in self.procs:
            stop_process(proc, signal.SIGKILL)
        for name in reversed(self._made):
            with contextlib.suppress(AssertionError):
                ip("netns", "del", name)


@contextlib.contextmanager
def lab(workdir: Path, hosts: Mapping[str, str]) -> Iterator[Lab]:
    made = Lab(workdir, hosts)
    try:
        yield made.up()
    finally:
        made.close()


class NsEtcd:
    """A single etcd member inside one of the lab's namespaces, on that host's address."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab = lab
        self.host = host
        address = lab.addr(host)
        self.endpoint = f"http://{address}:2379"
        self.peer = f"http://{address}:2380"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NsEtcd:
        self.proc = self.lab.popen(
            self.host,
            [
                Etcd.BIN,
                "--name",
                "n1",
                "--data-dir",
                str(self.lab.workdir / "etcd-data"),
                "--listen-client-urls",
                self.endpoint,
                "--advertise-client-urls",
                self.endpoint,
                "--listen-peer-urls",
                self.peer,
                "--initial-advertise-peer-urls",
                self.peer,
                "--initial-cluster",
                f"n1={self.peer}",
                "--log-level",
                "warn",
            ],
            log="etcd",
        )
        return self

    def ctl(self, *args: str, host: str | None = None) -> str:
        """etcdctl from ``host``'s namespace (default: etcd's own)."""
        return self.lab.run(host or self.host, ["etcdctl", f"--endpoints={self.endpoint}", *args])

    def healthy(self, host: str) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("etcd exited: " + (self.lab.workdir / "etcd.log").read_text())
        try:
            out = self.lab.run(host, ["curl", "-s", "--max-time", "2", f"{self.endpoint}/health"])
            return bool(json.loads(out).get("health") == "true")
        except (AssertionError, ValueError):
            return False

    def get_prefix(self, prefix: str) -> tuple[dict[str, dict[str, Any]], int]:
        """Every key under ``prefix`` → its create/mod revision and lease, and the store
        revision."""
        data = json.loads(self.ctl("get", "--prefix", prefix, "-w", "json"))
        out = {
            base64.b64decode(kv["key"]).decode(): {
                "create_revision": kv.get("create_revision", 0),
                "mod_revision": kv.get("mod_revision", 0),
                "lease": kv.get("lease", 0),
            }
            for kv in data.get("kvs", [])
        }
        return out, int(data["header"]["revision"])

    def values(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` → its value."""
        data = json.loads(self.ctl("get", "--prefix", prefix, "-w", "json"))
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in data.get("kvs", [])
        }

    def watch(self, prefix: str, start_revision: int) -> WatchLog:
        """Every event under ``prefix`` from ``start_revision`` on, with its arrival time."""
        argv = ["etcdctl", f"--endpoints={self.endpoint}", "watch", "--prefix", prefix]
        argv += ["--rev", str(start_revision), "-w", "json"]
        return WatchLog(self.lab.popen(self.host, argv, log="watch", pipe=True))


class WatchLog:
    """Reads an ``etcdctl watch -w json`` (one response a line) as it arrives; etcdctl is
    the oracle here, independent of the etcd client under test."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        #: (arrival time.monotonic(), key, deleted) of every event
        self.events: list[tuple[float, str, bool]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            if not line.strip():
                continue
            for ev in json.loads(line).get("Events") or []:
                key = base64.b64decode(ev["kv"]["key"]).decode()
                self.events.append((now, key, ev.get("type", 0) == 1))

    def deleted(self) -> dict[str, float]:
        """Deleted key → when its delete arrived."""
        return {key: t for t, key, deleted in self.events if deleted}

    def stop(self) -> None:
        stop_process(self.proc)
        self._thread.join(10)


def stop_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    wait_for(lambda: pid_gone(pid), 10, what=f"pid {pid} gone")


# --- probes, run inside a namespace as ``python -m tests.netns ...`` ----------------------


def _serve(name: str, address: str, port: int) -> None:
    from tests.lb_helpers import QuietServer, name_handler

    QuietServer((address, port), name_handler(name)).serve_forever()


def _requests(
    address: str, port: int, host: str, stop_file: str | None, limit: int, seconds: float
) -> None:
    """GET / with ``host`` in a bounded loop; one line per request:
    ``<monotonic time> <status or -1> <body or error>``."""
    deadline = time.monotonic() + seconds
    for _ in range(limit):
        if (stop_file and os.path.exists(stop_file)) or time.monotonic() > deadline:
            return
        started = time.monotonic()
        conn = http.client.HTTPConnection(address, port, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            status, body = resp.status, resp.read().decode(errors="replace")
        except OSError as exc:
            status, body = -1, type(exc).__name__
        finally:
            conn.close()
        print(f"{started:.4f} {status} {body.split()[0] if body.strip() else '-'}", flush=True)
        if stop_file:
            time.sleep(0.005)


def parse_requests(text: str) -> list[tuple[float, int, str]]:
    out = []
    for line in text.splitlines():
        t, status, body = line.split(" ", 2)
        out.append((float(t), int(status), body))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.netns")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="an HTTP server answering with its name")
    serve.add_argument("name")
    serve.add_argument("address")
    serve.add_argument("port", type=int)
    req = sub.add_parser("requests", help="GET / in a bounded loop")
    req.add_argument("address")
    req.add_argument("port", type=int)
    req.add_argument("host")
    req.add_argument("--stop-file")
    req.add_argument("--limit", type=int, default=20000)
    req.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        _serve(args.name, args.address, args.port)
    else:
        _requests(args.address, args.port, args.host, args.stop_file, args.limit, args.seconds)


if __name__ == "__main__":
    main()
