"""lb/desired.py: the HTTP/TCP switches, and what "first created" means for a TCP path."""

from __future__ import annotations

import json

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import ServiceRecord
from lb.desired import desired_state, parse_records

WEB = "/internal/app1/dev/web"
DB = "/internal/app1/dev/db"


def kv(path: str, iid: str, port: int, type_: str, create: int) -> KV:
    _, _, app, env, service = path.split("/")
    value = {
        "ID": iid,
        "APP": app,
        "ENV": env,
        "SERVICE": service,
        "NAME": "",
        "PORT": port,
        "TYPE": type_,
        "IP": "10.0.0.2",
        "EXT_PORT": port,
        "NODE": "hosta",
    }
    return KV(f"/services{path}/{iid}", json.dumps(value).encode(), create, create, 1)


def records(*kvs: KV) -> list[tuple[KV, ServiceRecord]]:
    good, rejected = parse_records(kvs, Layout(), ("/services/internal",))
    assert not rejected
    return good


BOTH = (kv(WEB, "w1", 80, "HTTP", 5), kv(DB, "d1", 5432, "TCP", 6))


def test_http_off_gives_no_http_service() -> None:
    """Without an HTTP frontend (HTTP_BIND empty) HTTP records make no backend."""
    desired = desired_state(records(*BOTH), domain="skydns.local", http=False, tcp=True)
    assert list(desired.services) == ["tcp_internal_app1_dev_db"]


def test_tcp_off_gives_no_tcp_service() -> None:
    """Without TCP_BIND_ADDR, TCP records make no listen."""
    desired = desired_state(records(*BOTH), domain="skydns.local", http=True, tcp=False)
    assert list(desired.services) == ["be_internal_app1_dev_web"]


def test_tcp_port_is_the_first_created_instances() -> None:
    """The listen's port is the PORT of the instance created first (lowest create
    revision), not of the one whose key sorts first; the later one on another port is
    the one reported, and the service is as old as its oldest record."""
    late = kv(DB, "a-late", 5440, "TCP", 9)  # sorts first by key
    early = kv(DB, "z-early", 5432, "TCP", 3)
    desired = desired_state(records(late, early), domain="skydns.local", http=True, tcp=True)
    db = desired.services["tcp_internal_app1_dev_db"]
    assert db.port == 5432 and db.created == 3
    assert [i.id for i in db.instances] == ["z-early"]
    assert [p.key for p in desired.problems] == [late.key]
