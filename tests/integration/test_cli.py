"""The operator CLI (`haroute status|plan|render`, SPEC §7) against a real etcd and a real
lb driving its own HAProxy: it must say what the lb sees and would do, and change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.helpers import session
from tests.lb_helpers import EchoServer, LbStack, host_of, lb_stack, record
from tests.servers import ROOT, Etcd, Stack, free_port, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SIT = "/internal/app1/sit/web/ghost.example"
DB = "/internal/app1/dev/db/ghost.example"
CACHE = "/internal/app1/dev/cache/ghost.example"
BE_WEB = "be_internal_app1_dev_web_ghost_example"
BE_SIT = "be_internal_app1_sit_web_ghost_example"
TCP_DB = "tcp_internal_app1_dev_db_ghost_example"


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.seconds = seconds

    def json(self) -> Any:
        return json.loads(self.out)


def haroute(env: Mapping[str, str], *args: str, timeout: float = 60) -> Ran:
    """`python -m lb.cli ARGS` with the lb's environment (as tests.servers.Daemon runs it)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "ANNOUNCE"))}
    full.update({"PYTHONPATH": str(ROOT), **env})
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lb.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Ran(proc, time.monotonic() - start)


def ok(env: Mapping[str, str], *args: str) -> Ran:
    ran = haroute(env, *args)
    assert ran.rc == 0, f"haroute {args} exited {ran.rc}: {ran.err}"
    return ran


def served(lb: LbStack) -> dict[str, tuple[str, str, str, str]]:
    """instance ID → (backend, slot, address, admin state) from `status --json`."""
    report = ok(lb.env, "status", "--json").json()
    return {
        r["instance"]: (r["backend"], r["slot"], r["address"], r["admin"])
        for r in report["servers"]
        if r["instance"] is not None and r["slot"] is not None
    }


def slots(lb: LbStack) -> set[tuple[str, str, str, str]]:
    """(backend, slot, address, admin state) of every slot in use, from `status --json`."""
    report = ok(lb.env, "status", "--json").json()
    return {
        (r["backend"], r["slot"], r["address"], r["admin"])
        for r in report["servers"]
        if r["slot"] is not None
    }


def converged(lb: LbStack) -> None:
    wait_for(
        lambda: ok(lb.env, "plan").out.startswith("Nothing to do"), 30, 0.2, "plan: nothing to do"
    )


def runtime_log(lb: LbStack) -> list[str]:
    """The runtime commands the (current) lb logged, in order."""
    assert lb.lb is not None
    return [
        line.split(" [runtime] ", 1)[1]
        for line in lb.lb.log().splitlines()
        if " [runtime] " in line
    ]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


def test_status_lists_instances_slots_and_states(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """status (table and --json) shows every instance in its slot, ready and up, with the
    rejected records and port clashes."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2, echo = lb.backend("b1"), lb.backend("b2"), EchoServer()
        try:
            port = free_port()
            lb.put(WEB, "w1", b1.port)
            lb.put(WEB, "w2", b2.port)
            lb.put(DB, "d1", echo.port, type_="TCP", announce_port=port)
            lb.put(CACHE, "c1", echo.port, type_="TCP", announce_port=port)  # port clash
            lb.session.put("/services/internal/app1/dev/web/bad/x1", "{not json", lease=lb.lease)
            lb.start()
            wait_for(
                lambda: (
                    {
                        (r["instance"], r["admin"], r["operational"])
                        for r in ok(lb.env, "status", "--json").json()["servers"]
                    }
                    == {("w1", "ready", "up"), ("w2", "ready", "up"), ("d1", "ready", "up")}
                ),
                30,
                0.2,
                "status: w1, w2, d1 ready and up",
            )
            report = ok(lb.env, "status", "--json").json()
            rows = {r["instance"]: r for r in report["servers"]}
            assert {rows["w1"]["slot"], rows["w2"]["slot"]} == {"s1", "s2"}
            assert rows["w1"]["address"] == f"127.0.0.2:{b1.port}"
            assert rows["w1"]["host_or_port"] == host_of(WEB)
            assert rows["d1"] | {"note": None} == {
                "backend": TCP_DB,
                "host_or_port": str(port),
                "slot": "s1",
                "instance": "d1",
                "address": f"127.0.0.2:{echo.port}",
                "admin": "ready",
                "operational": "up",
                "pin": None,
                "note": None,
            }
            backends = {b["name"]: b for b in report["backends"]}
            assert set(backends) == {BE_WEB, TCP_DB}
            assert backends[BE_WEB]["slots"] == 4
            assert backends[BE_WEB]["slots_used"] == 2
            assert backends[BE_WEB]["in_map"] is True
            assert report["haproxy"]["layout_file_matches"] is True
            assert [r["reason"] for r in report["rejected"]] == ["bad_json"]
            assert [p["kind"] for p in report["problems"]] == ["port_clash"]

            table = ok(lb.env, "status").out
            for iid, b in (("w1", b1), ("w2", b2)):
                row = next(line for line in table.splitlines() if f" {iid} " in line)
                assert row.split()[:7] == [
                    BE_WEB,
                    host_of(WEB),
                    rows[iid]["slot"],
                    iid,
                    f"127.0.0.2:{b.port}",
                    "ready",
                    "up",
                ]
            assert "rejected records: 1" in table
            assert "problems: 1" in table
            assert f"port_clash {CACHE}: port {port} is taken by {DB}" in table
        finally:
            echo.close()


def test_plan_is_what_a_restarted_lb_applies(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """plan is empty when converged; after SIGKILL of the lb and record changes, it prints
    exactly the commands the restarted lb then sends, and HAProxy ends where it said."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2, b3 = lb.backend("b1"), lb.backend("b2"), lb.backend("b3")
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        lb.start()
        converged(lb)
        before = served(lb)
        assert before == {  # one reload placed both, in instance order
            "w1": (BE_WEB, "s1", f"127.0.0.2:{b1.port}", "ready"),
            "w2": (BE_WEB, "s2", f"127.0.0.2:{b2.port}", "ready"),
        }
        cfg, used = lb.config(), slots(lb)

        assert lb.lb is not None
        lb.lb.stop(signal.SIGKILL)  # HAProxy keeps serving
        lb.put(WEB, "w3", b3.port)
        lb.delete(WEB, "w1")
        lines = ok(lb.env, "plan").out.splitlines()
        commands = [line for line in lines if not line.startswith("#")]
        assert commands == [
            f"set server {BE_WEB}/s1 state drain",
            f"set server {BE_WEB}/s3 addr 127.0.0.2 port {b3.port}",
            f"set server {BE_WEB}/s3 state ready",
        ]
        assert any(line.startswith("# then, once idle") for line in lines)
        # The plan sent nothing and wrote nothing.
        assert slots(lb) == used
        assert lb.config() == cfg
        status = ok(lb.env, "status", "--json").json()["servers"]
        assert {(r["instance"], r["slot"], r["note"]) for r in status} == {
            (None, "s1", "no record"),
            ("w2", "s2", None),
            ("w3", None, "not in HAProxy yet"),
        }

        reloads = lb.haproxy_reloads()
        lb.start()
        wait_for(lambda: len(runtime_log(lb)) >= len(commands), 30, 0.1, "the lb applied")
        assert runtime_log(lb)[: len(commands)] == commands
        wait_for(
            lambda: (
                served(lb)
                == {
                    "w2": before["w2"],
                    "w3": (BE_WEB, "s3", f"127.0.0.2:{b3.port}", "ready"),
                }
            ),
            30,
            0.2,
            "w3 in its planned slot, w1's slot drained",
        )
        converged(lb)
        assert lb.haproxy_reloads() == reloads


def test_plan_new_environment_says_reload(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """A new environment while the lb is down and no spare backend (SPARE_BACKENDS=0):
    plan says `reload: new_backend`, names the backend and notes the commands for the
    running backends meanwhile; the restarted lb reloads for that reason."""
    with lb_stack(servers, etcd, tmp_path, SPARE_BACKENDS="0") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.put(WEB, "w1", b1.port)
        lb.start()
        converged(lb)
        assert lb.lb is not None
        lb.lb.stop(signal.SIGKILL)
        lb.put(SIT, "s1", b1.port)
        lb.put(WEB, "w2", b2.port)
        assert ok(lb.env, "plan").out.splitlines() == [
            "reload: new_backend",
            f"  + {BE_SIT} ({host_of(SIT)}, 4 slots)",
            "# while the reload waits (RELOAD_MIN_INTERVAL=0.2s after the last one) or if "
            "its config fails the check, the lb sends on the running layout:",
            f"#   set server {BE_WEB}/s2 addr 127.0.0.2 port {b2.port}",
            f"#   set server {BE_WEB}/s2 state ready",
        ]
        lb.start()
        wait_for(
            lambda: lb.metric("haroute_reloads_total", reason="new_backend", result="ok") >= 1,
            30,
            0.1,
            "the restarted lb reloads for new_backend",
        )
        converged(lb)
        assert served(lb) == {
            "w1": (BE_WEB, "s1", f"127.0.0.2:{b1.port}", "ready"),
            "w2": (BE_WEB, "s2", f"127.0.0.2:{b2.port}", "ready"),
            "s1": (BE_SIT, "s1", f"127.0.0.2:{b1.port}", "ready"),
        }


def test_render_equals_the_lb_config_and_map(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """render prints the lb's haproxy.cfg byte for byte once converged, render --map its
    hosts.map; settings work as --flags after the command too."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1, b2, b3, echo = lb.backend("b1"), lb.backend("b2"), lb.backend("b3"), EchoServer()
        try:
            lb.put(WEB, "w1", b1.port)
            lb.put(WEB, "w2", b2.port)
            lb.put(SIT, "s1", b1.port)
            lb.put(DB, "d1", echo.port, type_="TCP", announce_port=free_port())
            lb.start()  # one reload installs all of it, so the file is current
            converged(lb)
            env = {k: v for k, v in lb.env.items() if k not in ("HAPROXY_DIR", "LISTEN_PATH")}
            flags = ["--haproxy-dir", str(lb.dir), f"--listen-path={lb.env['LISTEN_PATH']}"]
            rendered = ok(env, "render", *flags).out
            assert rendered == lb.config()
            assert f"server s1 127.0.0.2:{echo.port} check\n" in rendered
            assert ok(env, "render", "--map", *flags).out == (lb.dir / "hosts.map").read_text()
            assert ok(env, "render", "--map", *flags).out == "".join(
                f"{host_of(p)} {b}\n" for p, b in ((WEB, BE_WEB), (SIT, BE_SIT))
            )

            lb.put(WEB, "w3", b3.port)  # a runtime change: render shows its server
            converged(lb)
            assert f"127.0.0.2:{b3.port} check\n" in ok(env, "render", *flags).out
        finally:
            echo.close()


def test_etcd_unreachable_fails_fast_with_one_line(tmp_path: Path) -> None:
    """Nobody listening at ETCD_ENDPOINTS: every command exits 1 within seconds, with one
    line naming the endpoints."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {
        "ETCD_ENDPOINTS": endpoint,
        "LISTEN_PATH": "/services/internal/app1",
        "HAPROXY_DIR": str(tmp_path),
    }
    for args in (("status",), ("status", "--json"), ("plan",), ("render",)):
        ran = haroute(env, *args)
        assert ran.rc == 1, ran.err
        assert one_line(ran.err).startswith(f"haroute: etcd unreachable at {endpoint}: ")
        assert ran.out == ""
        assert ran.seconds < 10


def test_frozen_etcd_fails_within_the_rpc_timeout(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """An etcd that accepts connections but never answers (SIGSTOP): plan gives up after
    the RPC timeout, not after long retries."""
    session(etcd).put(f"/services{WEB}/w1", record(WEB, "w1", "127.0.0.2", 8080))
    etcd.freeze()
    env = {
        "ETCD_ENDPOINTS": etcd.endpoint,
        "LISTEN_PATH": "/services/internal/app1",
        "HAPROXY_DIR": str(tmp_path),
    }
    ran = haroute(env, "plan")
    etcd.thaw()
    assert ran.rc == 1, ran.err
    assert one_line(ran.err).startswith(f"haroute: etcd unreachable at {etcd.endpoint}: ")
    assert ran.seconds < 15


def test_socket_unreachable_names_the_socket(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """No HAProxy in HAPROXY_DIR: plan and render exit 1 with one line naming the admin
    socket; status prints the etcd side, then says the same and exits 1."""
    session(etcd).put(f"/services{WEB}/w1", record(WEB, "w1", "127.0.0.2", 8080))
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"ETCD_ENDPOINTS": etcd.endpoint, "LISTEN_PATH": "/services/internal/app1"}
    flags = ["--haproxy-dir", str(empty)]
    sock = str(empty / "admin.sock")
    for args in (("plan",), ("render",), ("render", "--map")):
        ran = haroute(env, *args, *flags)
        assert ran.rc == 1, ran.err
        assert sock in one_line(ran.err)
        assert ran.out == ""
    ran = haroute(env, "status", *flags)
    assert ran.rc == 1
    assert sock in one_line(ran.err)
    assert f"HAProxy at {sock}: unreachable" in ran.out
    row = next(line for line in ran.out.splitlines() if " w1 " in line)
    assert row.split() == [BE_WEB, host_of(WEB), "-", "w1", "127.0.0.2:8080", "-", "-"]
    ran = haroute(env, "status", "--json", *flags)
    assert ran.rc == 1
    report = ran.json()
    assert report["haproxy"]["reachable"] is False
    assert sock in report["haproxy"]["error"]
    assert [(r["instance"], r["slot"]) for r in report["servers"]] == [("w1", None)]


def test_bad_settings_exit_2_with_one_line(tmp_path: Path) -> None:
    """A missing LISTEN_PATH: one line naming it, exit 2, before any connection."""
    ran = haroute({"HAPROXY_DIR": str(tmp_path)}, "plan")
    assert ran.rc == 2
    assert one_line(ran.err) == "haroute plan: bad setting LISTEN_PATH: is required"


def test_status_frontends_shows_each_lbs_applied_revision_and_lag(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Every lb writes the etcd revision its HAProxy acknowledged into /frontends/<LB_ID>
    (REVISION); `status --frontends` lists it with 0 behind, and an lb that stopped
    applying (frozen) shows behind once something it covers changes: a put, and a delete
    (which leaves no key whose revision could show it)."""
    with lb_stack(servers, etcd, tmp_path, ADVERTISE_IP="127.0.0.1") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        d = lb.start()
        lb.put(WEB, "w1", b1.port)
        wait_for(lambda: lb.answers(host_of(WEB)) == {"b1"}, 10, 0.05, "w1 serves")

        def row() -> dict[str, Any]:
            report = ok(lb.env, "status", "--frontends", "--json").json()
            (entry,) = [r for r in report["frontends"] if r.get("id") == "lb1"]
            return entry  # type: ignore[no-any-return]

        wait_for(lambda: row()["behind"] == 0, 10, 0.2, "lb1 caught up")
        assert row()["revision"] >= row()["latest_change"] > 0
        assert lb.metric("haroute_applied_revision") == row()["revision"]
        text = ok(lb.env, "status", "--frontends").out
        assert "lb1" in text and "ok" in text
        d.send(signal.SIGSTOP)
        try:
            lb.put(WEB, "w2", b2.port)
            wait_for(lambda: (row()["behind"] or 0) > 0, 10, 0.2, "lb1 behind while frozen")
        finally:
            d.send(signal.SIGCONT)
        wait_for(lambda: row()["behind"] == 0, 15, 0.2, "lb1 caught up again")
        d.send(signal.SIGSTOP)
        try:
            lb.delete(WEB, "w2")
            deleted = lb.session.get_prefix("/")[1]  # the store revision: the delete's
            wait_for(lambda: (row()["behind"] or 0) > 0, 10, 0.2, "behind a delete")
            assert row()["latest_change"] >= deleted
        finally:
            d.send(signal.SIGCONT)
        wait_for(lambda: row()["behind"] == 0, 15, 0.2, "lb1 caught up after the delete")
        assert row()["revision"] >= deleted


def test_plan_says_which_spare_a_new_environment_takes(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A new environment while the lb is down: plan shows its servers set in a spare
    backend and its Host added to the map, and names the spare; the restarted lb does it
    with no reload."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b1 = lb.backend("b1")
        lb.put(WEB, "w1", b1.port)
        lb.start()
        converged(lb)
        reloads = lb.haproxy_reloads()
        assert lb.lb is not None
        lb.lb.stop(signal.SIGKILL)
        lb.put(SIT, "s1", b1.port)
        out = ok(lb.env, "plan").out.splitlines()
        assert out[0] == "set server pool_http_0/s1 addr 127.0.0.2 port " + str(b1.port)
        assert f"add map {lb.dir / 'hosts.map'} {host_of(SIT)} pool_http_0" in out
        assert f"# {BE_SIT} takes the spare backend pool_http_0 (no reload)" in out
        lb.start()
        wait_for(lambda: lb.answers(host_of(SIT)) == {"b1"}, 15, 0.1, "sit served")
        assert lb.haproxy_reloads() == reloads
