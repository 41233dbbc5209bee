"""The haroute demo, all on loopback: the original story of ORIGIN.md.

etcd; one register for host "hosta" (address 127.0.0.2); web instances in the named
environment ghost.example of dev (two) and sit (one) and the database of ORIGIN.md, each
with its own announce; a frontend lb routing HTTP by Host for dev and sit; and a sidecar
lb that makes the dev database reachable on 127.0.0.1 at its own port. It prints what to
curl, then runs until Ctrl-C. With ``--check`` it makes those requests itself and exits
(the test suite runs that).
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HOST_IP = "127.0.0.2"
ALIAS = "ghost.example.com"

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


ECHO_SERVER = """
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(4096):
            self.request.sendall(b"db says: " + data)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


from tests.tls import https_get, issue, make_ca  # noqa: E402  (openssl, as the tests make them)


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
        # Prometheus scrape targets: job -> ["127.0.0.1:port", ...]
        self.targets: dict[str, list[str]] = {}

    def metrics_port(self, job: str) -> str:
        port = free_port()
        self.targets.setdefault(job, []).append(f"127.0.0.1:{port}")
        return str(port)

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
        """A daemon with its own METRICS_ADDR, so Prometheus can scrape every one."""
        metrics = self.metrics_port(f"haroute-{module}")
        self.spawn(
            name,
            [sys.executable, "-m", module],
            {"ETCD_ENDPOINTS": self.endpoint, "METRICS_ADDR": metrics, **env},
        )

    def write_prometheus_config(self) -> Path:
        """A prometheus.yml scraping every daemon and HAProxy's exporter (grafana/README.md)."""
        lines = [
            "global:",
            "  scrape_interval: 5s",
            "rule_files:",
            f"  - {ROOT / 'grafana' / 'alerts.yml'}",
            "scrape_configs:",
        ]
        for job, targets in sorted(self.targets.items()):
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                f"      - targets: [{', '.join(repr(t) for t in targets)}]",
            ]
        path = self.workdir / "prometheus.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

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

    def lb(self, name: str, env: dict[str, str]) -> None:
        self.daemon(
            name,
            "lb",
            {
                "HAPROXY_DIR": str(self.workdir / name),
                "HAPROXY_METRICS_ADDR": self.metrics_port("haroute-haproxy"),
                "LB_ID": name,
                "RELOAD_MIN_INTERVAL": "0.2",
                **env,
            },
        )

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


def http_get(port: int, host: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def db_echo(port: int, text: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(text)
        return sock.recv(4096)


def wait(what: str, check: object, workdir: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(check) and check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} did not happen; logs in {workdir}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify and exit")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="haroute-demo-"))
    demo = Demo(workdir)
    http_port, https_port = free_port(), free_port()
    dev_host = "ghost.example.web.dev.app1.internal.skydns.local"
    sit_host = "ghost.example.web.sit.app1.internal.skydns.local"
    certs = workdir / "certs"
    certs.mkdir()
    ca = make_ca(workdir / "ca", "haroute-demo-ca")
    cert, key = issue(ca, dev_host, (f"DNS:{dev_host}", f"DNS:{sit_host}", f"DNS:{ALIAS}"))
    (certs / "default.pem").write_text(cert + key)
    try:
        demo.start_etcd()
        demo.daemon(
            "register",
            "register",
            {
                "RUNTIME": "host",
                "NODE_NAME": "hosta",
                "HOST_IP": HOST_IP,
            },
        )
        demo.lb(
            "frontend",
            {
                "LISTEN_PATH": "/services/internal/app1/dev,/services/internal/app1/sit",
                "HTTP_BIND": f"127.0.0.1:{http_port}",
                "HTTPS_BIND": f"127.0.0.1:{https_port}",
                "CERT_DIR": str(certs),
                "TCP_BIND_ADDR": "",
                "ADVERTISE_IP": "127.0.0.1",
                "FRONTEND_PORT": str(http_port),
            },
        )
        demo.web("web-dev-1", "dev")
        demo.web("web-dev-2", "dev")
        demo.web("web-sit-1", "sit")
        db_port = free_port(HOST_IP)
        demo.spawn("db", [sys.executable, "-c", ECHO_SERVER, HOST_IP, str(db_port)])
        demo.daemon(
            "announce-db",
            "announce",
            {
                "ANNOUNCE_PATH": "/internal/app1/dev/db/ghost.example",
                "PORT": str(db_port),
                "TYPE": "TCP",
                "ANNOUNCE_ID": "0ce60d000eac",
                "ANNOUNCE_HOST": "hosta",
            },
        )
        demo.lb(
            "sidecar",
            {
                "LISTEN_PATH": "/services/internal/app1/dev/db/ghost.example",
                "HTTP_BIND": "",
                "TCP_BIND_ADDR": "127.0.0.1",
            },
        )
        wait(
            "dev routing",
            lambda: len({http_get(http_port, dev_host) for _ in range(6)}) == 2,
            workdir,
        )
        wait("sit routing", lambda: "web-sit-1" in http_get(http_port, sit_host), workdir)
        # What an operator does (SPEC §10, `haroute drain` and `haroute config` write these):
        # drain web-dev-2 for maintenance, and give dev's web an extra Host name.
        pin = "/maintenance/internal/app1/dev/web/ghost.example/web-dev-2"
        demo.etcdctl("put", pin, json.dumps({"STATE": "drain", "REASON": "demo", "BY": "demo"}))
        demo.etcdctl(
            "put", "/config/internal/app1/dev/web/ghost.example", json.dumps({"ALIASES": [ALIAS]})
        )
        wait(
            "the drain",
            lambda: (
                {http_get(http_port, dev_host) for _ in range(6)}
                == {"hello from web-dev-1 (dev)\n"}
            ),
            workdir,
        )
        wait("the alias", lambda: "web-dev-1" in http_get(http_port, ALIAS), workdir)
        wait(
            "https",
            lambda: "web-dev-1" in str(https_get(https_port, dev_host, ca.cert)),
            workdir,
        )
        wait("the sidecar", lambda: db_echo(db_port, b"hi") == b"db says: hi", workdir)
        prometheus_yml = demo.write_prometheus_config()
        print(
            f"""haroute demo is running: etcd at {demo.endpoint}, logs in {workdir}

The frontend lb routes by Host header (it also announced itself in /frontends, so the
DNS records of the web services point at it):
  curl -H 'Host: {dev_host}' http://127.0.0.1:{http_port}/
  curl -H 'Host: {sit_host}' http://127.0.0.1:{http_port}/
  curl -H 'Host: unknown.example' http://127.0.0.1:{http_port}/     # 503

An operator drained web-dev-2 (only web-dev-1 answers dev now) and gave dev an alias:
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} get --prefix /maintenance
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} get --prefix /config
  curl -H 'Host: {ALIAS}' http://127.0.0.1:{http_port}/
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} del {pin}   # web-dev-2 is back

HTTPS with SNI (the certificates in {certs}, applied without a reload):
  curl --cacert {ca.cert} --resolve {dev_host}:{https_port}:127.0.0.1 https://{dev_host}:{https_port}/

The sidecar lb makes the dev database of ORIGIN.md reachable on its own port:
  python3 -c 'import socket; s=socket.create_connection(("127.0.0.1",{db_port})); s.sendall(b"hello"); print(s.recv(99))'

Metrics: every daemon and both HAProxies export Prometheus metrics; a scrape config for
all of them is at {prometheus_yml}:
  prometheus --config.file={prometheus_yml} --storage.tsdb.path={workdir}/prometheus --web.listen-address=127.0.0.1:9090
then import grafana/haroute.json into Grafana with that Prometheus as its data source.

What the daemons wrote to etcd:
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} get --prefix /services
  ETCDCTL_API=3 etcdctl --endpoints={demo.endpoint} get --prefix /skydns
Ctrl-C stops everything.""",
            flush=True,
        )
        if args.check:
            dns = demo.keys("/skydns/local/skydns/internal/app1/dev/web/example/ghost/")
            assert (
                all(v == {"host": "127.0.0.1", "port": http_port, "ttl": 15} for v in dns.values())
                and len(dns) == 2
            ), dns
            assert http_get(http_port, sit_host).startswith("hello from web-sit-1")
            answer = https_get(https_port, ALIAS, ca.cert)
            assert answer is not None and answer[1].startswith("hello from web-dev-1")
            demo.etcdctl("del", pin)
            wait(
                "the pin deleted",
                lambda: len({http_get(http_port, dev_host) for _ in range(6)}) == 2,
                workdir,
            )
            if shutil.which("promtool"):
                subprocess.run(
                    ["promtool", "check", "config", str(prometheus_yml)],
                    check=True,
                    capture_output=True,
                )
            for targets in demo.targets.values():
                for target in targets:
                    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
                        assert resp.status == 200, target
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
