"""B1: convergence time, etcd put -> first HTTP 200 from the new server through HAProxy.

Run by hand (not a test, nothing here asserts on speed)::

    .venv/bin/python bench/convergence.py [--trials N] [--quick]

Everything runs on loopback: one etcd, three HTTP backend processes on 127.0.0.2-4 (each
answers with its own name), and two ways of driving HAProxy 2.6, one after the other:

1. ``runtime``: the real lb daemon (``python -m lb`` via ``tests.lb_helpers.LbStack``),
   which changes servers through HAProxy's runtime socket.
2. ``baseline``: a confd-style process (this file, ``--baseline-worker``) that watches
   the same kind of /services prefix and, for every change, renders the complete config
   (``lb.render``), checks and installs it with the lb's own ``lb.install``, reloads the master
   (``lb.spawn.SpawnedHAProxy.reload``: ``reload`` on the master CLI, confirmed by the
   new worker in ``show proc``).

One trial: put a *new* instance of the existing backend on the next backend server
(``a -> b -> c -> a ...``), poll HAProxy with fresh connections (the service's Host
header, 1 s timeout, a 0.5 ms sleep between requests) until that server answers 200,
then delete the previous instance and wait until things are quiet again (the lb's
drain is over, only the new server answers). A trial gives up after 5 s (a timeout).

Percentiles are nearest-rank over the trials that finished. The runtime path is broken
down with the lb's own numbers: the ``haroute_convergence_seconds`` histogram (its sum
and count before and after each trial give that trial's value: lb saw the event ->
HAProxy acknowledged the commands) and the time stamp of the lb's ``[runtime] set
server ... addr`` log line (written right after the batch was acknowledged; the log
clock has 1 ms steps).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from discovery.etcd import EtcdSession  # noqa: E402
from discovery.keys import Layout  # noqa: E402
from discovery.settings import endpoints  # noqa: E402
from discovery.watch import PrefixMirror  # noqa: E402
from lb import procfs  # noqa: E402
from lb.desired import desired_state, parse_records  # noqa: E402
from lb.files import HAProxyFiles, prepare_directory  # noqa: E402
from lb.install import Candidate, Installer  # noqa: E402
from lb.plan import Applied, Timers, for_reload, plan  # noqa: E402
from lb.render import RenderContext, render_config, render_map  # noqa: E402
from lb.settings import bind_address, default_template_dir  # noqa: E402
from lb.spawn import SpawnedHAProxy  # noqa: E402
from lb.state import layout_text  # noqa: E402
from tests.helpers import metric_value  # noqa: E402
from tests.lb_helpers import LbStack, host_of, record  # noqa: E402
from tests.servers import Stack, free_port, wait_for  # noqa: E402

DOMAIN = "skydns.local"
RUNTIME_PATH = "/internal/app1/prod/web"  # LbStack listens on /services/internal/app1
BASELINE_PATH = "/internal/app2/prod/web"
BACKEND_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
TRIAL_TIMEOUT = 5.0
REQUEST_TIMEOUT = 1.0
POLL_SLEEP = 0.0005
SETTLE_TIMEOUT = 15.0
TARGET_P99_MS = 10.0
TARGET_RATIO = 20.0
TEMPLATE = "haproxy.cfg.j2"

# The lb settings of the runtime path: defaults, except MASS_REMOVAL_GRACE (see README:
# this benchmark replaces one instance every ~0.6 s, which the mass-removal guard takes
# for a mass removal after three replacements and then holds every deleted instance).
LB_ENV = {
    "SLOTS": "8",
    "RELOAD_MIN_INTERVAL": "1",
    "DRAIN_TIMEOUT": "10",
    "LB_TTL": "15",
    "BACKEND_GC_AFTER": "300",
    "MASS_REMOVAL_GRACE": "0",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
}


# --------------------------------------------------------------------------- backends

# A backend server in a process of its own (so that it shares no GIL with the poller):
# answers every GET with its name; argv: host port name workdir (the last one only marks
# the process as ours for the final sweep).
BACKEND_SCRIPT = """
import http.server, sys
host, port, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address):
        pass  # HAProxy's health checks connect and reset
S((host, port), H).serve_forever()
"""


class Backend:
    """One HTTP backend server process on ``host``, answering with ``name``."""

    def __init__(self, name: str, host: str, workdir: Path) -> None:
        self.name = name
        self.host = host
        self.port = free_port(host)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT, host, str(self.port), name, str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        settle(f"backend {name} answers", self._answers, 10)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"backend {self.name} exited with {self.proc.returncode}")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/")
            return conn.getresponse().read().decode() == self.name
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# --------------------------------------------------------------------------- probing


@dataclass
class Probe:
    """Outcome of one trial's polling."""

    elapsed: float | None  # seconds from the put to the first 200 of the new server
    requests: int = 0
    errors: int = 0  # connection errors and timeouts
    other_status: int = 0  # non-200 answers
    other_server: int = 0  # 200 from another server
    # (start, end, what) of every request, seconds after the put; what: the server's
    # name, a status code, or "error"
    log: list[tuple[float, float, str]] = field(default_factory=list)


def get(port: int, host: str) -> tuple[int, str] | None:
    """One request on a fresh connection; ``None`` on any transport error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def poll_first(port: int, host: str, want: str, t0: float, sleep: float) -> Probe:
    """Poll until ``want`` answers 200; bounded by TRIAL_TIMEOUT from ``t0``."""
    probe = Probe(None)
    deadline = t0 + TRIAL_TIMEOUT
    while True:
        start = time.perf_counter()
        got = get(port, host)
        now = time.perf_counter()
        probe.log.append(
            (
                start - t0,
                now - t0,
                "error" if got is None else got[1] if got[0] == 200 else str(got[0]),
            )
        )
        probe.requests += 1
        if got is None:
            probe.errors += 1
        elif got[0] != 200:
            probe.other_status += 1
        elif got[1] == want:
            probe.elapsed = now - t0
            return probe
        else:
            probe.other_server += 1
        if now >= deadline:
            return probe
        if sleep > 0:
            time.sleep(sleep)


def only(port: int, host: str, want: str, count: int = 3) -> bool:
    """The next ``count`` requests are all answered 200 by ``want``."""
    for _ in range(count):
        got = get(port, host)
        if got != (200, want):
            return False
    return True


def quiet_rtt(port: int, host: str, count: int = 200) -> list[float]:
    """Seconds per request through HAProxy with nothing changing (the poll's step)."""
    times = []
    for _ in range(count):
        t = time.perf_counter()
        get(port, host)
        times.append(time.perf_counter() - t)
    return times


def settle(what: str, predicate: Callable[[], bool], timeout: float = SETTLE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not settled after {timeout} s: {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.2f}"


@dataclass
class Trial:
    index: int
    iid: str
    ip: str
    port: int
    t0_wall: float
    put_rpc: float
    probe: Probe
    lb_convergence: float | None = None  # runtime: from the lb's histogram
    stamps: dict[str, float] = field(default_factory=dict)  # wall clock, for breakdowns


@dataclass
class PathResult:
    name: str
    trials: list[Trial]
    warmup: int
    notes: list[str] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [t.probe.elapsed for t in self.trials if t.probe.elapsed is not None]

    @property
    def timeouts(self) -> int:
        return sum(1 for t in self.trials if t.probe.elapsed is None)


# --------------------------------------------------------------------------- runtime path


LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) haroute-lb INFO lb\.controller "
    r"\[runtime\] set server (\S+) addr (\S+) port (\d+)$"
)


def lb_acks(log_text: str) -> list[tuple[float, str, int]]:
    """(wall time, ip, port) of every ``[runtime] set server ... addr`` log line. The log
    clock is truncated to the millisecond: half a step is added."""
    acks = []
    for line in log_text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            acks.append((stamp + 0.0005, m.group(3), int(m.group(4))))
    return acks


def convergence_sample(text: str) -> tuple[float, float]:
    return (
        metric_value(text, "haroute_convergence_seconds_sum"),
        metric_value(text, "haroute_convergence_seconds_count"),
    )


def run_runtime(
    servers: Stack, etcd: Any, workdir: Path, backends: list[Backend], args: argparse.Namespace
) -> PathResult:
    lb = LbStack(
        servers, etcd, workdir, **{**LB_ENV, "MASS_REMOVAL_GRACE": args.mass_removal_grace}
    )
    host = host_of(RUNTIME_PATH)
    notes: list[str] = []
    trials: list[Trial] = []
    try:
        lb.start()
        base_key = f"/services{RUNTIME_PATH}"
        cur, cur_id = 0, "init"
        lb.put(RUNTIME_PATH, cur_id, backends[cur].port, ip=backends[cur].host)
        settle("runtime: first backend serves", lambda: only(lb.http_port, host, backends[0].name))
        add_extra_services(
            args.extra_services,
            RUNTIME_PATH,
            backends,
            lambda k, v: lb.session.put(k, v, lease=lb.lease),
            lb.http_port,
        )
        reloads_before = lb.haproxy_reloads()
        total = args.warmup + args.trials
        for i in range(total):
            nxt = (cur + 1) % len(backends)
            new = backends[nxt]
            iid = f"rt{i:04d}"
            time.sleep(random.uniform(0.01, 0.05))
            before = convergence_sample(lb.metrics() or "")
            t0_wall = time.time()
            t0 = time.perf_counter()
            lb.session.put(
                f"{base_key}/{iid}", record(RUNTIME_PATH, iid, new.host, new.port), lease=lb.lease
            )
            put_rpc = time.perf_counter() - t0
            probe = poll_first(lb.http_port, host, new.name, t0, args.poll_sleep)
            # The lb observes its histogram after logging; the first 200 can come first.
            with contextlib.suppress(RuntimeError):
                settle(
                    "runtime: lb histogram sample",
                    lambda c=before[1] + 1: convergence_sample(lb.metrics() or "")[1] >= c,
                    2,
                )
            after = convergence_sample(lb.metrics() or "")
            trial = Trial(i, iid, new.host, new.port, t0_wall, put_rpc, probe)
            if after[1] - before[1] == 1:
                trial.lb_convergence = after[0] - before[0]
            if i >= args.warmup:
                trials.append(trial)
            _progress("runtime", i, total, probe)
            # Back to one instance, and wait for the drain to end (slot free again).
            lb.delete(RUNTIME_PATH, cur_id)
            count_after_delete = after[1] + 1
            settle(
                "runtime: delete applied and drained",
                lambda c=count_after_delete: _lb_quiet(lb, c),
            )
            settle(
                "runtime: only the new server answers",
                lambda n=new: only(lb.http_port, host, n.name),
            )
            cur, cur_id = nxt, iid
        rtt = quiet_rtt(lb.http_port, host)
        reloads = lb.haproxy_reloads() - reloads_before
        text = lb.metrics() or ""
        if reloads:
            notes.append(f"HAProxy reloaded {reloads} times during the runtime trials")
        failed = metric_value(text, "haroute_runtime_commands_total", result="failed")
        if failed:
            notes.append(f"{failed:.0f} runtime commands failed")
        held = metric_value(text, "haroute_mass_removal_held_servers")
        if held:
            notes.append(f"mass-removal guard holds {held:.0f} servers")
        # Break down with the lb's log: its ack of the `set server ... addr` of each trial.
        assert lb.lb is not None
        acks = lb_acks(lb.lb.log())
        for trial in trials:
            for stamp, ip, port in acks:
                if ip == trial.ip and port == trial.port and stamp >= trial.t0_wall - 0.001:
                    trial.stamps["ack"] = stamp
                    break
        missing = sum(1 for t in trials if "ack" not in t.stamps)
        if missing:
            notes.append(f"{missing} trials without an lb ack log line")
        if args.keep:
            notes.append(f"lb log: {lb.lb.log_path}")
        return PathResult("runtime", trials, args.warmup, notes, rtt)
    finally:
        lb.close()


def add_extra_services(
    count: int,
    path: str,
    backends: list[Backend],
    put: Callable[[str, str], None],
    http_port: int,
) -> None:
    """``count`` more HTTP services next to ``path`` (one instance each), all serving."""
    if count <= 0:
        return
    base = path.rsplit("/", 1)[0]
    paths = [f"{base}/extra{k}" for k in range(count)]
    for k, p in enumerate(paths):
        b = backends[k % len(backends)]
        put(f"/services{p}/x{k}", record(p, f"x{k}", b.host, b.port))
    for k, p in enumerate(paths):
        name = backends[k % len(backends)].name
        settle(
            f"extra service {p} serves", lambda p=p, n=name: only(http_port, host_of(p), n, 1), 60
        )


def _lb_quiet(lb: LbStack, count: float) -> bool:
    text = lb.metrics() or ""
    return (
        metric_value(text, "haroute_convergence_seconds_count") >= count
        and metric_value(text, "haroute_drains_in_progress") == 0
    )


# --------------------------------------------------------------------------- baseline


def baseline_worker(config_path: str) -> int:
    """The confd-style process: every change -> render, ``haproxy -c``, install, reload."""
    cfg = json.loads(Path(config_path).read_text())
    directory = Path(cfg["dir"])
    prepare_directory(directory)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    wake = threading.Event()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lock = threading.Lock()
    pending: list[float] = []

    def changed() -> None:
        with lock:
            if not pending:
                pending.append(time.time())
        wake.set()

    session = EtcdSession(endpoints(cfg["etcd"]))
    layout = Layout()
    listen = cfg["listen"]
    mirror = PrefixMirror(session.fork(), listen, on_change=changed)
    haproxy = SpawnedHAProxy(cfg["haproxy_bin"], directory)
    installer = Installer(HAProxyFiles(str(directory)), cfg["haproxy_bin"])
    template = (Path(default_template_dir()) / TEMPLATE).read_text()
    ctx = RenderContext(
        "baseline",
        haproxy.admin_socket,
        haproxy.map_path,
        bind_address(f"127.0.0.1:{cfg['http_port']}"),
        None,
        None,
    )
    timers = Timers(8, 0.0, 300.0)
    applied = Applied()
    map_path = Path(haproxy.map_path)
    installer.commit(
        Candidate(
            render_config(template, applied, ctx, TEMPLATE),
            render_map(applied),
            layout_text(applied),
        )
    )
    out = (directory / "changes.jsonl").open("a", buffering=1)
    thread = threading.Thread(target=mirror.run, args=(stop,), daemon=True)
    try:
        haproxy.start()
        thread.start()
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if stop.is_set():
                break
            with lock:
                seen = pending.pop() if pending else None
            snap = mirror.snapshot()
            if seen is None or not snap.synced:
                continue
            start = time.time()
            records, _ = parse_records(snap.items.values(), layout, (listen,))
            desired = desired_state(records, domain=DOMAIN, http=True, tcp=False)
            target = for_reload(
                plan(
                    desired, applied, now=time.monotonic(), timers=timers, map_path=str(map_path)
                ).target,
                timers.initial_slots,
            )
            candidate = Candidate(
                render_config(template, target, ctx, TEMPLATE),
                render_map(target),
                layout_text(target),
            )
            rendered = time.time()
            check = installer.check(candidate)
            checked = time.time()
            entry: dict[str, Any] = {
                "rev": snap.revision,
                "seen": seen,
                "start": start,
                "rendered": rendered,
                "checked": checked,
                "ok": check.ok,
            }
            if check.ok:
                installed = installer.commit(candidate)
                result = haproxy.reload()
                entry["reloaded"] = time.time()
                entry["ok"] = result.ok
                entry["detail"] = result.detail
                if result.ok:
                    installer.settle()
                    applied = target
                elif not result.unknown:
                    installer.rollback(installed)
            else:
                entry["detail"] = check.message
            out.write(json.dumps(entry) + "\n")
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            haproxy.stop(soft=False, timeout=5)
        out.close()
        thread.join(2)
    return 0


class ChangeLog:
    """Reads the baseline worker's changes.jsonl as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.entries: list[dict[str, Any]] = []

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self.offset)
            while True:
                line = f.readline()
                if not line.endswith("\n"):
                    break
                self.offset += len(line.encode())
                self.entries.append(json.loads(line))

    def find(self, rev: int) -> dict[str, Any] | None:
        self.poll()
        for entry in reversed(self.entries):
            if entry["rev"] >= rev:
                return entry
        return None


def run_baseline(
    servers: Stack, etcd: Any, workdir: Path, backends: list[Backend], args: argparse.Namespace
) -> PathResult:
    directory = workdir / "baseline"
    directory.mkdir(mode=0o700)
    http_port = free_port()
    listen = "/services/internal/app2"
    config = {
        "dir": str(directory),
        "etcd": etcd.endpoint,
        "listen": listen,
        "http_port": http_port,
        "haproxy_bin": shutil.which("haproxy") or "haproxy",
    }
    config_path = directory / "worker.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "baseline-worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("ab"),
        start_new_session=True,
    )
    session = EtcdSession(endpoints(etcd.endpoint))
    host = host_of(BASELINE_PATH)
    changes = ChangeLog(directory / "changes.jsonl")
    trials: list[Trial] = []
    notes: list[str] = []
    base_key = f"/services{BASELINE_PATH}"
    try:
        cur, cur_id = 0, "init"
        session.put(
            f"{base_key}/{cur_id}",
            record(BASELINE_PATH, cur_id, backends[0].host, backends[0].port),
        )

        def first_serves() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"baseline worker exited: {log_path.read_text()[-2000:]}")
            return only(http_port, host, backends[0].name)

        settle("baseline: first backend serves", first_serves, 30)
        add_extra_services(args.extra_services, BASELINE_PATH, backends, session.put, http_port)
        total = args.warmup + args.trials
        for i in range(total):
            nxt = (cur + 1) % len(backends)
            new = backends[nxt]
            iid = f"bl{i:04d}"
            time.sleep(random.uniform(0.01, 0.05))
            t0_wall = time.time()
            t0 = time.perf_counter()
            session.put(f"{base_key}/{iid}", record(BASELINE_PATH, iid, new.host, new.port))
            put_rpc = time.perf_counter() - t0
            probe = poll_first(http_port, host, new.name, t0, args.poll_sleep)
            rev = session.revision(listen)
            trial = Trial(i, iid, new.host, new.port, t0_wall, put_rpc, probe)
            entry: dict[str, Any] | None = None
            with contextlib.suppress(RuntimeError):
                settle("baseline: change logged", lambda r=rev: changes.find(r) is not None, 10)
                entry = changes.find(rev)
            if entry is not None and entry["rev"] == rev and entry.get("ok"):
                trial.stamps = {
                    k: entry[k] for k in ("seen", "rendered", "checked", "reloaded") if k in entry
                }
            if i >= args.warmup:
                trials.append(trial)
            _progress("baseline", i, total, probe)
            session.delete(f"{base_key}/{cur_id}")
            rev_del = session.revision(listen)
            settle("baseline: delete reloaded", lambda r=rev_del: changes.find(r) is not None)
            settle(
                "baseline: only the new server answers", lambda n=new: only(http_port, host, n.name)
            )
            cur, cur_id = nxt, iid
        rtt = quiet_rtt(http_port, host)
        changes.poll()
        failed = [e for e in changes.entries if not e.get("ok")]
        if failed:
            notes.append(f"{len(failed)} failed checks/reloads, first: {failed[0].get('detail')}")
        notes.append(f"{len(changes.entries)} reloads in all")
        if args.keep:
            notes.append(f"baseline worker log: {log_path}")
        return PathResult("baseline", trials, args.warmup, notes, rtt)
    finally:
        stop_worker(worker, directory)
        session.close()


def stop_worker(worker: subprocess.Popen[bytes], directory: Path) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)
    kill_haproxy(directory)


def kill_haproxy(directory: Path) -> None:
    """SIGKILL the HAProxy master named by ``directory``'s pidfile and its workers."""
    try:
        pid = int((directory / "haproxy.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not procfs.pid_alive(pid) or not procfs.is_haproxy(pid):
        return
    children = procfs.child_pids(pid)
    for p in (pid, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not procfs.pid_alive(pid), 10, what="HAProxy gone")


# --------------------------------------------------------------------------- cleanup


def own_processes(workdir: Path) -> list[tuple[int, str]]:
    """Live processes whose command line names ``workdir`` (etcd, HAProxy, the worker)."""
    mine = []
    needle = os.fsencode(str(workdir))
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and procfs.pid_alive(int(entry)):
            mine.append((int(entry), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return mine


def foreign_servers(workdir: Path) -> int:
    """etcd and HAProxy processes on this machine that are not this run's."""
    ours = {pid for pid, _ in own_processes(workdir)}
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ours:
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm in ("etcd", "haproxy") and procfs.pid_alive(int(entry)):
            count += 1
    return count


def sweep(workdir: Path) -> list[tuple[int, str]]:
    """Kill whatever of ours is still alive (by pid); what survived is returned."""
    for pid, _ in own_processes(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while own_processes(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return own_processes(workdir)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- report


def _progress(name: str, i: int, total: int, probe: Probe) -> None:
    if (i + 1) % 50 == 0 or i + 1 == total:
        print(f"  {name}: {i + 1}/{total} trials", file=sys.stderr, flush=True)
    if probe.elapsed is None:
        print(f"  {name}: trial {i} timed out ({probe})", file=sys.stderr, flush=True)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def stats_row(name: str, values: list[float], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (
        name,
        str(len(values)),
        *extra,
        ms(min(values) if values else math.nan),
        ms(pct(values, 50)),
        ms(pct(values, 99)),
        ms(max(values) if values else math.nan),
    )


def runtime_breakdown(result: PathResult) -> list[str]:
    rows: list[tuple[str, ...]] = [("runtime stage (ms)", "n", "min", "p50", "p99", "max")]
    put = [t.put_rpc for t in result.trials]
    done = [t for t in result.trials if t.probe.elapsed is not None]
    conv = [t.lb_convergence for t in done if t.lb_convergence is not None]
    full = [t for t in done if t.lb_convergence is not None and "ack" in t.stamps]
    watch = [t.stamps["ack"] - t.lb_convergence - t.t0_wall for t in full]  # type: ignore[operator]
    tail = [t.probe.elapsed - (t.stamps["ack"] - t.t0_wall) for t in full]  # type: ignore[operator]
    rows.append(stats_row("put RPC (etcd commit, fsync)", put))
    rows.append(stats_row("put -> lb saw the event", watch))
    rows.append(stats_row("lb: event -> HAProxy ack", conv))
    rows.append(stats_row("ack -> first 200 (poll)", tail))
    rows.append(stats_row("total", [t.probe.elapsed for t in done]))  # type: ignore[misc]
    rows.append(
        stats_row("(put -> lb ack, no polling)", [t.stamps["ack"] - t.t0_wall for t in full])
    )
    lines = [table(rows)]
    if len(conv) < len(done):
        lines.append(f"({len(done) - len(conv)} trials without a single lb histogram sample)")
    # Which server got the first request sent after the lb's ack (+0.5 ms: log clock)?
    after = []
    for t in full:
        ack = t.stamps["ack"] - t.t0_wall + 0.0005
        first = next((w for start, _, w in t.probe.log if start >= ack), None)
        if first is not None:
            after.append(first == t.probe.log[-1][2])
    if after:
        lines.append(
            f"first request sent after the ack reached the new server in {sum(after)} of "
            f"{len(after)} trials (round robin; the others needed one more request)"
        )
    slow = sorted(full, key=lambda t: t.probe.elapsed or 0, reverse=True)[:5]
    if slow:
        lines.append("slowest runtime trials (ms): total = put->lb saw + lb + ack->200")
        for t in slow:
            assert t.probe.elapsed is not None and t.lb_convergence is not None
            saw = t.stamps["ack"] - t.lb_convergence - t.t0_wall
            lines.append(
                f"  #{t.index}: {t.probe.elapsed * 1000:.2f} = {saw * 1000:.2f} + "
                f"{t.lb_convergence * 1000:.2f} + "
                f"{(t.probe.elapsed - saw - t.lb_convergence) * 1000:.2f}"
                f"  (put RPC {t.put_rpc * 1000:.2f}; "
                f"lb ack at {(t.stamps['ack'] - t.t0_wall) * 1000:.1f})"
            )
            shown = [f"{a * 1000:.1f}-{b * 1000:.1f}: {w}" for a, b, w in t.probe.log]
            if len(shown) > 8:
                shown = [*shown[:3], f"... {len(shown) - 6} more ...", *shown[-3:]]
            lines.append("      requests (start-end ms: answer): " + ", ".join(shown))
    return lines


def baseline_breakdown(result: PathResult) -> list[str]:
    keys = {"seen", "rendered", "checked", "reloaded"}
    full = [t for t in result.trials if t.probe.elapsed is not None and keys <= set(t.stamps)]

    def span(a: str, b: str) -> list[float]:
        return [t.stamps[b] - t.stamps[a] for t in full]

    first = [t.t0_wall + (t.probe.elapsed or 0) for t in full]
    rows: list[tuple[str, ...]] = [("baseline stage (ms)", "n", "min", "p50", "p99", "max")]
    rows.append(
        stats_row("put -> watcher saw the event", [t.stamps["seen"] - t.t0_wall for t in full])
    )
    rows.append(stats_row("desired + plan + render + write", span("seen", "rendered")))
    rows.append(stats_row("haproxy -c -f", span("rendered", "checked")))
    rows.append(
        stats_row(
            "reload sent -> first 200",
            [f - t.stamps["checked"] for f, t in zip(first, full, strict=True)],
        )
    )
    rows.append(stats_row("(reload confirmed by show proc)", span("checked", "reloaded")))
    return [table(rows)]


def report(
    results: list[PathResult], args: argparse.Namespace, started: float, load: list[str]
) -> str:
    out: list[str] = []
    out.append(
        "B1 convergence: etcd put of a new instance -> first HTTP 200 from it through HAProxy"
    )
    out.append(
        f"{datetime.fromtimestamp(args.started_at).isoformat(timespec='seconds')}  "
        f"{platform.node()}  "
        f"{os.cpu_count()} cores  {_version(['haproxy', '-v'])}  {_version(['etcd', '--version'])}"
    )
    out.append(
        f"work dir {args.tmp or tempfile.gettempdir()}, "
        f"trials per path {args.trials} (+{args.warmup} warm-up), "
        f"{1 + args.extra_services} HTTP service(s) configured, poll sleep "
        f"{args.poll_sleep * 1000:.1f} ms, trial timeout {TRIAL_TIMEOUT:.0f} s, "
        "percentiles nearest-rank"
    )
    out.extend(load)
    out.append("")
    rows: list[tuple[str, ...]] = [("path (ms)", "n", "timeouts", "min", "p50", "p99", "max")]
    for r in results:
        rows.append(stats_row(r.name, r.times, (str(r.timeouts),)))
    out.append(table(rows))
    by = {r.name: r for r in results}
    if "runtime" in by and "baseline" in by and by["runtime"].times and by["baseline"].times:
        rt, bl = by["runtime"].times, by["baseline"].times
        r50 = pct(bl, 50) / pct(rt, 50)
        r99 = pct(bl, 99) / pct(rt, 99)
        out.append("")
        out.append(f"baseline/runtime: p50 {r50:.1f}x  p99 {r99:.1f}x")
        p99 = pct(rt, 99) * 1000
        out.append(
            f"targets: runtime p99 <= {TARGET_P99_MS:.0f} ms: "
            f"{'met' if p99 <= TARGET_P99_MS else 'MISSED'} ({p99:.2f} ms); "
            f">= {TARGET_RATIO:.0f}x faster: p50 {'met' if r50 >= TARGET_RATIO else 'MISSED'}, "
            f"p99 {'met' if r99 >= TARGET_RATIO else 'MISSED'}"
        )
    for r in results:
        traffic = [t.probe for t in r.trials]
        out.append("")
        out.append(
            f"{r.name}: {sum(p.requests for p in traffic)} requests while polling, "
            f"{sum(p.errors for p in traffic)} errors, "
            f"{sum(p.other_status for p in traffic)} non-200, "
            f"{sum(p.other_server for p in traffic)} from the previous server; "
            f"one request through HAProxy when idle: p50 {ms(pct(r.rtt, 50))} ms, "
            f"p99 {ms(pct(r.rtt, 99))} ms"
        )
        for note in r.notes:
            out.append(f"  note: {note}")
    if "runtime" in by:
        out.append("")
        rt = by["runtime"].times
        if rt and pct(rt, 99) * 1000 > TARGET_P99_MS:
            out.append(f"runtime p99 above {TARGET_P99_MS:.0f} ms; where the time goes:")
        out.extend(runtime_breakdown(by["runtime"]))
        out.append(
            "(lb = haroute_convergence_seconds per trial; 'lb saw' = lb's ack log line, 1 ms "
            "clock, minus that)"
        )
    if "baseline" in by:
        out.append("")
        out.extend(baseline_breakdown(by["baseline"]))
    out.append("")
    out.append(f"run took {time.monotonic() - started:.0f} s")
    return "\n".join(out)


def _load(when: str, workdir: Path) -> str:
    one, five, _ = os.getloadavg()
    return (
        f"at {when}: load average {one:.2f} (1 min) {five:.2f} (5 min), "
        f"{foreign_servers(workdir)} etcd/HAProxy processes of others running"
    )


def _version(cmd: list[str]) -> str:
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "?"
    words = text.split()
    return f"{words[0]} {words[2]}" if len(words) > 2 else "?"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=None, help="timed trials per path (default 200)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 20 trials per path unless --trials"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed trials first")
    parser.add_argument(
        "--poll-sleep", type=float, default=POLL_SLEEP, help="seconds between requests"
    )
    parser.add_argument(
        "--only", choices=("runtime", "baseline"), help="run one path (default: both)"
    )
    parser.add_argument(
        "--extra-services",
        type=int,
        default=0,
        metavar="N",
        help="N other HTTP services (one instance each) in both configs, for config size",
    )
    parser.add_argument(
        "--mass-removal-grace",
        default="0",
        metavar="SECONDS",
        help="the lb's MASS_REMOVAL_GRACE (default 0: guard off; see README)",
    )
    parser.add_argument(
        "--tmp",
        metavar="DIR",
        help="where the work directory (etcd's data dir included) goes; e.g. /dev/shm "
        "takes etcd's fsync out of the picture (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--baseline-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trials is None:
        args.trials = 20 if args.quick else 200
    if args.trials < 1 or args.warmup < 0 or not 0 <= args.poll_sleep <= 0.001:
        parser.error("--trials >= 1, --warmup >= 0, 0 <= --poll-sleep <= 0.001")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_worker:
        return baseline_worker(args.baseline_worker)
    started = time.monotonic()
    args.started_at = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="haroute-b1-", dir=args.tmp))
    results: list[PathResult] = []
    load = [_load("start", workdir)]
    ok = False
    servers = Stack(workdir)
    backends: list[Backend] = []
    try:
        with sigterm_as_interrupt():
            etcd = servers.etcd()
            for c, h in zip("abc", BACKEND_HOSTS, strict=True):
                backends.append(Backend(f"srv-{c}", h, workdir))
            if args.only in (None, "runtime"):
                print("runtime path (lb daemon, runtime socket)...", file=sys.stderr)
                results.append(run_runtime(servers, etcd, workdir, backends, args))
            if args.only in (None, "baseline"):
                print("baseline path (render, haproxy -c, reload)...", file=sys.stderr)
                results.append(run_baseline(servers, etcd, workdir, backends, args))
            load.append(_load("end", workdir))
            ok = True
    except KeyboardInterrupt:
        print("interrupted; stopping everything", file=sys.stderr)
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        servers.close()
        for b in backends:
            with contextlib.suppress(Exception):
                b.close()
        left = sweep(workdir)
        if left:
            print(f"WARNING: processes of this run survived: {left}", file=sys.stderr)
        if args.keep or not ok:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if results:
        print(report(results, args, started, load))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
