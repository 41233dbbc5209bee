"""HAProxy process control (lb/process.py) against a real HAProxy 2.6 (SPEC §2, §6, §9)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lb.external import ExternalHAProxy
from lb.files import prepare_directory
from lb.install import check_config
from lb.master import MasterCLI, ProcInfo, parse_show_proc
from lb.process import Ensured, HAProxyError
from lb.procfs import pid_alive
from lb.spawn import SpawnedHAProxy
from tests.haproxy_proc_helpers import (
    HAPROXY_BIN,
    Backend,
    answers,
    haproxy_config,
    haproxy_pids_in,
    http_get,
    kill_haproxies_in,
    write_atomic,
)
from tests.servers import free_port, wait_for

Make = Callable[..., SpawnedHAProxy]


@pytest.fixture
def hdir() -> Iterator[Path]:
    """A short directory under /tmp (socket paths must fit in 107 bytes); every HAProxy
    started from it is killed by pid at the end."""
    directory = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp"))
    try:
        yield directory
    finally:
        kill_haproxies_in(directory)
        for child in sorted(directory.iterdir()):
            child.unlink()
        directory.rmdir()


@pytest.fixture
def make(hdir: Path) -> Make:
    """A SpawnedHAProxy on ``hdir`` with a config (frontend on a free port) in place."""

    def _make(http_port: int | None = None, **config: object) -> SpawnedHAProxy:
        proc = SpawnedHAProxy(HAPROXY_BIN, hdir)
        prepare_directory(hdir)
        if not Path(proc.cfg_path).exists():
            port = http_port if http_port is not None else free_port()
            write_atomic(proc.cfg_path, haproxy_config(hdir, port, **config))  # type: ignore[arg-type]
            Path(proc.map_path).touch()
        return proc

    return _make


@pytest.fixture
def backend() -> Iterator[Backend]:
    """A small HTTP server on loopback."""
    server = Backend()
    try:
        yield server
    finally:
        server.close()


SHOW_PROC_RELOADING = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "22143           master          3 [failed: 0]   0d00h00m15s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "22873           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "22502           worker          1               0d00h00m09s     2.6.12-1+deb12u4\n"
    "# programs\n"
    "\n"
)


def test_parse_show_proc_of_2_6() -> None:
    """`show proc` as HAProxy 2.6.12 prints it during a reload: master pid, reload and
    failed counters, current workers apart from the old ones still finishing."""
    assert parse_show_proc(SHOW_PROC_RELOADING) == ProcInfo(
        master_pid=22143, reloads=3, failed=0, workers=(22873,), old_workers=(22502,)
    )
    failed = SHOW_PROC_RELOADING.replace("3 [failed: 0]", "4 [failed: 2]")
    assert parse_show_proc(failed).failed == 2
    with pytest.raises(ValueError, match="no master line"):
        parse_show_proc("Unknown command.\n")


def test_check_config_accepts_good_and_reports_haproxys_message(tmp_path: Path) -> None:
    """`haproxy -c` passes a valid config, and a bad one fails with HAProxy's own words."""
    good = tmp_path / "good.cfg"
    good.write_text(haproxy_config(tmp_path, free_port()))
    result = check_config(HAPROXY_BIN, str(good))
    assert result.ok, result.message

    bad = tmp_path / "bad.cfg"
    bad.write_text(haproxy_config(tmp_path, free_port()) + "    bogus_keyword 1\n")
    result = check_config(HAPROXY_BIN, str(bad))
    assert not result.ok
    assert "unknown keyword 'bogus_keyword'" in result.message
    assert "bad.cfg" in result.message

    missing = check_config(HAPROXY_BIN, str(tmp_path / "missing.cfg"))
    assert not missing.ok and "missing.cfg" in missing.message
    no_binary = check_config(str(tmp_path / "no-haproxy"), str(good))
    assert not no_binary.ok and "cannot run" in no_binary.message


def test_prepare_directory_makes_it_private(tmp_path: Path) -> None:
    """HAPROXY_DIR is created mode 700, and an existing looser one is tightened (SPEC §9)."""
    created = prepare_directory(tmp_path / "a" / "haproxy")
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    prepare_directory(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_start_runs_master_and_one_worker(make: Make, hdir: Path) -> None:
    """start() brings up a master-worker HAProxy: alive, `show proc` names the pidfile's pid
    as master with one worker and no reloads, the master socket is mode 600 in a 700
    directory, and the frontend answers."""
    os.chmod(hdir, 0o755)
    port = free_port()
    proc = make(port)
    proc.start()
    assert proc.alive()
    info = MasterCLI(proc.master_socket).show_proc()
    pidfile_pid = int(Path(proc.pid_path).read_text())
    assert info.master_pid == pidfile_pid == proc.master_pid
    assert len(info.workers) == 1 and info.old_workers == ()
    assert (info.reloads, info.failed) == (0, 0)
    assert stat.S_IMODE(os.stat(proc.master_socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(proc.admin_socket).st_mode) == 0o600
    assert stat.S_IMODE(hdir.stat().st_mode) == 0o700
    wait_for(lambda: answers(port), 10, what="frontend answers")
    assert proc.ensure_running() is Ensured.RUNNING
    proc.stop()


def test_start_failure_reports_haproxys_message(make: Make, hdir: Path) -> None:
    """A config HAProxy cannot start with (its port held by another process) makes start()
    raise with HAProxy's own alert, and leaves no HAProxy behind."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        proc = make(holder.getsockname()[1])
        with pytest.raises(HAProxyError, match="cannot bind socket"):
            proc.start()
    assert not proc.alive()
    assert haproxy_pids_in(hdir) == []


def test_reload_with_new_frontend_and_no_lost_requests(make: Make, backend: Backend) -> None:
    """reload() of a changed config is confirmed (new worker pid, reloads +1) and the new
    frontend answers; 5 reloads under a loop of requests through HAProxy lose none."""
    port, new_port = free_port(), free_port()
    proc = make(port, backend_port=backend.port)
    proc.start()
    wait_for(lambda: answers(port), 10, what="frontend answers")
    before = proc.show_proc()

    extra = f"frontend fe_new\n    bind 127.0.0.1:{new_port}\n    default_backend be_app\n"
    cfg = haproxy_config(proc.directory, port, backend_port=backend.port, extra=extra)
    write_atomic(proc.cfg_path, cfg)
    result = proc.reload()
    assert result.ok, result.detail
    assert result.info is not None
    assert result.info.reloads == before.reloads + 1
    assert result.info.failed == 0
    assert set(result.info.workers).isdisjoint(before.workers)
    assert http_get(new_port) == (200, "ok")

    # A loop of requests (new connection each) while HAProxy reloads 5 times.
    stop = threading.Event()
    counts = {"ok": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, _ = http_get(port)
            except OSError as exc:
                with lock:
                    failures.append(repr(exc))
                continue
            with lock:
                if status == 200:
                    counts["ok"] += 1
                else:
                    failures.append(f"HTTP {status}")

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    try:
        wait_for(lambda: counts["ok"] > 20, 30, what="traffic flowing")
        for generation in range(5):
            cfg = haproxy_config(
                proc.directory,
                port,
                backend_port=backend.port,
                extra=extra,
                comment=f"generation {generation}",
            )
            write_atomic(proc.cfg_path, cfg)
            mark = counts["ok"] + 10
            result = proc.reload(timeout=20)
            assert result.ok, result.detail
            wait_for(lambda: counts["ok"] > mark, 30, what="traffic after reload")  # noqa: B023
    finally:
        stop.set()
        for t in clients:
            t.join(30)
    assert failures == []
    assert counts["ok"] > 50
    info = proc.show_proc()
    assert info.reloads == before.reloads + 6 and info.failed == 0
    proc.stop()


def test_reload_rejected_by_haproxy_is_detected(make: Make) -> None:
    """A config that passes `haproxy -c` but binds a TCP port another process holds: reload()
    returns ok=False with [failed] risen, the old worker keeps serving; once the config is
    fixed the next reload works and the failed count is back to 0."""
    port = free_port()
    proc = make(port)
    proc.start()
    wait_for(lambda: answers(port), 10, what="frontend answers")
    before = proc.show_proc()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        extra = f"listen tcp_held\n    mode tcp\n    bind 127.0.0.1:{held}\n"
        extra += "    server s1 127.0.0.1:1\n"
        write_atomic(proc.cfg_path, haproxy_config(proc.directory, port, extra=extra))
        assert check_config(HAPROXY_BIN, proc.cfg_path).ok

        result = proc.reload(timeout=30)
        assert not result.ok
        assert "rejected" in result.detail
        # HAProxy's own words are kept (haproxy.log) and quoted, naming the listen.
        assert any("cannot bind socket" in a and "tcp_held" in a for a in result.alerts)
        assert "cannot bind socket" in result.detail
        assert result.info is not None
        assert result.info.failed > before.failed
        assert result.info.workers == before.workers
        assert proc.alive()
        assert http_get(port) == (200, "ok")

    write_atomic(proc.cfg_path, haproxy_config(proc.directory, port))
    fixed = proc.reload(timeout=30)
    assert fixed.ok, fixed.detail
    assert fixed.info is not None and fixed.info.failed == 0
    assert http_get(port) == (200, "ok")
    proc.stop()


def test_killed_worker_takes_master_down_and_start_again_works(make: Make) -> None:
    """SIGKILL to the worker ends the master too (2.6): alive() turns False, the stale
    pidfile is not adopted, and ensure_running() starts a fresh HAProxy that serves."""
    port = free_port()
    proc = make(port)
    proc.start()
    info = proc.show_proc()
    os.kill(info.workers[0], signal.SIGKILL)
    wait_for(lambda: not proc.alive(), 10, what="alive() false")
    wait_for(lambda: not pid_alive(info.master_pid), 10, what="master gone")
    assert not SpawnedHAProxy(HAPROXY_BIN, proc.directory).adopt(timeout=0.5)

    assert proc.ensure_running() is Ensured.STARTED
    assert proc.alive()
    assert proc.master_pid is not None and proc.master_pid != info.master_pid
    wait_for(lambda: answers(port), 10, what="frontend answers after restart")
    proc.stop()


def test_second_object_adopts_running_haproxy(make: Make, hdir: Path) -> None:
    """A new SpawnedHAProxy on the same directory (an lb restarted after SIGKILL) adopts the
    running HAProxy: same master, no new process, reloads work; start() refuses to run a
    second one."""
    first = make()
    assert not first.adopt(timeout=0.5)
    first.start()
    pids = haproxy_pids_in(hdir)
    assert len(pids) == 2  # master and worker

    second = SpawnedHAProxy(HAPROXY_BIN, hdir)
    assert second.adopt()
    assert second.master_pid == first.master_pid
    assert second.alive()
    assert second.ensure_running() is Ensured.RUNNING
    assert haproxy_pids_in(hdir) == pids
    with pytest.raises(HAProxyError, match="already running"):
        SpawnedHAProxy(HAPROXY_BIN, hdir).start()
    assert haproxy_pids_in(hdir) == pids

    result = second.reload()
    assert result.ok, result.detail
    assert SpawnedHAProxy(HAPROXY_BIN, hdir).ensure_running() is Ensured.RUNNING
    second.stop()


def test_soft_stop_finishes_requests_and_keeps_files(make: Make, backend: Backend) -> None:
    """stop(soft=True) lets the worker finish a request in flight, then master and worker
    pids are gone and the directory's files are all still there."""
    port = free_port()
    proc = make(port, backend_port=backend.port)
    proc.start()
    wait_for(lambda: answers(port), 10, what="frontend answers")
    info = proc.show_proc()
    files_before = {p.name for p in proc.directory.iterdir()}

    replies: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: replies.append(http_get(port, "/slow", timeout=30)))
    slow.start()
    assert backend.slow_started.wait(10)
    proc.stop(soft=True, timeout=20)
    slow.join(30)
    assert replies == [(200, "ok")]
    assert not pid_alive(info.master_pid)
    assert all(not pid_alive(w) for w in info.workers)
    assert not proc.alive()
    assert {p.name for p in proc.directory.iterdir()} == files_before
    assert {"haproxy.cfg", "hosts.map"} <= files_before
    proc.stop()  # stopping a stopped HAProxy is a no-op


def test_hard_stop_ends_haproxy(make: Make, hdir: Path) -> None:
    """stop(soft=False) ends master and worker."""
    proc = make()
    proc.start()
    info = proc.show_proc()
    proc.stop(soft=False)
    assert not pid_alive(info.master_pid)
    assert all(not pid_alive(w) for w in info.workers)
    assert haproxy_pids_in(hdir) == []


def test_external_haproxy_reload_command(make: Make) -> None:
    """ExternalHAProxy runs HAPROXY_RELOAD_CMD: one that sends `reload` to the master socket
    is ok and HAProxy really reloads; a failing one is ok=False with its stderr; alive()
    follows the admin socket."""
    supervised = make()
    supervised.start()
    before = supervised.show_proc()
    code = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
        "s.sendall(b'reload\\n'); s.shutdown(socket.SHUT_WR); s.recv(100)"
    )
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, "-c", code, supervised.master_socket))
    external = ExternalHAProxy(cmd, supervised.admin_socket)
    assert external.alive()
    assert external.adopt()
    assert external.ensure_running() is Ensured.RUNNING

    result = external.reload()
    assert result.ok, result.detail
    assert result.info is None

    def reloaded() -> bool:
        try:
            info = supervised.show_proc()
        except OSError:
            return False
        return info.reloads == before.reloads + 1 and not set(info.workers) & set(before.workers)

    wait_for(reloaded, 20, 0.05, "the reload command's reload")

    failing = ExternalHAProxy("echo 'reload refused: boom' >&2; exit 3", supervised.admin_socket)
    result = failing.reload()
    assert not result.ok
    assert "boom" in result.detail and "3" in result.detail

    external.shutdown()  # not ours to stop
    assert supervised.alive()
    supervised.stop()
    assert not external.alive()
    assert not ExternalHAProxy("true", "/nonexistent/admin.sock").alive()
