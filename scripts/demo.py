"""The haroute demo, all on loopback: the original story of ORIGIN.md.

etcd, one register for host "hosta" (address 127.0.0.2), two web instances in the named
environment ghost.example of dev and sit, and the database of ORIGIN.md, each with its
own announce. It prints what was written to etcd and what to try, then runs until
Ctrl-C. With ``--check`` it verifies the keys and exits (the test suite runs that).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_IP = "127.0.0.2"

WEB_SERVER = """
import http.server, sys
body = sys.argv[2].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[3])), H).serve_forever()
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.etcd_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.etcd_port}"

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.procs.append(
            subprocess.Popen(args, env=full_env, stdout=log, stderr=log, start_new_session=True)
        )

    def start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{free_port()}"
        self.spawn(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "demo",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                self.endpoint,
                "--advertise-client-urls",
                self.endpoint,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"demo={peer}",
                "--log-level",
                "warn",
            ],
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("demo: etcd did not become healthy; see " + str(self.workdir))

    def daemon(self, name: str, module: str, env: dict[str, str]) -> None:
        self.spawn(name, [sys.executable, "-m", module], {"ETCD_ENDPOINTS": self.endpoint, **env})

    def web(self, name: str, env_name: str) -> int:
        port = free_port(HOST_IP)
        self.spawn(
            name,
            [
                sys.executable,
                "-c",
                WEB_SERVER,
                HOST_IP,
                f"hello from {name} ({env_name})\n",
                str(port),
            ],
        )
        self.daemon(
            f"announce-{name}",
            "announce",
            {
                "ANNOUNCE_PATH": f"/internal/app1/{env_name}/web/ghost.example",
                "PORT": str(port),
                "TYPE": "HTTP",
                "ANNOUNCE_HOST": "hosta",
                "ANNOUNCE_ID": name,
            },
        )
        return port

    def etcdctl(self, *args: str) -> str:
        out = subprocess.run(
            ["etcdctl", f"--endpoints={self.endpoint}", *args],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        return out.stdout

    def keys(self, prefix: str) -> dict[str, object]:
        lines = self.etcdctl("get", "--prefix", prefix).splitlines()
        return {k: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify and exit")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="haroute-demo-"))
    demo = Demo(workdir)
    try:
        demo.start_etcd()
        demo.daemon(
            "register",
            "register",
            {
                "RUNTIME": "host",
                "NODE_NAME": "hosta",
                "HOST_IP": HOST_IP,
                "FRONTEND_IP": "127.0.0.1",
            },
        )
        dev = demo.web("web-dev-1", "dev")
        sit = demo.web("web-sit-1", "sit")
        demo.daemon(
            "announce-db",
            "announce",
            {
                "ANNOUNCE_PATH": "/internal/app1/dev/db/ghost.example",
                "PORT": "5432",
                "TYPE": "TCP",
                "ANNOUNCE_ID": "0ce60d000eac",
                "ANNOUNCE_HOST": "hosta",
            },
        )
        deadline = time.monotonic() + 15
        while len(demo.keys("/services/")) < 3 or len(demo.keys("/skydns/")) < 3:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: services did not register; logs in {workdir}")
            time.sleep(0.2)
        services = demo.keys("/services/")
        skydns = demo.keys("/skydns/")
        print("haroute demo is running (etcd at " + demo.endpoint + ")\n")
        for title, found in (("services", services), ("DNS records", skydns)):
            print(f"{title}:")
            for key, value in found.items():
                print(f"  {key}\n    {json.dumps(value)}")
        print(f"""
Try:
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} get --prefix /
  curl http://{HOST_IP}:{dev}/     # the dev instance, at the address register published
  curl http://{HOST_IP}:{sit}/     # the sit instance
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} watch --prefix /services
The load balancer (lb) that routes http://ghost.example.web.dev.app1.internal.skydns.local
to these instances is the next piece of work. Logs: {workdir}. Ctrl-C stops everything.""")
        if args.check:
            db = services["/services/internal/app1/dev/db/ghost.example/0ce60d000eac"]
            assert isinstance(db, dict) and db["IP"] == HOST_IP and db["EXT_PORT"] == 5432
            for port in (dev, sit):
                with urllib.request.urlopen(f"http://{HOST_IP}:{port}/", timeout=5) as resp:
                    assert resp.status == 200
            print("\ndemo: check passed")
            return 0
        # Blocked only now: children spawned earlier must not inherit a blocked SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        demo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
