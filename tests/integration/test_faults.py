"""Faults a user's network really produces, between our code and a real etcd (issue 8).

The faults come from :mod:`tests.faultproxy` (a reply lost after the commit, a stream
ended cleanly, a request held while something else happens) or from the owner's own
callback failing; etcd is always the real one.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable

import pytest
from pyetcd import etcdrpc

from announce.app import Announcer
from announce.settings import AnnounceSettings
from discovery.daemon import Stopper
from discovery.etcd import EtcdSession, EtcdUnavailable, LeaseNotFound
from discovery.kv import WatchBatch
from discovery.lease import LeaseKeeper
from discovery.metrics import Metrics
from discovery.settings import endpoints, load
from discovery.watch import PrefixMirror
from tests.faultproxy import FaultProxy
from tests.helpers import SHORT_TTL, EventRecorder, announce_env, session
from tests.servers import Etcd, Stack, wait_for

PATH = "/internal/app1/dev/web/ghost.example"
KEY = "/announce/internal/app1/dev/web/ghost.example/hosta-8080"
DEADLINE = 20.0


def drive(keeper: LeaseKeeper, until: Callable[[], object], timeout: float) -> None:
    """Tick ``keeper`` as a daemon loop would (a failed tick is retried shortly) until
    ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        try:
            delay = keeper.tick()
        except EtcdUnavailable:
            delay = 0.2
        time.sleep(min(delay, 0.1))


# --- item 1: the lease keeper after a failed write ------------------------------------------


def test_lease_is_refreshed_while_a_write_is_retried(etcd: Etcd) -> None:
    """A write that keeps failing for twice the TTL: the lease is refreshed meanwhile, so
    the write lands under the lease granted first."""
    s = session(etcd)
    failing_until = time.monotonic() + 2 * SHORT_TTL
    attempts: list[int] = []

    def write(lease_id: int) -> None:
        attempts.append(lease_id)
        if time.monotonic() < failing_until:
            raise EtcdUnavailable("the write is refused for now")
        s.put("/frontends/lb1", "{}", lease=lease_id)

    keeper = LeaseKeeper(s, SHORT_TTL, interval=1.0, write=write, name="test")
    drive(keeper, lambda: s.get("/frontends/lb1"), DEADLINE)
    kv = s.get("/frontends/lb1")
    assert kv is not None and kv.lease == attempts[0] == keeper.lease_id
    assert len(set(attempts)) == 1, "the first lease should have been kept alive"
    assert s.time_to_live(kv.lease) > 0


def test_a_lease_etcd_no_longer_knows_is_replaced(etcd: Etcd) -> None:
    """The lease vanishes behind the keeper's back while its write fails: the keeper
    grants a new lease and the write lands under it."""
    s = session(etcd)
    attempts: list[int] = []

    def write(lease_id: int) -> None:
        attempts.append(lease_id)
        if len(attempts) == 1:
            s.revoke(lease_id)  # e.g. expired while the reply was lost
            raise EtcdUnavailable("reply lost")
        s.put("/frontends/lb1", "{}", lease=lease_id)

    keeper = LeaseKeeper(s, SHORT_TTL, interval=1.0, write=write, name="test")
    drive(keeper, lambda: s.get("/frontends/lb1"), DEADLINE)
    kv = s.get("/frontends/lb1")
    assert kv is not None and kv.lease == keeper.lease_id != attempts[0]
    assert s.time_to_live(kv.lease) > 0
    with pytest.raises(LeaseNotFound):  # what a write under the old lease gets
        s.put("/frontends/lb1", "{}", lease=attempts[0])


# --- item 1: announce whose create committed but whose reply was lost -----------------------


def _announcer(etcd: Etcd, stop: Stopper) -> Announcer:
    settings = load(AnnounceSettings, [], announce_env(etcd, PATH, 8080), "test")
    return Announcer(settings, session(etcd), Metrics(), stop)


def test_announce_takes_a_key_under_its_own_lease_as_its_own(etcd: Etcd) -> None:
    """The key already holds announce's own lease (its create committed, the reply was
    lost): announce takes it as written at once instead of trying to create it again."""
    stop = Stopper()
    announcer = _announcer(etcd, stop)
    s = session(etcd)
    lease_id, _ = s.grant(SHORT_TTL)
    assert s.create(KEY, announcer.value, lease=lease_id)
    announcer.lease.lease_id = lease_id  # granted by it; the create's reply never came
    done = threading.Event()

    def one_tick() -> None:
        try:
            announcer.lease.tick()
        finally:
            done.set()

    thread = threading.Thread(target=one_tick, daemon=True)
    thread.start()
    try:
        assert done.wait(DEADLINE / 2), "announce spun on its own key"
    finally:
        stop.event.set()
        thread.join(10)
    kv = s.get(KEY)
    assert kv is not None and kv.lease == lease_id


def test_announce_record_survives_a_create_reply_lost_after_the_commit(
    servers: Stack, etcd: Etcd
) -> None:
    """announce's create commits in etcd but the reply is lost and the connection reset:
    the record stays, under that same lease, past several TTLs (issue 8, item 1)."""
    direct = session(etcd)
    deletes = EventRecorder(direct, "/announce/")
    with FaultProxy("127.0.0.1", etcd.client_port, http2=True) as proxy:
        proxy.drop_replies(after=KEY.encode())
        env = announce_env(etcd, PATH, 8080, ETCD_ENDPOINTS=proxy.endpoint)
        d = servers.daemon("announce", env)
        assert proxy.dropping.wait(DEADLINE), "announce never sent its create"
        committed = wait_for(lambda: direct.get(KEY), DEADLINE, what="the create committed")
        proxy.cut()  # the reply is gone; the client sees a reset
        time.sleep(3 * SHORT_TTL)
        kv = wait_for(lambda: direct.get(KEY), DEADLINE, what="the record")
        assert d.alive()
    assert kv.lease == committed.lease, d.log()
    assert direct.time_to_live(kv.lease) > 0
    assert deletes.stop() == [], d.log()


# --- item 6: watch streams that end or are refused without an error -------------------------


def test_a_watch_stream_ended_cleanly_is_resumed(etcd: Etcd) -> None:
    """A watch stream ended with an OK status (as an HTTP/2 proxy ending it cleanly does)
    is a broken watch: the mirror resumes, and a change made afterwards reaches it."""
    direct = session(etcd)
    with FaultProxy("127.0.0.1", etcd.client_port, http2=True) as proxy:
        mirror = PrefixMirror(session(proxy.endpoint), "/announce", on_change=lambda: None)
        stop = threading.Event()
        thread = threading.Thread(target=mirror.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: mirror.connected, DEADLINE, what="the mirror watching")
            assert proxy.end_streams() >= 1
            direct.put("/announce/x", "1")
            wait_for(
                lambda: "/announce/x" in mirror.snapshot().items,
                DEADLINE,
                what="the change after the stream ended",
            )
        finally:
            stop.set()
            thread.join(10)


ROOT_SECRET = "root-secret"


def test_a_watch_etcd_refuses_at_its_creation_is_reported(servers: Stack) -> None:
    """etcd refuses a watch at its creation (the user's read permission went between the
    session's check and the create): the watch says so instead of looking alive."""
    etcd = servers.etcd()
    as_root = {"ETCDCTL_USER": f"root:{ROOT_SECRET}"}
    etcd.ctl("user", "add", f"root:{ROOT_SECRET}")
    etcd.ctl("auth", "enable")
    etcd.ctl("role", "add", "reader", env=as_root)
    etcd.ctl("role", "grant-permission", "--prefix", "reader", "read", "/announce/", env=as_root)
    etcd.ctl("user", "add", "reader:reader-secret", env=as_root)
    etcd.ctl("user", "grant-role", "reader", "reader", env=as_root)
    root = EtcdSession(endpoints(etcd.endpoint), username="root", password=ROOT_SECRET)
    start = root.revision() + 1
    assert start != 1  # the marker below must not match the session's one-key read (limit 1)
    create = etcdrpc.WatchCreateRequest(
        key=b"/announce/", range_end=b"/announce0", start_revision=start
    ).SerializeToString()
    outcome: queue.Queue[Exception | None] = queue.Queue()
    inbox: queue.Queue[WatchBatch | Exception] = queue.Queue()
    with FaultProxy("127.0.0.1", etcd.client_port, http2=True) as proxy:
        reader = EtcdSession(endpoints(proxy.endpoint), username="reader", password="reader-secret")

        def start_watch() -> None:
            try:
                reader.watch_prefix("/announce/", start, inbox.put)
            except Exception as exc:
                outcome.put(exc)
            else:
                outcome.put(None)

        proxy.hold_requests(after=create)
        thread = threading.Thread(target=start_watch, daemon=True)
        thread.start()
        assert proxy.holding.wait(DEADLINE), "the watch create never came"
        etcd.ctl("role", "revoke-permission", "--prefix", "reader", "/announce/", env=as_root)
        proxy.forward()
        thread.join(DEADLINE)
        result = outcome.get(timeout=1)
        if result is None:  # a watch may also report its refusal as its one exception
            try:
                result = inbox.get(timeout=DEADLINE / 2)  # type: ignore[assignment]
            except queue.Empty:
                raise AssertionError("the refused watch looks alive and says nothing") from None
        assert isinstance(result, EtcdUnavailable), result
        assert "permission denied" in str(result)


# --- revoke on exit while the endpoint in use is down ---------------------------------------


def test_sigterm_revokes_through_another_endpoint_when_the_one_in_use_is_down(
    servers: Stack, etcd: Etcd
) -> None:
    """With two endpoints, the one announce uses goes down just before SIGTERM: the
    revoke is tried again on the other, so the record goes at once, not after its TTL."""
    direct = session(etcd)
    with (
        FaultProxy("127.0.0.1", etcd.client_port) as first,
        FaultProxy("127.0.0.1", etcd.client_port) as second,
    ):
        env = announce_env(
            etcd,
            PATH,
            8080,
            ETCD_ENDPOINTS=f"{first.endpoint},{second.endpoint}",
            ANNOUNCE_TTL="60",
            ANNOUNCE_INTERVAL="30",  # no refresh to notice the outage before SIGTERM
        )
        d = servers.daemon("announce", env)
        kv = wait_for(lambda: direct.get(KEY), DEADLINE, what="the record")
        (in_use,) = [p for p in (first, second) if p.open_connections]
        in_use.refuse()
        in_use.cut()
        d.send(signal.SIGTERM)
        assert d.proc is not None and d.proc.wait(DEADLINE) == 0
        assert direct.get(KEY) is None, d.log()
        assert direct.time_to_live(kv.lease) == -1
