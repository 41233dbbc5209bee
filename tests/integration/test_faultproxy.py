"""The fault proxy itself (tests/faultproxy.py): each fault does what it says, and goes."""

from __future__ import annotations

import pytest

from discovery.etcd import EtcdSession, EtcdUnavailable
from discovery.kv import KV
from discovery.settings import endpoints
from tests.faultproxy import FaultProxy
from tests.helpers import session
from tests.servers import Etcd, wait_for


def _get(s: EtcdSession, key: str) -> KV | None:
    try:
        return s.get(key)
    except EtcdUnavailable:
        return None  # e.g. the endpoint is still marked failed (for 1 s)


def test_pause_holds_every_byte_and_forward_lets_them_through(etcd: Etcd) -> None:
    """While paused a call through the proxy gets no answer; after forward() it does."""
    session(etcd).put("/k", "v")
    with FaultProxy("127.0.0.1", etcd.client_port, http2=True) as proxy:
        s = EtcdSession(endpoints(proxy.endpoint), timeout=0.5)
        assert s.get("/k") is not None
        proxy.pause()
        with pytest.raises(EtcdUnavailable, match="Timeout"):
            s.get("/k")
        assert proxy.open_connections == 1  # held, not closed
        proxy.forward()
        kv = wait_for(lambda: _get(s, "/k"), 10, 0.1, "an answer after forward()")
        assert kv.value == b"v"


def test_refuse_and_cut_look_like_a_server_gone(etcd: Etcd) -> None:
    """cut() resets open connections and refuse() resets new ones: calls fail fast, and
    work again once the proxy forwards."""
    with FaultProxy("127.0.0.1", etcd.client_port) as proxy:
        s = EtcdSession(endpoints(proxy.endpoint), timeout=2)
        s.put("/k", "v")
        assert proxy.open_connections == 1
        proxy.refuse()
        proxy.cut()
        assert proxy.open_connections == 0
        with pytest.raises(EtcdUnavailable, match="ConnectionFailed"):
            s.get("/k")
        proxy.forward()
        kv = wait_for(lambda: _get(s, "/k"), 10, 0.1, "an answer after forward()")
        assert kv.value == b"v"
        assert proxy.open_connections == 1
