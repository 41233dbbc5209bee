"""lb.runtime against a real HAProxy 2.6 (master-worker, loopback): batched writes with
every reply checked, reads, and refusal of anything that could inject a command."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lb.runtime import (
    RuntimeClient,
    RuntimeCommandError,
    RuntimeUnavailable,
    ServerState,
    admin_word,
    plan_batches,
    split_replies,
)
from tests.haproxy_helpers import Backend, HAProxy, haproxy, http_get, leftover_pids
from tests.servers import free_port, wait_for

HOST = "ghost.example.web.dev.app1.internal.skydns.local"


def config(workdir: Path, port: int) -> str:
    slots = "\n".join(f"    server s{i} 127.0.0.1:1 disabled" for i in range(1, 5))
    return f"""\
global
    maxconn 2000
    stats socket {workdir}/admin.sock mode 600 level admin expose-fd listeners
    hard-stop-after 5s

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend http-in
    bind 127.0.0.1:{port}
    use_backend %[req.hdr(host),lower,field(1,:),map_str({workdir}/hosts.map)]
    default_backend be_default

backend be_default
    http-request return status 503 content-type text/plain string "no route"

backend be_web
    balance roundrobin
{slots}

backend be_api
    balance roundrobin
{slots}

backend be_chk
    server c1 127.0.0.1:1 disabled check inter 100ms fall 1 rise 1
"""


class Env:
    """One HAProxy, its client, the map file and the frontend port."""

    def __init__(self, proxy: HAProxy, port: int) -> None:
        self.proxy = proxy
        self.port = port
        self.map = str(proxy.workdir / "hosts.map")
        self.client = RuntimeClient(str(proxy.admin_sock))

    def state(self, backend: str, server: str) -> ServerState:
        (found,) = [s for s in self.client.servers_state(backend) if s.server == server]
        return found

    def get(self, host: str = HOST) -> tuple[int, str]:
        return http_get(self.port, host)


@pytest.fixture(scope="module", autouse=True)
def no_haproxy_left() -> Iterator[None]:
    """After this module, no HAProxy it started may still run."""
    yield
    assert not leftover_pids(), f"HAProxy left running: {leftover_pids()}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    port = free_port()
    (tmp_path / "hosts.map").write_text("")
    with haproxy(tmp_path, config(tmp_path, port)) as proxy:
        yield Env(proxy, port)


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(name, f"127.0.0.{i + 2}").start() for i, name in enumerate("ABC")]
    yield started
    for b in started:
        b.stop()


def use(backend: Backend, slot: str = "be_web/s1") -> list[str]:
    return [
        f"set server {slot} addr {backend.ip} port {backend.port}",
        f"set server {slot} state ready",
    ]


def bodies(env: Env, n: int) -> set[str]:
    return {env.get()[1] for _ in range(n)}


def test_addr_port_and_ready_route_to_new_server(env: Env, backends: list[Backend]) -> None:
    """One batch of `set server addr/port` + `state ready` makes requests reach it."""
    a = backends[0]
    assert env.get() == (503, "no route")  # no map entry: the default backend
    env.client.execute([f"add map {env.map} {HOST} be_web"])
    status, body = env.get()  # be_web, but no server in service yet
    assert status == 503
    assert "No server is available" in body
    replies = env.client.execute(use(a))
    assert [r.command for r in replies] == use(a)
    assert "port changed from '1'" in replies[0].output
    assert replies[1].output == ""
    assert not any(r.failed for r in replies)
    assert env.get() == (200, "A")
    assert a.requests >= 1


def test_drain_then_maint_takes_server_out(env: Env, backends: list[Backend]) -> None:
    """`state drain` stops new requests to a server, `state maint` takes it out."""
    a, b, _ = backends
    env.client.execute([f"add map {env.map} {HOST} be_web", *use(a), *use(b, "be_web/s2")])
    wait_for(lambda: bodies(env, 6) == {"A", "B"}, 10, what="round robin over A and B")
    env.client.execute(["set server be_web/s1 state drain"])
    assert env.state("be_web", "s1").admin == "drain"
    assert bodies(env, 8) == {"B"}
    env.client.execute(["set server be_web/s1 state maint"])
    assert env.state("be_web", "s1").admin == "maint"
    assert bodies(env, 8) == {"B"}
    env.client.execute(["set server be_web/s2 state maint"])
    assert env.get()[0] == 503  # be_web has no server left in service


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        ("set server be_nope/s1 state ready", "No such backend."),
        ("set server be_web/s9 state ready", "No such server."),
        ("set server be_web/s2 state up", "expects 'ready', 'drain' and 'maint'"),
        ("set server be_web/s2 addr not-an-ip port 80", "Invalid addr 'not-an-ip'"),
        ("set server be_web/s2 addr 127.0.0.9 port http", "problem converting port"),
        ("set server be_web s2 state ready", "Require 'backend/server'."),
        ("set server be_web/s2 addr", "requires an address"),
        ("set server be_web/s2", "usage: set server"),
        ("del map {map} no.such.host", "Key not found."),
        ("set map {map} no.such.host be_web", "entry not found."),
        ("add map {dir}/other.map k v", "Unknown map identifier"),
        ("show no-such-thing", "Unknown command"),
    ],
)
def test_error_in_the_middle_names_the_failing_command(env: Env, bad: str, text: str) -> None:
    """A failing command in the middle of a batch raises naming it (and its index); HAProxy
    still ran every other command of that batch, before and after it."""
    bad = bad.format(map=env.map, dir=env.proxy.workdir)
    batch = [
        "set server be_web/s1 addr 127.0.0.11 port 8001",
        bad,
        "set server be_web/s3 addr 127.0.0.13 port 8003",
    ]
    with pytest.raises(RuntimeCommandError) as err:
        env.client.execute(batch)
    assert err.value.command == bad
    assert err.value.index == 1
    assert text in err.value.reply
    assert bad in str(err.value)
    assert [r.command for r in err.value.replies] == batch
    s1, s3 = env.state("be_web", "s1"), env.state("be_web", "s3")
    assert (s1.addr, s1.port) == ("127.0.0.11", 8001)  # before the failure: applied
    assert (s3.addr, s3.port) == ("127.0.0.13", 8003)  # after it, same line: applied too


def test_failed_batch_stops_later_batches(env: Env) -> None:
    """With several batches, a failure stops the sending: earlier batches applied, the
    failing batch ran whole, later batches were never sent."""
    client = RuntimeClient(str(env.proxy.admin_sock), bufsize=150)
    commands = [f"set server be_api/s{i} addr 127.0.0.{20 + i} port {9000 + i}" for i in (1, 2)]
    commands += [
        "set server be_api/s9 state ready",
        "set server be_api/s3 addr 127.0.0.23 port 9003",
    ]
    commands += ["set server be_api/s4 addr 127.0.0.24 port 9004"]
    batches = plan_batches(commands, 150)
    assert [len(b) for b in batches] == [2, 2, 1]
    with pytest.raises(RuntimeCommandError) as err:
        client.execute(commands)
    assert err.value.index == 2
    assert len(err.value.replies) == 4
    ports = {s.server: s.port for s in env.client.servers_state("be_api")}
    assert ports == {"s1": 9001, "s2": 9002, "s3": 9003, "s4": 1}


def test_long_batches_are_split_and_all_applied(env: Env) -> None:
    """300 commands longer than one bufsize go as several lines, each shorter than
    bufsize, and every one of them is applied and checked."""
    hosts = [f"host-{i:04d}.web.dev.app1.internal.skydns.local" for i in range(300)]
    commands = [f"add map {env.map} {h} be_web" for h in hosts]
    batches = plan_batches(commands, env.client.bufsize)
    assert len(batches) > 1
    assert [c for b in batches for c in b] == commands
    for b in batches:
        assert len((";".join(["set severity-output number", *b]) + "\n").encode()) < 16384
    replies = env.client.execute(commands)
    assert len(replies) == 300
    assert env.client.show_map(env.map) == dict.fromkeys(hosts, "be_web")
    # a tiny bufsize: one connection per couple of commands, still all applied
    small = RuntimeClient(str(env.proxy.admin_sock), bufsize=200)
    sets = [f"set map {env.map} {h} be_api" for h in hosts[:40]]
    assert len(plan_batches(sets, 200)) >= 20
    small.execute(sets)
    shown = env.client.show_map(env.map)
    assert [shown[h] for h in hosts[:41]] == ["be_api"] * 40 + ["be_web"]


@pytest.mark.parametrize(
    "evil",
    [
        "add map {map} evil.example be_web;set server be_web/s1 state ready",
        "add map {map} evil.example be_web\nset server be_web/s1 state ready",
        "add map {map} evil.example be_web\rset server be_web/s1 state ready",
        "add map {map} evil.example be_web\\",
        "add map {map} evil.example be_web\x00",
        "add map {map} evil.example <<",
        "prompt",
        "quit",
        "   ",
        "",
    ],
)
def test_injection_is_refused_before_anything_is_sent(env: Env, evil: str) -> None:
    """A command with ';', a newline, CR, backslash, NUL, a '<<' payload, a session
    command or nothing at all raises ValueError, and no command of the call is sent."""
    evil = evil.format(map=env.map)
    with pytest.raises(ValueError, match="runtime command"):
        env.client.execute([f"add map {env.map} safe.example be_web", evil])
    assert env.client.show_map(env.map) == {}
    assert env.state("be_web", "s1").admin == "maint"
    # validation comes before any connection: a dead socket still gives ValueError
    with pytest.raises(ValueError, match="runtime command"):
        RuntimeClient(str(env.proxy.workdir / "absent.sock")).execute([evil])


def test_oversized_command_is_refused(env: Env) -> None:
    """A single command that cannot fit in one line of bufsize raises ValueError."""
    with pytest.raises(ValueError, match="does not fit"):
        env.client.execute([f"add map {env.map} {'x' * 20000} be_web"])


def test_servers_state_parses_addresses_and_states(env: Env, backends: list[Backend]) -> None:
    """servers_state reads addr, port, admin and operational state, per backend or all."""
    initial = env.client.servers_state("be_web")
    assert [(s.backend, s.server, s.addr, s.port) for s in initial] == [
        ("be_web", f"s{i}", "127.0.0.1", 1) for i in range(1, 5)
    ]
    assert {(s.admin, s.operational, s.admin_flags) for s in initial} == {("maint", "down", 5)}
    a = backends[0]
    env.client.execute([*use(a, "be_web/s2"), "set server be_web/s3 weight 7"])
    s2 = env.state("be_web", "s2")
    assert (s2.addr, s2.port, s2.admin, s2.operational) == (a.ip, a.port, "ready", "up")
    assert env.state("be_web", "s3").weight == 7
    env.client.execute(["set server be_web/s2 state drain"])
    assert (env.state("be_web", "s2").admin, env.state("be_web", "s2").admin_flags) == (
        "drain",
        0x04 | 0x08,  # CMAINT ("disabled" in the config) stays as a marker
    )
    everything = env.client.servers_state()
    assert {s.backend for s in everything} == {"be_web", "be_api", "be_chk"}
    assert len(everything) == 9
    with pytest.raises(RuntimeCommandError, match="Can't find backend"):
        env.client.servers_state("be_nope")


def test_operational_state_follows_health_checks(env: Env, backends: list[Backend]) -> None:
    """With checks on, a ready server at a dead port is operationally down, and up once
    its address is a live server."""
    dead = free_port("127.0.0.5")
    env.client.execute(["set server be_chk/c1 addr 127.0.0.5 port " + str(dead)])
    env.client.execute(["set server be_chk/c1 state ready"])
    wait_for(lambda: env.state("be_chk", "c1").operational == "down", 10, what="check down")
    assert env.state("be_chk", "c1").admin == "ready"
    a = backends[0]
    env.client.execute([f"set server be_chk/c1 addr {a.ip} port {a.port}"])
    wait_for(lambda: env.state("be_chk", "c1").operational == "up", 10, what="check up")


def test_map_round_trip_and_routing(env: Env, backends: list[Backend]) -> None:
    """add/set/del map change show_map and routing by Host at once; an unknown map
    file raises."""
    a, b, _ = backends
    env.client.execute([*use(a, "be_web/s1"), *use(b, "be_api/s1")])
    env.client.execute(
        [f"add map {env.map} {HOST} be_web", f"add map {env.map} api.example be_api"]
    )
    assert env.client.show_map(env.map) == {HOST: "be_web", "api.example": "be_api"}
    assert env.get() == (200, "A")
    assert env.get(HOST.upper() + ":8080") == (200, "A")  # lower, port stripped
    assert env.get("api.example") == (200, "B")
    env.client.execute([f"set map {env.map} {HOST} be_api"])
    assert env.client.show_map(env.map)[HOST] == "be_api"
    assert env.get() == (200, "B")
    env.client.execute([f"del map {env.map} {HOST}"])
    assert env.client.show_map(env.map) == {"api.example": "be_api"}
    assert env.get() == (503, "no route")
    with pytest.raises(RuntimeCommandError, match="Unknown map identifier"):
        env.client.show_map(str(env.proxy.workdir / "other.map"))


def test_add_map_of_present_key_appends_a_shadowed_duplicate(
    env: Env, backends: list[Backend]
) -> None:
    """`add map` of a key already present succeeds and adds a second entry that lookups
    ignore (the first wins); show_map reports the winner; `set map` changes both."""
    a, b, _ = backends
    env.client.execute([*use(a, "be_web/s1"), *use(b, "be_api/s1")])
    env.client.execute([f"add map {env.map} {HOST} be_web", f"add map {env.map} {HOST} be_api"])
    assert env.client.show_map(env.map) == {HOST: "be_web"}
    assert env.get() == (200, "A")
    env.client.execute([f"set map {env.map} {HOST} be_api"])
    assert env.get() == (200, "B")
    env.client.execute([f"del map {env.map} {HOST}"])  # deletes every entry of the key
    assert env.client.show_map(env.map) == {}


def test_server_sessions_counts_open_sessions(env: Env, backends: list[Backend]) -> None:
    """server_sessions reports scur per (backend, server): 1 while a request is held."""
    a = backends[0]
    env.client.execute([f"add map {env.map} {HOST} be_web", *use(a)])
    sessions = env.client.server_sessions()
    assert set(sessions) >= {("be_web", f"s{i}") for i in range(1, 5)} | {("be_chk", "c1")}
    assert all(isinstance(v, int) for v in sessions.values())
    assert sessions[("be_web", "s1")] == 0
    a.hold.clear()
    got: list[tuple[int, str]] = []
    worker = threading.Thread(target=lambda: got.append(env.get()), daemon=True)
    worker.start()
    try:
        wait_for(lambda: env.client.server_sessions()[("be_web", "s1")] == 1, 10, what="scur 1")
    finally:
        a.hold.set()
        worker.join(10)
    assert got == [(200, "A")]
    wait_for(lambda: env.client.server_sessions()[("be_web", "s1")] == 0, 10, what="scur 0")


def test_ping_and_info(env: Env) -> None:
    """ping is true on a live socket; info reports the worker's pid and version."""
    assert env.client.ping()
    info = env.client.info()
    assert info["Version"].startswith("2.")
    assert int(info["Pid"]) in env.proxy.pids


def test_unavailable_when_socket_missing_refused_or_stopped(tmp_path: Path) -> None:
    """A missing socket, a socket nobody listens on, and a stopped HAProxy raise
    RuntimeUnavailable (ping is False), for writes and reads alike."""
    import socket

    missing = RuntimeClient(str(tmp_path / "absent.sock"), timeout=1)
    with pytest.raises(RuntimeUnavailable, match=r"absent\.sock"):
        missing.execute(["set server be_web/s1 state ready"])
    with pytest.raises(RuntimeUnavailable):
        missing.servers_state()
    assert not missing.ping()

    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))  # the file exists, nobody listens
    with pytest.raises(RuntimeUnavailable):
        RuntimeClient(str(stale)).execute(["show info"])

    port = free_port()
    (tmp_path / "hosts.map").write_text("")
    with haproxy(tmp_path, config(tmp_path, port)) as proxy:
        client = RuntimeClient(str(proxy.admin_sock))
        assert client.ping()
    assert not proxy.alive_pids()
    assert not client.ping()
    with pytest.raises(RuntimeUnavailable):
        client.execute(["set server be_web/s1 state ready"])


def test_unresponsive_socket_times_out(tmp_path: Path) -> None:
    """A socket that accepts but never answers raises RuntimeUnavailable after timeout."""
    import socket

    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        client = RuntimeClient(str(path), timeout=0.3)
        with pytest.raises(RuntimeUnavailable, match="TimeoutError"):
            client.execute(["set server be_web/s1 state ready"])


def test_thousand_set_server_commands(
    env: Env, record_property: Callable[[str, object], None]
) -> None:
    """1000 `set server` commands through execute() are all applied (timing reported,
    not asserted)."""
    commands = [
        f"set server be_web/s{1 + i % 4} addr 127.0.{i // 250}.{1 + i % 250} port {20000 + i}"
        for i in range(1000)
    ]
    start = time.perf_counter()
    replies = env.client.execute(commands)
    elapsed = time.perf_counter() - start
    assert len(replies) == 1000
    batches = len(plan_batches(commands, env.client.bufsize))
    record_property("set_server_1000_seconds", elapsed)
    print(f"\n[runtime] 1000 set server: {elapsed * 1000:.1f} ms in {batches} batches")
    final = {s.server: (s.addr, s.port) for s in env.client.servers_state("be_web")}
    assert final == {
        f"s{1 + i % 4}": (f"127.0.3.{1 + i % 250}", 20000 + i) for i in range(996, 1000)
    }
    if os.environ.get("HAROUTE_BENCH"):
        one_by_one = time.perf_counter()
        for c in commands:
            env.client.execute([c])
        each = time.perf_counter() - one_by_one
        print(f"[runtime] same, one execute() each: {each * 1000:.1f} ms")


@pytest.mark.parametrize(
    ("stream", "blocks"),
    [
        ("\n\n\n", ["", "", ""]),
        ("\n[3]: No such backend.\n\n\n", ["", "[3]: No such backend.", ""]),
        ("a\nb\n\n\n", ["a\nb", ""]),
        ("", []),
        ("\nIP changed\n", None),  # cut short: no closing empty line
    ],
)
def test_split_replies_frames_blocks(stream: str, blocks: list[str] | None) -> None:
    """The reply stream splits on HAProxy's empty-line delimiter (pure, no server)."""
    assert split_replies(stream) == blocks


@pytest.mark.parametrize(
    ("flags", "word"),
    [
        (0, "ready"),
        (0x04, "ready"),
        (0x05, "maint"),
        (0x0C, "drain"),
        (0x0D, "maint"),
        (0x20, "maint"),
        (0x10, "drain"),
        (0x40, "ready"),
    ],
)
def test_admin_word_from_flags(flags: int, word: str) -> None:
    """srv_admin_state bits map to ready/drain/maint; CMAINT and HMAINT are markers."""
    assert admin_word(flags) == word
