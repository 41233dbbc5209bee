"""A three-member etcd cluster on loopback under every daemon: each is given all three
endpoints and fails over when the leader dies (SPEC §2 ETCD_ENDPOINTS, §4, §5, §6)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from discovery.etcd import EtcdSession, EtcdUnavailable
from tests.helpers import DeleteRecorder, announce_env, keys, register_env, session
from tests.lb_helpers import host_of, lb_stack, request_loop
from tests.servers import Etcd, Stack, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SVC = f"/services{WEB}/"
HOST = host_of(WEB)


class Member(Etcd):
    """One member of a multi-member cluster (``Etcd`` itself bootstraps alone)."""

    cluster = ""  # name=peer URL of every member, set before the first start
    token = ""

    def cluster_args(self) -> list[str]:
        return [
            "--initial-cluster",
            self.cluster,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",
        ]

    def start(self) -> Member:
        self.launch()
        wait_for(self.healthy, 20, 0.05, f"etcd {self.name} /health")
        return self

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` through the JSON gateway."""
        req = urllib.request.Request(
            f"{self.endpoint}/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(req, timeout=2) as resp:
            return dict(json.loads(resp.read()))


@contextlib.contextmanager
def etcd_cluster(workdir: Path, size: int = 3) -> Iterator[list[Member]]:
    members = [Member(workdir, name=f"m{i}") for i in range(1, size + 1)]
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
    try:
        for m in members:
            m.cluster, m.token = cluster, f"haroute-{workdir.name}"
            m.launch()
        for m in members:
            wait_for(m.healthy, 20, 0.05, f"etcd {m.name} /health")
        yield members
    finally:
        for m in members:
            m.stop(signal.SIGKILL)


def leader(members: list[Member]) -> Member | None:
    """The member that is leader by its own account (``None`` during an election)."""
    for m in members:
        if m.proc is None or m.proc.poll() is not None:
            continue
        try:
            status = m.status()
        except (OSError, ValueError):
            continue
        if status.get("leader") and status["leader"] == status["header"]["member_id"]:
            return m
    return None


def registered(s: EtcdSession, key: str) -> bool:
    """Whether ``key`` is in /services; ``False`` while etcd answers "leader changed"."""
    try:
        return key in keys(s, SVC)
    except EtcdUnavailable:
        return False


def connections_to(member: Member) -> int:
    """Established TCP connections to ``member``'s client port (from our daemons)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"dst 127.0.0.1:{member.client_port}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return len(out.splitlines())


def test_leader_killed_during_requests_loses_nothing(servers: Stack, tmp_path: Path) -> None:
    """Leader SIGKILLed under traffic: no request fails, no key is deleted, new ones converge."""
    with etcd_cluster(tmp_path) as members:
        old = wait_for(lambda: leader(members), 15, 0.1, "a leader")
        survivors = [m for m in members if m is not old]
        every = {"ETCD_ENDPOINTS": ",".join(m.endpoint for m in members)}
        servers.daemon("register", register_env(old, FRONTEND_IP="127.0.0.9", **every))
        with lb_stack(
            servers, survivors[0], tmp_path, LISTEN_PATH="/services/internal/app1/dev", **every
        ) as lb:
            webs = [lb.backend(f"web{i}") for i in range(3)]
            for web in webs:
                servers.daemon("announce", announce_env(old, WEB, web.port, **every))
            lb.start()
            s = session(survivors[0])
            wait_for(lambda: len(keys(s, SVC)) == 3, 15, 0.05, "three registered")
            names = {w.name for w in webs}
            wait_for(lambda: lb.answers(HOST) == names, 15, 0.1, "three served")
            before = keys(s, "/")

            recorder = DeleteRecorder(session(survivors[1]), "/")
            stop, results = threading.Event(), []
            loop = threading.Thread(target=request_loop, args=(lb, HOST, stop, results))
            loop.start()
            try:
                wait_for(lambda: len(results) > 50, 10, 0.05, "requests flowing")
                on_leader = connections_to(old)
                killed_at = time.monotonic()
                old.kill()

                new_web = lb.backend("web3")
                servers.daemon("announce", announce_env(old, WEB, new_web.port, **every))
                new_key = f"{SVC}hosta-{new_web.port}"
                wait_for(lambda: registered(s, new_key), 30, 0.05, "new instance registered")
                registered_after = time.monotonic() - killed_at
                wait_for(lambda: "web3" in lb.answers(HOST), 30, 0.05, "new instance served")
                served_after = time.monotonic() - killed_at
                new_leader = wait_for(lambda: leader(survivors), 15, 0.1, "a new leader")
                count = len(results)
                wait_for(lambda: len(results) > count + 200, 20, 0.05, "200 more requests")
            finally:
                stop.set()
                loop.join(60)
            deleted = recorder.stop()

            print(
                f"{on_leader} client connections on the killed leader; new leader "
                f"{new_leader.name}; new instance registered {registered_after:.2f} s and "
                f"served {served_after:.2f} s after the kill; {len(results)} requests"
            )
            failed = [r for r in results if r != 200]
            assert failed == [], f"{len(failed)} of {len(results)} requests failed"
            assert deleted == []
            after = keys(s, "/")
            assert {k: v for k, v in after.items() if k in before} == before
            assert set(keys(s, SVC)) == {f"{SVC}hosta-{w.port}" for w in (*webs, new_web)}
            assert lb.answers(HOST) == {*names, "web3"}
            assert lb.lb is not None and lb.lb.alive()

        # The old leader comes back on its data dir and catches up.
        old.start()
        assert keys(session(old), SVC) == keys(s, SVC)


def test_member_without_leader_is_noticed(tmp_path: Path) -> None:
    """A member that lost its leader (here: the two others frozen) cancels the watch of a
    daemon connected to it instead of feeding a watch that never moves, so the daemon
    reports etcd as disconnected (and would fail over); with a leader again it resumes and
    sees new writes."""
    from discovery.metrics import Metrics
    from discovery.watch import PrefixMirror

    with etcd_cluster(tmp_path) as members:
        lone, others = members[0], members[1:]
        metrics = Metrics()
        mirror = PrefixMirror(session(lone), "/announce", on_change=lambda: None, metrics=metrics)
        stop = threading.Event()
        thread = threading.Thread(target=mirror.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_for(lambda: mirror.connected, 10, what="mirror connected")
            for member in others:
                member.freeze()
            try:
                wait_for(lambda: not mirror.connected, 20, 0.1, "leader loss noticed")
                assert metrics.etcd_connected._value.get() == 0
            finally:
                for member in others:
                    member.thaw()
            wait_for(lambda: mirror.connected, 20, 0.1, "connected again")
            session(others[0]).put("/announce/after", "x")
            wait_for(
                lambda: "/announce/after" in mirror.snapshot().items,
                10,
                what="the write seen through the lone member",
            )
        finally:
            stop.set()
            thread.join(5)
