"""register's incremental state (register.state) against the whole derivation
(register.transform.desired_keys): whatever the order of puts and deletes, the keys kept up
to date change by change are the keys derived from the final snapshot (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.keys import Layout
from discovery.kv import KV
from discovery.records import AnnounceRecord, FrontendRecord, ServicePath
from register.state import AnnounceIndex, RegisterState
from register.transform import DnsConfig, Placement, base_of, desired_keys

LAYOUT = Layout()
DNS = DnsConfig("skydns.local", 15, None, 80)
NODE = "hosta"
FRONTENDS = [FrontendRecord("lb1", "192.0.2.10", 80, ("/services/internal/app1/dev",))]
PATHS = [
    ServicePath.parse("/internal/app1/dev/web"),
    ServicePath.parse("/internal/app1/dev/web/example"),
    ServicePath.parse("/internal/app1/dev/web/ghost.example"),
    ServicePath.parse("/internal/app1/dev/web/a.ghost.example"),
    ServicePath.parse("/internal/app1/dev/web/other"),
    ServicePath.parse("/internal/app1/dev/db/example"),
]
IDS = ["web1", "Web1", "web.1", "web_1", "web-1", "x"]


def place(key: str, record: AnnounceRecord) -> Placement | None:
    """A host runtime: records of HOST=hosta run here."""
    return Placement("10.0.0.5", record.port) if record.host == NODE else None


@dataclass
class Op:
    path: int
    instance: int
    host: str | None  # None: delete
    port: int
    kind: str


ops = st.lists(
    st.builds(
        Op,
        path=st.integers(0, len(PATHS) - 1),
        instance=st.integers(0, len(IDS) - 1),
        host=st.sampled_from([None, "hosta", "hostb"]),
        port=st.sampled_from([80, 81]),
        kind=st.sampled_from(["HTTP", "TCP"]),
    ),
    max_size=40,
)


class Etcd:
    """Just enough of etcd's revisions for announce keys: create revision kept per key."""

    def __init__(self) -> None:
        self.revision = 1
        self.items: dict[str, KV] = {}

    def apply(self, op: Op) -> tuple[str, KV | None]:
        path, instance_id = PATHS[op.path], IDS[op.instance]
        key = LAYOUT.announce_key(path, instance_id)
        self.revision += 1
        if op.host is None:
            self.items.pop(key, None)
            return key, None
        record = AnnounceRecord(path, instance_id, op.port, op.kind, host=op.host)  # type: ignore[arg-type]
        old = self.items.get(key)
        created = old.create_revision if old else self.revision
        kv = KV(key, record.to_json().encode(), created, self.revision, 0)
        self.items[key] = kv
        return key, kv


def whole(etcd: Etcd, holding: set[ServicePath], frontends: list[FrontendRecord]) -> dict[str, str]:
    announces = {}
    for kv in etcd.items.values():
        path, instance_id = LAYOUT.split_instance_key(LAYOUT.announce, kv.key)
        from discovery.records import parse_announce

        announces[kv.key] = parse_announce(path, instance_id, kv.value)
    placements = {k: p for k, r in announces.items() if (p := place(k, r)) is not None}
    revisions = {kv.key: kv.create_revision for kv in etcd.items.values()}
    return desired_keys(
        announces,
        placements,
        frontends,
        node=NODE,
        layout=LAYOUT,
        dns=DNS,
        revisions=revisions,
        holding=holding,
    )


def settle_all(state: RegisterState, holding: set[ServicePath]) -> None:
    for base in state.unsettled():
        state.settle(base, {p for p in holding if base_of(p) == base})


@settings(max_examples=300, deadline=None, database=None)
@given(ops, st.sets(st.sampled_from(PATHS), max_size=2), st.booleans())
def test_incremental_state_equals_the_whole_derivation(
    changes: list[Op], holding: set[ServicePath], with_frontends: bool
) -> None:
    """After any sequence of announcement puts and deletes, applied one by one, the
    desired keys equal those derived from the final snapshot at once."""
    etcd = Etcd()
    state = RegisterState(node=NODE, layout=LAYOUT, dns=DNS)
    frontends = FRONTENDS if with_frontends else []
    state.set_frontends(frontends)
    for op in changes:
        key, kv = etcd.apply(op)
        state.update(key, kv, place)
        settle_all(state, holding)
        state.flush()
    assert state.desired == whole(etcd, holding, frontends)
    # and a reload from the snapshot gives the same
    again = RegisterState(node=NODE, layout=LAYOUT, dns=DNS)
    again.set_frontends(frontends)
    again.load(etcd.items.values(), place)
    settle_all(again, holding)
    again.flush()
    assert again.desired == state.desired


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_index_child_follows_the_ids_of_the_name(order: tuple[int, int]) -> None:
    """web1 alone keeps its plain child; beside Web1 both are hashed; alone again, plain."""
    index = AnnounceIndex()
    path = PATHS[1]
    keys = []
    for i in order:
        instance_id = ["web1", "Web1"][i]
        key = LAYOUT.announce_key(path, instance_id)
        keys.append(key)
        index.put(key, AnnounceRecord(path, instance_id, 80, "TCP"), 2 + i)
    assert index.child(path, "web1") == "web1-" + _sha8("web1")
    assert index.child(path, "Web1") == "web1-" + _sha8("Web1")
    index.delete(LAYOUT.announce_key(path, "Web1"))
    assert index.child(path, "web1") == "web1"


def _sha8(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]
