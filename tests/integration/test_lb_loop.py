"""The lb's loop on real etcd and HAProxy 2.6: the defects a review found in the loop it
replaced (issue "lb at scale"), each reproduced, and the loop's own duties (read-back,
fd budget, HAProxy's words)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from tests.lb_helpers import (
    EchoServer,
    LbStack,
    WhoServer,
    external_haproxy,
    host_of,
    lb_stack,
    record,
)
from tests.servers import Etcd, Stack, free_port, pid_gone, wait_for

WEB = "/internal/app1/dev/web/ghost.example"
SIT = "/internal/app1/sit/web/ghost.example"
DB = "/internal/app1/dev/db/ghost.example"
SOURCE = Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg.j2"


def serves(lb: LbStack, path: str, names: set[str], timeout: float = 10) -> None:
    wait_for(lambda: lb.answers(host_of(path)) == names, timeout, 0.05, f"{path} -> {names}")


def kill_haproxy(lb: LbStack) -> None:
    """SIGKILL to HAProxy's master and workers, as an OOM killer would."""
    pid = lb.haproxy_pid()
    assert pid is not None
    workers = [
        int(line.split()[0])
        for line in lb.master("show proc").splitlines()
        if " worker " in f" {line} "
    ]
    for p in (pid, *workers):
        os.kill(p, signal.SIGKILL)
    wait_for(lambda: pid_gone(pid), 10, what="HAProxy killed")


def test_haproxy_crash_restarts_from_the_last_good_config_never_a_refused_template(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A template that fails `haproxy -c` is refused; when HAProxy then dies, the lb starts
    it again from the last config that passed the check (with today's servers applied),
    not from the refused template: the Host serves again."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "haproxy.cfg.j2").write_text(SOURCE.read_text())
    with lb_stack(servers, etcd, tmp_path, TEMPLATE_DIR=str(templates)) as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        good = lb.config()
        (templates / "haproxy.cfg.j2").write_text(SOURCE.read_text() + "\nnot a keyword\n")
        wait_for(lambda: lb.metric("haroute_config_check_failures_total") >= 1, 10, what="refused")
        assert (lb.dir / "haproxy.cfg.new-failed").read_text().endswith("not a keyword\n")
        lb.put(WEB, "w2", b2.port)  # a runtime change after the refusal
        serves(lb, WEB, {"b1", "b2"})
        kill_haproxy(lb)
        serves(lb, WEB, {"b1", "b2"}, timeout=15)
        assert "not a keyword" not in lb.config()
        assert lb.config() == good


def test_external_supervisor_restart_is_noticed_and_the_state_applied_again(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """HAPROXY_MANAGE=external: the supervisor restarts HAProxy from the files on disk,
    which lack the runtime changes since the last reload; the lb notices (a new process)
    and applies its state again: the removed instance is out, the live one in."""
    with (
        external_haproxy(tmp_path) as haproxy,
        lb_stack(servers, etcd, tmp_path, **haproxy.env) as lb,
    ):
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})  # a reload: w1 is in the files
        lb.put(WEB, "w2", b2.port)
        lb.delete(WEB, "w1")
        serves(lb, WEB, {"b2"})  # runtime only: the files still say w1
        haproxy.supervisor.stop(soft=False)
        haproxy.supervisor.start()  # what systemd's Restart= does
        serves(lb, WEB, {"b2"}, timeout=15)
        assert lb.lb is not None and "HAProxy was restarted" in lb.lb.log()


def test_start_with_etcd_down_serves_the_last_config(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """An lb that starts while etcd is down and HAProxy is not running starts HAProxy from
    the last config on disk, not from an empty state: the Host keeps serving."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b = lb.backend("b")
        first = lb.start()
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        assert first.stop() == 0  # SIGTERM: HAProxy is soft-stopped, its files stay
        wait_for(lambda: lb.haproxy_pid() is None, 15, what="HAProxy stopped")
        etcd.stop()
        lb.start()
        serves(lb, WEB, {"b"}, timeout=15)


def test_a_reload_haproxy_rejects_is_blamed_by_its_alert_and_the_rest_goes_on(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A TCP port below 1024 for an lb that is not root: `haproxy -c` passes, the reload
    fails ("Permission denied"). The lb quotes HAProxy's ALERT (log and `haroute status`
    file), leaves that listen out, and a new HTTP environment still arrives."""
    nobody = 65534
    # pytest's directories are private to root: nobody's HAPROXY_DIR goes elsewhere.
    open_dir = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp"))
    open_dir.chmod(0o755)
    echo = EchoServer()
    with lb_stack(servers, etcd, open_dir) as lb:
        b = lb.backend("b")
        lb.dir.mkdir(mode=0o700)
        shutil.chown(lb.dir, nobody, nobody)
        lb.start(prefix=("setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups"))
        lb.put(WEB, "w1", b.port)
        serves(lb, WEB, {"b"})
        lb.put(DB, "db1", echo.port, type_="TCP", announce_port=81)
        wait_for(
            lambda: lb.lb is not None and "cannot be bound" in lb.lb.log(),
            20,
            0.1,
            "the listen left out",
        )
        status = json.loads((lb.dir / "haroute-status.json").read_text())["last_reload"]
        assert status["result"] == "failed"
        assert any("Permission denied" in a for a in status["alerts"])
        lb.put(SIT, "s1", b.port)
        serves(lb, SIT, {"b"}, timeout=15)
        assert lb.lb.log().count("HAProxy rejected the reload") <= 2
    echo.close()
    shutil.rmtree(open_dir, ignore_errors=True)


def test_a_config_over_the_fd_budget_is_never_installed(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """With a fixed MAXCONN and a hard open-file limit of 2000 (prlimit), a backend that
    would need more descriptors than the limit is not installed: the reason is logged and
    exported, HAProxy keeps running its last config, and runtime changes go on."""
    with lb_stack(servers, etcd, tmp_path, MAXCONN="930", SLOTS="2") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start(prefix=("prlimit", "--nofile=2000:2000"))
        lb.put(WEB, "w1", b1.port)
        serves(lb, WEB, {"b1"})
        assert lb.metric("haroute_fd", kind="limit") == 2000
        big = [("/internal/app1/dev/web/big", f"i{k}") for k in range(400)]
        items = [
            (
                f"/services{path}/{iid}",
                json.dumps(
                    {
                        "ID": iid,
                        "APP": "app1",
                        "ENV": "dev",
                        "SERVICE": "web",
                        "NAME": "big",
                        "PORT": 1000 + k,
                        "TYPE": "HTTP",
                        "IP": "127.0.0.3",
                        "EXT_PORT": 1000 + k,
                        "NODE": "hosta",
                    }
                ),
            )
            for k, (path, iid) in enumerate(big)
        ]
        good = lb.config()
        lb.session.put_many(items, lease=lb.lease)
        wait_for(lambda: lb.metric("haroute_config_over_budget") == 1, 15, what="over budget")
        assert lb.config() == good
        assert lb.lb is not None and "over the fd budget" in lb.lb.log()
        lb.put(WEB, "w2", b2.port)  # runtime changes go on
        serves(lb, WEB, {"b1", "b2"})


def test_auto_maxconn_and_slots_shrink_to_the_fd_limit(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """MAXCONN=auto with a hard limit of 2000: spare slots shrink, then maxconn is lowered
    so that the config fits; HAProxy runs it (its own Maxsock within the limit)."""
    with lb_stack(servers, etcd, tmp_path) as lb:
        b = lb.backend("b")
        lb.start(prefix=("prlimit", "--nofile=2000:2000"))
        paths = [f"/internal/app1/dev/web/e{i}" for i in range(150)]
        items = [
            (f"/services{p}/i{k}", record(p, f"i{k}", "127.0.0.3", 2000 + i * 8 + k))
            for i, p in enumerate(paths)
            for k in range(8)
        ]
        items.append((f"/services{WEB}/w1", record(WEB, "w1", "127.0.0.2", b.port)))
        lb.session.put_many(items, lease=lb.lease)
        serves(lb, WEB, {"b"}, timeout=30)
        wait_for(lambda: lb.metric("haroute_maxconn") > 0, 10, what="maxconn exported")
        assert lb.metric("haroute_maxconn") < 4000
        assert lb.metric("haroute_budget_cut", what="spare_slots") > 0
        info = lb.admin("show info")
        maxsock = int(next(v for k, v in _info(info) if k == "Maxsock"))
        assert maxsock <= 2000
        assert maxsock <= lb.metric("haroute_fd", kind="need")


def test_reconcile_repairs_what_someone_changed_behind_the_lbs_back(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A server put in maintenance by hand on the admin socket is ready again after the
    next read-back (RECONCILE_INTERVAL), with no reload."""
    with lb_stack(servers, etcd, tmp_path, RECONCILE_INTERVAL="1") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        lb.start()
        lb.put(WEB, "w1", b1.port)
        lb.put(WEB, "w2", b2.port)
        serves(lb, WEB, {"b1", "b2"})
        reloads = lb.haproxy_reloads()
        proxy = lb.haproxy_backend(WEB)  # its own backend, or the spare it serves from
        lb.admin(f"set server {proxy}/s1 state maint")
        lb.admin(f"set server {proxy}/s2 state maint")
        serves(lb, WEB, {"b1", "b2"}, timeout=10)
        assert lb.haproxy_reloads() == reloads
        assert lb.metric("haroute_reconciles_total", outcome="repaired") >= 1


def test_two_listens_never_share_a_port(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """A TCP service renamed while its emptied listen waits for BACKEND_GC_AFTER: the new
    listen gets the port and the old one is gone at once, so no connection reaches it."""
    echo_old, echo_new = WhoServer(), WhoServer(host="127.0.0.3")
    try:
        with lb_stack(servers, etcd, tmp_path, BACKEND_GC_AFTER="300") as lb:
            lb.start()
            port = free_port()
            lb.put(DB, "db1", echo_old.port, type_="TCP", announce_port=port)
            wait_for(lambda: _peer(port) == echo_old.port, 10, 0.1, "old listen serves")
            lb.delete(DB, "db1")
            renamed = "/internal/app1/dev/db2/ghost.example"
            lb.put(renamed, "db1", echo_new.port, ip="127.0.0.3", type_="TCP", announce_port=port)
            wait_for(lambda: "listen tcp_internal_app1_dev_db2" in lb.config(), 10, 0.1, "new")
            assert "listen tcp_internal_app1_dev_db_ghost_example" not in lb.config()
            wait_for(lambda: _peer(port) == echo_new.port, 10, 0.1, "new listen serves")
            peers = {_peer(port) for _ in range(40)}
            assert peers == {echo_new.port}
    finally:
        echo_old.close()
        echo_new.close()


def test_a_tcp_service_never_takes_a_port_the_lb_binds(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A TCP record whose PORT is the HTTP frontend's port is reported and left out: HTTP
    requests keep reaching the HTTP frontend (SPEC §9)."""
    echo = EchoServer()
    try:
        with lb_stack(servers, etcd, tmp_path) as lb:
            b = lb.backend("b")
            lb.start()
            lb.put(WEB, "w1", b.port)
            serves(lb, WEB, {"b"})
            lb.put(DB, "evil", echo.port, type_="TCP", announce_port=lb.http_port)
            wait_for(
                lambda: lb.metric("haroute_problems", kind="port_reserved") == 1,
                10,
                what="reported",
            )
            assert "listen tcp_" not in lb.config()
            for _ in range(20):
                assert lb.get(host_of(WEB)) == (200, "b")
    finally:
        echo.close()


def _peer(port: int) -> int | None:
    """Which echo server answers through the listen: each echoes its own port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            data = sock.recv(64)
    except OSError:
        return None
    return int(data) if data.isdigit() else None


def _info(text: str) -> list[tuple[str, str]]:
    return [tuple(line.split(": ", 1)) for line in text.splitlines() if ": " in line]  # type: ignore[misc]


def test_a_thousand_backends_of_ten_servers(servers: Stack, etcd: Etcd, tmp_path: Path) -> None:
    """1000 HTTP backends x 10 servers, written before the lb starts (one lease per
    host of 10, as registers write them): HAProxy starts with all of them, a Host of the
    last backend serves, and a moved instance is applied with 0 reloads."""
    with lb_stack(servers, etcd, tmp_path, LISTEN_PATH="/services/big") as lb:
        b1, b2 = lb.backend("b1"), lb.backend("b2")
        paths = [f"/big/app{i // 100}/e{i % 100}/web" for i in range(1000)]
        for i, path in enumerate(paths):
            items = [
                (
                    f"/services{path}/i{k}",
                    record(path, f"i{k}", f"127.9.{i // 250}.{i % 250 + 1}", 20000 + k),
                )
                for k in range(1, 10)
            ]
            if i == len(paths) - 1:
                items.append((f"/services{path}/i0", record(path, "i0", "127.0.0.2", b1.port)))
            else:
                items.append((f"/services{path}/i0", record(path, "i0", "127.9.200.1", 20000 + i)))
            lb.session.put_many(items, lease=lb.session.grant(600)[0])
        lb.start()
        last = paths[-1]
        wait_for(lambda: lb.answers(host_of(last)) == {"b1"}, 60, 0.2, "the last Host serves")
        state = lb.admin("show servers state")
        assert sum(1 for line in state.splitlines() if " be_big_" in line) >= 10000
        reloads = lb.haproxy_reloads()
        lease = lb.session.grant(600)[0]
        lb.session.put(f"/services{last}/i0", record(last, "i0", "127.0.0.2", b2.port), lease=lease)
        wait_for(lambda: lb.answers(host_of(last)) == {"b2"}, 15, 0.1, "the moved instance")
        assert lb.haproxy_reloads() == reloads


def test_churn_under_keep_alive_load_loses_no_request(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """Keep-alive clients (a bounded loop each) while instances move ten times a second
    and a new environment arrives every second (a reload each): no request fails, thanks to
    `option idle-close-on-response` (an old worker closes an idle keep-alive connection
    only after a response, never as a request arrives)."""
    import http.client
    import threading

    with lb_stack(servers, etcd, tmp_path, RELOAD_MIN_INTERVAL="0.5", SPARE_BACKENDS="0") as lb:
        backends = [lb.backend(f"b{i}") for i in range(3)]
        lb.start()
        for i in range(3):
            lb.put(WEB, f"w{i}", backends[i].port)
        serves(lb, WEB, {"b0", "b1", "b2"})
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", lb.http_port, timeout=5)
            for _ in range(100_000):
                if stop.is_set():
                    break
                try:
                    conn.request("GET", "/", headers={"Host": host_of(WEB)})
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", lb.http_port, timeout=5)
                with lock:
                    counts["ok" if ok else "failed"] += 1
            conn.close()

        clients = [threading.Thread(target=client) for _ in range(4)]
        for c in clients:
            c.start()
        reloads = lb.haproxy_reloads()
        try:
            for step in range(60):  # 6 s: 60 moves, 6 new environments
                i = step % 3
                lb.put(WEB, f"w{i}", backends[(i + step) % 3].port)
                if step % 10 == 9:
                    lb.put(f"/internal/app1/dev/web/churn{step}", "x", backends[0].port)
                time.sleep(0.1)
            wait_for(lambda: lb.haproxy_reloads() >= reloads + 6, 10, what="6 reloads")
            time.sleep(0.5)
        finally:
            stop.set()
            for c in clients:
                c.join(30)
        assert counts["ok"] > 500
        assert counts["failed"] == 0, counts


def test_a_problem_that_goes_and_comes_back_is_logged_again(
    servers: Stack, etcd: Etcd, tmp_path: Path
) -> None:
    """A TCP port clash is logged when it appears, forgotten when it is resolved, and
    logged again when it comes back (the old loop remembered it forever)."""
    echo = EchoServer()
    try:
        with lb_stack(servers, etcd, tmp_path) as lb:
            lb.start()
            port = free_port()
            lb.put(DB, "a", echo.port, type_="TCP", announce_port=port)
            other = "/internal/app1/sit/db"

            def clashes() -> int:
                return (lb.lb.log() if lb.lb else "").count("port_clash /internal/app1/sit/db")

            lb.put(other, "b", echo.port, type_="TCP", announce_port=port)
            wait_for(lambda: clashes() == 1, 10, 0.1, "the clash logged")
            lb.delete(other, "b")
            wait_for(lambda: lb.metric("haroute_problems", kind="port_clash") == 0, 10, what="gone")
            lb.put(other, "b", echo.port, type_="TCP", announce_port=port)
            wait_for(lambda: clashes() == 2, 10, 0.1, "logged again")
    finally:
        echo.close()
