"""/healthz and /readyz (discovery.health, discovery.metrics): the heartbeat's bound with an
injected clock, the readiness rules, the per-daemon bounds, the HTTP handler (as a WSGI
app and as a real server on loopback) and the probe the images and units run."""

from __future__ import annotations

import gzip
import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from announce.__main__ import healthz_bound as announce_bound
from announce.settings import AnnounceSettings
from discovery.daemon import Loop, Stopper, Turn
from discovery.etcd import EtcdUnavailable
from discovery.health import MARGIN, Health, Heartbeat, Verdict, main, probe_url
from discovery.metrics import Metrics, make_app, serve
from discovery.settings import listen_address, load
from lb.__main__ import healthz_bound as lb_bound
from register.__main__ import healthz_bound as register_bound
from register.settings import RegisterSettings
from tests.helpers import probe
from tests.servers import free_port


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Switch:
    """A readiness check whose verdict the test sets."""

    verdict: Verdict = (False, "not yet")
    calls: list[int] = field(default_factory=list)

    def __call__(self) -> Verdict:
        self.calls.append(1)
        return self.verdict


# --- the heartbeat and its bound ------------------------------------------------------------


def test_alive_while_the_last_turn_is_within_the_bound() -> None:
    """Alive from the start until the bound passes without a turn; each turn restarts it."""
    clock = Clock()
    beat = Heartbeat(clock)
    assert beat.alive(30)[0] and "starting" in beat.alive(30)[1]
    clock.now += 29.9
    assert beat.alive(30)[0]
    clock.now += 0.2
    ok, why = beat.alive(30)
    assert not ok and "no turn since the start" in why
    beat.beat()
    assert beat.alive(30) == (True, "the loop turns: last turn 0.0 s ago (bound 30 s)")
    clock.now += 29.0
    assert beat.alive(30)[0]
    clock.now += 2.0
    assert beat.alive(30) == (False, "stuck: the loop has not turned for 31.0 s (bound 30 s)")


def test_a_failed_turn_still_counts_as_a_turn_for_healthz() -> None:
    """etcd down: the loop turns (backing off), so /healthz stays 200 and /readyz is 503
    saying why the last turn failed."""
    clock = Clock()
    health = Health(Heartbeat(clock), 30)
    health.set_ready(Switch((True, "fine")))
    health.heartbeat.beat("etcd unavailable (down)")
    clock.now += 10
    assert health.alive()[0]
    assert health.ready() == (False, "the last turn failed: etcd unavailable (down)")
    health.heartbeat.beat()
    assert health.ready() == (True, "fine")


def test_ready_needs_alive_and_the_daemon_check() -> None:
    """Not ready before the daemon registers its check, nor while stuck even if its check
    (stale state) passes; otherwise the check's own verdict and reason."""
    clock = Clock()
    health = Health(Heartbeat(clock), 30)
    assert health.ready() == (False, "starting")
    check = Switch((False, "not synced: /announce/ is not listed yet"))
    health.set_ready(check)
    health.heartbeat.beat()
    assert health.ready() == (False, "not synced: /announce/ is not listed yet")
    check.verdict = (True, "synced")
    assert health.ready() == (True, "synced")
    clock.now += 31
    calls = len(check.calls)
    ok, why = health.ready()
    assert not ok and why.startswith("stuck:")
    assert len(check.calls) == calls, "a stuck daemon's check is not even asked"


def test_a_check_that_raises_is_not_ready_and_says_why() -> None:
    """The check reads state the loop changes meanwhile: if it raises, 503 with the error."""
    health = Health(Heartbeat(Clock()), 30)

    def broken() -> Verdict:
        raise RuntimeError("Set changed size during iteration")

    health.set_ready(broken)
    health.heartbeat.beat()
    assert health.ready() == (
        False,
        "the check failed: RuntimeError('Set changed size during iteration')",
    )


def test_the_loop_beats_its_daemons_heartbeat_with_why_a_turn_failed() -> None:
    """discovery.daemon.Loop beats metrics.heartbeat after every turn: the error of a
    failed one (etcd or a bug), nothing after a good one."""
    metrics = Metrics()
    results: Iterator[Exception | None] = iter([EtcdUnavailable("down"), ValueError("x"), None])

    def cycle() -> Turn:
        exc = next(results)
        if exc is not None:
            raise exc
        return Turn(1.0)

    loop = Loop("test", cycle, stop=Stopper(), metrics=metrics)
    assert metrics.heartbeat.last is None
    loop.turn()
    assert metrics.heartbeat.error == "etcd unavailable (down)"
    first = metrics.heartbeat.last
    assert first is not None
    loop.turn()
    assert metrics.heartbeat.error == "unexpected error (ValueError('x'))"
    loop.turn()
    assert metrics.heartbeat.error == "" and loop.last_error == ""
    assert metrics.heartbeat.last is not None and metrics.heartbeat.last >= first


@pytest.mark.parametrize(
    ("daemon", "environ", "longest_wait", "longest_turn", "default"),
    [
        # announce: its keepalive interval or its back-off; waiting out a dead holder.
        ("announce", {}, 5.0, 15 + 2 + 6, 38.0),
        ("announce", {"ANNOUNCE_TTL": "120", "ANNOUNCE_INTERVAL": "60"}, 60.0, 120 + 2 + 6, None),
        # register: its lease refresh (TTL/3) or its back-off; a turn up to its TTL.
        ("register", {}, 5.0, 15, 30.0),
        ("register", {"REGISTER_TTL": "90"}, 30.0, 90, None),
        # lb: its 1 s HAProxy timer or its back-off; a cold start (5 + 60 + 30 s).
        ("lb", {}, 2.0, 95, 107.0),
    ],
)
def test_each_daemons_bound_covers_its_longest_wait_and_turn(
    daemon: str,
    environ: dict[str, str],
    longest_wait: float,
    longest_turn: float,
    default: float | None,
) -> None:
    """The /healthz bound of each daemon is its longest wait plus its longest turn plus
    the margin, from its settings (the numbers deploy/README.md gives)."""
    if daemon == "announce":
        env = {"ANNOUNCE_PATH": "/internal/app1/dev/web", "PORT": "80", "TYPE": "HTTP"}
        bound = announce_bound(load(AnnounceSettings, [], {**env, **environ}, "announce"))
    elif daemon == "register":
        env = {"RUNTIME": "host", "HOST_IP": "127.0.0.2", "NODE_NAME": "hosta"}
        bound = register_bound(load(RegisterSettings, [], {**env, **environ}, "register"))
    else:
        bound = lb_bound()
    assert bound == longest_wait + longest_turn + MARGIN
    if default is not None:
        assert bound == default


# --- the HTTP handler as a WSGI app ---------------------------------------------------------


def call(
    app: Any, path: str, method: str = "GET", **environ: str
) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, dict(headers)
        return None

    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.input": io.BytesIO(),
        **environ,
    }
    body = b"".join(app(env, start_response))
    return seen["status"], seen["headers"], body


def registry_with_a_counter() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("haroute_test_things", "things", registry=registry).inc(3)
    return registry


def test_handler_answers_health_with_a_status_and_one_line() -> None:
    """/healthz and /readyz: 200 or 503, text/plain, one line saying why, never cached;
    HEAD has no body; another method is refused."""
    clock = Clock()
    health = Health(Heartbeat(clock), 30)
    check = Switch((False, "not connected to etcd: the watch of /services/ is down"))
    health.set_ready(check)
    health.heartbeat.beat()
    app = make_app(registry_with_a_counter(), health)

    status, headers, body = call(app, "/healthz")
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert body == b"the loop turns: last turn 0.0 s ago (bound 30 s)\n"
    assert headers["Content-Length"] == str(len(body))

    status, _, body = call(app, "/readyz")
    assert status == "503 Service Unavailable"
    assert body == b"not connected to etcd: the watch of /services/ is down\n"
    check.verdict = (True, "synced")
    assert call(app, "/readyz")[0::2] == ("200 OK", b"synced\n")
    assert call(app, "/readyz", "HEAD")[0::2] == ("200 OK", b"")

    clock.now += 60
    assert call(app, "/healthz")[0] == "503 Service Unavailable"
    assert call(app, "/readyz")[0] == "503 Service Unavailable"
    status, headers, _ = call(app, "/healthz", "POST")
    assert status == "405 Method Not Allowed" and headers["Allow"] == "GET, HEAD"


def test_handler_serves_metrics_as_prometheus_client_does() -> None:
    """Every other path is prometheus_client's own app, answering what it answers alone:
    /metrics (and any other path, as start_http_server did), name[] filters, OpenMetrics
    on request, gzip on request, /favicon.ico."""
    registry = registry_with_a_counter()
    app = make_app(registry, Health(Heartbeat(), 30))
    alone = make_wsgi_app(registry)
    openmetrics = "application/openmetrics-text; version=1.0.0"
    for path, environ in [
        ("/metrics", {}),
        ("/", {}),
        ("/favicon.ico", {}),
        ("/metrics", {"QUERY_STRING": "name[]=nothing_of_that_name"}),
        ("/metrics", {"HTTP_ACCEPT": openmetrics}),
        ("/metrics", {"HTTP_ACCEPT_ENCODING": "gzip"}),
    ]:
        ours = call(app, path, **environ)
        assert ours[0] == "200 OK"
        if environ.get("HTTP_ACCEPT_ENCODING") == "gzip":  # gzip's header has a timestamp
            assert ours[1] == call(alone, path, **environ)[1]
            assert gzip.decompress(ours[2]) == call(alone, path)[2]
        else:
            assert ours == call(alone, path, **environ), (path, environ)
    assert b"haroute_test_things_total 3.0" in call(app, "/metrics")[2]
    assert call(app, "/metrics", HTTP_ACCEPT=openmetrics)[2].endswith(b"# EOF\n")


# --- the real server ------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[int, Health, Switch]]:
    """serve() on a free loopback port, with a health the test drives."""
    port = free_port()
    health = Health(Heartbeat(), 30)
    check = Switch()
    health.set_ready(check)
    server = serve(listen_address(str(port)), registry_with_a_counter(), health)
    assert server is not None
    try:
        yield port, health, check
    finally:
        server.shutdown()
        server.server_close()


def test_server_binds_loopback_for_a_bare_port_and_answers(
    served: tuple[int, Health, Switch],
) -> None:
    """A bare METRICS_ADDR port listens on 127.0.0.1 only; /metrics, /healthz and /readyz
    answer there."""
    port, health, check = served
    health.heartbeat.beat()
    assert b"haroute_test_things_total 3.0" in probe(port, "/metrics")[1].encode()
    assert probe(port, "/healthz")[0] == 200
    assert probe(port, "/readyz") == (503, "not yet\n")
    check.verdict = (True, "synced")
    assert probe(port, "/readyz") == (200, "synced\n")
    with socket.socket() as sock:
        sock.settimeout(2)
        other = socket.gethostbyname(socket.gethostname())
        if other.startswith("127."):
            other = "127.0.0.2"  # still not the address it bound
        assert sock.connect_ex((other, port)) != 0


def test_a_slow_client_blocks_neither_the_loop_nor_other_clients(
    served: tuple[int, Health, Switch],
) -> None:
    """A client that connects and sends nothing (or half a request) holds only its own
    thread: other requests are answered meanwhile."""
    port, health, _ = served
    health.heartbeat.beat()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no end of headers
        answers = []
        threads = [
            threading.Thread(target=lambda: answers.append(probe(port, "/healthz")[0]))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert answers == [200, 200, 200, 200]
    finally:
        for sock in idle:
            sock.close()


def test_server_on_ipv6_loopback() -> None:
    """METRICS_ADDR=[::1]:port listens on IPv6."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
            port = int(sock.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback here")
    health = Health(Heartbeat(), 30)
    health.set_ready(lambda: (True, "ok"))
    server = serve(listen_address(f"[::1]:{port}"), registry_with_a_counter(), health)
    assert server is not None
    try:
        assert probe(port, "/readyz", host="::1") == (200, "ok\n")
    finally:
        server.shutdown()
        server.server_close()


# --- the probe (python -m discovery.health) ---------------------------------------------------


def test_probe_url_asks_loopback_for_a_wildcard_address() -> None:
    """A daemon bound on every address is asked on loopback; others where they listen."""
    assert probe_url(listen_address("*:9101"), "healthz") == "http://127.0.0.1:9101/healthz"
    assert probe_url(listen_address("9101"), "readyz") == "http://127.0.0.1:9101/readyz"
    assert probe_url(listen_address("[::]:9101"), "healthz") == "http://[::1]:9101/healthz"
    assert probe_url(listen_address("10.0.0.5:9101"), "healthz") == ("http://10.0.0.5:9101/healthz")


def test_probe_exit_status_follows_the_answer(
    served: tuple[int, Health, Switch], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 on 200 and 1 on 503, printing why; 0 with METRICS_ADDR off; 2 for a bad one;
    1 when nothing listens."""
    port, health, check = served
    health.heartbeat.beat()
    env = {"METRICS_ADDR": str(port)}
    assert main(["healthz"], env) == 0
    assert main(["readyz"], env) == 1
    assert "readyz: 503: not yet" in capsys.readouterr().out
    check.verdict = (True, "synced")
    assert main(["readyz"], env) == 0
    assert main([], {"METRICS_ADDR": ""}) == 0
    assert "METRICS_ADDR is off" in capsys.readouterr().out
    assert main([], {"METRICS_ADDR": "nonsense"}) == 2
    assert main(["--addr", str(free_port()), "--timeout", "2"], {}) == 1


def test_probe_waits_until_ready_within_its_deadline(served: tuple[int, Health, Switch]) -> None:
    """--wait asks again until 200 (systemd's ExecStartPost), and gives up at its deadline."""
    port, health, check = served
    health.heartbeat.beat()
    clock = Clock()
    asked: list[float] = []
    ready_after = 3

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        clock.now += seconds
        if len(asked) == ready_after:
            check.verdict = (True, "synced")

    env = {"METRICS_ADDR": str(port)}
    assert main(["readyz", "--wait", "30"], env, sleep, clock) == 0
    assert len(asked) == ready_after
    check.verdict = (False, "not connected")
    asked.clear()
    ready_after = 0  # never
    assert main(["readyz", "--wait", "5"], env, sleep, clock) == 1
    assert sum(asked) == pytest.approx(5.0)


def test_probe_never_goes_through_a_proxy_of_the_environment(
    served: tuple[int, Health, Switch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http_proxy in the container's or unit's environment does not take the probe
    elsewhere: it asks the daemon itself."""
    port, health, _ = served
    health.heartbeat.beat()
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["healthz"], {"METRICS_ADDR": str(port)}) == 0
