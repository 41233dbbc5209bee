"""New HTTP environments without a reload: the spare backend pool (SPEC §6 "Spare pool"),
on real etcd and HAProxy 2.6, reloads counted by HAProxy's own master."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from tests.lb_helpers import LbStack, host_of, lb_stack, request_loop
from tests.servers import Etcd, Stack, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
ENV = "/internal/app1/dev/web/env{}"


def serves(lb: LbStack, path: str, names: set[str], timeout: float = 10) -> None:
    wait_for(lambda: lb.answers(host_of(path)) == names, timeout, 0.05, f"{path} -> {names}")


def test_a_new_environment_serves_from_a_spare_backend_with_no_reload(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A new HTTP environment is routable through its Host with 0 reloads, served by a
    spare backend (its binding exported); removed, its Host gets a 503 and the spare is
    free again, still with 0 reloads."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="4") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        reloads = lb.haproxy_reloads()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        assert lb.haproxy_reloads() == reloads
        proxy = lb.haproxy_backend(WEB)
        assert proxy.startswith("pool_http_")
        backend = "be_internal_app1_dev_web_ghost_example"
        wait_for(
            lambda: lb.metric("haroute_pool_binding", pool_backend=proxy, backend=backend) == 1,
            5,
            what="binding exported",
        )
        assert lb.metric("haroute_pool", state="bound") == 1
        lb.delete(WEB, "w1")
        lb.delete(WEB, "w2")
        wait_for(lambda: lb.get(host_of(WEB))[0] == 503, 10, 0.05, "503 once removed")
        wait_for(lambda: lb.metric("haroute_pool", state="bound") == 0, 10, what="spare free")
        assert lb.haproxy_reloads() == reloads
        lb.put(ENV.format(1), "x", b1.port)  # the freed spare serves the next one
        serves(lb, ENV.format(1), {"b1"})
        assert lb.haproxy_reloads() == reloads


def test_an_exhausted_pool_costs_one_reload_which_refills_it(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Two spares, five new environments at once: the first ones are served from the
    pool, the next needs a reload, which renames the bound ones and fills the pool again
    for the last ones: one reload in all, every environment routable."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="2", RELOAD_MIN_INTERVAL="1") as lb:
        b = lb.backend("b")
        lb.start()
        reloads = lb.haproxy_reloads()
        for i in range(5):
            lb.put(ENV.format(i), "x", b.port)
        for i in range(5):
            serves(lb, ENV.format(i), {"b"}, timeout=15)
        assert lb.haproxy_reloads() == reloads + 1
        assert lb.metric("haroute_reloads_total", reason="new_backend", result="ok") == 1
        own = [lb.haproxy_backend(ENV.format(i)).startswith("be_") for i in range(5)]
        assert sum(own) >= 1  # the reload gave these their own; any later ones use spares


def test_the_refill_reload_loses_no_request(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """A steady request loop to an environment on a spare backend while
    POOL_REFILL_AFTER gives it its own backend (reason pool_refill): 0 failed requests."""
    with lb_stack(servers, etcd, tmp_path, POOL_REFILL_AFTER="2") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        assert lb.haproxy_backend(WEB).startswith("pool_http_")
        stop = threading.Event()
        results: list[int] = []
        loop = threading.Thread(target=request_loop, args=(lb, host_of(WEB), stop, results))
        loop.start()
        try:
            wait_for(
                lambda: lb.metric("haroute_reloads_total", reason="pool_refill", result="ok") == 1,
                15,
                what="the refill reload",
            )
            time.sleep(0.5)
        finally:
            stop.set()
            loop.join(30)
        assert lb.haproxy_backend(WEB) == "be_internal_app1_dev_web_ghost_example"
        assert len(results) > 100
        assert [r for r in results if r != 200] == []


def test_a_restarted_lb_adopts_bound_spares_with_no_reload(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """lb killed while environments are on spare backends: the next lb reads the bindings
    back from HAProxy's map and slots, with 0 reloads, and changes them at runtime."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2, b3 = lb.backend("b1"), lb.backend("b2"), lb.backend("b3")
        first = lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(ENV.format(1), "x", b2.port)
        serves(lb, WEB, {"b1"})
        serves(lb, ENV.format(1), {"b2"})
        proxy = lb.haproxy_backend(WEB)
        assert proxy.startswith("pool_http_")
        reloads = lb.haproxy_reloads()
        first.stop(signal.SIGKILL)
        lb.start()
        wait_for(lambda: lb.metric("haroute_pool", state="bound") == 2, 10, what="adopted")
        lb.put(WEB, "w2", b3.port)
        serves(lb, WEB, {"b1", "b3"})
        assert lb.haproxy_backend(WEB) == proxy
        assert lb.haproxy_reloads() == reloads


def test_a_burst_of_new_environments_goes_into_the_map_as_one_version(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Ten new environments in one etcd transaction: served from spare backends with 0
    reloads, their Hosts committed to the map as one new version (prepare/commit map)."""
    import json

    with lb_stack(servers, etcd, tmp_path) as lb:
        b = lb.backend("b")
        lb.start()
        reloads = lb.haproxy_reloads()
        items = []
        for i in range(10):
            p = ENV.format(i).split("/")
            value = {
                "ID": "x",
                "APP": p[2],
                "ENV": p[3],
                "SERVICE": p[4],
                "NAME": p[5],
                "PORT": b.port,
                "TYPE": "HTTP",
                "IP": "127.0.0.2",
                "EXT_PORT": b.port,
                "NODE": "hosta",
            }
            items.append((f"/services{ENV.format(i)}/x", json.dumps(value)))
        lb.session.put_many(items, lease=lb.lease)
        for i in range(10):
            serves(lb, ENV.format(i), {"b"})
        assert lb.haproxy_reloads() == reloads
        assert lb.lb is not None and "map version" in lb.lb.log()
        assert lb.metric("haroute_pool", state="bound") == 10
