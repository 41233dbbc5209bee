"""lb at scale (issue: 1000 backends x 10 servers, each change as fast as with one).

Run by hand (not a test; nothing here asserts on speed)::

    .venv/bin/python bench/scale.py lb [--backends 1000] [--servers 10] [--trials 200]
    (or bench/scale_lb.py with the same options)

Two lbs on one etcd at once, each with its own HAProxy: a small one (1 backend x 10
servers) and a big one (``--backends`` x ``--servers``); every record is written before
the big lb starts. Trials alternate between the two lbs, so both see the same load.

Reported, in one run:
- big lb start -> all its backends served (every server configured ready in HAProxy and
  every Host in the map, read back from the admin socket);
- one instance moved (its port changes): etcd put -> the lb's log line for the ``set
  server ... addr`` HAProxy acknowledged, p50/p99 for each lb and the ratio;
- HAProxy reloads during the moves (the masters' own counters);
- idle CPU of the big lb over ``--idle`` seconds and its RSS;
- a burst of ``--burst`` new HTTP environments on the big lb: put (one etcd transaction)
  -> every new Host answers 200, and the reloads it cost.

Instances that are not probed point at loopback addresses where nothing listens (HAProxy's
checks find them down; what counts here is that HAProxy has them). Everything runs on
loopback and is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.convergence import Backend  # noqa: E402
from lb.master import parse_show_proc  # noqa: E402
from lb.runtime import RuntimeClient  # noqa: E402
from tests.helpers import metric_value  # noqa: E402
from tests.lb_helpers import LbStack, host_of, record  # noqa: E402
from tests.servers import Stack, free_port, stack, wait_for  # noqa: E402

ACK = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) haroute-lb INFO lb\.controller "
    r"\[runtime\] set server (\S+)/s\d+ addr (\S+) port (\d+)$"
)
HOST_SIZE = 10  # instances per simulated host (one register lease each)
LB_ENV = {
    "SLOTS": "8",
    "RELOAD_MIN_INTERVAL": "1",
    "DRAIN_TIMEOUT": "10",
    "LB_TTL": "15",
    "MASS_REMOVAL_GRACE": "30",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "text",
}


def path_of(scope: str, b: int) -> str:
    return f"/{scope}/app{b // 100}/e{b % 100}/web"


def address(scope_index: int, b: int, k: int) -> tuple[str, int]:
    """A loopback address per instance where nothing listens."""
    return f"127.{10 + scope_index}.{b // 250}.{b % 250 + 1}", 20000 + k


def histogram(text: str, name: str) -> tuple[float, float]:
    return metric_value(text, f"{name}_sum"), metric_value(text, f"{name}_count")


@dataclass
class LbUnderTest:
    name: str
    scope: str
    stack: LbStack
    backends: int
    servers: int
    log_offset: int = 0
    times: list[float] = field(default_factory=list)
    #: Per trial: the lb's own haroute_convergence_seconds (event seen -> HAProxy ack)
    #: and haroute_runtime_seconds (HAProxy's answer to the commands).
    lb_times: list[float] = field(default_factory=list)
    haproxy_times: list[float] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)

    def sample(self) -> tuple[tuple[float, float], tuple[float, float]]:
        text = self.stack.metrics() or ""
        return (
            histogram(text, "haroute_convergence_seconds"),
            histogram(text, "haroute_runtime_seconds"),
        )

    def log_acks(self) -> list[tuple[float, str, str, int]]:
        assert self.stack.lb is not None
        with open(self.stack.lb.log_path, "rb") as handle:
            handle.seek(self.log_offset)
            data = handle.read()
        cut = data.rfind(b"\n") + 1
        self.log_offset += cut
        acks = []
        for line in data[:cut].decode(errors="replace").splitlines():
            m = ACK.match(line)
            if m:
                stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                acks.append((stamp + 0.0005, m.group(2), m.group(3), int(m.group(4))))
        return acks

    def reloads(self) -> int:
        return parse_show_proc(self.stack.master("show proc")).reloads

    def pid(self) -> int:
        assert self.stack.lb is not None
        return self.stack.lb.pid


def served(lb: LbUnderTest, expect_servers: int, expect_hosts: int) -> bool:
    runtime = RuntimeClient(str(lb.stack.dir / "admin.sock"), timeout=10)
    try:
        ready = sum(1 for s in runtime.servers_state() if s.admin == "ready")
        hosts = len(runtime.show_map(str(lb.stack.dir / "hosts.map")))
    except Exception:
        return False
    return ready >= expect_servers and hosts >= expect_hosts


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return -1
    finally:
        conn.close()


def write_records(lb: LbUnderTest, scope_index: int, real: Backend) -> None:
    """Every instance of the lb's backends, in transactions of 100, each under the lease
    of its host as a register writes them: a host runs ``HOST_SIZE`` instances (etcd 3.4
    itself is slower for a put under a lease that holds many keys: measured, +0.7 ms per
    put and +2.6 ms put -> watch event with 10,000 keys on one lease, so one lease for
    the whole big cluster would measure etcd, not the lb). The last backend's first
    instance is a real server, so its Host answers."""
    by_host: dict[int, list[tuple[str, str]]] = {}
    for b in range(lb.backends):
        path = path_of(lb.scope, b)
        for k in range(lb.servers):
            ip, port = address(scope_index, b, k)
            if b == lb.backends - 1 and k == 0:
                ip, port = real.host, real.port
            host = (b * lb.servers + k) // HOST_SIZE
            by_host.setdefault(host, []).append(
                (f"/services{path}/i{k}", record(path, f"i{k}", ip, port))
            )
    for items in by_host.values():
        lease = lb.stack.session.grant(3600)[0]
        for key, _ in items:
            lb.leases[key] = lease
        lb.stack.session.put_many(items, lease=lease)


def move(lb: LbUnderTest, scope_index: int, rng: random.Random, trial: int) -> float | None:
    """Move one instance (new port); seconds from the put to the lb's ack."""
    b = rng.randrange(lb.backends)
    k = rng.randrange(1, lb.servers)  # never the real server of the probed backend
    path = path_of(lb.scope, b)
    ip, _ = address(scope_index, b, k)
    port = 30000 + trial
    lb.log_acks()  # skip what came before
    before = lb.sample()
    t0 = time.time()
    key = f"/services{path}/i{k}"
    lb.stack.session.put(key, record(path, f"i{k}", ip, port), lease=lb.leases[key])
    backend = "be_" + path.strip("/").replace("/", "_")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for stamp, name, got_ip, got_port in lb.log_acks():
            if name == backend and got_ip == ip and got_port == port:
                after = lb.sample()
                conv, run = after[0], after[1]
                if conv[1] == before[0][1] + 1:
                    lb.lb_times.append(conv[0] - before[0][0])
                if run[1] == before[1][1] + 1:
                    lb.haproxy_times.append(run[0] - before[1][0])
                return max(0.0, stamp - t0)
        time.sleep(0.001)
    return None


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="scale-", dir=args.tmp))
    rng = random.Random(7)
    lines: list[str] = []
    try:
        with stack(workdir) as servers:
            lines += measure(servers, workdir, args, rng)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    return 0


def start_lb(
    servers: Stack, workdir: Path, etcd: Any, name: str, *, backends: int, n: int
) -> LbUnderTest:
    scope = name
    env = {**LB_ENV, "LISTEN_PATH": f"/services/{scope}", "LB_ID": name}
    if os.environ.get("SCALE_TEMPLATE_DIR"):
        env["TEMPLATE_DIR"] = os.environ["SCALE_TEMPLATE_DIR"]
    stack_ = LbStack(servers, etcd, workdir / name, **env)
    (workdir / name).mkdir(exist_ok=True)
    return LbUnderTest(name, scope, stack_, backends, n)


def measure(
    servers: Stack, workdir: Path, args: argparse.Namespace, rng: random.Random
) -> list[str]:
    etcd = servers.etcd()
    real = Backend("real", "127.0.0.2", workdir)
    small = start_lb(servers, workdir, etcd, "small", backends=1, n=10)
    big = start_lb(servers, workdir, etcd, "big", backends=args.backends, n=args.servers)
    out = [
        f"lb scale benchmark: {args.backends} x {args.servers} vs 1 x 10, "
        f"{args.trials} moves, load {os.getloadavg()[0]:.2f}"
    ]
    try:
        t = time.monotonic()
        write_records(small, 0, real)
        write_records(big, 1, real)
        out.append(f"records written: {time.monotonic() - t:.1f} s")
        small.stack.start()
        wait_for(lambda: served(small, 10, 1), 60, 0.1, "small lb serves")
        t0 = time.monotonic()
        big.stack.start()
        wait_for(
            lambda: served(big, args.backends * args.servers, args.backends),
            300,
            0.1,
            "big lb serves",
        )
        started = time.monotonic() - t0
        last = host_of(path_of("big", args.backends - 1))
        wait_for(lambda: get(big.stack.http_port, last) == 200, 30, 0.1, "last Host answers")
        out.append(f"big lb start -> all {args.backends} backends served: {started:.2f} s")
        before = {lb.name: lb.reloads() for lb in (small, big)}
        timeouts = {small.name: 0, big.name: 0}
        for trial in range(args.trials):
            lb = small if trial % 2 == 0 else big
            elapsed = move(lb, 0 if lb is small else 1, rng, trial)
            if elapsed is None:
                timeouts[lb.name] += 1
            else:
                lb.times.append(elapsed)
            time.sleep(args.gap)
        for lb in (small, big):
            reloads = lb.reloads() - before[lb.name]
            out.append(
                f"{lb.name:5} move put -> HAProxy ack: p50 {pct(lb.times, 50) * 1000:.2f} ms, "
                f"p99 {pct(lb.times, 99) * 1000:.2f} ms (n={len(lb.times)}, "
                f"timeouts {timeouts[lb.name]}), reloads during moves: {reloads}"
            )
            out.append(
                f"      of which lb saw -> ack p50 {pct(lb.lb_times, 50) * 1000:.2f} / p99 "
                f"{pct(lb.lb_times, 99) * 1000:.2f} ms, HAProxy's answer p50 "
                f"{pct(lb.haproxy_times, 50) * 1000:.2f} / p99 "
                f"{pct(lb.haproxy_times, 99) * 1000:.2f} ms"
            )
        out.append(
            f"ratio big/small: p50 {pct(big.times, 50) / pct(small.times, 50):.2f}x, "
            f"p99 {pct(big.times, 99) / pct(small.times, 99):.2f}x"
        )
        time.sleep(2)
        pid = big.pid()
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)
        idle = (cpu_seconds(pid) - c0) / (time.monotonic() - w0) * 100
        out.append(f"big lb idle CPU over {args.idle:.0f} s: {idle:.2f} % of a core")
        out.append(f"big lb RSS: {rss_mb(pid):.1f} MB")
        out += burst(big, real, args.burst)
    finally:
        for lb in (small, big):
            lb.stack.close()
        real.close()
    return out


def burst(lb: LbUnderTest, real: Backend, count: int) -> list[str]:
    """``count`` new HTTP environments at once: put -> all routable, and reloads."""
    before = lb.reloads()
    paths = [f"/big/burst/e{i}/web" for i in range(count)]
    items = [(f"/services{p}/x", record(p, "x", real.host, real.port)) for p in paths]
    hosts = [host_of(p) for p in paths]
    t0 = time.monotonic()
    lb.stack.session.put_many(items, lease=lb.stack.lease)
    pending = set(hosts)
    while pending and time.monotonic() - t0 < 120:
        pending = {h for h in pending if get(lb.stack.http_port, h) != 200}
    took = time.monotonic() - t0
    left = f", {len(pending)} never routable" if pending else ""
    return [
        f"burst of {count} new environments -> all routable: {took:.2f} s, "
        f"reloads {lb.reloads() - before}{left}"
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scale.py lb", description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=10)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between trials")
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--tmp", default=None, help="work directory parent (e.g. /dev/shm)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    free_port()  # the helpers need loopback; fail early without it
    sys.exit(main())
