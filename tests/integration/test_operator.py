"""What an operator tells the lb through etcd (SPEC §10), applied by a real lb to a real
HAProxy 2.6: per-service settings in /config (HTTP checks on a path, aliases, balance)
and instance pins in /maintenance (drain, weight), kept through reloads and restarts."""

from __future__ import annotations

import http.client
import http.server
import json
import signal
import threading
import time
from pathlib import Path

from tests.lb_helpers import LbStack, QuietServer, host_of, lb_stack, name_handler
from tests.servers import Etcd, Stack, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SIT = "/internal/app1/sit/web/ghost.example"
BE_WEB = "be_internal_app1_dev_web_ghost_example"


class Sick:
    """An HTTP server answering its name, except on /healthz, where it answers
    ``health`` (500: sick)."""

    def __init__(self, name: str, health: int) -> None:
        handler = name_handler(name, lambda path: health if path == "/healthz" else 200)
        self.name = name
        self.server = QuietServer(("127.0.0.2", 0), handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serves(lb: LbStack, path: str, names: set[str], timeout: float = 10) -> None:
    wait_for(lambda: lb.answers(host_of(path)) == names, timeout, 0.05, f"{path} -> {names}")


def test_an_http_check_on_a_path_takes_a_sick_instance_out(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """CHECK {TYPE http, PATH /healthz}: the instance whose /healthz answers 500 is taken
    out by HAProxy's checks, the healthy one serves; the change is a reload with reason
    config_changed."""
    good, sick = Sick("good", 200), Sick("sick", 500)
    try:
        with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
            lb.start()
            lb.put(WEB, "g", good.port)
            lb.put(WEB, "s", sick.port)
            serves(lb, WEB, {"good", "sick"})  # TCP checks: both up
            lb.session.put(
                "/config/internal/app1/dev/web",
                json.dumps({"CHECK": {"TYPE": "http", "PATH": "/healthz", "INTERVAL": 0.2}}),
            )
            wait_for(
                lambda: (
                    lb.metric("haroute_reloads_total", reason="config_changed", result="ok") >= 1
                ),
                10,
                what="config_changed reload",
            )
            assert "option httpchk GET /healthz" in lb.config()
            serves(lb, WEB, {"good"}, timeout=15)
    finally:
        good.close()
        sick.close()


def test_aliases_route_to_the_first_environment_without_a_reload(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """ALIASES: a request with the alias Host reaches the environment, added with 0
    reloads; an alias claimed by a second environment stays with the first (reported)."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(SIT, "s1", b2.port)
        serves(lb, WEB, {"b1"})
        serves(lb, SIT, {"b2"})
        reloads = lb.haproxy_reloads()
        lb.session.put(f"/config{WEB}", json.dumps({"ALIASES": ["ghost.example.com"]}))
        wait_for(lambda: lb.answers("ghost.example.com") == {"b1"}, 10, 0.05, "alias routes")
        lb.session.put(f"/config{SIT}", json.dumps({"ALIASES": ["ghost.example.com"]}))
        wait_for(
            lambda: lb.metric("haroute_problems", kind="alias_clash") == 1, 10, what="reported"
        )
        assert lb.answers("ghost.example.com") == {"b1"}
        lb.session.delete(f"/config{WEB}")
        wait_for(lambda: lb.answers("ghost.example.com") == {"b2"}, 10, 0.05, "alias moves")
        assert lb.haproxy_reloads() == reloads


def test_a_drain_pin_holds_through_reloads_and_restarts_and_weights_split(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A drain pin takes no new requests to the instance; it holds through a reload and
    an lb restart; weights 0 and 100 send everything to the 100; deleting the pins gives
    the instances back."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        first = lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        pin = f"/maintenance{WEB}/w2"
        lb.session.put(pin, json.dumps({"STATE": "drain", "REASON": "test", "BY": "pytest"}))
        serves(lb, WEB, {"b1"})
        lb.put(SIT, "s1", b1.port)  # a reload for a new environment
        wait_for(
            lambda: lb.metric("haroute_reloads_total", reason="new_backend", result="ok") >= 2,
            10,
            what="the reload",
        )
        serves(lb, WEB, {"b1"})
        first.stop(signal.SIGKILL)
        lb.start()  # adopts; the pin still applies
        serves(lb, WEB, {"b1"})
        lb.session.put(pin, json.dumps({"STATE": "ready", "WEIGHT": 100}))
        lb.session.put(f"/maintenance{WEB}/w1", json.dumps({"WEIGHT": 0}))
        serves(lb, WEB, {"b2"})  # weight 0 beside 100: all to the one with 100
        lb.session.delete(pin)
        lb.session.delete(f"/maintenance{WEB}/w1")
        serves(lb, WEB, {"b1", "b2"})


class Held:
    """An HTTP server answering its name; a request for /held waits for :meth:`release`."""

    def __init__(self, name: str) -> None:
        self.released = threading.Event()
        self.arrived = threading.Event()
        self.server = QuietServer(("127.0.0.2", 0), name_handler(name, self._status))
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _status(self, path: str) -> int:
        if path == "/held":
            self.arrived.set()
            self.released.wait(30)
        return 200

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


def test_a_drain_pin_lets_an_established_request_finish(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A request in flight on an instance when it is pinned to drain finishes with its
    answer, held well past DRAIN_TIMEOUT (1 s here: a pinned drain is never cut to maint),
    while every new request goes to the other instance."""
    held = Held("w2")
    try:
        with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
            b1 = lb.backend("b1")
            lb.start()
            lb.put(WEB, "w2", held.port)
            serves(lb, WEB, {"w2"})
            answer: list[tuple[int, str]] = []

            def in_flight() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", lb.http_port, timeout=30)
                try:
                    conn.request("GET", "/held", headers={"Host": host_of(WEB)})
                    resp = conn.getresponse()
                    answer.append((resp.status, resp.read().decode()))
                finally:
                    conn.close()

            client = threading.Thread(target=in_flight, daemon=True)
            client.start()
            assert held.arrived.wait(10), "the request never reached w2"
            lb.put(WEB, "w1", b1.port)
            pin = f"/maintenance{WEB}/w2"
            lb.session.put(pin, json.dumps({"STATE": "drain", "BY": "pytest"}))
            serves(lb, WEB, {"b1"})
            time.sleep(3)  # past DRAIN_TIMEOUT (1 s) and a few lb cycles
            assert lb.answers(host_of(WEB)) == {"b1"}
            assert answer == []  # still in flight
            held.release()
            client.join(10)
            assert answer == [(200, "w2")]
    finally:
        held.close()


def test_hostile_operator_values_never_reach_haproxy(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Values in /config and /maintenance aimed at HAProxy's syntax are rejected (counted),
    never rendered, mapped or sent; the other fields still apply."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        evil = "/x\nbackend evil\n  server s 127.0.0.9:80"
        lb.session.put(
            "/config/internal/app1/dev/web",
            json.dumps(
                {
                    "CHECK": {"TYPE": "http", "PATH": evil},
                    "BALANCE": "roundrobin;evil",
                    "ALIASES": ["a b", "evil;x"],
                    "TIMEOUT_SERVER": 30,
                }
            ),
        )
        lb.session.put(f"/maintenance{WEB}/w1", json.dumps({"STATE": "ready;evil", "WEIGHT": 7}))
        wait_for(
            lambda: lb.metric("haroute_reloads_total", reason="config_changed", result="ok") >= 1,
            10,
            what="the valid field applied",
        )
        assert "timeout server 30000ms" in lb.config()
        text = lb.config() + (lb.dir / "hosts.map").read_text()
        for needle in ("evil", "127.0.0.9", "a b"):
            assert needle not in text
        assert lb.lb is not None and "evil" not in "".join(
            line for line in lb.lb.log().splitlines() if "[runtime]" in line
        )
        serves(lb, WEB, {"b"})


def test_access_logs_to_a_file_and_to_syslog(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """ACCESS_LOG: with a file, every request is one line naming the backend and server
    (option httplog); with udp://host:port, the line arrives at a syslog listener."""
    import socket

    log_file = tmp_path / "access.log"
    with lb_stack(servers, etcd, tmp_path, ACCESS_LOG=str(log_file), SPARE_BACKENDS="0") as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        wait_for(
            lambda: log_file.exists() and f"{BE_WEB}/s1" in log_file.read_text(),
            10,
            0.1,
            "an access log line",
        )
        line = next(x for x in log_file.read_text().splitlines() if f"{BE_WEB}/s1" in x)
        assert "http-in" in line and "GET / HTTP/1.1" in line
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslog:
        syslog.bind(("127.0.0.1", 0))
        syslog.settimeout(10)
        port = syslog.getsockname()[1]
        with lb_stack(servers, etcd, tmp_path / "udp", ACCESS_LOG=f"udp://127.0.0.1:{port}") as lb:
            b = lb.backend("b")
            (tmp_path / "udp").mkdir(exist_ok=True)
            lb.start()
            lb.put(WEB, "w2", b.port)
            serves(lb, WEB, {"b"})
            data = b""
            while b"GET / HTTP/1.1" not in data:
                data = syslog.recv(65536)
            assert b"http-in" in data


def test_status_shows_an_instances_pin(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """`haroute status` names the pin of a pinned instance, with who set it and why."""
    import os
    import subprocess
    import sys

    from tests.servers import ROOT

    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        pin = json.dumps({"STATE": "drain", "REASON": "kernel update", "BY": "ann"})
        lb.session.put(f"/maintenance{WEB}/w2", pin)
        serves(lb, WEB, {"b1"})
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env.update({"PYTHONPATH": str(ROOT), **lb.env})
        out = subprocess.run(
            [sys.executable, "-m", "lb.cli", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        rows = {r["instance"]: r for r in json.loads(out)["servers"] if r["instance"]}
        assert rows["w2"]["pin"] == "drain (by ann: kernel update)"
        assert rows["w1"]["pin"] is None


def test_https_redirect_sends_plain_http_to_https(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """HTTPS_REDIRECT: a plain HTTP request to the environment gets a 301 to https."""
    import http.client

    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
        b = lb.backend("b")
        lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        lb.session.put(f"/config{WEB}", json.dumps({"HTTPS_REDIRECT": True}))

        def redirected() -> str | None:
            conn = http.client.HTTPConnection("127.0.0.1", lb.http_port, timeout=5)
            try:
                conn.request("GET", "/x", headers={"Host": host_of(WEB)})
                resp = conn.getresponse()
                return resp.getheader("Location") if resp.status == 301 else None
            finally:
                conn.close()

        location = wait_for(redirected, 10, 0.1, "a redirect")
        assert location == f"https://{host_of(WEB)}/x"
