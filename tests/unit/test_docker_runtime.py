"""RUNTIME=docker's pure decisions (SPEC §5): `docker inspect` data → which announcements
are local → where the world reaches them. No Docker engine here (tests/integration/
test_docker.py runs a real one)."""

from __future__ import annotations

from typing import Any

import pytest

from discovery.records import AnnounceRecord, ServicePath
from register.docker_runtime import (
    Container,
    binding_placement,
    container_from_inspect,
    match,
)
from register.transform import Placement

HOST_IP = "192.0.2.5"
WEB = ServicePath.parse("/internal/app1/dev/web/ghost.example")
FULL_ID = "0ce60d000eac" + "5f" * 26


def binding(ip: str, port: str) -> dict[str, str]:
    return {"HostIp": ip, "HostPort": port}


@pytest.mark.parametrize(
    ("bindings", "expected"),
    [
        # -p 8080 on Docker 20.10: IPv4 and IPv6 wildcards, one port.
        (
            [binding("0.0.0.0", "49153"), binding("::", "49153")],
            Placement(HOST_IP, 49153),
        ),
        ([binding("0.0.0.0", "32768")], Placement(HOST_IP, 32768)),
        ([binding("::", "32769")], Placement(HOST_IP, 32769)),
        ([binding("", "32770")], Placement(HOST_IP, 32770)),  # older engines
        # -p 127.0.0.1::8080 / -p 10.0.0.7:80:8080: reached at the bound address.
        ([binding("127.0.0.1", "32768")], Placement("127.0.0.1", 32768)),
        ([binding("10.0.0.7", "80")], Placement("10.0.0.7", 80)),
        ([binding("fd00::0005", "8443")], Placement("fd00::5", 8443)),
        # A binding to every address wins: other hosts can reach it.
        (
            [binding("127.0.0.1", "32771"), binding("0.0.0.0", "32772")],
            Placement(HOST_IP, 32772),
        ),
        # Two specific addresses: the first one.
        (
            [binding("10.0.0.7", "81"), binding("10.0.0.8", "82")],
            Placement("10.0.0.7", 81),
        ),
        # Unusable bindings are passed over, never turned into a record.
        ([binding("0.0.0.0", "0"), binding("10.0.0.7", "83")], Placement("10.0.0.7", 83)),
        ([binding("not-an-address", "84"), binding("::", "85")], Placement(HOST_IP, 85)),
        ([binding("0.0.0.0", "70000")], None),
        ([binding("0.0.0.0", "")], None),
        ([binding("10.0.0.7;x", "86")], None),
        # Not published: EXPOSE only (None) or no binding at all.
        (None, None),
        ([], None),
    ],
)
def test_binding_placement(bindings: list[dict[str, str]] | None, expected: Placement) -> None:
    """0.0.0.0 and :: mean HOST_IP, a specific address is used as is, unpublished is None."""
    assert binding_placement(bindings, HOST_IP) == expected


def inspect(
    *,
    running: bool = True,
    paused: bool = False,
    hostname: str = "0ce60d000eac",
    ports: dict[str, Any] | None = None,
    network_mode: str = "default",
) -> dict[str, Any]:
    """The parts of a real `docker inspect` (20.10) that register reads."""
    return {
        "Id": FULL_ID,
        "State": {
            "Status": "running" if running else "exited",
            "Running": running,
            "Paused": paused,
        },
        "Config": {"Hostname": hostname, "ExposedPorts": {"8080/tcp": {}}},
        "HostConfig": {"NetworkMode": network_mode},
        "NetworkSettings": {"Ports": ports if ports is not None else {}},
    }


def test_container_from_inspect() -> None:
    """Running containers keep id, hostname, ports, network mode; stopped/paused are None."""
    ports = {"8080/tcp": [binding("127.0.0.1", "32768")], "9000/tcp": None}
    assert container_from_inspect(inspect(ports=ports)) == Container(
        FULL_ID, "0ce60d000eac", ports, host_network=False
    )
    assert container_from_inspect(inspect(network_mode="host")) == Container(
        FULL_ID, "0ce60d000eac", {}, host_network=True
    )
    assert container_from_inspect(inspect(running=False)) is None
    assert container_from_inspect(inspect(paused=True)) is None
    assert container_from_inspect({"Id": FULL_ID}) is None


def announce(instance_id: str, port: int = 8080) -> AnnounceRecord:
    return AnnounceRecord(WEB, instance_id, port, "HTTP")


PUBLISHED = Container(FULL_ID, "0ce60d000eac", {"8080/tcp": [binding("0.0.0.0", "32768")]})
NAMED = Container("ab" * 32, "web-1", {"8080/tcp": [binding("127.0.0.1", "32769")]})


@pytest.mark.parametrize(
    ("record", "containers", "placed", "unpublished"),
    [
        # Docker's default hostname is the short id: what announce uses as ID.
        (announce("0ce60d000eac"), [PUBLISHED], Placement(HOST_IP, 32768), []),
        (announce(FULL_ID), [PUBLISHED], Placement(HOST_IP, 32768), []),
        # --hostname web-1: matched by hostname; its short id matches too.
        (announce("web-1"), [PUBLISHED, NAMED], Placement("127.0.0.1", 32769), []),
        (announce("ababababab" + "ab"), [NAMED], Placement("127.0.0.1", 32769), []),
        # Another host's container: not ours, and no warning either.
        (announce("deadbeef0000"), [PUBLISHED, NAMED], None, []),
        (announce("0ce60d000eac"), [], None, []),
        # Ours, but PORT is not published (or only over UDP): skipped and reported.
        (announce("0ce60d000eac", 9090), [PUBLISHED], None, [(FULL_ID, 9090)]),
        (
            announce("0ce60d000eac", 53),
            [Container(FULL_ID, "0ce60d000eac", {"53/udp": [binding("0.0.0.0", "53")]})],
            None,
            [(FULL_ID, 53)],
        ),
        (
            announce("0ce60d000eac"),
            [Container(FULL_ID, "0ce60d000eac", {"8080/tcp": None})],
            None,
            [(FULL_ID, 8080)],
        ),
        # --network host: no NAT, the service is at HOST_IP:PORT.
        (
            announce("0ce60d000eac", 5432),
            [Container(FULL_ID, "0ce60d000eac", {}, host_network=True)],
            Placement(HOST_IP, 5432),
            [],
        ),
    ],
)
def test_match(
    record: AnnounceRecord,
    containers: list[Container],
    placed: Placement | None,
    unpublished: list[tuple[str, int]],
) -> None:
    """An ID that is a running container's hostname/id/short id is placed at PORT/tcp."""
    result = match({"k": record}, containers, HOST_IP)
    assert result.placements == ({"k": placed} if placed else {})
    assert result.unpublished == unpublished
    assert result.ambiguous == []


def test_match_ambiguous_hostname() -> None:
    """An ID naming two containers by hostname is reported, not placed; a container id wins."""
    twin_a = Container("a" * 64, "web", {"8080/tcp": [binding("0.0.0.0", "1001")]})
    twin_b = Container("b" * 64, "web", {"8080/tcp": [binding("0.0.0.0", "1002")]})
    result = match(
        {"by-name": announce("web"), "by-id": announce("b" * 12)}, [twin_a, twin_b], HOST_IP
    )
    assert result.placements == {"by-id": Placement(HOST_IP, 1002)}
    assert result.ambiguous == ["web"]
