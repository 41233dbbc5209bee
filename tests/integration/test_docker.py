"""register with RUNTIME=docker against a real dockerd (SPEC §5).

The containers run busybox httpd and have no Python, so each test writes the announce
record itself, as announce inside the container would: ``/announce<path>/<short id>``
with PORT 8080 and TYPE HTTP, under a lease.

These tests need root, docker.io and busybox-static. When dockerd cannot start they fail
with its log tail, unless HAROUTE_SKIP_DOCKER=1 says to skip them.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from discovery.etcd import EtcdSession
from discovery.keys import Layout
from discovery.records import AnnounceRecord, ServicePath
from tests.docker_helpers import (
    IMAGE,
    SKIP_ENV,
    Dockerd,
    DockerdFailed,
    HostState,
    leftovers,
    missing_prerequisite,
)
from tests.helpers import SHORT_TTL, DeleteRecorder, EventRecorder, keys, register_env, session
from tests.lb_helpers import host_of, lb_stack
from tests.servers import Daemon, Etcd, Stack, wait_for

SERVICE = "/internal/app1/dev/web/docker"
PATH = ServicePath.parse(SERVICE)
LAYOUT = Layout()
HOST_IP = "127.0.0.2"  # containers publish on 127.0.0.1: a record with HOST_IP is wrong
UNPUBLISHED_WARNING = "does not publish port 8080/tcp"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"Docker tests skipped ({SKIP_ENV}=1): {reason}")
    pytest.fail(
        f"dockerd cannot run here, so the Docker runtime is untested: {reason}\n"
        f"(set {SKIP_ENV}=1 to skip these tests on a machine without Docker)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    """One private dockerd for the module, with the busybox image; everything it leaves
    on the host is removed or restored afterwards, and checked."""
    problem = missing_prerequisite()
    if problem is not None:
        _unavailable(problem)
    stale = leftovers()
    if stale is not None:
        pytest.fail(stale, pytrace=False)
    state = HostState.save()
    engine = Dockerd()
    try:
        failure = None
        try:
            engine.start()
            engine.import_busybox()
        except DockerdFailed as exc:
            failure = str(exc)
        if failure is not None:
            _unavailable(failure)
        yield engine
    finally:
        problems = engine.close() + state.restore()
        left = subprocess.run(
            ["pgrep", "-a", "-f", str(engine.root)], capture_output=True, text=True, check=False
        ).stdout
        assert not left, f"processes of our dockerd left running:\n{left}"
        assert not problems, f"cleanup after dockerd: {problems}"


@pytest.fixture
def engine(dockerd: Dockerd) -> Iterator[Dockerd]:
    """The module's dockerd, up, with no container left over from the test before."""
    if not dockerd.running():
        dockerd.start()
    yield dockerd
    if not dockerd.running():
        dockerd.start()
    dockerd.remove_all_containers()


def start_register(servers: Stack, etcd: Etcd, engine: Dockerd) -> Daemon:
    env = register_env(etcd, "hosta", HOST_IP, RUNTIME="docker", DOCKER_HOST=engine.url)
    return servers.daemon("register", env)


def announce(s: EtcdSession, lease: int, instance_id: str, port: int = 8080) -> str:
    """Write the announce record a container's announce would write; its key."""
    key = LAYOUT.announce_key(PATH, instance_id)
    s.put(key, AnnounceRecord(PATH, instance_id, port, "HTTP").to_json(), lease=lease)
    return key


def service_key(instance_id: str) -> str:
    return LAYOUT.service_key(PATH, instance_id)


def http_get(address: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=5) as resp:
        return str(resp.read().decode())


def answer(address: str, port: int) -> str | None:
    """What the container at ``address:port`` answers, or None while it does not."""
    try:
        return http_get(address, port).strip()
    except OSError:
        return None


def test_published_container_is_registered(servers: Stack, etcd: Etcd, engine: Dockerd) -> None:
    """A port published on 127.0.0.1 is registered with that IP and its host port."""
    s = session(etcd)
    lease = s.grant(60)[0]
    start_register(servers, etcd, engine)
    short = engine.run_httpd()[:12]
    address, port = engine.host_port(short)
    assert address == "127.0.0.1"
    announce(s, lease, short)
    wait_for(lambda: s.get(service_key(short)), 10, 0.05, "registration")
    record = keys(s, "/services/")[service_key(short)]
    assert record == {
        "ID": short,
        "APP": "app1",
        "ENV": "dev",
        "SERVICE": "web",
        "NAME": "docker",
        "PORT": 8080,
        "TYPE": "HTTP",
        "IP": "127.0.0.1",
        "EXT_PORT": port,
        "NODE": "hosta",
    }
    assert http_get(record["IP"], record["EXT_PORT"]).strip() == short


def test_request_through_lb_reaches_container(
    servers: Stack, etcd: Etcd, engine: Dockerd, tmp_path: Path
) -> None:
    """A request through the lb's HAProxy reaches the container over its published port."""
    s = session(etcd)
    lease = s.grant(60)[0]
    with lb_stack(servers, etcd, tmp_path) as lb:
        lb.start()
        start_register(servers, etcd, engine)
        short = engine.run_httpd()[:12]
        announce(s, lease, short)
        wait_for(
            lambda: lb.answers(host_of(SERVICE)) == {short + "\n"},
            20,
            0.2,
            "the container answering through HAProxy",
        )


def test_registration_gone_within_1s_of_exit(servers: Stack, etcd: Etcd, engine: Dockerd) -> None:
    """The registration is gone within 1 s of `docker stop` returning; the announce stays."""
    s = session(etcd)
    lease = s.grant(60)[0]
    start_register(servers, etcd, engine)
    short = engine.run_httpd()[:12]
    ann_key = announce(s, lease, short)
    wait_for(lambda: s.get(service_key(short)), 10, 0.05, "registration")
    time.sleep(1.5)  # past the first cycles: nothing is pending in the register loop
    engine.cli("stop", "-t", "1", short)
    stopped = time.monotonic()
    wait_for(lambda: s.get(service_key(short)) is None, 1.0, 0.005, "removal within 1 s")
    elapsed = time.monotonic() - stopped
    assert s.get(ann_key) is not None, "the announce record is still there"
    print(f"registration removed {elapsed * 1000:.0f} ms after `docker stop` returned")


def test_other_hosts_record_is_never_registered(
    servers: Stack, etcd: Etcd, engine: Dockerd
) -> None:
    """A record whose ID is no local container (another host's) is never registered."""
    s = session(etcd)
    lease = s.grant(60)[0]
    puts = EventRecorder(s, "/services/", deletes=False)
    start_register(servers, etcd, engine)
    announce(s, lease, "f0e1d2c3b4a5")  # another host's container
    short = engine.run_httpd()[:12]
    announce(s, lease, short)
    wait_for(lambda: s.get(service_key(short)), 10, 0.05, "the local one registered")
    other = engine.run_httpd()
    engine.cli("stop", "-t", "1", other)
    time.sleep(2 * SHORT_TTL / 3 + 0.5)  # a few more cycles
    written = puts.stop()
    assert service_key("f0e1d2c3b4a5") not in written
    assert set(keys(s, "/services/")) == {service_key(short)}


def test_unpublished_port_skipped_with_one_warning(
    servers: Stack, etcd: Etcd, engine: Dockerd
) -> None:
    """An unpublished PORT is not registered and warned about once, however many cycles."""
    s = session(etcd)
    lease = s.grant(60)[0]
    r = start_register(servers, etcd, engine)
    hidden = engine.run_httpd(publish=False)[:12]
    announce(s, lease, hidden)
    wait_for(lambda: UNPUBLISHED_WARNING in r.log(), 10, 0.05, "the warning")
    for _ in range(3):  # more cycles: an etcd event and a Docker event each
        announce(s, lease, hidden)
        engine.cli("stop", "-t", "1", engine.run_httpd(publish=False))
    # A published container registered after all that proves the cycles did run.
    shown = engine.run_httpd()[:12]
    announce(s, lease, shown)
    wait_for(lambda: s.get(service_key(shown)), 10, 0.05, "the published one registered")
    time.sleep(SHORT_TTL / 3 * 2 + 0.5)  # and a couple of lease ticks
    assert s.get(service_key(hidden)) is None
    assert r.log().count(UNPUBLISHED_WARNING) == 1, r.log()
    assert f"container {hidden} {UNPUBLISHED_WARNING}" in r.log()


def test_dockerd_restart_keeps_registrations(servers: Stack, etcd: Etcd, engine: Dockerd) -> None:
    """dockerd stopped and started under register: nothing dropped, new ones registered."""
    s = session(etcd)
    lease = s.grant(120)[0]
    r = start_register(servers, etcd, engine)
    first = engine.run_httpd()[:12]
    _, first_port = engine.host_port(first)
    announce(s, lease, first)
    wait_for(lambda: s.get(service_key(first)), 10, 0.05, "registration")
    before = keys(s, "/services/")
    deletes = DeleteRecorder(s, "/services/")

    engine.stop()
    time.sleep(SHORT_TTL * 2 + 1)  # many cycles, past the register's own TTL
    assert keys(s, "/services/") == before
    assert r.log().count("[docker] engine unreachable") == 1, r.log()

    engine.start()
    second = engine.run_httpd()[:12]
    announce(s, lease, second)
    wait_for(lambda: s.get(service_key(second)), 15, 0.05, "a new container registered")
    got = keys(s, "/services/")
    assert got[service_key(first)] == before[service_key(first)]
    assert deletes.stop() == []
    assert "[docker] engine reachable again" in r.log()
    # The registration was right all along: the live-restored container answers there
    # (once dockerd has restored its networking: docker-proxy can reset a connection
    # accepted before the restore is complete, so wait for the answer, do not time it).
    wait_for(lambda: answer("127.0.0.1", first_port) == first, 15, 0.2, "the first container")


def test_register_started_while_dockerd_down_removes_nothing(
    servers: Stack, etcd: Etcd, engine: Dockerd
) -> None:
    """A register restarted while dockerd is down keeps its adopted keys until Docker is back."""
    s = session(etcd)
    lease = s.grant(120)[0]
    first_register = start_register(servers, etcd, engine)
    first = engine.run_httpd()[:12]
    announce(s, lease, first)
    wait_for(lambda: s.get(service_key(first)), 10, 0.05, "registration")
    before = keys(s, "/services/")
    deletes = DeleteRecorder(s, "/services/")

    engine.stop()
    first_register.stop()
    r = start_register(servers, etcd, engine)
    time.sleep(SHORT_TTL * 2 + 1)  # past the first register's lease: the new one holds it
    assert keys(s, "/services/") == before
    assert r.alive()
    assert r.log().count("registering nothing and removing nothing") == 1, r.log()

    engine.start()
    second = engine.run_httpd()[:12]
    announce(s, lease, second)
    wait_for(lambda: s.get(service_key(second)), 15, 0.05, "a new container registered")
    assert keys(s, "/services/")[service_key(first)] == before[service_key(first)]
    assert deletes.stop() == []


def test_one_hostname_on_two_hosts_is_reported_not_fought_over(
    servers: Stack, etcd: Etcd, engine: Dockerd
) -> None:
    """Two hosts each run a container with the same user-set hostname (here: two
    registers with their own NODE_NAME on one engine, so both see it as theirs): the
    first register holds the ID's keys, the other reports the conflict once (log +
    metric) and never writes or deletes them (issue 8 item 8)."""
    from tests.helpers import metric_value, scrape
    from tests.servers import free_port

    s = session(etcd)
    lease = s.grant(60)[0]
    ports = {"hosta": free_port(), "hostb": free_port()}
    registers = {
        node: servers.daemon(
            "register",
            register_env(
                etcd,
                node,
                ip,
                RUNTIME="docker",
                DOCKER_HOST=engine.url,
                METRICS_ADDR=str(ports[node]),
            ),
        )
        for node, ip in (("hosta", "127.0.0.2"), ("hostb", "127.0.0.3"))
    }
    script = "busybox hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www"
    engine.cli(
        "run", "-d", "--init", "--hostname", "web1", "-p", "127.0.0.1::8080", IMAGE,
        "/bin/sh", "-c", script,
    )  # fmt: skip
    time.sleep(1)  # both registers have seen the container
    puts = EventRecorder(s, "/services/", deletes=False)
    deletes = DeleteRecorder(s, "/services/")
    announce(s, lease, "web1")
    record = wait_for(lambda: keys(s, "/services/").get(service_key("web1")), 10, 0.05, "held")
    holder, other = record["NODE"], ({"hosta", "hostb"} - {record["NODE"]}).pop()

    def conflicts() -> float:
        try:
            return metric_value(scrape(ports[other]), "haroute_register_conflicts", kind="instance")
        except OSError:
            return -1

    wait_for(lambda: conflicts() == 1, 10, 0.1, "the conflict reported")
    time.sleep(SHORT_TTL * 2 + 0.5)  # the other register retries every TTL
    assert keys(s, "/services/")[service_key("web1")]["NODE"] == holder
    assert puts.stop() == [service_key("web1")]
    assert deletes.stop() == []
    log_text = registers[other].log()
    assert log_text.count(f"conflict: {service_key('web1')}") == 1, log_text
    assert f"node {holder} registered the same instance" in log_text
    assert conflicts() == 1
